"""Feed every hostile input the library guards against through its real entry points, and print
what happened as a Markdown table (the README's "Robustness" table comes from here).

    PYTHONPATH=tests python -m semhitok_fixtures.bad_input_table [--out docs/bad-inputs.md] \
        [--json OUT] [--families ...]

(from the repository root). Each family is a module of ``semhitok_fixtures`` (the same builders
the tests use). The exit status is 1 when any outcome is not the guaranteed one, so the table
cannot silently go stale.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from semhitok_fixtures import Probe

COMMAND = "PYTHONPATH=tests python -m semhitok_fixtures.bad_input_table"
FAMILIES = {  # --families name -> module in semhitok_fixtures
    "image": "hostile_images",
    "tokens": "bad_tokens",
    "untrusted": "untrusted",
    "training": "training_faults",
}


def run(families: list[str]) -> list[Probe]:
    probes = []
    for family in families:
        module = importlib.import_module(f"semhitok_fixtures.{FAMILIES[family]}")
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"bad-{family}-") as tmp:
            probes += module.probe(Path(tmp))
        print(f"[{family}] {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return probes


def markdown(probes: list[Probe]) -> str:
    def cell(text: str) -> str:
        return " ".join(str(text).split()).replace("|", "\\|")

    lines = [
        "| family | input | entry point | outcome | guaranteed |",
        "| --- | --- | --- | --- | :-: |",
    ]
    for p in probes:
        mark = "yes" if p.ok else "**NO**"
        lines.append(
            f"| {cell(p.family)} | {cell(p.input)} | {cell(p.entry_point)} | {cell(p.outcome)} "
            f"| {mark} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m semhitok_fixtures.bad_input_table", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"of {list(FAMILIES)}")
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    parser.add_argument("--json", type=Path, help="also write the probes as JSON")
    args = parser.parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; known: {list(FAMILIES)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    probes = run(families)
    table = markdown(probes)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        title = "# Bad inputs tried, and what the library did\n\nWritten by `"
        args.out.write_text(f"{title}{COMMAND} --out {args.out}`.\n\n{table}\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([dataclasses.asdict(p) for p in probes], indent=1) + "\n")
    failed = [p for p in probes if not p.ok]
    if failed:
        print(f"{len(failed)} of {len(probes)} outcomes are not the guaranteed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
