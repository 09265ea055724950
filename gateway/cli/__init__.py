"""The ``raccord`` command line: :func:`main` is its entry point."""

from gateway.cli.commands import main

__all__ = ["main"]
