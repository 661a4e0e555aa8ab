"""A command's own error line quotes what it was given: an option naming a URL with credentials
in it (a camera's URL given to `models export --calib`, a dataset's to `eval --data`) printed
the password on stderr (`cli.common.fail`)."""

from __future__ import annotations

import pytest

from cli.main import main

from .conftest import MODELS, SHARED


@pytest.mark.parametrize("argv", [
    ["models", "export", str(MODELS / "yolov8n-coco.pt"), "--to", "openvino-int8", "--calib",
     "rtsp://admin:S3cretPW@10.0.0.5/stream1"],
    ["eval", "detector", "--weights", "w.pt", "--data", "https://user:S3cretPW@example.com/coco.yaml"],
    ["models", "compare", "https://user:S3cretPW@example.com/w.pt", "--data", "d"],
    ["eval", "detector", "--weights", "https://user:S3cretPW@example.com/w.pt", "--data", str(SHARED / "data" / "coco128-val")],
    ["models", "finetune", str(MODELS / "yolov8n-cls-imagenet.pt"), "--data", "https://user:S3cretPW@example.com/ds"],
], ids=["export-calib", "eval-data", "compare-variant", "eval-weights", "finetune-data"])
def test_an_option_quoted_in_a_commands_error_has_its_password_scrubbed(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.pt").write_bytes(b"not a model")  # (eval and compare quote the option before they load it)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "S3cretPW" not in err and "***@" in err, err
