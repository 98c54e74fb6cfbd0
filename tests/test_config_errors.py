"""Every mistake in a train config, in the YAML or in ``--set``, ends as one ``error:`` line.

The walk covers every field of every config dataclass, found by introspection, so a new field is
covered by declaring it: a value of the wrong type, and, where its annotation declares them, a value
out of range and an unknown choice. Each case runs ``semhitok train`` in-process; two run in a fresh
interpreter to show that no traceback reaches the terminal. The data source of every case does not
exist, so a value that slipped through validation fails fast with an error that names no field.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import types
import typing
from collections.abc import Iterator
from typing import Annotated, Any

import pytest

from semhitok_plugin.cli import main
from semhitok_plugin.config import Bounds, SemHiTokConfig
from semhitok_plugin.training import TrainConfig

CONFIG = "demo_cpu/stage1"
# Where each config class sits in a train config: model_overrides holds SemHiTokConfig fields, and
# their errors name them from the SemHiTokConfig's root ("config.pixel.concat").
ROOTS = {"": TrainConfig, "model_overrides.": SemHiTokConfig}


def _parts(hint: Any) -> tuple[list[Any], list[Any]]:
    """The types a hint accepts (None dropped) and the rules annotating them."""
    if typing.get_origin(hint) is Annotated:
        base, *rules = typing.get_args(hint)
        types_, inner = _parts(base)
        return types_, rules + inner
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        found = [_parts(a) for a in typing.get_args(hint) if a is not type(None)]
        return [t for ts, _ in found for t in ts], [r for _, rs in found for r in rs]
    return [hint], []


def _fields(cls: type, prefix: str) -> Iterator[tuple[str, Any, Any]]:
    """(dotted path, annotation, default) of every field of ``cls`` and its nested configs."""
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        default = f.default_factory() if callable(f.default_factory) else f.default
        yield prefix + f.name, hints[f.name], default
        for sub in _parts(hints[f.name])[0]:
            if dataclasses.is_dataclass(sub):
                yield from _fields(sub, f"{prefix}{f.name}.")


def _outside(rule: Bounds) -> list[float]:
    """Values the range rejects: just past each end it has."""
    below = rule.gt if rule.gt is not None else None if rule.ge is None else rule.ge - 1
    above = rule.lt if rule.lt is not None else None if rule.le is None else rule.le + 1
    return [v for v in (below, above) if v is not None]


def _wrong_values(hint: Any, default: Any) -> Iterator[Any]:
    accepted, rules = _parts(hint)
    yield [1, 2] if str in accepted else "abc"  # a list for a string, a string for the rest
    for rule in rules:
        yield from _outside(rule) if isinstance(rule, Bounds) else ["not-a-choice"]
    for base in accepted:
        if typing.get_origin(base) is tuple:  # one element out of its range, the rest valid
            for i, element in enumerate(typing.get_args(base)):
                for rule in _parts(element)[1]:
                    for bad in _outside(rule):
                        yield [bad if j == i else v for j, v in enumerate(default)]


CASES = [
    pytest.param(path, value, path.removeprefix(prefix), id=f"{path}={json.dumps(value)}")
    for prefix, root in ROOTS.items()
    for path, hint, default in _fields(root, prefix)
    for value in _wrong_values(hint, default)
]


@pytest.fixture
def train(tmp_path, capsys):
    """``semhitok train CONFIG --set ...`` in-process: (exit status, stderr lines)."""

    def run(*overrides: str) -> tuple[int, list[str]]:
        base = [f"data.source={tmp_path / 'no-images'}", f"output_dir={tmp_path / 'out'}"]
        sets = [arg for item in (*base, *overrides) for arg in ("--set", item)]
        status = main(["train", CONFIG, *sets])
        return status, capsys.readouterr().err.splitlines()

    return run


def _assert_one_error_line(status: int, lines: list[str], named: str) -> None:
    assert status != 0
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert re.search(rf"\b{re.escape(named)}(\[\d+\])? (must be|has unknown|is required)", lines[0])


@pytest.mark.parametrize(("path", "value", "named"), CASES)
def test_a_wrong_value_of_any_field_is_one_line_naming_it(train, path, value, named):
    _assert_one_error_line(*train(f"{path}={json.dumps(value)}"), named)


def test_the_walk_reaches_every_config_class():
    paths = {case.values[0] for case in CASES}
    for expected in ("data.crop", "eval_data.scale", "optim.lr", "losses.disc_lr", "max_bad_steps"):
        assert expected in paths
    for expected in ("teacher.std", "semantic.decoder.heads", "pixel.encoder.width", "image_size"):
        assert f"model_overrides.{expected}" in paths
    assert 'data.crop="not-a-choice"' in {c.id for c in CASES}


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("no_such_key=1", "stage1.yaml has unknown"),
        ("data.crops=center", "data has unknown"),
        ("model_overrides.pixel.subcodebook_size=8", "config.pixel has unknown"),
        ("eval_data.crop=center", "eval_data.source is required"),
    ],
)
def test_unknown_and_missing_keys_are_named(train, override, named):
    status, lines = train(override)
    assert status != 0 and len(lines) == 1 and lines[0].startswith("error: ")
    assert named in lines[0]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stage=joint", "stage must be one of"),
        ("precision=fp8", "precision must be one of 'bf16', 'fp32'"),
        ("stage=[", "invalid YAML in demo_cpu/stage1 or a --set value"),
        ("data.scale=[0.9, 0.5]", "data: scale must be (min, max) with min <= max"),
        ("data.source=''", "data: source is empty"),
        ("max_steps.x=1", "override 'max_steps.x=1': max_steps is a value, not a section"),
    ],
)
def test_rules_outside_the_annotations_are_one_line_too(train, override, message):
    status, lines = train(override)
    assert status != 0 and len(lines) == 1 and lines[0].startswith("error: ")
    assert message in lines[0]


def test_a_malformed_jsonl_line_names_file_and_line(tmp_path, capsys):
    listing = tmp_path / "images.jsonl"
    listing.write_text('{"path": "a.png"}\n{"path": "b.png", "label": 1\n')
    assert main(["encode", str(listing)]) != 0
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"error: {str(listing)!r} line 2: expected "
        '{"path": str, "label": int?}, got \'{"path": "b.png", "label": 1\''
    ]


def test_a_config_that_is_not_a_mapping_is_one_line(tmp_path, capsys):
    config = tmp_path / "list.yaml"
    config.write_text("- stage: semantic\n")
    assert main(["train", str(config)]) != 0
    (line,) = capsys.readouterr().err.splitlines()
    assert line == f"error: {config}: the top level must be a mapping of keys to values"


def test_missing_config_and_unknown_preset_name_the_choices(capsys):
    assert main(["train", "demo_cpu/stage9"]) != 0
    assert "shipped configs: demo_cpu/stage1" in capsys.readouterr().err
    assert main(["encode", "-m", "no-such-preset", "image.png"]) != 0
    (line,) = capsys.readouterr().err.splitlines()
    assert "'no-such-preset' is not a preset (" in line and "tiny" in line


@pytest.mark.slow
def test_no_traceback_reaches_the_terminal(tmp_path):
    """As a user runs it: a fresh interpreter, the whole stderr."""
    listing = tmp_path / "images.jsonl"
    listing.write_text("not json\n")
    commands = [
        ["train", CONFIG, "--set", "data.crop=centre"],
        ["encode", str(listing)],
    ]
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "semhitok_plugin.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for args in commands
    ]
    outputs = [(run.communicate(timeout=120)[1], run.returncode) for run in runs]
    (crop, crop_status), (jsonl, jsonl_status) = outputs
    assert crop_status == jsonl_status == 2
    assert (
        crop.endswith(
            "stage1.yaml: data.crop must be one of 'random', 'center', 'adm', got 'centre'\n"
        )
        and crop.count("\n") == 1
        and crop.startswith("error: ")
    )
    assert jsonl.startswith("error: ") and jsonl.count("\n") == 1 and "line 1" in jsonl
    assert "Traceback" not in crop + jsonl
    assert not (tmp_path / "outputs").exists()  # nothing was trained
