"""`percept explain`'s command line: options for files refused with a CAMERA, --masks bounds."""

from __future__ import annotations

import pytest

from cli.main import main


def test_explain_of_a_camera_refuses_the_offline_options_it_would_ignore(capsys):
    """`--no-blur`, `--weights`, `--conf`, … with a CAMERA were never sent: a user who asked for
    --no-blur got a blurred image without a word. `--masks` beyond the API's 4000 ran for minutes."""
    for extra, named in ((["--no-blur"], "--no-blur"), (["--weights", "w.pt", "--conf", "0.9"], "--weights/--conf"),
                         (["--imgsz", "320", "--device", "cpu", "--threads", "1"], "--imgsz/--device/--threads"),
                         # (given as their defaults they were taken as not given: --imgsz 640 ignored
                         # by a graph whose detector runs at 1280, without a word)
                         (["--imgsz", "640", "--conf", "0.25", "--device", "auto"], "--imgsz/--conf/--device")):
        assert main(["explain", "cam", "--object", "0", "--api", "http://127.0.0.1:1", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith(f"percept: explain: {named}: only with --image/--video"), err
    for masks in ("4001", "0", "5"):  # (0 was said to need >= 1, and 1 then refused for >= 16)
        with pytest.raises(SystemExit) as exited:
            main(["explain", "--object", "0", "--image", "i.jpg", "--weights", "w.pt", "--masks", masks])
        assert exited.value.code == 2 and "argument --masks: must be from 16 to 4000" in capsys.readouterr().err
