"""Moved to `benchmarks/rtsp.py` (the bench serves the shared clips over RTSP too); kept so
``from tests.rtsp import RtspServer`` still works."""

from benchmarks.rtsp import HOST, SERVER_SCRIPT, SYSTEM_PYTHON, RtspServer, gst_rtsp_available  # noqa: F401
