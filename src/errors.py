"""Errors every layer may raise and the CLI (:mod:`src.cli`) maps to exit codes."""

from __future__ import annotations


class Refused(RuntimeError):
    """An operation refused for a stated reason; the message says why and what to do (the CLI
    prints it as one line and exits 1)."""
