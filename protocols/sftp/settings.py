"""The ``[connections.*]`` settings of an SFTP connection, our key, and what asyncssh's and
the socket's errors become in :mod:`protocols.errors` (with what to check).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from protocols.errors import (
    AuthenticationError,
    CertificateError,
    ConnectError,
    HostKeyError,
    ProtocolError,
    RemoteBusy,
    RemotePermissionDenied,
    TransferError,
    TransferTimeout,
)
from protocols.settings import Secret, Section, SettingsError
from protocols.sftp import files


@dataclass(frozen=True)
class SftpSettings:
    host: str
    port: int
    username: str
    private_key: Path
    known_hosts: Path
    upload_dir: str
    download_dir: str | None
    poll_interval: float
    passphrase: Secret | None = None
    connect_timeout: float = 15.0
    timeout: float = 120.0
    max_parallel: int = 32
    temp_prefix: str = "."
    temp_suffix: str = ".part"
    after_download: str = "delete"
    done_suffix: str = ".done"


def parse_settings(section: Section) -> SftpSettings:
    private_key = section.path("private_key")
    known_hosts = section.path("known_hosts")
    assert private_key is not None and known_hosts is not None
    settings = SftpSettings(
        host=section.string("host", required=True),
        port=section.integer("port", 22, minimum=1, maximum=65535),
        username=section.string("username", required=True),
        private_key=private_key,
        known_hosts=known_hosts,
        upload_dir=section.string("upload_dir", "."),
        download_dir=section.optional_str("download_dir"),
        poll_interval=section.duration("poll_interval", "60s"),
        passphrase=section.secret("passphrase", required=False),
        connect_timeout=section.duration("connect_timeout", "15s"),
        timeout=section.duration("timeout", "120s"),
        max_parallel=section.integer("max_parallel", 32, minimum=1, maximum=64),
        temp_prefix=section.string("temp_prefix", "."),
        temp_suffix=section.string("temp_suffix", ".part"),
        after_download=section.choice("after_download", ["delete", "rename", "leave"], "delete"),
        done_suffix=section.string("done_suffix", ".done"),
    )
    if not settings.temp_prefix and not settings.temp_suffix:
        raise SettingsError(
            section.key("temp_suffix"),
            "temp_prefix and temp_suffix cannot both be empty: the partner would see half files",
        )
    problem = decrypt_problem(settings.private_key, settings.passphrase)
    if problem is not None:
        raise SettingsError(section.key(problem[0]), problem[1])
    if settings.after_download == "rename" and not settings.done_suffix.strip("."):
        raise SettingsError(
            section.key("done_suffix"),
            'after_download = rename needs a done_suffix such as ".done"',
        )
    section.finish()
    return settings


def decrypt_problem(path: Path, passphrase: Secret | None) -> tuple[str, str] | None:
    """Why the private key cannot be used with this passphrase: (the key to fix, the reason);
    None when it can, or when the file itself is missing, unreadable or no key at all (those
    are reported where the file is checked, ``raccord check`` with exit 1, and by the
    connection itself)."""
    try:
        asyncssh.read_private_key(path, passphrase.value if passphrase else None)
    except OSError:
        return None
    except asyncssh.KeyEncryptionError as exc:  # a wrong passphrase, or no bcrypt
        return "passphrase", f"cannot decrypt the private key {path} with this passphrase ({exc})"
    except asyncssh.KeyImportError as exc:
        if passphrase is None and "assphrase" in str(exc):
            return (
                "passphrase",
                f"the private key {path} is protected by a passphrase: set passphrase "
                '(as { env = "NAME" } or { file = "/path" })',
            )
    return None


@contextlib.contextmanager
def translated(what: str, settings: SftpSettings, folder: str | None = None) -> Iterator[None]:
    """Translate asyncssh and socket errors into :mod:`protocols.errors` (``folder``: the
    remote folder concerned, ``upload_dir`` unless said)."""
    where = f"{settings.username}@{settings.host}:{settings.port}"
    try:
        yield
    except TransferError:
        raise
    except asyncssh.HostKeyNotVerifiable as exc:
        raise HostKeyError(
            f"host key of {where} not accepted ({exc.reason}); if the partner changed its key, "
            f"check it with the partner and update {settings.known_hosts}"
        ) from None
    except asyncssh.PermissionDenied as exc:
        raise AuthenticationError(
            f"{where} refused our key {settings.private_key} ({exc.reason}); "
            "check the username and that the partner registered our public key"
        ) from None
    except asyncssh.SFTPPermissionDenied as exc:
        raise RemotePermissionDenied(
            f"{what} on {where}: permission denied ({exc.reason})"
        ) from None
    except asyncssh.SFTPNoSuchFile as exc:
        raise RemotePermissionDenied(
            f"{what} on {where}: no such file or folder ({exc.reason}); check upload_dir"
        ) from None
    except (asyncssh.SFTPQuotaExceeded, asyncssh.SFTPNoSpaceOnFilesystem) as exc:
        raise RemoteBusy(f"{what} on {where}: partner out of space ({exc.reason})") from None
    except asyncssh.SFTPFailure as exc:
        said = failure(f"{what} on {where}", exc.reason, folder or settings.upload_dir)
        raise RemoteBusy(said) from None
    except asyncssh.SFTPError as exc:
        raise RemoteBusy(f"{what} on {where} failed: {exc.reason}") from None
    except (TimeoutError, asyncssh.ConnectionLost) as exc:
        said = str(exc) or "timed out"
        raise TransferTimeout(f"{what} on {where}: {said}") from None
    except asyncssh.DisconnectError as exc:
        raise ConnectError(f"{what} on {where}: disconnected ({exc.reason})") from None
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError):
        # The key or its passphrase changed since the configuration was read.
        problem = decrypt_problem(settings.private_key, settings.passphrase)
        said = problem[1] if problem else f"cannot load the private key {settings.private_key}"
        raise AuthenticationError(f"{said}; check private_key and passphrase") from None
    except OSError as exc:
        raise ConnectError(f"{what} on {where}: {exc.strerror or exc}") from None
    except asyncssh.Error as exc:
        raise ProtocolError(f"{what} on {where}: {exc}") from None


def local_files(settings: SftpSettings) -> None:
    """Refuse to connect without our key or known_hosts: asyncssh would report a missing file
    as a connection failure (retried for hours) where only the operator can help.

    Raises:
        CertificateError: the private key is missing, unreadable or not a key.
        HostKeyError: known_hosts is missing or unreadable.
    """
    problem = files.key_problem(settings.private_key, settings.passphrase)
    if problem:
        raise CertificateError(
            f"{problem}; fix private_key of this connection, then raccord retry --failed"
        )
    problem = files.unreadable(settings.known_hosts, "known_hosts file")
    if problem:
        raise HostKeyError(
            f"{problem}; fix known_hosts of this connection, then raccord retry --failed"
        )


def failure(what: str, reason: str, folder: str) -> str:
    """What SFTP's bare "Failure" probably means, and what to check.

    OpenSSH's sftp-server answers SSH_FX_FAILURE for every error it has no code for, notably a
    full disk (ENOSPC), an exhausted quota (EDQUOT) and a read-only filesystem (EROFS).
    """
    return (
        f"{what} failed: the partner's SFTP server says only {reason!r}, which usually means "
        "its disk is full, our account's quota is exhausted, or the folder is on a read-only "
        f"filesystem; ask the partner to check space, quota and write access on {folder}; "
        "it will be tried again"
    )
