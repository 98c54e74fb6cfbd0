"""Dev-only fixtures: hostile-input builders, tiny models and the integrations' smoke runs.

Not shipped in the wheel. Run from the repository root with ``PYTHONPATH=tests`` (pytest sets it
up itself), e.g. ``PYTHONPATH=tests python -m semhitok_fixtures.bad_input_table``.

The hostile-input modules (:mod:`.hostile_images`, :mod:`.bad_tokens`, :mod:`.untrusted`,
:mod:`.training_faults`) each write one family of bad inputs into a directory and expose
``probe(directory) -> list[Probe]``, which feeds every input through the library's real entry
points and records what happened; :mod:`.bad_input_table` prints the probes as the table in
``docs/bad-inputs.md``. :mod:`.tiny_qwen` builds a tiny random unified MLLM;
:mod:`.llava_smoke` and :mod:`.lmms_eval_smoke` run the LLaVA and lmms-eval recipes on a CPU.
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
    ok: bool  # the outcome is the guaranteed one: the table's last column and exit status


__all__ = ["Probe"]
