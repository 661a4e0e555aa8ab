#!/usr/bin/env bash
# Installs the Debian packages percept needs, only when something is missing.
#   scripts/install-system-deps.sh          redis-server + ffmpeg (to run percept)
#   scripts/install-system-deps.sh --test   + GStreamer's RTSP server and headless Chromium (for the test suite)
#   scripts/install-system-deps.sh --venv   + python3-venv (Debian's python3 makes no virtualenv without it)
set -euo pipefail
pkgs=()
[[ "${1:-}" == "--venv" ]] && pkgs+=(python3-venv)
command -v redis-server >/dev/null || pkgs+=(redis-server)
command -v redis-cli >/dev/null || pkgs+=(redis-tools)
command -v ffmpeg >/dev/null || pkgs+=(ffmpeg)
# opencv-python (ultralytics installs it, not the headless build) links libGL and GLib
# (the list read whole first: `ldconfig -p | grep -q` fails under pipefail when grep stops early)
libs=$(/sbin/ldconfig -p 2>/dev/null || true)
[[ $libs == *libGL.so.1* ]] || pkgs+=(libgl1)
[[ $libs == *libglib-2.0.so.0* ]] || pkgs+=(libglib2.0-0)
if [[ "${1:-}" == "--test" ]]; then
  # the RTSP server and the elements benchmarks/rtsp_server.py's pipelines use (x264enc: ugly, intervideosink: bad)
  if ! /usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer','1.0'); gi.require_version('Gst','1.0')
from gi.repository import Gst, GstRtspServer; Gst.init(None)
assert all(Gst.ElementFactory.find(e) for e in ('x264enc', 'intervideosink', 'avdec_h264', 'rtph264pay'))" 2>/dev/null; then
    pkgs+=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
           gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav)
  fi
  # tests/test_live_view.py loads the live view page in headless Chromium (a font to render its text)
  command -v chromium >/dev/null || pkgs+=(chromium fonts-dejavu-core)
  # tests/test_security.py makes a TLS certificate for a TLS-only redis-server
  command -v openssl >/dev/null || pkgs+=(openssl)
fi
[[ ${#pkgs[@]} -eq 0 ]] && exit 0
echo "installing Debian packages: ${pkgs[*]}"
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "not root and no sudo: install them as root: apt-get install ${pkgs[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
$SUDO apt-get update -qq
# (env: sudo would drop a DEBIAN_FRONTEND set before it, and a debconf question would wait unseen)
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
