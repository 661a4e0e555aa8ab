"""Serve looping video files / test patterns as live RTSP cameras (gst-rtsp-server).

Test and benchmark fixture. Runs under Debian's /usr/bin/python3 (which has
``gi``); needs only gi + the stdlib::

    /usr/bin/python3 benchmarks/rtsp_server.py --port 8554 [--host 127.0.0.1] \
        [--user U --password P] MOUNT=SPEC [MOUNT=SPEC ...]

SPEC is ``PATH[@WxH][@FPS][@bframes]`` (a video file, looped forever) or
``testsrc[@WxH][@FPS][@bframes]`` (``videotestsrc pattern=ball``, with a clock overlay where
GStreamer's pango plugin is installed). Size defaults to the file's native size (640x480 for
testsrc), FPS to 10. Each mount is served at
``rtsp://HOST:PORT/MOUNT`` as H.264 baseline, keyframe every 10 frames (like most IP cameras:
no B-frames); with ``@bframes``, H.264 main with two non-reference B-frames after every
reference frame, keyframe every 30 frames. All clients of a mount share one encoder.

A file is decoded by its own "producer" pipeline (flush-seek to 0 on EOS) into an
``intervideosink``; the RTSP factory reads it with ``intervideosrc``, so clients see a live
camera that never ends. With ``--encode-once`` a file (not ``@bframes``) is instead encoded at
start, with the same settings, and its access units are sent again and again at its rate: the
camera then costs this machine next to no CPU (the bench's cameras). ``--port 0`` binds any free port. Once listening, exactly one line
``ready rtsp://HOST:PORT`` goes to stdout. Exit codes: 0 after SIGTERM/SIGINT, 2 bad
arguments/media, 3 port already in use, 1 producer pipeline error.
"""
import argparse
import os
import re
import signal
import sys
import threading
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstPbutils", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstPbutils, GstRtspServer  # noqa: E402

X264 = ("x264enc tune=zerolatency threads=1 speed-preset=ultrafast key-int-max=10 bitrate=1500 ! "
        "video/x-h264,profile=baseline")
PAY = "rtph264pay name=pay0 pt=96 config-interval=-1"
ENCODE = f"videoconvert ! {X264} ! {PAY}"
ENCODE_B = ("videoconvert ! x264enc threads=1 speed-preset=ultrafast bframes=2 b-pyramid=false "
            f"key-int-max=30 bitrate=1500 ! video/x-h264,profile=main ! {PAY}")
# a clip encoded once (--encode-once), sent again and again: each access unit whole, SPS/PPS before every keyframe
AU = "video/x-h264,stream-format=byte-stream,alignment=au"


def die(msg, code=2):
    print(f"rtsp_server: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def parse_spec(arg):
    """'MOUNT=PATH[@WxH][@FPS][@bframes]' -> (mount, path, (w, h) or None, fps, bframes)."""
    mount, sep, spec = arg.partition("=")
    mount = mount.strip("/")
    if not sep or not mount or not spec:
        die(f"bad mount spec {arg!r}, expected MOUNT=PATH[@WxH][@FPS][@bframes]")
    size, fps, bframes = None, 10, False
    parts = spec.split("@")
    while len(parts) > 1:  # peel trailing @WxH / @FPS / @bframes tokens (paths may contain '@')
        m = re.fullmatch(r"(\d+)x(\d+)|(\d+)|(bframes)", parts[-1])
        if not m:
            break
        if m.group(4):
            bframes = True
        elif m.group(3):
            fps = int(m.group(3))
        else:
            size = (int(m.group(1)), int(m.group(2)))
        parts.pop()
    return mount, "@".join(parts), size, fps, bframes


def native_size(path):
    try:
        info = GstPbutils.Discoverer.new(10 * Gst.SECOND).discover_uri(Gst.filename_to_uri(path))
        v = info.get_video_streams()[0]
        return v.get_width(), v.get_height()
    except Exception as e:  # noqa: BLE001
        die(f"cannot probe {path}: {e}")


def make_producer(path, caps, channel, on_fail):
    """filesrc -> decode -> scale/rate -> intervideosink, flush-seeking to 0 on EOS."""
    pipe = Gst.parse_launch(
        'filesrc name=src ! decodebin caps="video/x-raw(ANY)" expose-all-streams=false ! '
        f"videoconvert ! videoscale ! videorate ! {caps} ! intervideosink channel={channel}")
    pipe.get_by_name("src").set_property("location", path)

    def on_message(_bus, msg):
        if msg.type == Gst.MessageType.EOS:
            if not pipe.seek_simple(Gst.Format.TIME, Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT, 0):
                on_fail(f"{path}: seek to start failed")
        elif msg.type == Gst.MessageType.ERROR:
            err, dbg = msg.parse_error()
            on_fail(f"{path}: {err.message} ({dbg})")
        return True

    bus = pipe.get_bus()
    bus.add_signal_watch()
    bus.connect("message", on_message)
    return pipe


def encode_once(path, caps):
    """The clip scaled and timed as ``caps`` says and encoded as the live mounts are (same x264
    settings), as fast as it goes: its access units, and which of them are keyframes."""
    pipe = Gst.parse_launch(
        'filesrc name=src ! decodebin caps="video/x-raw(ANY)" expose-all-streams=false ! '
        f"videoconvert ! videoscale ! videorate ! {caps} ! {X264} ! h264parse config-interval=-1 ! {AU} ! "
        "appsink name=out sync=false")
    pipe.get_by_name("src").set_property("location", path)
    sink = pipe.get_by_name("out")
    pipe.set_state(Gst.State.PLAYING)
    units, keyframes, msg = [], [], None
    try:
        while msg is None:
            sample = sink.emit("try-pull-sample", Gst.SECOND)
            if sample is None:  # the end, or an error (after which no sample and no end come)
                msg = pipe.get_bus().pop_filtered(Gst.MessageType.ERROR)
                if sink.get_property("eos"):
                    break
                continue
            buf = sample.get_buffer()
            if not buf.has_flags(Gst.BufferFlags.DELTA_UNIT):
                keyframes.append(len(units))
            units.append(buf.extract_dup(0, buf.get_size()))
    finally:
        pipe.set_state(Gst.State.NULL)
    if msg is not None or not keyframes or keyframes[0] != 0:
        die(f"cannot encode {path}: {msg.parse_error()[0].message if msg else 'no keyframe first'}", 1)
    return units, keyframes


class LoopedClip:
    """An encoded clip sent as a live camera, at ``fps``, looped for ever: no decoding or encoding
    while it plays (a camera on another machine costs this one nothing). Each client's media
    starts at the keyframe after where the clip is now, counted from the server's start."""

    def __init__(self, units, keyframes, fps):
        self.units, self.keyframes, self.keyset, self.fps = units, keyframes, frozenset(keyframes), fps
        self.started = time.monotonic()

    def launch(self, width, height):
        return (f"( appsrc name=src is-live=true format=time do-timestamp=true "
                f"caps={AU},width={width},height={height},framerate={self.fps}/1 ! h264parse ! {PAY} )")

    def on_media(self, _factory, media):
        src = media.get_element().get_by_name("src")
        stopped = threading.Event()
        media.connect("unprepared", lambda *_: stopped.set())
        threading.Thread(target=self._feed, args=(src, stopped), daemon=True).start()

    def _feed(self, src, stopped):
        """Each access unit at its time. A client that reads too slowly (its queue here past half
        a second) loses whole GOPs: sent again from a keyframe once it caught up, as a camera's
        own buffer would (a frame without its references would not decode). Paused (the media
        flushing), it waits; it ends with its media (`unprepared`)."""
        period, backlog = 1.0 / self.fps, max(2, self.fps // 2)
        now = int((time.monotonic() - self.started) * self.fps) % len(self.units)
        i = next((k for k in self.keyframes if k >= now), 0)
        due, dropping = time.monotonic(), False
        while not stopped.is_set():
            level = src.get_property("current-level-buffers")
            dropping = level > backlog or (dropping and not (i in self.keyset and level <= backlog // 2))
            if not dropping:
                buf = Gst.Buffer.new_wrapped(self.units[i])
                buf.duration = int(Gst.SECOND * period)
                if i not in self.keyset:
                    buf.set_flags(Gst.BufferFlags.DELTA_UNIT)
                flow = src.emit("push-buffer", buf)
                if flow not in (Gst.FlowReturn.OK, Gst.FlowReturn.FLUSHING):
                    return  # the media ended or failed
            i = (i + 1) % len(self.units)
            due += period
            late = time.monotonic() - due
            if late > 2 * period:  # held up (a busy machine, the process stopped): on from now, not in a burst
                due += late
            elif late < 0:
                stopped.wait(-late)


def require_login(server, user, password):
    """Basic auth on ``server``: the permissions a mount needs so that ``user`` may play it."""
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    server.set_auth(auth)
    permissions = GstRtspServer.RTSPPermissions()
    permissions.add_permission_for_role("user", GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS, True)
    permissions.add_permission_for_role("user", GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, True)
    return permissions


def add_mounts(server, specs, permissions, fail, *, once=False):
    """One shared media factory per ``MOUNT=SPEC``; returns the pipelines that feed the clips'
    mounts (a test pattern, or a clip encoded ``once``, needs none)."""
    mounts = server.get_mount_points()
    producers = []
    seen = set()
    for i, arg in enumerate(specs):
        mount, path, size, fps, bframes = parse_spec(arg)
        encode = ENCODE_B if bframes else ENCODE
        if mount in seen:
            die(f"duplicate mount /{mount}")
        seen.add(mount)
        if path == "testsrc":
            w, h = size or (640, 480)
        else:
            w, h = size or native_size(path)
        w, h = w + (w & 1), h + (h & 1)  # x264/I420 want even dimensions
        looped = None
        caps = f"video/x-raw,format=I420,width={w},height={h},framerate={fps}/1"
        if path == "testsrc":
            # the clock overlay needs GStreamer's pango plugin (Debian: gstreamer1.0-x, not installed): without
            # it the media would not build and every client got 503
            overlay = 'timeoverlay font-desc="Sans 24" ! ' if Gst.ElementFactory.find("timeoverlay") else ""
            launch = f"( videotestsrc is-live=true pattern=ball ! {caps} ! {overlay}{encode} )"
        elif once and not bframes:
            looped = LoopedClip(*encode_once(path, caps), fps)
            print(f"rtsp_server: /{mount}: {len(looped.units)} frames encoded once, {len(looped.keyframes)} keyframes",
                  file=sys.stderr, flush=True)
            launch = looped.launch(w, h)
        else:
            channel = f"cam{i}"
            producers.append(make_producer(path, caps, channel, fail))
            launch = f"( intervideosrc channel={channel} ! {caps} ! {encode} )"
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch)
        if looped is not None:
            factory.connect("media-configure", looped.on_media)
        factory.set_shared(True)
        if permissions is not None:
            factory.set_permissions(permissions)
        mounts.add_factory("/" + mount, factory)
    return producers


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8554, help="0 = any free port")
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--password-env", metavar="VAR",
                    help="the password from this environment variable (a command line is every local user's: ps)")
    ap.add_argument("--encode-once", action="store_true",
                    help="encode each clip (not @bframes) once at start and loop its H.264: the cameras then cost "
                    "this machine next to no CPU, as cameras on the network would")
    ap.add_argument("mounts", nargs="+", metavar="MOUNT=SPEC")
    args = ap.parse_args()
    if args.password_env is not None:
        if args.password is not None:
            die("--password or --password-env, not both")
        args.password = os.environ.get(args.password_env) or die(f"--password-env: {args.password_env} is not set")
    if (args.user is None) != (args.password is None):
        die("--user and --password go together")

    Gst.init(None)
    loop = GLib.MainLoop()
    status = [0]

    def fail(msg):  # called from GLib callbacks: stop the loop rather than raise
        print(f"rtsp_server: {msg}", file=sys.stderr, flush=True)
        status[0] = 1
        loop.quit()

    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    server.set_backlog(64)

    permissions = require_login(server, args.user, args.password) if args.user is not None else None
    producers = add_mounts(server, args.mounts, permissions, fail, once=args.encode_once)

    for p in producers:  # preroll so the first client gets real frames, not black
        p.set_state(Gst.State.PLAYING)
        if p.get_state(10 * Gst.SECOND)[0] == Gst.StateChangeReturn.FAILURE:
            msg = p.get_bus().pop_filtered(Gst.MessageType.ERROR)
            die(f"producer failed: {msg.parse_error()[0].message if msg else '?'}", 1)

    if server.attach(None) == 0:
        die(f"cannot listen on {args.host}:{args.port} (port in use?)", 3)
    print(f"ready rtsp://{args.host}:{server.get_bound_port()}", flush=True)

    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, lambda *_: (loop.quit(), False)[1])
    loop.run()
    for p in producers:
        p.set_state(Gst.State.NULL)
    sys.exit(status[0])


if __name__ == "__main__":
    main()
