"""The bad-input table (``semhitok_fixtures.bad_input_table``, which writes docs/bad-inputs.md):
every probe becomes one escaped table row, and a probe whose outcome is not the guaranteed one
makes the exit status 1 (so the table cannot go stale)."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from semhitok_fixtures import Probe, hostile_images
from semhitok_fixtures import bad_input_table as table

ROOT = Path(__file__).resolve().parents[1]
GOOD = Probe("image", "a good file", "semhitok encode", "exit 0", ok=True)
BROKEN = Probe("image", "a bad file", "semhitok encode", "exit 0: decoded garbage", ok=False)


def test_rows_are_one_line_each_with_pipes_escaped():
    probe = Probe("tokens", "a|b\nc", "decode", "error: x | y", ok=False)
    header, rule, row = table.markdown([probe]).splitlines()
    assert row == r"| tokens | a\|b c | decode | error: x \| y | **NO** |"
    assert header.count("|") == row.count("|") - row.count(r"\|") == rule.count("|")


def test_exit_status_follows_the_probes(monkeypatch, capsys):
    monkeypatch.setattr(hostile_images, "probe", lambda directory: [GOOD, GOOD])
    assert table.main(["--families", "image"]) == 0
    assert (
        capsys.readouterr().out.strip().splitlines()[2:]
        == ["| image | a good file | semhitok encode | exit 0 | yes |"] * 2
    )
    monkeypatch.setattr(hostile_images, "probe", lambda directory: [GOOD, BROKEN])
    assert table.main(["--families", "image"]) == 1
    assert "1 of 2 outcomes are not the guaranteed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        table.main(["--families", "nope"])


def test_the_markdown_and_json_files_hold_the_printed_rows(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(hostile_images, "probe", lambda directory: [GOOD, BROKEN])
    out = tmp_path / "docs" / "t.md"
    table.main(["--families", "image", "--out", str(out), "--json", str(tmp_path / "p.json")])
    rows = capsys.readouterr().out.strip().splitlines()
    title, _, written = out.read_text().partition("\n\n")
    assert title == "# Bad inputs tried, and what the library did"
    assert written.splitlines() == [
        f"Written by `PYTHONPATH=tests python -m semhitok_fixtures.bad_input_table --out {out}`.",
        "",
        *rows,
    ]
    assert json.loads((tmp_path / "p.json").read_text()) == [
        {"family": "image", "input": p.input, "entry_point": p.entry_point, "outcome": p.outcome,
         "ok": p.ok} for p in (GOOD, BROKEN)
    ]  # fmt: skip


def test_every_family_is_a_fixtures_module_with_a_probe():
    for module in table.FAMILIES.values():
        assert callable(importlib.import_module(f"semhitok_fixtures.{module}").probe)


def test_the_documented_command_runs_from_the_repository_root():
    env = {**os.environ, "PYTHONPATH": "tests"}
    command = [sys.executable, "-m", "semhitok_fixtures.bad_input_table", "--help"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m semhitok_fixtures.bad_input_table")
