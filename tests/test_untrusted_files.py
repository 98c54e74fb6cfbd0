"""Untrusted files: a pickle that would run code, a YAML Python tag, an object array or remote
tokenizer code is refused by every loader with an error naming the problem, and never runs
(its marker file is never created); a tar shard with members named outside its folder writes
nothing. The controls show each hostile file does run code when loaded unsafely."""

import builtins
import pickle

import numpy as np
import pytest
import torch
import yaml

from semhitok_fixtures.tiny_qwen import save_tiny_unified
from semhitok_fixtures.untrusted import (
    ESCAPING_MEMBERS,
    code_running_pickle,
    object_array_npy,
    object_array_npz,
    probe,
    python_tag,
    python_tag_yaml,
    read_shard,
    remote_code_tokenizer,
    resume_training,
    resume_unified,
    traversal_shard,
)
from semhitok_plugin import SemHiTok
from semhitok_plugin.checkpoint import load_checkpoint
from semhitok_plugin.evaluation import INCEPTION_FILE, VGG16_FILE, load_lpips
from semhitok_plugin.hub import UnsafeWeightsError, WeightsNotFoundError, load_state_dict
from semhitok_plugin.model import load_model
from semhitok_plugin.token_files import TokenFileError, read_tokens
from semhitok_plugin.training import TrainConfig
from semhitok_qwen import load_unified
from semhitok_qwen.train import load_stage_config


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "MARKER"


@pytest.fixture(scope="module")
def unified(tmp_path_factory):
    return save_tiny_unified(tmp_path_factory.mktemp("unified"))


def copy_unified(unified, tmp_path):
    import shutil

    return shutil.copytree(unified, tmp_path / "model", ignore=shutil.ignore_patterns("qwen"))


# -- controls: the hostile files are hostile -------------------------------------------------------
UNSAFE_LOADS = {
    "pickle": lambda d, m: torch.load(code_running_pickle(d / "p.pt", m), weights_only=False),
    "yaml": lambda d, m: yaml.unsafe_load(python_tag_yaml(d / "c.yaml", m).read_text()),
    "npz": lambda d, m: np.load(object_array_npz(d / "i.npz", m), allow_pickle=True)["flat_ids"],
}


@pytest.mark.parametrize("kind", UNSAFE_LOADS)
def test_control_the_hostile_file_runs_code_when_loaded_unsafely(tmp_path, marker, kind):
    UNSAFE_LOADS[kind](tmp_path, marker)
    assert marker.exists()


# -- torch files -----------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".pt", ".bin", ".pth", ".ckpt"])
def test_torch_loaders_refuse_code_running_pickle_and_name_the_file(tmp_path, marker, suffix):
    path = code_running_pickle(tmp_path / f"weights{suffix}", marker)
    for load in (load_state_dict, load_checkpoint):
        with pytest.raises(UnsafeWeightsError, match=r"posix\.system") as err:
            load(path)
        assert str(path) in str(err.value)
        assert "weights_only=False" not in str(err.value)  # never advise the unsafe load
    assert not marker.exists()


def test_training_resume_refuses_the_checkpoint_latest_names(tmp_path, marker):
    with pytest.raises(UnsafeWeightsError, match=r"checkpoints/step_00000002\.pt"):
        resume_training(tmp_path)
    assert not marker.exists()


def test_from_pretrained_reads_safetensors_only(tmp_path, tiny_model, marker):
    folder = tiny_model.save_pretrained(tmp_path / "model")
    code_running_pickle(folder / "pytorch_model.bin", marker)
    loaded = SemHiTok.from_pretrained(folder)  # the .bin beside the weights is never opened
    torch.testing.assert_close(loaded.state_dict(), tiny_model.state_dict())
    (folder / "model.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match=r"contains none of \['model.safetensors'\]"):
        load_model(str(folder))
    assert not marker.exists()


def test_teacher_and_lpips_weights_refuse_code_running_pickle(tmp_path, marker):
    code_running_pickle(tmp_path / "teacher" / "pytorch_model.bin", marker)
    with pytest.raises(UnsafeWeightsError, match=r"teacher/pytorch_model\.bin"):
        load_model("tiny", teacher_weights=str(tmp_path / "teacher"))
    lpips = code_running_pickle(tmp_path / VGG16_FILE, marker)
    with pytest.raises(UnsafeWeightsError, match=VGG16_FILE):
        load_lpips(str(lpips))
    assert not marker.exists()


# -- configs and arrays ----------------------------------------------------------------------------
def test_yaml_python_tags_are_refused_by_every_config_loader(tmp_path, marker):
    config = python_tag_yaml(tmp_path / "c.yaml", marker)
    loads = [
        lambda: TrainConfig.load(config),
        lambda: TrainConfig.load("demo_cpu/stage1", [f"stage={python_tag(marker)}"]),
        lambda: load_stage_config("pretrain", config),
    ]
    for load in loads:
        with pytest.raises(yaml.constructor.ConstructorError, match="python/object/apply:os"):
            load()
    assert not marker.exists()


def test_token_file_with_object_array_is_refused(tmp_path, tiny_model, marker):
    path = object_array_npz(tmp_path / "ids.npz", marker, tiny_model.grid_size)
    with pytest.raises(TokenFileError, match="allow_pickle=False") as err:
        read_tokens(path, tiny_model)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_llamagen_code_file_with_object_array_is_refused(tmp_path, marker):
    from semhitok_llamagen.dataset import CodeDataset

    object_array_npy(tmp_path / "codes" / "0.npy", marker)
    (tmp_path / "labels").mkdir()
    np.save(tmp_path / "labels" / "0.npy", np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="Object arrays cannot be loaded"):
        CodeDataset(tmp_path / "codes", tmp_path / "labels")[0]
    assert not marker.exists()


# -- the unified MLLM ------------------------------------------------------------------------------
def test_mllm_folder_weights_come_from_safetensors_only(unified, tmp_path, marker):
    model = copy_unified(unified, tmp_path)
    (model / "model.safetensors").unlink()
    code_running_pickle(model / "pytorch_model.bin", marker)
    with pytest.raises(OSError, match=r"no file named model\.safetensors"):
        load_unified(model)
    assert not marker.exists()


def test_mllm_tokenizer_code_is_refused_without_asking(unified, tmp_path, marker, monkeypatch):
    """transformers asks "run the custom code? [y/N]" unless trust_remote_code is given: a
    user answering yes would run it. The loader passes False, so nobody is asked."""
    asked = []
    monkeypatch.setattr(builtins, "input", lambda prompt="": asked.append(prompt) or "y")
    model = remote_code_tokenizer(copy_unified(unified, tmp_path), marker)
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_unified(model)
    assert asked == []
    assert not marker.exists()


@pytest.mark.parametrize("hostile", [("rng_state.pth",), ("optimizer.pt", "scheduler.pt")])
def test_mllm_resume_refuses_code_running_checkpoint_files(unified, tmp_path, marker, hostile):
    with pytest.raises(pickle.UnpicklingError, match=r"posix\.system"):
        resume_unified(unified, tmp_path, hostile)
    assert not marker.exists()


# -- tar shards ------------------------------------------------------------------------------------
def test_shard_members_named_outside_are_read_in_memory_and_nothing_is_written(tmp_path):
    shard = traversal_shard(tmp_path / "a" / "b" / "shard.tar")
    read = read_shard(shard)
    regular = 1 + len(ESCAPING_MEMBERS)  # "ok.jpg" too; the two link members are no samples
    assert (read.trained, read.evaluated, read.skipped) == (regular, regular, 0)
    assert read.written == []
    assert not (tmp_path / "escape.jpg").exists()


# -- the probe behind docs/bad-inputs.md -----------------------------------------------------------
UNSAFE = (
    "it holds more than tensors and plain values, and unpickling the rest could run arbitrary code "
    "(Trying to load unsupported GLOBAL posix.system whose module posix is blocked.)"
)
YAML_REFUSED = (
    "refused ConstructorError: could not determine a constructor for the tag "
    "'tag:yaml.org,2002:python/object/apply:os.system'"
)
POSIX_SYSTEM = "refused UnpicklingError: Trying to load unsupported GLOBAL posix.system"
# (start of the input's words, start of the outcome the probe must report), in probe order
UNTRUSTED_OUTCOMES = [
    ("pickle that runs `touch` as step_00000002.pt", "refused UnsafeWeightsError: refused to "
     f"load run/checkpoints/step_00000002.pt: {UNSAFE}"),
    ("pickle that runs `touch` as pytorch_model.bin of a save_pretrained folder", "refused "
     "WeightsNotFoundError: SemHiTok model.safetensors: directory model contains none of "
     "['model.safetensors']"),
    ("pickle that runs `touch` named model.safetensors", "refused SafetensorError: "),
    ("pickle that runs `touch` as pytorch_model.bin beside", "loaded from model.safetensors; "
     "pytorch_model.bin never opened"),
    ("pickle that runs `touch` as a teacher weights file", "refused UnsafeWeightsError: refused "
     f"to load t.ckpt: {UNSAFE}"),
    ("pickle that runs `touch` as pytorch_model.bin of a teacher folder", "refused "
     f"UnsafeWeightsError: refused to load teacher/pytorch_model.bin: {UNSAFE}"),
    ("pickle that runs `touch` as LPIPS VGG16 weights", "refused UnsafeWeightsError: refused to "
     f"load {VGG16_FILE}: {UNSAFE}"),
    ("pickle that runs `touch` as FID Inception weights", "refused UnsafeWeightsError: refused "
     f"to load {INCEPTION_FILE}: {UNSAFE}"),
    ("YAML with !!python/object/apply:os.system (a train config file)", YAML_REFUSED),
    ("YAML with !!python/object/apply:os.system (a key=value override)", YAML_REFUSED),
    ("YAML with !!python/object/apply:os.system (an MLLM stage config)", YAML_REFUSED),
    ("token file (.npz) whose flat_ids is a pickled object array", "refused TokenFileError: "
     "ids.npz: unreadable token archive: Object arrays cannot be loaded when allow_pickle=False"),
    ("LlamaGen code file (.npy) holding a pickled object array", "refused ValueError: Object "
     "arrays cannot be loaded when allow_pickle=False"),
    ("pickle that runs `touch` as pytorch_model.bin of an MLLM folder", "refused OSError: Error "
     "no file named model.safetensors found in directory model."),
    ("MLLM folder whose tokenizer_config.json maps to code", "refused ValueError: Loading model "
     "requires you to execute the configuration file in that repo on your local machine."),
    ("pickle that runs `touch` as rng_state.pth", POSIX_SYSTEM),
    ("pickle that runs `touch` as optimizer.pt and scheduler.pt", POSIX_SYSTEM),
    ("tar shard with members ../../escape.jpg, /abs/escape.jpg and links out", "all 3 regular "
     "members read in memory (training 3, evaluation 3, 0 skipped), 2 link members ignored; "
     "files written: 0"),
]  # fmt: skip


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    directory = tmp_path_factory.mktemp("untrusted")
    return directory, probe(directory)


@pytest.mark.slow
def test_the_untrusted_file_probes_are_those_expected_and_run_no_code(probed):
    directory, probes = probed
    assert len(probes) == len(UNTRUSTED_OUTCOMES)
    words = [w for w, _ in UNTRUSTED_OUTCOMES]
    assert [p.input[: len(w)] for p, w in zip(probes, words, strict=True)] == words
    assert not list(directory.rglob("MARKER"))  # no hostile file ran code anywhere


@pytest.mark.parametrize(
    "index, outcome",
    enumerate(o for _, o in UNTRUSTED_OUTCOMES),
    ids=[w for w, _ in UNTRUSTED_OUTCOMES],
)
def test_each_untrusted_file_probe_reports_its_outcome(probed, index, outcome):
    assert probed[1][index].outcome.startswith(outcome)


@pytest.mark.parametrize("name", ["../elsewhere/step_00000001.pt", "/tmp/step_00000001.pt", "x.pt"])
def test_a_tampered_latest_pointer_is_refused(tmp_path, name):
    """``latest`` may only name a step_*.pt file of its own directory, so a run never resumes from
    a file somewhere else, even one that exists."""
    from semhitok_plugin.checkpoint import latest_checkpoint, save_checkpoint

    folder = tmp_path / "checkpoints"
    save_checkpoint(folder, 1, {"step": 1})
    (tmp_path / "elsewhere").mkdir()
    save_checkpoint(tmp_path / "elsewhere", 1, {"step": 1})
    (folder / "latest").write_text(name)
    with pytest.raises(FileNotFoundError, match=f"names {name!r}, not a step_"):
        latest_checkpoint(folder)
