"""gateway.config: valid files load; every mistake names the file, the key and a fix."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from gateway import config
from gateway.config import ConfigError, Mode, State

EXAMPLE = Path(__file__).parents[2] / "config" / "raccord.example.toml"


def test_example_configuration_loads() -> None:
    loaded = config.load(EXAMPLE)
    conn = loaded.connection("qualif-sftp")
    assert conn.interfaces == {
        "FSO1100A": Mode.COMPLETE,
        "FSO1106A": Mode.PARTIAL,
        "FSO1117A": Mode.PARTIAL,
    }
    assert conn.settings.port == 6321
    assert conn.settings.known_hosts == Path("/etc/raccord/known_hosts")
    assert loaded.gateway.max_file_size == 30_000_000
    assert loaded.gateway.retry.maximum == 600.0
    assert loaded.gateway.analysis_timeout == 20.0


def load_text(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "raccord.toml"
    path.write_text(text)
    return config.load(path)


def with_change(old: str, new: str) -> str:
    text = EXAMPLE.read_text()
    assert old in text
    return text.replace(old, new, 1)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'host = "127.0.0.1"',
            'hots = "127.0.0.1"',
            r"connection\[qualif-sftp\]\.sftp\.host: is required \(found 'hots': a typo\?\)",
        ),
        (
            'FSO1106A = "partial"',
            'FSO1160A = "partial"',
            r"interfaces\.FSO1160A: unknown interface code; did you mean 'FSO11",
        ),
        (
            'FSO1106A = "partial"',
            'FSO1106A = "partielle"',
            r"FSO1106A: 'partielle' is not one of complete, partial, none",
        ),
        (
            'protocol = "sftp"',
            'protocol = "sftpp"',
            r"protocol: unknown protocol 'sftpp'; did you mean 'sftp'\?",
        ),
        (
            'rescan_interval = "30s"',
            'rescan_interval = "30 secs"',
            r"gateway\.rescan_interval: expected a duration",
        ),
        (
            'max_file_size = "30000KB"',
            'max_file_size = "lots"',
            r"gateway\.max_file_size: expected a size",
        ),
        (
            'name = "qualif-sftp"',
            'name = "Qualif SFTP"',
            r"must be lower-case letters, digits and '-' only",
        ),
        ("valid_to = 2099-06-30", "valid_to = 2001-01-01", r"valid_to: 2001-01-01 is before"),
        (
            'remote_name = "{interface}_{partner_code}_{flow_id}{ext}"',
            'remote_name = "{interface}{ext}"',
            r"must contain \{flow_id\}",
        ),
        ('known_hosts = "/etc/raccord/known_hosts"', "", r"sftp\.known_hosts: is required"),
        ("[gateway]", "[gateway]\nmax_fil_size = 3", r"did you mean 'max_file_size'"),
        ('state = "active"', 'state = "actif"', r"'actif' is not one of"),
        (
            'analysis_timeout = "20s"',
            'analysis_timeout = "0s"',
            r"gateway\.analysis_timeout: must be more than 0s",
        ),
    ],
)
def test_mistakes_are_named_precisely(tmp_path: Path, old: str, new: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as caught:
        load_text(tmp_path, with_change(old, new))
    assert str(caught.value).startswith(str(tmp_path / "raccord.toml"))


def test_not_toml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_text(tmp_path, "[gateway\n")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration"):
        config.load(tmp_path / "absent.toml")


def test_duplicate_connection_names_are_refused(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    second = text[text.index("\n[[connection]]") :]
    with pytest.raises(ConfigError, match="used twice"):
        load_text(tmp_path, text + "\n" + second)


def test_secret_from_env_never_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RACCORD_TEST_PASS", "hunter2")
    loaded = load_text(
        tmp_path,
        with_change(
            'upload_dir = "/depot"',
            'upload_dir = "/depot"\npassphrase = { env = "RACCORD_TEST_PASS" }',
        ),
    )
    secret = loaded.connections[0].settings.passphrase
    assert secret.value == "hunter2"
    assert "hunter2" not in repr(loaded)


def test_secret_from_unset_env_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RACCORD_UNSET_VAR is not set"):
        load_text(
            tmp_path,
            with_change(
                'upload_dir = "/depot"',
                'upload_dir = "/depot"\npassphrase = { env = "RACCORD_UNSET_VAR" }',
            ),
        )


def test_usability_follows_state_and_validity() -> None:
    conn = config.load(EXAMPLE).connections[0]
    assert conn.unusable_reason(date(2026, 1, 1)) is None
    reason = conn.unusable_reason(date(2017, 1, 1))
    assert reason is not None and reason[0] == "outside_validity"
    from dataclasses import replace

    disabled = replace(conn, state=State.DISABLED)
    reason = disabled.unusable_reason(date(2026, 1, 1))
    assert reason is not None and reason[0] == "connection_inactive"


LOT_LINE = 'lot = { max_invoices = 1, max_wait = "0s", max_bytes = "30000KB", packaging = "none" }'


def test_a_lot_of_several_invoices_needs_an_archive_format(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"lot\.packaging: lots of up to 50 invoices need"):
        load_text(tmp_path, with_change(LOT_LINE, "lot = { max_invoices = 50 }"))
    lot = (
        load_text(
            tmp_path,
            with_change(
                LOT_LINE,
                'lot = { max_invoices = 50, max_wait = "2s", packaging = "zip" }',
            ),
        )
        .connections[0]
        .lot
    )
    assert (lot.max_invoices, lot.max_wait, lot.packaging) == (50, 2.0, "zip")
    with pytest.raises(ConfigError, match=r"max_invoices: must be between 1 and 500"):
        load_text(
            tmp_path,
            with_change(LOT_LINE, 'lot = { max_invoices = 501, packaging = "zip" }'),
        )


def test_the_commented_as2_example_loads_once_uncommented(tmp_path: Path) -> None:
    from gateway.sandbox import pki

    ours, theirs = pki.issue("MYCOMPANY AS2"), pki.issue("CTAIFEP AS2")
    text = EXAMPLE.read_text()
    start, end = text.index("# An AS2 connection"), text.index("\n# Alerts:")
    block = "\n".join(line[2:] for line in text[start:end].splitlines()[2:])
    files = {
        "/etc/raccord/keys/as2.key": pki.write_key(ours, tmp_path / "as2.key"),
        "/etc/raccord/keys/as2.crt": pki.write_certificates(
            [ours.certificate], tmp_path / "as2.crt", "der"
        ),
        "/etc/raccord/partners/aife.p7b": pki.write_certificates(
            [theirs.certificate], tmp_path / "aife.p7b", "p7b"
        ),
    }
    for documented, real in files.items():
        block = block.replace(documented, str(real))

    loaded = load_text(tmp_path, text[:start] + block)

    as2 = loaded.connection("qualif-as2").settings
    assert (as2.as2_from, as2.as2_to, as2.mdn, as2.encryption) == (
        "MYCOMPANY",
        "CTAIFEP",
        "sync-signed",
        "aes_256_cbc",
    )
    assert as2.partner_certificate == theirs.certificate
    assert loaded.as2_receiver is not None and loaded.as2_receiver.port == 4080


def test_the_commented_pesit_example_loads_once_uncommented(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    start, end = text.index("# A PeSIT E connection"), text.index("# A connection through")
    block = "\n".join(line[2:] for line in text[start:end].splitlines()[3:])
    password = tmp_path / "pesit.pass"
    password.write_text("s3cret\n")
    block = block.replace("/etc/raccord/keys/pesit.pass", str(password))

    loaded = load_text(tmp_path, text[:start] + block)

    pesit = loaded.connection("qualif-pesit").settings
    assert (pesit.requester, pesit.server, pesit.port, pesit.file_name) == (
        "VFE056",
        "CHORUSPRO",
        5000,
        "{interface}",
    )
    assert pesit.password is not None and pesit.password.value == "s3cret"
    assert not pesit.tls


def test_the_commented_piste_example_loads_once_uncommented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = EXAMPLE.read_text()
    start, end = text.index("# A connection through"), text.index("# An AS2 connection")
    block = "\n".join(line[2:] for line in text[start:end].splitlines()[2:])
    for name, value in (("piste.secret", "app-secret"), ("piste.password", "tech-pw")):
        (tmp_path / name).write_text(value + "\n")
        block = block.replace(f"/etc/raccord/keys/{name}", str(tmp_path / name))
    monkeypatch.setenv("PISTE_CLIENT_ID", "app-id")

    loaded = load_text(tmp_path, text[:start] + block)

    piste = loaded.connection("qualif-piste").settings
    assert (piste.client_id.value, piste.client_secret.value) == ("app-id", "app-secret")
    assert piste.technical_password.value == "tech-pw"
    assert piste.api_url == "https://sandbox-api.piste.gouv.fr"  # qualification's host


def second_connection(**changes: str) -> str:
    """The example's SFTP connection once more, renamed, with ``changes`` applied (key = TOML)."""
    text = EXAMPLE.read_text()
    block = text[text.index("\n[[connection]]") : text.index("# A PeSIT E connection")]
    block = block.replace('name = "qualif-sftp"', 'name = "second"')
    for key, value in changes.items():
        lines = block.splitlines()
        found = [i for i, line in enumerate(lines) if line.startswith(f"{key} =")]
        assert found, key
        lines[found[0]] = f"{key} = {value}"
        block = "\n".join(lines) + "\n"
    return text + "\n" + block


def test_two_live_connections_for_one_code_structure_and_period_are_refused(
    tmp_path: Path,
) -> None:
    with pytest.raises(
        ConfigError,
        match=r"connection\[second\]\.interfaces: FSO1100A, FSO1106A, FSO1117A are also "
        r"connected by connection qualif-sftp for structure 00000000000149 in qualification "
        r"over an overlapping period \(2017-06-21 to 2099-06-30\)",
    ):
        load_text(tmp_path, second_connection())


@pytest.mark.parametrize(
    "changes",
    [
        {"structure": '"00000000000230"'},  # another establishment
        {"valid_from": "2017-01-01", "valid_to": "2017-06-20"},  # the sheet it replaced
        {"state": '"draft"'},  # its successor, being written
        {"state": '"disabled"'},
        {"environment": '"production"', "structure": '"00000000000149"'},
    ],
)
def test_connections_that_do_not_overlap_load(tmp_path: Path, changes: dict[str, str]) -> None:
    loaded = load_text(tmp_path, second_connection(**changes))
    assert [c.name for c in loaded.connections] == ["qualif-sftp", "second"]


def test_a_code_set_to_none_does_not_overlap(tmp_path: Path) -> None:
    text = second_connection()
    head, _, tail = text.rpartition('FSO1100A = "complete"')
    tail = tail.replace('FSO1106A = "partial"', 'FSO1106A = "none"', 1)
    tail = tail.replace('FSO1117A = "partial"', 'FSO1117A = "none"', 1)
    with pytest.raises(ConfigError, match=r"FSO1100A is also connected by connection qualif"):
        load_text(tmp_path, head + 'FSO1100A = "complete"' + tail)
    loaded = load_text(tmp_path, head + 'FSO1100A = "none"' + tail)
    assert loaded.connection("second").interfaces["FSO1100A"] is Mode.NONE


def test_production_without_qualification_for_its_structure_is_a_warning(
    tmp_path: Path,
) -> None:
    assert config.load(EXAMPLE).warnings == ()
    qualified = load_text(tmp_path, second_connection(environment='"production"'))
    assert qualified.warnings == ()
    unqualified = load_text(
        tmp_path,
        second_connection(environment='"production"', structure='"00000000000230"'),
    )
    assert unqualified.warnings == (
        "connection second: production connection for structure 00000000000230 has no "
        "qualification connection for the same structure in this configuration (Chorus Pro "
        "expects the flows to be qualified first)",
    )


def test_validation_is_warn_when_absent_so_existing_configurations_keep_sending(
    tmp_path: Path,
) -> None:
    text = with_change('validation = "block"\n', "")
    text = text.replace('validation_rules = ["en16931"]', "", 1)
    conn = load_text(tmp_path, text).connection("qualif-sftp")
    assert conn.validation is config.Checking.WARN
    assert conn.validation_rules == ("en16931",)
    loaded = config.load(EXAMPLE)
    assert loaded.connection("qualif-sftp").validation is config.Checking.BLOCK
    assert loaded.gateway.analysis_timeout == 20.0


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'validation = "block"',
            'validation = "strict"',
            r"connection\[qualif-sftp\]\.validation: 'strict' is not one of off, warn, block",
        ),
        (
            'validation_rules = ["en16931"]',
            'validation_rules = ["en16931", "brfr"]',
            r"validation_rules: unknown rule set 'brfr'; did you mean 'br-fr'\?",
        ),
        (
            'validation_rules = ["en16931"]',
            "validation_rules = []",
            r'validation_rules: name at least one rule set, e\.g\. \["en16931"\]',
        ),
        (
            'analysis_timeout = "20s"',
            'analysis_timeout = "soon"',
            r"gateway\.analysis_timeout",
        ),
    ],
)
def test_validation_mistakes_are_named_precisely(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_text(tmp_path, with_change(old, new))


def test_node_name_defaults_to_the_host_name_and_journal_to_sqlite(tmp_path: Path) -> None:
    """Promise: a single node needs no [journal] section; its node is named after its host."""
    import socket

    loaded = load_text(tmp_path, '[gateway]\ndata_dir = "/tmp/x"\n')
    assert loaded.gateway.node_name == socket.gethostname()
    assert loaded.journal.url is None


def test_journal_section_reads_url_secret_and_lease(tmp_path: Path) -> None:
    """Promise: [journal] names the shared database; a wrong URL or lease is named precisely."""
    loaded = load_text(
        tmp_path,
        '[gateway]\nnode_name = "node-a"\n[journal]\nurl = "postgresql://raccord@db/raccord"\n'
        'password = "s3cret"\nlease_timeout = "45s"\n',
    )
    assert loaded.gateway.node_name == "node-a"
    assert loaded.journal.url == "postgresql://raccord@db/raccord"
    assert loaded.journal.password is not None
    assert "s3cret" not in repr(loaded.journal)
    assert loaded.journal.lease_timeout == 45.0
    with pytest.raises(ConfigError, match=r"journal\.url"):
        load_text(tmp_path, '[journal]\nurl = "mysql://db/x"\n')
    with pytest.raises(ConfigError, match=r"journal\.lease_timeout"):
        load_text(tmp_path, '[journal]\nurl = "postgresql://db/x"\nlease_timeout = "1s"\n')


@pytest.mark.parametrize("name", ["../../etc/x", "node a", "-lead", "n" * 65, "nœud"])
def test_a_node_name_that_could_not_name_its_lock_file_is_refused(
    tmp_path: Path, name: str
) -> None:
    """Promise: node_name names the node's lock file in data_dir (nodes/<name>.lock): a name
    with a path in it, or one two nodes could share once made safe, is refused, named."""
    with pytest.raises(ConfigError, match=r"gateway\.node_name"):
        load_text(tmp_path, f'[gateway]\nnode_name = "{name}"\n')
