import os

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never touch the network

import subprocess
import sys

import pytest
import torch

from semhitok_plugin import SemHiTok, get_preset
from semhitok_plugin.images import center_crop, to_tensor
from semhitok_plugin.samples import sample_photo


@pytest.fixture
def tiny_config():
    return get_preset("tiny")


@pytest.fixture
def tiny_model(tiny_config):
    torch.manual_seed(0)
    return SemHiTok(tiny_config).eval()


@pytest.fixture(scope="session")
def photos():
    """Four real photos (scikit-image's bundled samples) as a (4, 3, 64, 64) batch in [-1, 1]."""
    names = ("astronaut", "coffee", "chelsea", "rocket")
    return to_tensor([center_crop(sample_photo(n), 64) for n in names])


@pytest.fixture
def run_cli():
    """Run the ``semhitok`` CLI in a fresh interpreter, as a user would (entry points, env)."""

    def run(*args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "semhitok_plugin.cli", *args],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            check=True,
        )

    return run
