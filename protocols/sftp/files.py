"""The local files an SFTP connection needs, proved without the network: the private key
exists, is readable and parses; ``known_hosts`` exists, is readable, parses and holds the host.

Used by ``raccord check`` (every problem, one sentence each) and by the sender before it
connects: a missing key is the operator's to fix, not a network failure to retry for hours.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import asyncssh

from protocols.settings import Secret


def unreadable(path: Path, what: str) -> str | None:
    """Why ``path`` cannot be read by this process, or None."""
    if not path.exists():
        return f"{what} {path} does not exist"
    if not path.is_file():
        return f"{what} {path} is not a regular file"
    if not os.access(path, os.R_OK):
        return f"{what} {path} is not readable by this user (uid {os.geteuid()})"
    return None


def key_problem(private_key: Path, passphrase: Secret | None) -> str | None:
    """Why the private key cannot be used, or None."""
    problem = unreadable(private_key, "private key")
    if problem:
        return problem
    try:
        asyncssh.read_private_key(str(private_key), passphrase.value if passphrase else None)
    except asyncssh.KeyEncryptionError:
        # An encrypted key is judged with its passphrase setting, read by the sender itself.
        return None
    except asyncssh.KeyImportError as exc:
        return f"private key {private_key} is not a usable SSH private key ({exc})"
    except OSError as exc:
        return f"private key {private_key} cannot be read ({exc.strerror or exc})"
    return None


def known_hosts_problem(known_hosts: Path, host: str, port: int) -> str | None:
    """Why ``known_hosts`` cannot vouch for ``host``:``port``, or None."""
    problem = unreadable(known_hosts, "known_hosts file")
    if problem:
        return problem
    try:
        hosts = asyncssh.read_known_hosts(str(known_hosts))
    except (asyncssh.KeyImportError, ValueError) as exc:
        return f"known_hosts file {known_hosts} cannot be parsed ({exc})"
    except OSError as exc:
        return f"known_hosts file {known_hosts} cannot be read ({exc.strerror or exc})"
    try:
        addr = str(ipaddress.ip_address(host))
    except ValueError:
        addr = ""  # a name: the check stays off the network (no DNS)
    keys, ca_keys, *_ = hosts.match(host, addr, port)
    if not keys and not ca_keys:
        entry = host if port == 22 else f"[{host}]:{port}"
        return (
            f"known_hosts file {known_hosts} holds no key for {entry}; add the partner's host "
            f"key (check its fingerprint with the partner), e.g. ssh-keyscan -p {port} {host}"
        )
    return None
