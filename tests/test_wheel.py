"""The wheel as users get it: built from this checkout, installed into a fresh virtualenv that
cannot see the editable install, it ships every public package and the YAML configs and none of
the dev fixtures, and its console scripts run (``pytest -m "not slow"`` skips this file)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "semhitok_plugin",
    "semhitok_llava",
    "semhitok_lmms_eval",
    "semhitok_llamagen",
    "semhitok_qwen",
)
SOURCES = ("pyproject.toml", "README.md", "semhitok_plugin", "integrations")


def _run(command: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built offline from a copy of the sources: a build writes ``build/`` and ``*.egg-info``
    next to them, which must not appear in a checkout other work goes on in."""
    tmp = tmp_path_factory.mktemp("wheel")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, tmp / "src" / name, ignore=ignore)
        else:
            (tmp / "src").mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, tmp / "src" / name)
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    _run([*pip, "--no-index", "-w", str(tmp / "dist"), str(tmp / "src")])
    (built,) = (tmp / "dist").glob("semhitok_plugin-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh(wheel, tmp_path_factory) -> Path:
    """A virtualenv holding only the wheel. The dependencies (torch, transformers, ...) come from
    this environment's site-packages through a ``.pth`` line: that adds the folder to sys.path
    but runs none of the ``.pth`` files inside it, and one of those installs the editable
    finder that would map ``semhitok_plugin`` back to this checkout."""
    venv = tmp_path_factory.mktemp("venv") / "fresh"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    _run([*install, "--no-deps", "--no-index", str(wheel)])
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    dependencies = dict.fromkeys(sysconfig.get_path(k) for k in ("purelib", "platlib"))
    (Path(site.stdout.strip()) / "dependencies.pth").write_text("\n".join(dependencies) + "\n")
    return venv


@pytest.fixture
def run_fresh(fresh, tmp_path):
    """Run a command of the fresh virtualenv (``python`` or a console script) outside the
    checkout, with no PYTHONPATH, offline."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["HF_HUB_OFFLINE"] = "1"

    def run(name: str, *args: str) -> str:
        return _run([str(fresh / "bin" / name), *args], cwd=tmp_path, env=env).stdout

    return run


def test_the_wheel_ships_the_packages_and_configs_but_no_fixtures(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {*PACKAGES, "semhitok_plugin-0.1.0.dist-info"}
    assert not [n for n in names if "fixtures" in n or "/testing/" in n or "smoke" in n]
    configs = {
        f"semhitok_plugin/{p.relative_to(ROOT / 'semhitok_plugin')}"
        for p in (ROOT / "semhitok_plugin" / "configs").glob("*/*")
    }
    assert {name for name in names if name.startswith("semhitok_plugin/configs/")} == configs
    assert "semhitok_plugin/configs/deepspeed/zero3.json" in configs
    assert {name for name in names if name.startswith("semhitok_qwen/configs/")} == {
        "semhitok_qwen/configs/pretrain.yaml",
        "semhitok_qwen/configs/finetune.yaml",
    }
    entry_points = zipfile.ZipFile(wheel).read("semhitok_plugin-0.1.0.dist-info/entry_points.txt")
    assert "semhitok-qwen = semhitok_qwen.cli:main" in entry_points.decode()


IMPORTS = """
import importlib, importlib.util
for name in {packages}:
    print(importlib.import_module(name).__file__)
print(importlib.util.find_spec("semhitok_fixtures"))
from semhitok_qwen.train import DEEPSPEED_CONFIGS, load_stage_config
print(load_stage_config("pretrain").trainer["learning_rate"], DEEPSPEED_CONFIGS / "zero2.json")
"""


def test_every_public_package_imports_from_the_install(fresh, run_fresh):
    printed = run_fresh("python", "-c", IMPORTS.format(packages=PACKAGES))
    *files, fixtures, stage = printed.splitlines()
    site = fresh / "lib"
    for name, file in zip(PACKAGES, files, strict=True):
        assert Path(file).is_relative_to(site) and Path(file).parent.name == name, file
    assert fixtures == "None"
    learning_rate, zero2 = stage.split()
    assert float(learning_rate) > 0
    assert Path(zero2).is_relative_to(site) and Path(zero2).is_file()


def test_console_scripts_run(run_fresh):
    assert run_fresh("semhitok", "--help").startswith("usage: semhitok")
    presets = run_fresh("semhitok", "presets").splitlines()
    assert [line.split()[0] for line in presets[1:]] == [
        "siglip-l16-256",
        "siglip-l16-256-enhance",
        "siglip-so400m14-384",
        "siglip-so400m14-384-enhance",
        "tiny",
    ]
    usage = run_fresh("semhitok-qwen", "--help")
    commands = "{init,sample-data,generate,chat,eval-gen,eval-gen-metrics,train}"
    assert usage.startswith("usage: semhitok-qwen [-h]") and commands in usage


def test_an_image_round_trips_through_encode_and_decode(run_fresh, tmp_path):
    data = pytest.importorskip("skimage.data")
    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.png")
    model = ["-m", "tiny", "--device", "cpu"]
    run_fresh("semhitok", "encode", "astronaut.png", *model, "-o", "tokens.npz")
    with np.load(tmp_path / "tokens.npz") as tokens:
        assert tokens["flat_ids"].shape == (1, 8, 8) and tokens["flat_ids"].dtype == np.int32
        assert tokens["flat_ids"].min() >= 0 and tokens["flat_ids"].max() < 256
        assert list(tokens["files"]) == ["astronaut.png"]
    run_fresh("semhitok", "decode", "tokens.npz", *model, "-o", "decoded")
    decoded = Image.open(tmp_path / "decoded" / "astronaut.png")
    assert decoded.mode == "RGB" and decoded.size == (64, 64)
