"""scripts/bad_input_table.py: every probe becomes one escaped table row, and a probe whose outcome
is not the guaranteed one makes the exit status 1 (so the README's table cannot go stale)."""

import importlib.util
import json
from pathlib import Path

import pytest

from semhitok_plugin.testing import Probe, hostile_images

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bad_input_table.py"


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location("bad_input_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_are_one_line_each_with_pipes_escaped(table):
    probe = Probe("tokens", "a|b\nc", "decode", "error: x | y", ok=False)
    header, rule, row = table.markdown([probe]).splitlines()
    assert row == r"| tokens | a\|b c | decode | error: x \| y | **NO** |"
    assert header.count("|") == row.count("|") - row.count(r"\|") == rule.count("|")


def test_exit_status_follows_the_probes(table, monkeypatch, capsys, tmp_path):
    out = ["--out", str(tmp_path / "t.md"), "--json", str(tmp_path / "p.json")]
    assert table.main(["--families", "image", *out]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[2:]
    assert (tmp_path / "t.md").read_text().splitlines()[-len(rows) :] == rows
    probes = json.loads((tmp_path / "p.json").read_text())
    assert len(rows) == len(probes) > 20 and all(p["ok"] for p in probes)
    assert all(row.endswith("| yes |") for row in rows)
    broken = Probe("image", "x", "y", "z", ok=False)
    monkeypatch.setattr(hostile_images, "probe", lambda directory: [broken])
    assert table.main(["--families", "image"]) == 1
    assert "1 of 1 outcomes are not the guaranteed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        table.main(["--families", "nope"])
