"""The SFTP upload pipeline's steps on an open session: write a flow's file under its
temporary name (telling a :class:`Progress` of every acknowledged block), rename it into
place, and read a remote file back to compare digests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from pathlib import Path

import asyncssh

from protocols.base import Outbound

#: Files up to this size are read at once and written in one pipelined request train.
SMALL_FILE = 256 * 1024


#: Data every SFTP server takes in one write request (RFC draft-ietf-secsh-filexfer-02, 3).
ONE_WRITE = 32 * 1024


class Progress:
    """How far a transfer got, and when it last moved (a block was acknowledged or came)."""

    def __init__(self, total: int, what: str = "written") -> None:
        self.total = total
        self.what = what  # what is done with the bytes: written, received, read back
        self.done = 0
        self.last = time.monotonic()

    def advance(self, done: int) -> None:
        self.done = done
        self.last = time.monotonic()

    def handler(self, _source: bytes, _target: bytes, done: int, _total: int) -> None:
        """asyncssh's ``progress_handler``."""
        self.advance(done)


async def upload(sftp: asyncssh.SFTPClient, flow: Outbound, temp: str, progress: Progress) -> None:
    """Write the flow's file to ``temp`` (created or truncated), telling ``progress`` of every
    block the partner acknowledges."""
    if flow.size > SMALL_FILE:
        # ONE_WRITE blocks: each acknowledged block is progress, so even a slow link shows
        # some well within any sensible timeout (asyncssh's default blocks may be 255 KB).
        await sftp.put(
            str(flow.path), temp, block_size=ONE_WRITE, progress_handler=progress.handler
        )
        return
    # A small read from the spool, on the event loop as asyncssh's own put() does; it saves
    # the put()'s extra stat and chunking round trips, which dominate for invoice-sized
    # files. Up to ONE_WRITE bytes go in one request, without asyncssh's parallel writer
    # (a task per block), which costs client CPU per file.
    data = flow.path.read_bytes()
    async with sftp.open(temp, "wb", block_size=0) as out:
        if len(data) <= ONE_WRITE:
            await out.write(data)
        else:  # pipelined ONE_WRITE requests, each acknowledgement counted as progress
            await asyncio.gather(
                *(
                    write_block(out, data, offset, progress)
                    for offset in range(0, len(data), ONE_WRITE)
                )
            )
    progress.advance(len(data))


async def write_block(
    out: asyncssh.SFTPClientFile, data: bytes, offset: int, progress: Progress
) -> None:
    await out.write(data[offset : offset + ONE_WRITE], offset)
    progress.advance(progress.done + min(ONE_WRITE, len(data) - offset))


async def rename(sftp: asyncssh.SFTPClient, temp: str, final: str) -> bool:
    """Rename ``temp`` to ``final``; False if the rename failed (the plain SFTP rename fails
    when ``final`` exists)."""
    try:
        await sftp.rename(temp, final)
    except asyncssh.SFTPFailure:
        return False
    return True


async def exists(sftp: asyncssh.SFTPClient, path: str) -> bool:
    try:
        await sftp.stat(path)
    except asyncssh.SFTPNoSuchFile:
        return False
    return True


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def remote_sha256(sftp: asyncssh.SFTPClient, path: str, progress: Progress) -> str:
    digest = hashlib.sha256()
    async with sftp.open(path, "rb") as remote:
        while chunk := await remote.read(1 << 18):
            assert isinstance(chunk, bytes)  # opened "rb"; asyncssh types reads as AnyStr
            digest.update(chunk)
            progress.advance(progress.done + len(chunk))
    return digest.hexdigest()


async def quietly_remove(sftp: asyncssh.SFTPClient, path: str) -> None:
    with contextlib.suppress(asyncssh.Error, OSError):
        await sftp.remove(path)


def fsync_size(path: Path) -> int:
    with path.open("rb") as data:
        os.fsync(data.fileno())
        return os.fstat(data.fileno()).st_size
