"""Broker passwords stay off command lines: from a file or ADAPTIVE_MQTT_PASSWORD (issue 20)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from monitor.transport import PASSWORD_ENV, broker_credentials


def test_the_password_comes_from_a_file_or_the_environment(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\nignored second line\n")
    a = broker_credentials("mqtts://pi@broker.lan:8883", password_file=str(secret), environ={})
    assert (a.username, a.password, a.tls, a.port) == ("pi", "s3cret", True, 8883)
    b = broker_credentials("mqtt://broker.lan", "jetson", environ={PASSWORD_ENV: "from-env"})
    assert (b.username, b.password) == ("jetson", "from-env")
    c = broker_credentials("mqtt://broker.lan", "jetson", password_file=str(secret),
                           environ={PASSWORD_ENV: "x"})
    assert c.password == "s3cret"  # the file named on the command line wins
    assert broker_credentials("mqtt://127.0.0.1:1883", environ={}).password is None


@pytest.mark.parametrize(("url", "file", "env", "message"), [
    ("mqtt://pi:secret@broker.lan", None, {}, "carries a password"),
    ("mqtt://broker.lan", "missing", {}, "cannot read it"),
    ("mqtt://pi@broker.lan", "empty", {}, "is empty"),
    ("mqtt://pi@broker.lan", "binary", {}, "not UTF-8"),
    ("mqtt://pi@broker.lan", "dir", {}, "cannot read it"),
    ("mqtt://broker.lan", None, {PASSWORD_ENV: "x"}, "needs a user name"),
])
def test_bad_credentials_are_one_clear_error(tmp_path, url, file, env, message):
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00")
    (tmp_path / "dir").mkdir()
    with pytest.raises(ValueError, match=message):
        broker_credentials(url, password_file=str(tmp_path / file) if file else None, environ=env)


def test_a_password_in_the_url_is_refused_at_the_command_line():
    out = subprocess.run([sys.executable, "-m", "monitor", "--node", "pi", "--probe-port", "-1",
                          "--broker", "mqtt://pi:secret@127.0.0.1:1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--password-file" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
