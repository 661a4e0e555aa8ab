"""Benchmark assets: the loopback RTSP server that serves the shared clips as live cameras
(used by `percept bench` and the tests) and the saved results (`results/<date>-<host>.json`)."""
