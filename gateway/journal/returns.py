"""What partners send back: the ``returns`` received, the ``statuses`` they gave, and the
registries that keep a return from being processed twice (``downloads`` fetched from a
partner's folder, ``as2_messages`` pushed to us)."""

from __future__ import annotations

from typing import Any

from gateway.journal.base import Queries, timestamp


class ReturnQueries(Queries):
    """Return flows, their statuses, and the files and messages they came as."""

    def record_return(
        self,
        return_id: str,
        connection: str,
        file: str,
        inbox_path: str,
        sha256: str,
    ) -> tuple[dict[str, Any], bool]:
        """Journal a received return flow; ``(row, True)`` if new, ``(earlier row, False)`` if
        the same bytes already came on this connection."""
        cursor = self._db.execute(
            "INSERT INTO returns (return_id, connection, file, inbox_path, sha256,"
            " state, received_at) VALUES (?, ?, ?, ?, ?, 'received', ?) ON CONFLICT DO NOTHING",
            (return_id, connection, file, inbox_path, sha256, timestamp()),
        )
        row = self._db.execute(
            "SELECT * FROM returns WHERE connection=? AND sha256=?", (connection, sha256)
        ).fetchone()
        return dict(row), bool(cursor.rowcount)

    def get_return(self, return_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM returns WHERE return_id=?", (return_id,)).fetchone()
        return dict(row) if row else None

    def return_by_sha256(self, connection: str, sha256: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT * FROM returns WHERE connection=? AND sha256=?", (connection, sha256)
        ).fetchone()
        return dict(row) if row else None

    def update_return(self, return_id: str, **values: Any) -> None:
        allowed = {"kind", "state", "flow_ids", "message", "applied_at"}
        assert set(values) <= allowed, set(values) - allowed
        assignments = ", ".join(f"{name}=?" for name in values)
        self._db.execute(
            f"UPDATE returns SET {assignments} WHERE return_id=?",  # noqa: S608 - fixed names
            (*values.values(), return_id),
        )

    def returns(
        self, *, state: str | None = None, connection: str | None = None
    ) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT * FROM returns WHERE (? IS NULL OR state=?) AND (? IS NULL OR connection=?)"
            " ORDER BY received_at",
            (state, state, connection, connection),
        ).fetchall()
        return [dict(row) for row in rows]

    def record_status(
        self,
        return_id: str,
        flow_id: str,
        position: int | None,
        code: str,
        label: str | None,
        at: str | None,
        detail: str | None,
    ) -> None:
        self._db.execute(
            "INSERT INTO statuses (return_id, flow_id, position, code, label, at, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (return_id, flow_id, -1 if position is None else position, code, label, at, detail),
        )

    def statuses(self, flow_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            # rowid: the order the statuses were recorded in (a column of its own on PostgreSQL)
            "SELECT s.return_id, s.flow_id, s.position, s.code, s.label, s.at, s.detail,"
            " r.file AS return_file FROM statuses s JOIN returns r USING (return_id)"
            " WHERE s.flow_id=? ORDER BY r.received_at, s.rowid",
            (flow_id,),
        ).fetchall()
        return [
            {**dict(row), "position": None if row["position"] < 0 else row["position"]}
            for row in rows
        ]

    def download(self, connection: str, name: str, size: int, mtime: int) -> dict[str, Any] | None:
        """What became of that remote file (same name, size and time), if it was seen."""
        row = self._db.execute(
            "SELECT * FROM downloads WHERE connection=? AND remote_name=? AND size=? AND mtime=?",
            (connection, name, size, mtime),
        ).fetchone()
        return dict(row) if row else None

    def record_download(
        self,
        connection: str,
        name: str,
        size: int,
        mtime: int,
        *,
        outcome: str,
        return_id: str | None = None,
    ) -> None:
        """Remember a remote file: ``stored`` (in the inbox, not yet removed remotely),
        ``done``, or ``refused`` (never fetched; the log said why)."""
        self._db.execute(
            "INSERT INTO downloads (connection, remote_name, size, mtime, return_id, outcome, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (connection, remote_name, size, mtime)"
            " DO UPDATE SET outcome=excluded.outcome,"
            " return_id=coalesce(excluded.return_id, downloads.return_id), at=excluded.at",
            (connection, name, size, mtime, return_id, outcome, timestamp()),
        )

    def as2_message(self, as2_from: str, message_id: str) -> dict[str, Any] | None:
        """The AS2 message ``as2_from`` sent us with that Message-ID, if it was claimed
        (``return_id`` None: being stored, or its claimer died) or stored."""
        row = self._db.execute(
            "SELECT * FROM as2_messages WHERE as2_from=? AND message_id=?",
            (as2_from, message_id),
        ).fetchone()
        return dict(row) if row else None

    def claim_as2_message(
        self, as2_from: str, message_id: str, connection: str, stale_before: str
    ) -> str:
        """Claim an inbound AS2 message before storing it, so that one node only stores it:
        ``claimed`` (ours now: new, or a claim older than ``stale_before`` whose claimer
        never stored it), ``stored`` (stored already), or ``busy`` (another claim, fresh)."""
        row = self._db.execute(
            "INSERT INTO as2_messages (as2_from, message_id, connection, return_id, at)"
            " VALUES (?, ?, ?, NULL, ?) ON CONFLICT (as2_from, message_id) DO UPDATE"
            " SET connection = excluded.connection, at = excluded.at"
            " WHERE as2_messages.return_id IS NULL AND as2_messages.at < ?"
            " RETURNING at",
            (as2_from, message_id, connection, timestamp(), stale_before),
        ).fetchone()
        if row is not None:
            return "claimed"
        known = self.as2_message(as2_from, message_id)
        return "stored" if known is not None and known["return_id"] is not None else "busy"

    def record_as2_message(
        self, as2_from: str, message_id: str, connection: str, return_id: str | None
    ) -> bool:
        """Remember a stored inbound AS2 message (finishing its claim); False if it was
        already stored."""
        cursor = self._db.execute(
            "INSERT INTO as2_messages (as2_from, message_id, connection, return_id, at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (as2_from, message_id) DO UPDATE"
            " SET connection = excluded.connection, return_id = excluded.return_id,"
            " at = excluded.at WHERE as2_messages.return_id IS NULL",
            (as2_from, message_id, connection, return_id, timestamp()),
        )
        return bool(cursor.rowcount == 1)

    def drop_as2_claim(self, as2_from: str, message_id: str) -> None:
        """Give up an unfinished claim (the store failed: the partner's resend may claim it)."""
        self._db.execute(
            "DELETE FROM as2_messages WHERE as2_from=? AND message_id=? AND return_id IS NULL",
            (as2_from, message_id),
        )

    def drop_as2_claims(self) -> int:
        """Forget every unfinished claim (one node alone, at its start: they are its own dead
        run's; the partner resends those messages). Returns how many."""
        return int(self._db.execute("DELETE FROM as2_messages WHERE return_id IS NULL").rowcount)
