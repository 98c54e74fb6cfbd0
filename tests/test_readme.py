"""The README's promises: its Python snippet runs as printed, and every local link resolves."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_python_snippet_runs(tmp_path, monkeypatch):
    (snippet,) = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    monkeypatch.chdir(tmp_path)  # it saves "my-tokenizer" to the working directory
    exec(compile(snippet, "README.md", "exec"), {})
    assert (tmp_path / "my-tokenizer" / "model.safetensors").is_file()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_local_links_resolve(page):
    text = page.read_text()
    headings = {_anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        if not path:
            assert anchor in headings, f"{page.name}: no heading for #{anchor}"
            continue
        linked = (page.parent / path).resolve()
        assert linked.exists(), f"{page.name}: {target} does not exist"
        if anchor and linked.suffix == ".md":
            names = {_anchor(h) for h in re.findall(r"^#+ (.+)$", linked.read_text(), re.M)}
            assert anchor in names, f"{page.name}: {path} has no heading #{anchor}"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
