"""The ``[web]`` section: off when absent, loopback by default, a warning (printed by
``raccord check``) when it listens beyond loopback without TLS, every mistake one sentence
naming the key; ``raccord web-passwd`` prints a hash the section accepts."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from gateway import config as config_module
from gateway.cli import commands as cli
from gateway.config import ConfigError
from gateway.web.auth import hash_password, verify_password
from tests.gateway.harness import memory_config_text

HASH = hash_password("a long enough password")


def load(tmp_path: Path, web: str) -> config_module.Config:
    path = tmp_path / "raccord.toml"
    path.write_text(memory_config_text(tmp_path / "data", "b") + web)
    return config_module.load(path)


def test_the_console_is_off_without_a_web_section(tmp_path: Path) -> None:
    assert load(tmp_path, "").web is None


def test_defaults_to_loopback_and_sign_in(tmp_path: Path) -> None:
    config = load(tmp_path, f'\n[web]\n[web.users.alice]\npassword_hash = "{HASH}"\n')
    assert config.web is not None
    assert (config.web.host, config.web.port) == ("127.0.0.1", 9480)
    assert not config.web.public_read and not config.web.tls
    assert config.web.users == {"alice": HASH}
    assert not config.warnings


def test_listening_beyond_loopback_without_tls_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    web = f'\n[web]\nlisten = "0.0.0.0:9480"\n[web.users.alice]\npassword_hash = "{HASH}"\n'
    config = load(tmp_path, web)
    assert any("without TLS" in w for w in config.warnings)
    assert cli.main(["check", "--config", str(config.path)]) == 0
    out = capsys.readouterr().out
    assert "warning: [web] listen = 0.0.0.0:9480" in out and HASH not in out
    certificate, key = tmp_path / "web.crt", tmp_path / "web.key"
    tls = web.replace("[web.users", f'certificate = "{certificate}"\nkey = "{key}"\n[web.users')
    assert not load(tmp_path, tls).warnings


def test_no_user_is_warned_about(tmp_path: Path) -> None:
    assert any("nobody can sign in" in w for w in load(tmp_path, "\n[web]\n").warnings)


@pytest.mark.parametrize(
    ("web", "key"),
    [
        ('\n[web]\nlisten = "localhost"\n', "web.listen"),
        ('\n[web]\ncertificate = "/x.crt"\n', "web.key"),
        ("\n[web]\npublic = true\n", "web.public"),
        ('\n[web.users.alice]\npassword_hash = "hunter2"\n', "web.users.alice.password_hash"),
        ('\n[web.users.alice]\npassword = "hunter2"\n', "web.users.alice"),
    ],
)
def test_mistakes_name_the_key_and_never_the_secret(tmp_path: Path, web: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as caught:
        load(tmp_path, web)
    assert "hunter2" not in str(caught.value)


def test_web_passwd_prints_a_hash_the_section_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    assert cli.main(["web-passwd"]) == 0
    printed = capsys.readouterr().out.strip()
    assert "a long enough password" not in printed
    assert verify_password("a long enough password", printed)
    config = load(tmp_path, f'\n[web.users.bob]\npassword_hash = "{printed}"\n')
    assert config.web is not None and "bob" in config.web.users
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert cli.main(["web-passwd"]) == 2
    assert "shorter than 8" in capsys.readouterr().err
