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


def test_models_swap_says_what_it_checks_without_the_paths_password(capsys):
    from .http import answering

    with answering(422, b'{"detail": "weights: cannot load"}') as api:
        assert main(["models", "swap", "detector", "https://user:S3cretPW@models.example.com/w.pt", "--api", api]) == 2
    err = capsys.readouterr().err
    assert "percept: checking https://***@models.example.com/w.pt for detector" in err and "S3cretPW" not in err, err


def test_bench_soaks_own_option_errors_are_scrubbed_and_its_json_checked_before_the_run(capsys, tmp_path):
    """`bench soak` has a parser of its own: argparse's errors quoted --redis with its password,
    and a --json that cannot be written failed after the run (10 minutes by default)."""
    with pytest.raises(SystemExit) as done:
        main(["bench", "soak", "--redis", "redis://:S3cretPW@127.0.0.1:6379/0"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "redis://***@127.0.0.1:6379/0" in err and "S3cretPW" not in err, err
    for path in ("/proc/x.json", str(tmp_path), str(tmp_path / "missing" / "x.json")):
        with pytest.raises(SystemExit) as done:
            main(["bench", "soak", "--json", path])
        err = capsys.readouterr().err
        assert done.value.code == 2 and "argument --json" in err, err


def test_numbers_beyond_json_and_another_services_page_are_no_answer(capsys):
    """`cameras zones --zones` with 1e400 sent `Infinity` (no JSON) to the API and said it was
    done; `models served --json` printed another service's page as {"detail": …}, exit 0."""
    from .http import answering

    with answering(200, b'{"id": "c1"}') as api:
        with pytest.raises(SystemExit) as done:
            main(["cameras", "--api", api, "zones", "c1", "--zones", '{"a": [[1e400, 2], [3, 4], [5, 6]]}'])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "beyond a JSON number's range" in err, err
    with answering(200, b"<html>hello</html>") as api:
        assert main(["models", "served", "--api", api, "--json"]) == 3
    captured = capsys.readouterr()
    assert captured.out == "" and "did not answer with percept's model list" in captured.err, captured
