from pipeline.redact import redact, redact_url


def test_url_credentials_are_hidden():
    assert redact_url("rtsp://admin:hunter2@10.0.0.5:554/s1") == "rtsp://***@10.0.0.5:554/s1"
    assert redact_url("rtsp://10.0.0.5/s1") == "rtsp://10.0.0.5/s1"
    assert redact_url("redis://:pw@127.0.0.1:6379/0") == "redis://***@127.0.0.1:6379/0"


def test_free_text_is_scrubbed():
    text = "cannot open rtsp://u:p@h/x: 401; password=hunter2 token abc"
    out = redact(text, secrets=("abc",))
    assert "u:p@" not in out and "hunter2" not in out and "abc" not in out


def test_prose_about_passwords_is_kept():
    msg = "401 Unauthorized: check the user and password in the camera URL"
    assert redact(msg) == msg


def test_passwords_with_unescaped_characters_are_hidden_whole():
    for url in ("rtsp://bob:pa/ss@10.0.0.1/s", "rtsp://bob:p@ss@10.0.0.1/s", "rtsp://bob:pa#ss@10.0.0.1/s"):
        assert redact_url(url) == "rtsp://***@10.0.0.1/s", url
    assert redact("got {'url': 'rtsp://u:p@h/s', 'password': 'hunter2'}") == "got {'url': 'rtsp://***@h/s', 'password': ***"
    assert redact("cannot open rtsp://h/s: mail admin@example.com") == "cannot open rtsp://h/s: mail admin@example.com"
