"""The journal's errors that its callers handle: they outlive a single backend."""

from __future__ import annotations


class JournalUnavailable(RuntimeError):
    """The journal could not be reached (its process died, its database server went away);
    whether the calls under way were applied is unknown."""


class JournalUnreachable(RuntimeError):
    """The journal's database cannot be reached or opened at all (at start, or by a command):
    the message says where and what to check, in one sentence."""
