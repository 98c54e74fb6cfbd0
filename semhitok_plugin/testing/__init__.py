"""Hostile inputs, built on demand: the test suite's fixtures and ``scripts/bad_input_table.py``.

Each module here writes one family of bad inputs (broken and odd images, malformed token files,
untrusted checkpoints and archives) into a directory and exposes ``probe(directory) ->
list[Probe]``, which feeds every input through the library's real entry points and records what
happened. The tests assert the outcomes; the script prints them as the README's table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Probe:
    """One bad input tried, and what the library did with it."""

    family: str  # "image", "tokens", "untrusted file", ...
    input: str  # what was fed in, in words ("truncated JPEG", "ids >= vocab_size")
    entry_point: str  # where it was fed ("training loader", "semhitok encode", ...)
    outcome: str  # what happened, in words (the error message, "skipped and counted", ...)
    ok: bool  # the outcome is the guaranteed one


__all__ = ["Probe"]
