"""The docs quote the paper's LLaVA figures next to the projector setting they belong to."""

import re
from pathlib import Path

LLAVA_DOC = Path(__file__).resolve().parents[1] / "docs" / "llava.md"


def rows() -> dict[str, str]:
    lines = LLAVA_DOC.read_text().splitlines()
    table = [line for line in lines if line.startswith("|") and "MME-P" in line]
    return {line.split("|")[1].strip(): line for line in table}


def test_dual_mlp_is_quoted_with_its_own_row_not_tab4():
    """Tab. 4 (MME-P 1355.8, SEED 62.9) is Tab. 7's SGHC row *without* Dual-MLP."""
    found = rows()
    dual = next(line for setting, line in found.items() if "dual" in setting)
    plain = next(line for setting, line in found.items() if setting == "`PROJECTOR=mlp2x_gelu`")
    assert "1393.0" in dual and "63.2" in dual and "1355.8" not in dual
    assert "1355.8" in plain and "62.9" in plain
    text = LLAVA_DOC.read_text()
    assert re.search(r"Tab\. 4.{0,120}without", text, re.S)
