import os

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never touch the network

import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import HealthCheck, settings

from semhitok_plugin import SemHiTok, get_preset
from semhitok_plugin.images import center_crop, to_tensor
from semhitok_plugin.samples import sample_photo

# Hypothesis profiles. "ci" (the default) cannot flake: the same examples every run
# (derandomize), no example database, and no deadline, since timing is the one thing a loaded
# 2-core machine cannot hold fixed (speed lives in benchmarks/). "explore" draws five times as
# many fresh random examples each run, to find what the fixed ones miss:
#   HYPOTHESIS_PROFILE=explore pytest -k "hypothesis or property"   (or --hypothesis-profile)
# A failure prints a reproduce_failure blob; add it as an @example to keep it checked.
settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, max_examples=100, print_blob=True
)
settings.register_profile(
    "explore",
    max_examples=500,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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


LLAMAGEN = os.environ.get("LLAMAGEN_PATH")  # a LlamaGen checkout: the LlamaGen tests use it

# Stand-ins at LlamaGen's import paths, for machines without a checkout: only what our code
# touches (FoundationVision/LlamaGen tokenizer/tokenizer_image/vq_model.py: the module-level
# VQ_models dict; dataset/build.py: build_dataset dispatching to build_imagenet_code).
LLAMAGEN_STAND_INS = {
    "tokenizer/__init__.py": "",
    "tokenizer/tokenizer_image/__init__.py": "",
    "tokenizer/tokenizer_image/vq_model.py": "VQ_models = {'VQ-16': None, 'VQ-8': None}\n",
    "autoregressive/__init__.py": "",
    "autoregressive/models/__init__.py": "",
    "autoregressive/models/gpt.py": """
        def GPT_B(**kwargs):
            return {"vocab_size": 16384, **kwargs}  # gpt.py ModelArgs.vocab_size default
        GPT_models = {"GPT-B": GPT_B}
        """,
    "dataset/__init__.py": "",
    "dataset/imagenet.py": """
        def build_imagenet_code(args):
            raise RuntimeError("LlamaGen's own reader: ImageNet-1k length, file dtype kept")
        """,
    "dataset/build.py": """
        from dataset.imagenet import build_imagenet_code
        def build_dataset(args, **kwargs):
            if args.dataset == "imagenet_code":
                return build_imagenet_code(args)
            raise ValueError(args.dataset)
        """,
}


@pytest.fixture
def llamagen_root(tmp_path, monkeypatch):
    """A LlamaGen checkout ($LLAMAGEN_PATH) or the stand-ins, importable and fresh."""
    root = LLAMAGEN or str(tmp_path / "llamagen")
    if not LLAMAGEN:
        for name, text in LLAMAGEN_STAND_INS.items():
            path = tmp_path / "llamagen" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(root)
    for name in [
        m for m in sys.modules if m.split(".")[0] in ("tokenizer", "dataset", "autoregressive")
    ]:
        monkeypatch.delitem(sys.modules, name)
    return root
