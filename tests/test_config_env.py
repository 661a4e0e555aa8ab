"""A camera whose whole URL is a ``${VAR}``: the settings for files only are checked again once
the decoder expands it."""

from __future__ import annotations

import pytest

from pipeline.config import CameraConfig
from pipeline.config_env import CameraEnvError, resolve_camera


@pytest.mark.parametrize("settings,field", [({"backpressure": "wait"}, "backpressure"), ({"loop": True}, "loop"),
                                            ({"realtime": False}, "realtime")])
def test_a_file_setting_on_a_url_that_is_one_variable_is_refused_once_it_names_a_live_camera(settings, field):
    """``url: ${CAM_FRONT_URL}`` has no scheme as written, so it passed for a file's path:
    ``backpressure: wait`` on the live RTSP camera it names paused its reader (frames further and
    further behind), ``loop`` / ``realtime`` did nothing without a word."""
    cam = CameraConfig(id="front", url="${CAM_FRONT_URL}", **settings)  # (a file's path, as far as can be told)
    with pytest.raises(CameraEnvError) as refused:
        resolve_camera(cam, {"CAM_FRONT_URL": "rtsp://viewer:s3cret-pw@10.0.0.9/s1"})
    said = str(refused.value)
    assert said.startswith(f"cameras[front].{field}: ") and "live camera" in said and "s3cret" not in said, said
    assert resolve_camera(cam, {"CAM_FRONT_URL": "/recordings/front.mp4"}).url == "/recordings/front.mp4"


def test_keyframes_on_a_url_that_is_one_variable_naming_a_device_is_refused():
    cam = CameraConfig(id="usb", url="${CAM_USB}", decode="keyframes")
    with pytest.raises(CameraEnvError, match=r"^cameras\[usb\]\.decode: keyframes needs an encoded stream"):
        resolve_camera(cam, {"CAM_USB": "device:0"})
