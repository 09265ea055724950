"""The PostgreSQL journal's connection: psycopg 3 made to look like ``sqlite3`` to the queries.

The query classes are written once, in SQLite's spelling; this adapter runs them unchanged:

* ``?`` and ``:name`` parameters become psycopg's ``%s`` and ``%(name)s`` (outside string
  literals, quoted names and comments), and a literal ``%`` is doubled;
* rows answer by column name and by position, with ``keys()``, like ``sqlite3.Row``;
* ``BEGIN IMMEDIATE`` (SQLite's write transaction) is PostgreSQL's ``BEGIN``, and SQLite's
  index hints (``INDEXED BY``) are left to PostgreSQL's planner;
* ``in_transaction`` and ``total_changes`` mean what they mean on ``sqlite3``.

Parameters are bound by the server, and the statements a connection runs often are prepared
once (psycopg prepares a statement at its fifth run): most of a journal call's cost on
PostgreSQL was the server planning the same few statements again and again. A parameter tested
with ``IS NULL`` alone is given a type (``::text``): the server cannot guess one.

A lost server does not kill the journal: the statement under way raises
:class:`~gateway.journal.errors.JournalUnavailable` (whether its transaction committed is
unknown, as when the journal process dies), and the next statement outside a transaction
connects again.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from gateway.journal.connection import Dialect, Params
from gateway.journal.errors import JournalUnavailable, JournalUnreachable
from gateway.journal.target import PostgresTarget

POSTGRES = Dialect(
    "postgresql",
    " FOR UPDATE SKIP LOCKED",
    (psycopg.Error,),
    conflicts=(psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure),
)

_WRITES = ("INSERT", "UPDATE", "DELETE", "MERGE")


@functools.lru_cache(maxsize=1024)
def translate(sql: str, named: bool = False) -> str:
    """``sql`` with SQLite's parameters in psycopg's spelling (``?`` → ``%s``; with ``named``,
    ``:name`` → ``%(name)s``) and every literal ``%`` doubled. Remembered: the queries are a
    few hundred shapes run millions of times."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        char = sql[i]
        if char in "'\"":  # a string literal or a quoted name, up to its closing quote
            end = i + 1
            while end < n:
                if sql[end] == char:
                    if end + 1 < n and sql[end + 1] == char:  # a doubled quote inside
                        end += 2
                        continue
                    break
                end += 1
            out.append(sql[i : end + 1].replace("%", "%%"))
            i = end + 1
        elif char == "-" and sql.startswith("--", i):  # a comment, to the end of the line
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif char == "?":
            out.append("%s" + _typed(sql, i + 1))
            i += 1
        elif char == "%":
            out.append("%%")
            i += 1
        elif named and char == ":" and i + 1 < n and (sql[i + 1].isalpha() or sql[i + 1] == "_"):
            if i > 0 and sql[i - 1] == ":":  # a PostgreSQL cast (``x::text``), not a name
                out.append(char)
                i += 1
                continue
            end = i + 1
            while end < n and (sql[end].isalnum() or sql[end] == "_"):
                end += 1
            out.append(f"%({sql[i + 1 : end]})s" + _typed(sql, end))
            i = end
        else:
            out.append(char)
            i += 1
    text = _INDEX_HINT.sub("", "".join(out))
    if text.strip().upper() == "BEGIN IMMEDIATE":
        return "BEGIN"
    return text


#: SQLite's index hints (``INDEXED BY name``, ``NOT INDEXED``): PostgreSQL has none, its planner
#: chooses. Only the journal's own SQL reaches here: values are parameters, never SQL text.
_INDEX_HINT = re.compile(r"\s+(?:INDEXED\s+BY\s+\w+|NOT\s+INDEXED)\b", re.IGNORECASE)

_NULL_TEST = re.compile(r"\s+IS\s+(NOT\s+)?NULL\b", re.IGNORECASE)


def _typed(sql: str, after: int) -> str:
    """``::text`` for a parameter the server cannot type by itself (``? IS NULL``: nothing
    says what it is, and a NULL carries no type), else nothing."""
    return "::text" if _NULL_TEST.match(sql, after) else ""


class Row:
    """A row by column name or position, with ``keys()``: what ``sqlite3.Row`` offers."""

    __slots__ = ("_index", "_names", "_values")

    def __init__(self, names: list[str], index: dict[str, int], values: Sequence[Any]) -> None:
        self._names = names
        self._index = index
        self._values = values

    def keys(self) -> list[str]:
        return list(self._names)

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            try:
                return self._values[self._index[key]]
            except KeyError:
                raise IndexError(f"no column {key}") from None
        return self._values[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._names, self._values, strict=True))!r})"


def _rows(cursor: Any) -> Any:
    """psycopg's row factory making :class:`Row`s: the names are read once per query, from
    the result itself (``cursor.description`` builds an object per column, per query: on
    ``SELECT *`` of ``flows``, a tenth of a journal call's time)."""
    result = cursor.pgresult
    if result is None or not result.nfields:
        names: list[str] = []
    else:
        names = [result.fname(i).decode() for i in range(result.nfields)]
    index = {name: i for i, name in reversed(list(enumerate(names)))}

    def make(values: Sequence[Any]) -> Row:
        return Row(names, index, values)

    return make


class PostgresConnection:
    """One connection to the journal's database, shaped like ``sqlite3.Connection``."""

    def __init__(self, target: PostgresTarget) -> None:
        self._target = target
        self._began = False  # a transaction of ours is open (or was, when the server vanished)
        self._changes = 0
        self._streams = 0  # server-side cursors opened, to name each anew
        self._connection = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        password = self._target.password.value if self._target.password else None
        try:
            connection: psycopg.Connection[Any] = psycopg.Connection.connect(
                self._target.url,
                password=password,
                autocommit=True,  # transactions are the journal's own BEGIN and COMMIT
                row_factory=_rows,
                connect_timeout=10,
                application_name="raccord",
            )
        except psycopg.Error as exc:
            raise JournalUnreachable(
                f"the journal database {self._target.where} cannot be reached"
                f" ({_first_line(exc)}): check that PostgreSQL runs there and accepts this node"
                " (listen_addresses, pg_hba.conf), and the [journal] url and password"
            ) from None
        return connection

    @property
    def in_transaction(self) -> bool:
        if self._connection.broken or self._connection.closed:
            return self._began
        return self._connection.info.transaction_status in (
            TransactionStatus.INTRANS,
            TransactionStatus.INERROR,
            TransactionStatus.ACTIVE,
        )

    @property
    def aborted(self) -> bool:
        """A statement failed inside the open transaction: PostgreSQL refuses every further
        statement until it is rolled back (SQLite would go on)."""
        return self._connection.info.transaction_status == TransactionStatus.INERROR

    @property
    def total_changes(self) -> int:
        """Rows inserted, updated or deleted by this connection's statements so far."""
        return self._changes

    def execute(self, sql: str, parameters: Params = (), /) -> Any:
        statement = translate(sql, isinstance(parameters, Mapping))
        if not self._usable(statement):
            return _Nothing()
        try:
            cursor = self._connection.execute(statement, parameters)
        except psycopg.OperationalError as exc:
            if statement.lstrip().upper().startswith(("BEGIN", "COMMIT")):
                self._began = False  # no transaction is left open for a ROLLBACK to end
            self._lost(exc)
            raise
        self._after(statement, cursor)
        return cursor

    def executemany(self, sql: str, parameters: Iterable[Params], /) -> Any:
        rows = list(parameters)
        if len(rows) == 1:  # one round trip, where executemany enters and leaves a pipeline
            return self.execute(sql, rows[0])
        statement = translate(sql, bool(rows) and isinstance(rows[0], Mapping))
        self._usable(statement)
        cursor = self._connection.cursor()
        try:
            cursor.executemany(statement, rows)
        except psycopg.OperationalError as exc:
            self._lost(exc)
            raise
        self._changes += max(cursor.rowcount, 0)
        return cursor

    def executescript(self, sql: str, /) -> Any:
        """Several statements in one (a schema): sent as they are, without parameters."""
        self._usable("")
        try:
            return self._connection.execute(sql.encode())
        except psycopg.OperationalError as exc:
            self._lost(exc)
            raise

    def stream(self, sql: str, parameters: Params = (), /, size: int = 1000) -> Iterator[Any]:
        """The rows of ``sql``, ``size`` at a time from a cursor on the server: a listing of a
        million flows holds a thousand rows, not a million (psycopg's ordinary cursor fetches
        every row at once, where SQLite's steps through them). Outside a transaction the
        cursor is held over commits, so that other statements may run between the rows."""
        statement = translate(sql, isinstance(parameters, Mapping))
        self._usable(statement)
        self._streams += 1
        try:
            with self._connection.cursor(
                name=f"raccord_stream_{self._streams}", withhold=not self.in_transaction
            ) as cursor:
                cursor.itersize = size
                cursor.execute(statement, parameters)
                yield from cursor
        except psycopg.OperationalError as exc:  # the server went away mid-listing
            self._lost(exc)
            raise

    def close(self) -> None:
        self._connection.close()

    def _usable(self, statement: str) -> bool:
        """Whether to run ``statement``: reconnect first if the server went away between
        transactions; False for the ``ROLLBACK`` of a transaction the server already lost."""
        word = statement.lstrip()[:8].upper()
        if not (self._connection.broken or self._connection.closed):
            if word.startswith("BEGIN"):
                self._began = True
            return True
        if word.startswith("ROLLBACK"):
            self._began = False
            return False
        if self._began:
            if word.startswith("COMMIT"):  # the transaction ends here, unapplied or not
                self._began = False
            raise JournalUnavailable(
                f"the connection to the journal database {self._target.where} was lost"
                " during a transaction; whether it was applied is unknown"
            )
        try:
            self._connection = self._connect()
        except JournalUnreachable as exc:  # still gone: this call fails, the next one tries
            raise JournalUnavailable(str(exc)) from None
        if word.startswith("BEGIN"):
            self._began = True
        return True

    def _after(self, statement: str, cursor: Any) -> None:
        message = cursor.statusmessage or ""
        if message.startswith(_WRITES):
            self._changes += max(cursor.rowcount, 0)
        elif message in ("COMMIT", "ROLLBACK"):
            self._began = False

    def _lost(self, exc: psycopg.OperationalError) -> None:
        if self._connection.broken or self._connection.closed:
            raise JournalUnavailable(
                f"the connection to the journal database {self._target.where} was lost"
                f" ({_first_line(exc)}); whether the last transaction was applied is unknown:"
                " raccord connects again at the next call"
            ) from None


class _Nothing:
    """The outcome of a statement not sent (the rollback of a transaction already lost)."""

    rowcount = 0

    def fetchone(self) -> None:
        return None

    def fetchall(self) -> list[Any]:
        return []

    def __iter__(self) -> Iterator[Any]:
        return iter(())


def refused(target: PostgresTarget, exc: BaseException) -> JournalUnreachable:
    """The error of a database that refused the journal's schema (creating or reading it)."""
    return JournalUnreachable(
        f"the journal database {target.where} refused raccord's schema ({_first_line(exc)}):"
        " the [journal] role must own the database, or have CREATE on its public schema"
        " (docs/multi-node.md)"
    )


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
