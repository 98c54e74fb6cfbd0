"""Untrusted files: pickles that run code, YAML with Python tags, object arrays, hostile archives.

A hostile checkpoint is a pickle whose ``__reduce__`` makes the unpickler call ``os.system``; here
it runs ``touch MARKER``, so "no code ran" is checked by the marker file not existing. Every place
the library reads weights, configs, token files or shards gets such a file, and must refuse it
(weights only from safetensors or ``torch.load(weights_only=True)``, YAML only through
``safe_load``, no ``trust_remote_code``, no object arrays) or, for a tar shard, read its members in
memory without writing anything.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from . import Probe

FAMILY = "untrusted file"
# Members of the hostile shard: regular files with names that leave the target, then links.
ESCAPING_MEMBERS = ("../../escape.jpg", "/abs/escape.jpg")
LINK_MEMBERS = {"link.jpg": "../../outside.jpg", "hard.jpg": "/etc/passwd"}


class RunsCode:
    """Unpickling this runs ``touch <marker>`` in a shell, as a hostile checkpoint would."""

    def __init__(self, marker: Path) -> None:
        self.marker = Path(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


# -- builders --------------------------------------------------------------------------------------
def code_running_pickle(path: Path, marker: Path) -> Path:
    """A torch file (any suffix: .pt, .bin, .pth, .ckpt) whose state dict runs code on loading."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"weight": RunsCode(marker)}}, path)
    return path


def python_tag_yaml(path: Path, marker: Path) -> Path:
    """A config whose value is a Python-object tag: a full YAML loader would run ``touch``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"stage: {python_tag(marker)}\n")
    return path


def python_tag(marker: Path) -> str:
    return f"!!python/object/apply:os.system [{json.dumps(f'touch {shlex.quote(str(marker))}')}]"


def object_array_npz(path: Path, marker: Path, grid: tuple[int, int] = (8, 8)) -> Path:
    """A token file (``semhitok encode``'s layout) whose ``flat_ids`` is a pickled object array."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        flat_ids=np.array([RunsCode(marker)], dtype=object),
        grid=np.array(grid, dtype=np.int32),
        vocab_size=np.int64(64),
    )
    return path


def object_array_npy(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.array([RunsCode(marker)], dtype=object), allow_pickle=True)
    return path


def traversal_shard(path: Path) -> Path:
    """A tar shard: one ordinary JPEG, two JPEGs named outside any target directory (relative
    ``..`` and absolute), a symlink and a hard link pointing outside."""
    from semhitok_plugin.samples import sample_photo

    buffer = io.BytesIO()
    sample_photo("astronaut").resize((32, 32)).save(buffer, "JPEG")
    jpeg = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name in ("ok.jpg", *ESCAPING_MEMBERS):
            info = tarfile.TarInfo(name)  # TarInfo keeps the name as given ("/abs/...", "../")
            info.size = len(jpeg)
            tar.addfile(info, io.BytesIO(jpeg))
        for name, target in LINK_MEMBERS.items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE if name.startswith("link") else tarfile.LNKTYPE
            info.linkname = target
            tar.addfile(info)
    return path


def remote_code_tokenizer(directory: Path, marker: Path) -> Path:
    """Make a model folder's tokenizer name a class in a module of the folder (``auto_map``):
    loading it with ``trust_remote_code`` would import the module, which creates ``marker``."""
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["tokenizer_class"] = "HostileTokenizer"
    config["auto_map"] = {"AutoTokenizer": ["hostile_tokenizer.HostileTokenizer", None]}
    config_file.write_text(json.dumps(config))
    (directory / "hostile_tokenizer.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nclass HostileTokenizer: ...\n"
    )
    return directory


# -- feeding them to the library -------------------------------------------------------------------
MARKER = "MARKER"  # each probe's folder; it exists only if a hostile file ran code
PICKLE = "pickle that runs `touch`"
YAML_TAG = "YAML with !!python/object/apply:os.system"
Expected = type[BaseException] | tuple[type[BaseException], ...] | None


def _message(err: BaseException, root: Path) -> str:
    """The informative line of an error (torch buries it mid-message), paths relative to root
    (the probe's folder: the table shows "run/checkpoints/step_00000002.pt", not a temp path)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()] or [""]
    line = next((ln for ln in lines if "nsupported" in ln), lines[0])
    return f"{type(err).__name__}: {line.replace(f'{root}{os.sep}', '')}"


def _attempt(
    root: Path,
    what: str,
    entry: str,
    run: Callable[[Path], object],
    expected: Expected,
    names: str | None = None,
) -> Probe:
    """Run ``run(folder)`` in a fresh folder. The guarantee: an ``expected`` error whose message
    contains ``names`` (when given), or a clean load when ``expected`` is None; and no marker."""
    folder = root / f"{len(list(root.iterdir())):02d}"
    folder.mkdir()
    try:
        result = run(folder)
        outcome, ok = (result if isinstance(result, str) else "loaded"), expected is None
    except Exception as err:
        refused = expected is not None and isinstance(err, expected)
        outcome = f"{'refused' if refused else 'unexpected'} {_message(err, folder)}"
        ok = refused and (names is None or names in str(err))
    if (folder / MARKER).exists():
        outcome, ok = f"{outcome}; CODE RAN (marker file created)", False
    return Probe(FAMILY, what, entry, outcome, ok)


def _tiny_folder(folder: Path) -> Path:
    """A ``save_pretrained`` folder of the ``tiny`` preset (random weights)."""
    from semhitok_plugin import SemHiTok, get_preset

    torch.manual_seed(0)
    return SemHiTok(get_preset("tiny")).save_pretrained(folder)


def resume_training(folder: Path) -> None:
    """A run folder whose ``latest`` names a hostile ``step_00000002.pt``, resumed by train()."""
    from semhitok_plugin.samples import write_sample_photos
    from semhitok_plugin.training import TrainConfig, train

    run_dir = folder / "run"
    code_running_pickle(run_dir / "checkpoints" / "step_00000002.pt", folder / MARKER)
    (run_dir / "checkpoints" / "latest").write_text("step_00000002.pt")
    photos = write_sample_photos(folder / "photos", ("coffee",))[0].parent
    data = {"source": str(photos), "image_size": 64}
    cfg = {"stage": "semantic", "model": "tiny", "output_dir": str(run_dir), "data": data}
    train(TrainConfig.load_dict(cfg | {"batch_size": 1, "max_steps": 1}), resume=True)


def _folder_probes(root: Path) -> list[Probe]:
    """SemHiTok checkpoints, teacher, LPIPS and FID weights, training checkpoints."""
    from safetensors import SafetensorError

    from semhitok_plugin.evaluation import (
        INCEPTION_FILE,
        VGG16_FILE,
        load_lpips,
        load_metric_backbones,
    )
    from semhitok_plugin.hub import UnsafeWeightsError, WeightsNotFoundError
    from semhitok_plugin.model import SemHiTok, load_model

    def bin_only(folder: Path) -> None:
        model = _tiny_folder(folder / "model")
        (model / "model.safetensors").unlink()
        code_running_pickle(model / "pytorch_model.bin", folder / MARKER)
        SemHiTok.from_pretrained(model)

    def disguised(folder: Path) -> None:
        model = _tiny_folder(folder / "model")
        code_running_pickle(model / "model.safetensors", folder / MARKER)
        SemHiTok.from_pretrained(model)

    def beside(folder: Path) -> str:
        model = _tiny_folder(folder / "model")
        code_running_pickle(model / "pytorch_model.bin", folder / MARKER)
        SemHiTok.from_pretrained(model)
        return "loaded from model.safetensors; pytorch_model.bin never opened"

    def teacher(name: str) -> Callable[[Path], object]:
        def run(folder: Path) -> None:
            code_running_pickle(folder / name, folder / MARKER)
            load_model("tiny", teacher_weights=str(folder / Path(name).parts[0]))

        return run

    def lpips(folder: Path) -> None:
        load_lpips(str(code_running_pickle(folder / VGG16_FILE, folder / MARKER)))

    def inception(folder: Path) -> None:
        for name in (INCEPTION_FILE, VGG16_FILE):
            code_running_pickle(folder / name, folder / MARKER)
        load_metric_backbones(inception_weights=str(folder), lpips_weights=str(folder))

    teacher_flag, from_pretrained = "--teacher-weights (load_model)", "SemHiTok.from_pretrained"
    return [
        _attempt(
            root,
            f"{PICKLE} as step_00000002.pt, named by `latest`",
            "semhitok train --resume (training.train)",
            resume_training,
            UnsafeWeightsError,
            "step_00000002.pt",
        ),
        _attempt(
            root,
            f"{PICKLE} as pytorch_model.bin of a save_pretrained folder, no model.safetensors",
            from_pretrained,
            bin_only,
            WeightsNotFoundError,
            "model.safetensors",
        ),
        _attempt(root, f"{PICKLE} named model.safetensors", from_pretrained, disguised,
                 SafetensorError),
        _attempt(root, f"{PICKLE} as pytorch_model.bin beside model.safetensors",
                 from_pretrained, beside, None),
        _attempt(root, f"{PICKLE} as a teacher weights file (t.ckpt)", teacher_flag,
                 teacher("t.ckpt"), UnsafeWeightsError, "t.ckpt"),
        _attempt(root, f"{PICKLE} as pytorch_model.bin of a teacher folder", teacher_flag,
                 teacher("teacher/pytorch_model.bin"), UnsafeWeightsError, "pytorch_model.bin"),
        _attempt(root, f"{PICKLE} as LPIPS VGG16 weights ({VGG16_FILE})",
                 "load_lpips / --lpips-weights", lpips, UnsafeWeightsError, VGG16_FILE),
        _attempt(root, f"{PICKLE} as FID Inception weights ({INCEPTION_FILE})",
                 "load_metric_backbones / --inception-weights", inception, UnsafeWeightsError,
                 INCEPTION_FILE),
    ]  # fmt: skip


def _config_probes(root: Path) -> list[Probe]:
    """YAML configs, token files and LlamaGen code files."""
    import yaml

    from semhitok_plugin import SemHiTok, get_preset
    from semhitok_plugin.token_files import TokenFileError, read_tokens
    from semhitok_plugin.training import TrainConfig
    from semhitok_qwen.train import load_stage_config

    def tokens(folder: Path) -> None:
        model = SemHiTok(get_preset("tiny"))
        read_tokens(object_array_npz(folder / "ids.npz", folder / MARKER, model.grid_size), model)

    def llamagen_codes(folder: Path) -> None:
        from semhitok_llamagen.dataset import CodeDataset

        object_array_npy(folder / "codes" / "0.npy", folder / MARKER)
        (folder / "labels").mkdir()
        np.save(folder / "labels" / "0.npy", np.zeros(1, np.int64))
        CodeDataset(folder / "codes", folder / "labels")[0]

    tag = "python/object/apply:os.system"
    return [
        _attempt(root, f"{YAML_TAG} (a train config file)", "semhitok train (TrainConfig.load)",
                 lambda f: TrainConfig.load(python_tag_yaml(f / "c.yaml", f / MARKER)),
                 yaml.YAMLError, tag),
        _attempt(root, f"{YAML_TAG} (a key=value override)",
                 "semhitok train --set (TrainConfig.load)",
                 lambda f: TrainConfig.load("demo_cpu/stage1", [f"stage={python_tag(f / MARKER)}"]),
                 yaml.YAMLError, tag),
        _attempt(root, f"{YAML_TAG} (an MLLM stage config)",
                 "semhitok-qwen train --config (load_stage_config)",
                 lambda f: load_stage_config("pretrain", python_tag_yaml(f / "c.yaml", f / MARKER)),
                 yaml.YAMLError, tag),
        _attempt(root, "token file (.npz) whose flat_ids is a pickled object array",
                 "semhitok decode (read_tokens)", tokens, TokenFileError, "ids.npz"),
        _attempt(root, "LlamaGen code file (.npy) holding a pickled object array",
                 "semhitok_llamagen CodeDataset", llamagen_codes, ValueError,
                 "allow_pickle=False"),
    ]  # fmt: skip


def _mllm_probes(root: Path) -> list[Probe]:
    """The unified MLLM's folder (weights, tokenizer code) and its training checkpoints."""
    import pickle

    from semhitok_qwen import load_unified

    from .tiny_qwen import save_tiny_unified

    base = save_tiny_unified(root / "unified")

    def copy(folder: Path) -> Path:
        return Path(shutil.copytree(base, folder / "model", ignore=shutil.ignore_patterns("qwen")))

    def bin_only(folder: Path) -> None:
        model = copy(folder)
        (model / "model.safetensors").unlink()
        code_running_pickle(model / "pytorch_model.bin", folder / MARKER)
        load_unified(model)

    def resume(*names: str) -> Callable[[Path], object]:
        return lambda folder: resume_unified(base, folder, names)

    load, train = "load_unified / semhitok-qwen", "semhitok-qwen train --resume"
    return [
        _attempt(root, f"{PICKLE} as pytorch_model.bin of an MLLM folder, no model.safetensors",
                 load, bin_only, OSError, "model.safetensors"),
        _attempt(root, "MLLM folder whose tokenizer_config.json maps to code in the folder",
                 load, lambda f: load_unified(remote_code_tokenizer(copy(f), f / MARKER)),
                 ValueError, "trust_remote_code"),
        _attempt(root, f"{PICKLE} as rng_state.pth of an MLLM training checkpoint", train,
                 resume("rng_state.pth"), pickle.UnpicklingError, "posix.system"),
        _attempt(root, f"{PICKLE} as optimizer.pt and scheduler.pt of an MLLM checkpoint", train,
                 resume("optimizer.pt", "scheduler.pt"), pickle.UnpicklingError, "posix.system"),
    ]  # fmt: skip


def resume_unified(model: Path, folder: Path, hostile: tuple[str, ...]) -> None:
    """``semhitok-qwen train --resume`` from a checkpoint of ``model`` holding hostile files."""
    from transformers import TrainerState

    from semhitok_qwen.train import add_arguments, run

    checkpoint = folder / "checkpoint-1"
    checkpoint.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model / name, checkpoint / name)
    TrainerState(global_step=0, max_steps=1, train_batch_size=2).save_to_json(
        str(checkpoint / "trainer_state.json")
    )
    for name in hostile:
        code_running_pickle(checkpoint / name, folder / MARKER)
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(4)))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = folder / "out"
    paths = {"--model": model, "--data": data, "--output-dir": out, "--resume": checkpoint}
    flags = [x for flag, path in paths.items() for x in (flag, str(path))]
    flags += ["--max-steps", "1", "--batch-size", "2", "--num-workers", "0", "--report-to", "none"]
    run(parser.parse_args(flags))


class ShardRead(NamedTuple):
    trained: int  # images in the training loader's first batch (of up to 3)
    evaluated: int  # images in one evaluation pass
    skipped: int  # samples skipped and counted, by both
    written: list[Path]  # files that appeared where the members' names point


def read_shard(shard: Path) -> ShardRead:
    """Read ``shard`` with the training loader and one evaluation pass, from the shard's folder
    (where relative member names would resolve), watching the folder two levels up (where
    ``../../`` points) and the absolute members' paths for new files."""
    from semhitok_plugin.data import DataConfig, ImageStream, eval_batches

    sandbox, config = shard.parents[1], DataConfig(str(shard), image_size=32, shuffle_buffer=0)
    before = set(sandbox.rglob("*"))
    with contextlib.chdir(shard.parent):
        first = next(iter(ImageStream(config, batch_size=3)))
        batches = list(eval_batches(config, batch_size=8))
    absolute = [Path(n) for n in ESCAPING_MEMBERS if Path(n).is_absolute() and Path(n).exists()]
    return ShardRead(
        trained=len(first["images"]),
        evaluated=sum(len(b["images"]) for b in batches if b["images"] is not None),
        skipped=first["skipped"] + sum(b["skipped"] for b in batches),
        written=sorted(set(sandbox.rglob("*")) - before) + absolute,
    )


def _shard_probe(root: Path) -> Probe:
    read = read_shard(traversal_shard(root / "shard" / "a" / "b" / "shard.tar"))
    regular = 1 + len(ESCAPING_MEMBERS)
    outcome = (
        f"all {regular} regular members read in memory (training {read.trained}, evaluation "
        f"{read.evaluated}, {read.skipped} skipped), {len(LINK_MEMBERS)} link members ignored; "
        f"files written: {len(read.written)}"
    )
    ok = read.trained == read.evaluated == regular and read.skipped == 0 and not read.written
    return Probe(
        FAMILY,
        f"tar shard with members {', '.join(ESCAPING_MEMBERS)} and links out",
        "training loader (ImageStream) and semhitok evaluate (eval_batches)",
        outcome,
        ok,
    )


def probe(directory: Path) -> list[Probe]:
    """Write every hostile file under ``directory`` and feed it to the library's loaders."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    probes = []
    for group in (_folder_probes, _config_probes, _mllm_probes):
        root = directory / group.__name__.strip("_")
        root.mkdir()
        probes += group(root)
    return [*probes, _shard_probe(directory)]


__all__ = [
    "ESCAPING_MEMBERS",
    "FAMILY",
    "LINK_MEMBERS",
    "MARKER",
    "RunsCode",
    "ShardRead",
    "code_running_pickle",
    "object_array_npy",
    "object_array_npz",
    "probe",
    "python_tag",
    "python_tag_yaml",
    "read_shard",
    "remote_code_tokenizer",
    "resume_training",
    "resume_unified",
    "traversal_shard",
]
