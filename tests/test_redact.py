import pytest

from pipeline.redact import redact, redact_url, url_secrets


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
    for url in ("rtsp://bob:pa/ss@10.0.0.1/s", "rtsp://bob:p@ss@10.0.0.1/s", "rtsp://bob:pa#ss@10.0.0.1/s",
                "rtsp://bob:Tr0ub@dor/horse@10.0.0.1/s"):  # (scrubbed up to the last "@")
        assert redact_url(url) == "rtsp://***@10.0.0.1/s", url
    assert redact("got {'url': 'rtsp://u:p@h/s', 'password': 'hunter2'}") == "got {'url': 'rtsp://***@h/s', 'password': ***"
    assert redact("cannot open rtsp://h/s: mail admin@example.com") == "cannot open rtsp://h/s: mail admin@example.com"


def test_query_string_passwords_and_known_secrets_are_hidden():
    from pipeline.redact import url_secrets

    assert redact_url("rtsp://h/s?user=a&password=xyz&ch=1") == "rtsp://h/s?user=a&password=***&ch=1"
    assert redact_url("http://h/cgi?pwd=abc") == "http://h/cgi?pwd=***"
    # named for a secret after a prefix, or secret-like names beyond passwords and tokens
    assert redact_url("https://c/live.m3u8?access_token=T0K&x=1") == "https://c/live.m3u8?access_token=***&x=1"
    assert redact_url("http://c/v.cgi?user=admin&secret=S3C") == "http://c/v.cgi?user=admin&secret=***"
    assert redact("GET https://b/o?X-Amz-Signature=ab12&stream_key=k9&key=k1 failed") == (
        "GET https://b/o?X-Amz-Signature=***&stream_key=***&key=*** failed")
    assert redact_url("http://c/v?monkey=1&passage=2&keys=3") == "http://c/v?monkey=1&passage=2&keys=3"  # other words
    # camelCase and run-together names, a digit after the word (accessToken= was kept, and stored in Redis)
    assert redact_url("http://nvr/l.flv?user=a&accessToken=T&privateKey=K&userpwd=P&adminPass=Q&password1=Z&id=3") == (
        "http://nvr/l.flv?user=a&accessToken=***&privateKey=***&userpwd=***&adminPass=***&password1=***&id=3")
    assert redact_url("http://c/v?bypassed=1&codec=h264") == "http://c/v?bypassed=1&codec=h264"
    # signed URLs of CDNs and media servers (nginx-rtmp's authkey, Akamai's hdnts, Wowza's hash)
    assert redact_url("rtmp://s/live?authkey=A1&t=1&sign=S1&hdnts=exp=1~hmac=ff&wowzatokenhash=W1&secretkey=K1") == (
        "rtmp://s/live?authkey=***&t=1&sign=***&hdnts=***&wowzatokenhash=***&secretkey=***")
    # (these three were stored in clear, and answered back: Akamai's hdnea, Nimble's wmsAuthSign, a CGI's userpass)
    assert redact_url("https://c/live.m3u8?hdnea=st=1~exp=2~hmac=ff&wmsAuthSign=W2&x=1") == (
        "https://c/live.m3u8?hdnea=***&wmsAuthSign=***&x=1")
    assert redact_url("http://cam/video.cgi?username=admin&userpass=S3cret&compass=N") == (
        "http://cam/video.cgi?username=admin&userpass=***&compass=N")
    assert redact_url("http://c/v?design=blue&signal=2") == "http://c/v?design=blue&signal=2"
    assert url_secrets("http://nvr/l.flv?accessToken=S3CRET&authToken=ab") == ("S3CRET",)  # (2 chars: not everywhere)
    secrets = url_secrets("rtsp://u:p%2Fq9@h/s")
    assert set(secrets) == {"p%2Fq9", "p/q9"} and url_secrets("rtsp://h/s") == ()
    assert redact("cast 'p/q9' failed", secrets) == "cast '***' failed"


def test_rtsp_diagnosis_of_a_url_it_cannot_split_quotes_nothing_of_it():
    from pipeline.camera_probe import diagnose_rtsp
    from pipeline.redact import UNESCAPED_USERINFO

    for url in ("rtsp://bob:pa/Sup3rPw@10.0.0.1/s",  # the "/" ends the host part: port "pa"
                "rtsp://admin:Tr0ub?dor@nohost.invalid/stream", "rtsp://admin:Tr0ub#dor@nohost.invalid/stream"):
        why = diagnose_rtsp(url, timeout_s=0.1)
        assert why == f"the URL's host cannot be read: {UNESCAPED_USERINFO}", (url, why)
        assert redact(why) == why  # nothing in it looks like a secret (the camera's error goes through redact)
        assert "dor" not in why and "Sup3rPw" not in why and "pa" not in why.replace("password", "")
    # "Tr0ub@dor/horse": FFmpeg's host is "dor", a piece of the password: tried as FFmpeg does, not named
    why = diagnose_rtsp("rtsp://admin:Tr0ub@dor.invalid/horse@nohost.invalid/stream", timeout_s=0.1)
    assert why.startswith("unknown host: the URL's host, port 554 (not shown: if the password has / ? # or @ "), why
    assert "dor" not in why and "horse" not in why
    # an "@" in the query of a URL whose password is fine: the same caution, the camera still diagnosed
    why = diagnose_rtsp("rtsp://admin:pw@127.0.0.1:9/live?notify=ops@example.com", timeout_s=0.5)
    assert why.startswith("connection refused by the URL's host, port 9"), why


def test_rtsp_diagnosis_of_a_bracket_in_the_password_says_so_without_it():
    """urlsplit raised ValueError ("Invalid IPv6 URL") out of the diagnosis: each failed open
    became a reader crash (a traceback, a restart) instead of ``reconnecting`` with a reason."""
    from pipeline.camera_probe import diagnose_rtsp

    why = diagnose_rtsp("rtsp://admin:Tr0ub[dor@127.0.0.1:9/live", timeout_s=0.1)
    assert why.startswith("the URL's host cannot be read: a [ or ] outside an IPv6 address"), why
    assert "dor" not in why and redact(why) == why


def test_rtsp_diagnosis_of_a_port_out_of_range_says_so():
    from pipeline.camera_probe import diagnose_rtsp

    for url in ("rtsp://10.0.0.1:99999/s", "rtsp:///s"):
        assert diagnose_rtsp(url, timeout_s=0.1).endswith("(rtsp://host[:port]/path, a port from 1 to 65535)"), url


def test_camera_cgi_passwords_in_the_query_are_hidden():
    assert redact_url("http://cam/snap.cgi?user=admin&pw=hunter2") == "http://cam/snap.cgi?user=admin&pw=***"
    assert redact_url("http://cam/v.cgi?loginuse=admin&loginpas=hunter2&x=1") == (
        "http://cam/v.cgi?loginuse=admin&loginpas=***&x=1")
    assert redact_url("http://cam/v.cgi?pwr=1&pws=2") == "http://cam/v.cgi?pwr=1&pws=2"  # other names
    # SRT's encryption passphrase (FFmpeg's srt:// option), hidden and refused inline like a password
    assert redact_url("srt://cam:9000?mode=caller&passphrase=Sup3rSecret1") == (
        "srt://cam:9000?mode=caller&passphrase=***")
    from pipeline.config import CameraConfig, inline_password_error
    refusal = inline_password_error(CameraConfig(id="s", url="srt://cam:9000?passphrase=Sup3rSecret1"), "url")
    assert refusal is not None and "passphrase=${CAM_S_PASSWORD}" in refusal and "Sup3r" not in refusal
    # XMEye cameras put them in the path: up to the next "_" or "/" (a ${VAR} whole)
    assert redact_url("rtsp://10.0.0.9:554/user=admin_password=S3cret_channel=1_stream=0.sdp") == (
        "rtsp://10.0.0.9:554/user=admin_password=***_channel=1_stream=0.sdp")
    assert redact_url("rtsp://10.0.0.9/user=admin_password=${CAM_DVR_PASSWORD}_channel=1") == (
        "rtsp://10.0.0.9/user=admin_password=***_channel=1")


def test_a_whole_url_is_scrubbed_even_with_quotes_or_spaces_in_its_password():
    assert redact_url("rtsp://admin:it's@cam/x") == "rtsp://***@cam/x"
    assert redact_url('rtsp://admin:say "hi"@cam/x') == "rtsp://***@cam/x"


def test_a_camera_url_missing_its_slashes_is_scrubbed_too():
    """`rtsp:/u:p@host` (refused as a URL since 2026-12-03, registered before; FFmpeg reads it)
    was shown whole by `GET /cameras` and written into the camera hash as it was."""
    for url, shown in (("rtsp:/admin:S3cretPW@cam/s", "rtsp:/***@cam/s"), ("rtsp//admin:S3cretPW@cam/s", "rtsp//***@cam/s"),
                       ("RTSP:admin:S3cretPW@cam/s", "RTSP:***@cam/s")):
        assert redact_url(url) == shown and redact(f"cannot open {url}: refused") == f"cannot open {shown}: refused"
    for fine in ("/videos/a@b.mp4", "clips/x@2.mp4", "device:0"):  # files with an "@" keep their names
        assert redact_url(fine) == fine
    assert redact("mail ops@example.com about rtsp: cameras") == "mail ops@example.com about rtsp: cameras"


def test_rtsp_diagnosis_never_sends_the_password():
    """The DESCRIBE it sends on every failed open goes to whatever host the URL reaches now: it
    carries no credentials (FFmpeg sends them only when asked); a 401 says the camera wants them."""
    import socket
    import threading

    from pipeline.camera_probe import diagnose_rtsp

    server = socket.create_server(("127.0.0.1", 0))
    port, asked = server.getsockname()[1], []

    def answer():
        for _ in range(3):
            conn, _ = server.accept()
            with conn:
                asked.append(conn.recv(4096).decode())
                conn.sendall(b"RTSP/1.0 401 Unauthorized\r\nCSeq: 1\r\nWWW-Authenticate: Digest realm=\"cam\", nonce=\"n\"\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        why = diagnose_rtsp(f"rtsp://admin:Hunter2pw@127.0.0.1:{port}/s1", timeout_s=5)
        # (its path too: a camera asks for credentials before it looks at the path, so a wrong one is a 401 here)
        assert why == ("401 Unauthorized: the camera wants credentials; check the user and password in the camera URL, "
                       "then its path (the camera may ask for credentials before it looks at the path)"), why
        assert diagnose_rtsp(f"rtsp://127.0.0.1:{port}/s1", timeout_s=5).endswith("wants a user and password in its URL")
        # nor a query's token; and its 401 is not put down to a missing user and password
        why = diagnose_rtsp(f"rtsp://127.0.0.1:{port}/s1?channel=1&token=Tk7secret", timeout_s=5)
        assert why == ("401 Unauthorized: the camera wants credentials; check the user and password, and token "
                       "in the camera URL (not sent by this check), then its path (the camera may ask for "
                       "credentials before it looks at the path)"), why
        thread.join(10)
    finally:
        server.close()
    assert len(asked) == 3 and all(a.startswith("DESCRIBE rtsp://127.0.0.1:") for a in asked), asked
    assert asked[2].startswith(f"DESCRIBE rtsp://127.0.0.1:{port}/s1?channel=1&token= RTSP/1.0"), asked[2]
    assert "Tk7secret" not in asked[2]
    assert not any("Authorization" in a or "Hunter2pw" in a or "YWRtaW46SHVudGVyMnB3" in a for a in asked), asked


def test_a_password_of_digits_then_a_slash_is_neither_taken_for_a_port_nor_stored_in_clear():
    """``admin:2024/Spring@10.0.0.5`` read as host ``admin``, port 2024 and a path: accepted without
    `allow_inline_credentials` (its password stored in the registry in clear), its rest sent to host
    ``admin`` by the probe, and not scrubbed. Now refused naming no part of it, and scrubbed whole
    in text; ``h:554/live@main`` (no dotted host after the "@") stays a path."""
    from pipeline.config import CameraConfig, parse_config
    from pipeline.config_env import CameraEnvError, resolve_camera
    from pipeline.config_errors import ConfigError

    for url in ("rtsp://admin:2024/Spring@10.0.0.5/s", "rtsp://admin:12?ab@cam.example.org/s",
                "rtsp://admin:2024#x@[fe80::1]:554/s"):
        with pytest.raises(ConfigError) as caught:
            parse_config({"cameras": [{"id": "c", "url": url}]}, env={})
        said = str(caught.value)
        assert "cameras[0].url: host:port and then an \"@\" (in the path or query), or user:password with / ? or # " \
               "in the password? Percent-encode" in said and "2024" not in said and "12" not in said, said
        assert redact_url(url).startswith("rtsp://***@"), url
    for url in ("rtsp://h:554/live@main", "rtsp://cam.local:554/s@10.0.0.1/x"):
        assert parse_config({"cameras": [{"id": "c", "url": url}]}, env={}).cameras[0].url == url
    camera = parse_config({"cameras": [{"id": "dock", "url": "rtsp://admin:${CAM_DOCK_PASSWORD}@10.0.0.5/s"}]},
                          env={}).cameras[0]
    with pytest.raises(CameraEnvError) as caught:
        resolve_camera(camera, {"CAM_DOCK_PASSWORD": "34031/Sup3rPw"})
    assert "Percent-encode the password" in str(caught.value) and "34031" not in str(caught.value)
    at_in_path = CameraConfig(id="dock", url="rtsp://h:554/live@main?pwd=${CAM_DOCK_PASSWORD}")
    assert resolve_camera(at_in_path, {"CAM_DOCK_PASSWORD": "abcd", "CAM_DOCK_HOST": "h"}).url == \
        "rtsp://h:554/live@main?pwd=abcd"  # (its host pinned: read as FFmpeg reads it)


def test_a_query_password_with_a_semicolon_is_scrubbed_and_refused_whole():
    """``?pwd=Summer;2024!``: the value was taken to end at the ``;``, so ``;2024!`` stayed in the
    scrubbed URL (the camera hash, ``GET /cameras``) and in the inline password's refusal."""
    from pipeline.config import parse_config
    from pipeline.config_errors import ConfigError

    url = "rtsp://cam/s?pwd=Summer;2024!&channel=1"
    assert redact_url(url) == "rtsp://cam/s?pwd=***&channel=1"
    with pytest.raises(ConfigError) as caught:
        parse_config({"cameras": [{"id": "dock", "url": url}]}, env={})
    assert "write rtsp://cam/s?pwd=${CAM_DOCK_PASSWORD}&channel=1 and set" in str(caught.value), str(caught.value)
    assert "2024" not in str(caught.value)


@pytest.mark.parametrize("value, secret", [("'Secr3t'", "Secr3t"), ('"Hunter2"', "Hunter2"),
                                           ("\tSecr3t", "Secr3t"), ("Summer'24", "24"), ("a b", "b")])
def test_a_query_password_with_quotes_or_spaces_in_a_url_is_scrubbed_and_refused_whole(value, secret):
    """In a whole URL a query value ends at ``&`` or ``#`` only: the patterns for free text end it
    at a quote or a space too, so ``pwd='Secr3t'`` read as an empty password was stored without
    ``allow_inline_credentials`` and shown as ``pwd=***'Secr3t'`` by ``GET /cameras``, and
    ``pwd=Summer'24``'s refusal quoted ``'24``."""
    from pipeline.config import parse_config
    from pipeline.config_errors import ConfigError

    url = f"http://cam/snap.cgi?user=admin&pwd={value}&ch=1"
    assert redact_url(url) == "http://cam/snap.cgi?user=admin&pwd=***&ch=1"
    with pytest.raises(ConfigError) as caught:
        parse_config({"cameras": [{"id": "dock", "url": url}]}, env={})
    says = ("a control character (a line break, a tab, NUL) inside the URL" if "\t" in value  # (refused first)
            else "write http://cam/snap.cgi?user=admin&pwd=${CAM_DOCK_PASSWORD}&ch=1 and set")
    assert says in str(caught.value), str(caught.value)
    assert secret not in str(caught.value)


def test_a_query_secret_whose_name_is_percent_encoded_is_scrubbed_and_refused_inline():
    """``?%70assword=…``: a server decodes the name to ``password``, but the patterns read it
    as written: the value stayed in the camera hash and in logs, and was stored without
    ``allow_inline_credentials``. Names that decode to no secret's are left as they are."""
    from pipeline.camera_probe import without_query_secrets
    from pipeline.config import parse_config
    from pipeline.config_errors import ConfigError

    url = "rtsp://cam/s?%70assword=Hunter22&ch%61nnel=1&to%6Ben=zz9zz"
    assert redact_url(url) == "rtsp://cam/s?%70assword=***&ch%61nnel=1&to%6Ben=***"
    assert redact(f"cannot open {url} (refused)") == "cannot open rtsp://cam/s?%70assword=***&ch%61nnel=1&to%6Ben=*** (refused)"
    assert set(url_secrets(url)) == {"Hunter22", "zz9zz"}
    assert without_query_secrets(url) == "rtsp://cam/s?%70assword=&ch%61nnel=1&to%6Ben="
    with pytest.raises(ConfigError) as caught:
        parse_config({"cameras": [{"id": "dock", "url": url}]}, env={})
    assert "Hunter22" not in str(caught.value) and "zz9zz" not in str(caught.value), str(caught.value)
    assert "%70assword=${CAM_DOCK_PASSWORD}" in str(caught.value), str(caught.value)


def test_a_password_a_reader_takes_for_a_port_or_finds_percent_encoded_is_never_quoted():
    """What a review found: a Redis URL without its "@host" (``redis://default:pw``) made
    redis-py say "Port could not be cast … as 'pw'", quoted in the error and the echo after it;
    ``admin%3Apw@`` (FFmpeg decodes the user info, then splits it) passed the inline-password
    refusal into Redis; an environment secret given to the wrong field was quoted as it is when it
    had a quote or a backslash in it (escaped) or was long (cut), past its ``${VAR}``."""
    from pipeline.config import parse_config
    from pipeline.config_errors import ConfigError

    for url in ("redis://default:Hunter2Pass", "redis://:Hunter2Pass", "redis://default:Hunter2Pass:6379"):
        assert "Hunter2Pass" not in redact_url(url) and "Hunter2Pass" in url_secrets(url), url
        with pytest.raises(ConfigError) as caught:
            parse_config({"redis": {"url": url}}, env={})
        assert caught.value.errors == ['redis.url: not a Redis URL: the port is no number; a password goes between '
                                       '"redis://:" and "@host:6379/0"'], caught.value.errors
    for fine in ("redis://h:6379/0", "rtsp://[::1]:554/x", "rtsp://cam:554/s", "redis://:${PW}"):
        assert redact_url(fine) == fine and url_secrets(fine) == (), fine
    url = "rtsp://admin%3AHunter2Pass@cam/x"
    assert redact_url(url) == "rtsp://***@cam/x"
    with pytest.raises(ConfigError, match="inline password refused; write rtsp://admin:\\$\\{CAM_A_PASSWORD\\}@cam/x"):
        parse_config({"cameras": [{"id": "a", "url": url}]}, env={})
    assert parse_config({"cameras": [{"id": "a", "url": "rtsp://admin%3A${CAM_A_PASSWORD}@cam/x"}]}, env={}).cameras
    for secret in ("Hunter2\\Pass", "Hunter2'Pa\"ss", "Hunter2Pass" + "x" * 300):
        with pytest.raises(ConfigError) as caught:
            parse_config({"redis": {"maxlen": "${REDIS_PW}"}}, env={"REDIS_PW": secret})
        assert caught.value.errors[0].endswith("got '${REDIS_PW}'") and "Hunter2" not in str(caught.value), caught.value


def test_a_bare_p_is_a_password_where_the_query_names_a_user():
    """``?u=admin&p=secret`` (camera CGI and NVR URLs): the ``p`` was not read as a password, so
    it was stored in clear without ``allow_inline_credentials`` and shown by ``GET /cameras``
    and in logs. A ``p`` in a query naming no user (a page, a profile) is left as it is."""
    from pipeline.camera_probe import without_query_secrets
    from pipeline.config import parse_config
    from pipeline.config_errors import ConfigError

    url = "http://cam/snap.cgi?u=admin&p=Hunter22&ch=1"
    assert redact_url(url) == "http://cam/snap.cgi?u=admin&p=***&ch=1"
    assert redact_url("rtsp://nvr/s?p1=zz9zz9;usr=ops#x") == "rtsp://nvr/s?p1=***;usr=ops#x"  # (before the user too)
    assert redact(f"cannot open {url}: 401; see ?p=3 of the manual") == (
        "cannot open http://cam/snap.cgi?u=admin&p=***&ch=1: 401; see ?p=3 of the manual")
    assert url_secrets(url) == ("Hunter22",) and without_query_secrets(url) == "http://cam/snap.cgi?u=admin&p=&ch=1"
    for encoded in ("http://cam/snap?u%73er=admin&p=Hunter22", "http://cam/snap?user=admin&%70=Hunter22",
                    "http://cam/snap?%75=admin&p=Hunter22"):  # (names as servers read them, decoded)
        assert "Hunter22" not in redact_url(encoded) and url_secrets(encoded) == ("Hunter22",), encoded
    for kept in ("http://cam/x?p=2&page=3", "http://cam/x?profile=1&p=main", "http://cam/x?user=a#p=b"):
        assert redact_url(kept) == kept and url_secrets(kept) == ()
    with pytest.raises(ConfigError) as caught:
        parse_config({"cameras": [{"id": "dock", "url": url}]}, env={})
    assert "write http://cam/snap.cgi?u=admin&p=${CAM_DOCK_PASSWORD}&ch=1 and set" in str(caught.value), str(caught.value)
    assert "Hunter22" not in str(caught.value)
    cam = parse_config({"cameras": [{"id": "dock", "url": "http://cam/s?u=a&p=${CAM_DOCK_PASSWORD}"}]},
                       env={"CAM_DOCK_PASSWORD": "Hunter22"}).cameras[0]
    assert cam.shown_url == "http://cam/s?u=a&p=***"
    from pipeline.config import CameraConfig
    from pipeline.config_env import resolve_camera

    gate = resolve_camera(CameraConfig(id="gate", url="rtsp://admin:${CAM_GATE_PASSWORD}@cam.local/live"),
                          {"CAM_GATE_PASSWORD": "local"})  # (a password that is a piece of the host's name)
    assert gate.shown_url == "rtsp://***@cam.local/live" and "local" not in redact("401 for local", gate.secrets)


@pytest.mark.parametrize("url,said", [
    ("unix://tmp/percept/r.sock", "unix:// takes the socket's absolute path"),  # (redis-py: /percept/r.sock)
    ("unix://r.sock", "unix:// takes the socket's absolute path"),
    ("redis://:6379/0", "no host"),  # (a ${REDIS_HOST} set empty: redis-py connected to localhost)
    ("rediss://:s3cret@/0", "no host")])
def test_a_redis_url_whose_host_or_socket_redis_py_would_read_otherwise_is_refused(url, said):
    from pipeline.config_urls import redis_url_problem

    problem = redis_url_problem(url)
    assert problem and said in problem and "s3cret" not in problem, problem
    assert redis_url_problem("unix:///tmp/percept/r.sock") is None and redis_url_problem("redis://h:6379/0") is None
    for fine in ("redis://h/0?retry_on_timeout=false", "redis://127.1:6379", "redis://redis_1:6379/0",
                 "redis://[fe80::1%25eth0]:6379/0", "redis://h/0?socket_timeout=0.5&health_check_interval=0"):
        assert redis_url_problem(fine) is None, fine  # (the checks of a host and its timeouts refused some)
