"""SemHiTok inside LLaVA-v1.5, through LLaVA's own code (llava-torch 1.2.2, tiny random Llama).

The module fixture builds the smoke run's tiny world (``semhitok_fixtures.llava_smoke``:
SentencePiece Llama tokenizer, random 2-layer Llama, four real photos, LLaVA-format JSON, tiny
SemHiTok), then runs LLaVA's ``train()`` twice like the v1.5 recipe: a projector-only pretrain in
a fresh interpreter through the ``python -m semhitok_llava.train`` launcher, and a finetune that
loads its ``mm_projector.bin``, in this process so the trained model can be compared with what
LLaVA reloads from disk.
"""

import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import ClassVar

import llava.train.train as llava_train
import pytest
import torch
from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model import LlavaConfig, LlavaLlamaForCausalLM
from llava.model.builder import load_pretrained_model
from PIL import Image
from transformers import LlamaTokenizer

from semhitok_fixtures.llava_smoke import QUESTION, build_world, losses, train_args, vqa_args
from semhitok_llava import train as launcher
from semhitok_llava.compat import (
    NamingImageModule,
    check_transformers_for_training,
    name_image_errors,
)
from semhitok_llava.tower import SemHiTokVisionTower, weights_digest
from semhitok_plugin import (
    CheckpointMismatchError,
    ConfigError,
    SemHiTok,
    SemHiTokConfig,
)
from semhitok_plugin.images import ImageReadError
from semhitok_plugin.plugins import activate

activate("llava")  # through the entry point, as every launcher does


class RecordingTrainer(llava_train.LLaVATrainer):
    """LLaVA's trainer, remembering itself and the projector it started from."""

    runs: ClassVar[list] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        projector = self.model.get_model().mm_projector.state_dict()
        self.initial_projector = {k: v.clone() for k, v in projector.items()}
        RecordingTrainer.runs.append(self)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava")
    build_world(root)
    pretrain, finetune = root / "llava-tiny-pretrain", root / "llava-tiny-finetune"
    subprocess.run(  # a fresh interpreter: the launcher finds the plugin by its entry point
        [sys.executable, "-m", "semhitok_llava.train", *train_args(root, "pretrain", pretrain)],
        check=True,
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    mp = pytest.MonkeyPatch()
    mp.setattr(llava_train, "LLaVATrainer", RecordingTrainer)
    try:
        launcher.main(train_args(root, "finetune", finetune))
    finally:
        mp.undo()
    trainer = RecordingTrainer.runs[-1]
    return types.SimpleNamespace(
        root=root, pretrain=pretrain, finetune=finetune, trainer=trainer, model=trainer.model
    )


@pytest.mark.slow
def test_pretrain_and_finetune_run_through_llava_train_and_the_loss_falls(world):
    for run in (world.pretrain, world.finetune):
        curve = losses(run)
        assert len(curve) == 12
        assert sum(curve[-3:]) / 3 < curve[0], (run.name, curve)
    # the pretrain saved only the Dual-MLP, under mm_projector, as LLaVA's adapter file
    adapter = torch.load(world.pretrain / "mm_projector.bin", weights_only=True)
    assert adapter and all(k.startswith("model.mm_projector.") for k in adapter)
    assert {k.split(".")[2] for k in adapter} == {"semantic", "pixel"}
    # ... and the finetune started from exactly those weights
    started = world.trainer.initial_projector
    assert started.keys() == {k.removeprefix("model.mm_projector.") for k in adapter}
    for key, value in adapter.items():
        assert torch.equal(started[key.removeprefix("model.mm_projector.")], value)


def test_checkpoint_config_records_the_tower_and_projector_sizes(world):
    config = json.loads((world.finetune / "config.json").read_text())
    tokenizer = SemHiTok.from_pretrained(world.root / "tokenizer")
    assert config["mm_vision_tower"] == f"semhitok:{world.root / 'tokenizer'}"
    assert config["mm_semhitok"]["sha256"] == weights_digest(tokenizer)
    assert SemHiTokConfig.from_dict(config["mm_semhitok"]["config"]) == tokenizer.config
    teacher_width, pixel_dim = tokenizer.teacher.embed_dim, tokenizer.config.pixel.code_dim
    assert config["mm_hidden_size"] == teacher_width + pixel_dim
    assert (config["mm_semantic_hidden_size"], config["mm_pixel_hidden_size"]) == (
        teacher_width,
        pixel_dim,
    )


def _prompt_inputs(tokenizer, image_processor, model_config, image_file):
    """What model_vqa_loader feeds ``generate`` for one question (vicuna_v1 prompt)."""
    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], f"<image>\n{QUESTION}")
    conv.append_message(conv.roles[1], None)
    ids = tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, "pt")[None]
    pixels = process_images([Image.open(image_file).convert("RGB")], image_processor, model_config)
    return ids, pixels


@pytest.fixture(scope="module")
def reloaded(world):
    return load_pretrained_model(
        str(world.finetune), None, world.finetune.name, device="cpu", device_map="cpu"
    )


def test_reload_rebuilds_the_same_tower_and_gives_identical_logits(world, reloaded):
    tokenizer, model, image_processor, _ = reloaded
    tower = model.get_vision_tower()
    assert isinstance(tower, SemHiTokVisionTower) and tower.is_loaded
    assert tower.weights_sha256 == world.model.get_vision_tower().weights_sha256
    image = world.root / "images" / "astronaut.png"
    ids, pixels = _prompt_inputs(tokenizer, image_processor, model.config, image)
    # LLaVA's loader reads the weights as float16 (the rotary inv_freq, not a weight, stays
    # float32); cast the trained model's weights the same way
    trained = copy.deepcopy(world.model).eval()
    weights = trained.state_dict().keys()
    for name, tensor in [*trained.named_parameters(), *trained.named_buffers()]:
        if name in weights:
            tensor.data = tensor.data.half()
    with torch.inference_mode():
        expected = trained(input_ids=ids, images=pixels.half()).logits
        got = model(input_ids=ids, images=pixels.half()).logits
    assert got.dtype == torch.float16 and torch.equal(got, expected)


def test_reload_does_not_report_the_tower_weights_as_unused(world, caplog):
    load_pretrained_model(str(world.finetune), None, world.finetune.name, device="cpu")
    assert "were not used" not in caplog.text  # the tower comes from its spec, by design


def _greedy_without_cache(model, tokenizer, ids, pixels, steps):
    out = []
    for _ in range(steps):
        with torch.inference_mode():
            logits = model(input_ids=ids, images=pixels, use_cache=False).logits[0, -1]
        token = int(logits.argmax())
        if token == tokenizer.eos_token_id:
            break
        out.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokenizer.decode(out, skip_special_tokens=True).strip()


@pytest.mark.slow
def test_model_vqa_loader_answers_with_cached_greedy_generate(world, reloaded):
    answers = world.root / "answers" / "answers.jsonl"
    console_script = str(Path(sys.executable).parent / "semhitok-llava-vqa")
    subprocess.run(
        [console_script, *vqa_args(world.root, world.finetune, answers, max_new_tokens=6)],
        check=True,
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    names = [json.loads(q)["image"] for q in (world.root / "questions.jsonl").open()]
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [r["question_id"] for r in rows] == [0, 1]
    tokenizer, model, image_processor, _ = reloaded
    for row, name in zip(rows, names, strict=True):
        image = world.root / "images" / name
        ids, pixels = _prompt_inputs(tokenizer, image_processor, model.config, image)
        expected = _greedy_without_cache(model, tokenizer, ids, pixels.half(), steps=6)
        assert row["text"] == expected


@pytest.mark.parametrize("select", ["patch", "semantic", "code"])
def test_tower_features_are_a_function_of_the_discrete_ids(world, photos, select):
    args = types.SimpleNamespace(mm_vision_select_feature=select)
    tower = SemHiTokVisionTower(f"semhitok:{world.root / 'tokenizer'}", args)
    features = tower(photos)
    ids = tower.tokenizer.encode(photos).flat_ids
    assert features.shape == (4, tower.num_patches, tower.hidden_size)
    assert torch.equal(features, tower.features_from_ids(ids))


def _llava_model(world, projector, select):
    config = LlavaConfig.from_pretrained(world.root / "llm")
    model = LlavaLlamaForCausalLM(config)
    args = types.SimpleNamespace(
        vision_tower=f"semhitok:{world.root / 'tokenizer'}",
        mm_vision_select_layer=-2,
        mm_vision_select_feature=select,
        pretrain_mm_mlp_adapter=None,
        mm_patch_merge_type="flat",
        mm_projector_type=projector,
    )
    model.get_model().initialize_vision_modules(args)
    return model


@pytest.mark.parametrize(
    ("projector", "select"),
    [("linear", "patch"), ("mlp2x_gelu", "semantic"), ("mlp2x_gelu", "code"),
     ("dual_mlp2x_gelu", "patch"), ("dual_mlp2x_gelu", "code")],
)  # fmt: skip
def test_projectors_run_on_semhitok_features_and_rebuild_from_config(
    world, photos, projector, select
):
    model = _llava_model(world, projector, select)
    tower = model.get_vision_tower()
    assert model.config.mm_hidden_size == tower.hidden_size
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 7]] * 2)
    logits = model(input_ids=ids, images=photos[:2]).logits
    assert logits.shape == (2, 3 + tower.num_patches, model.config.vocab_size)
    # a reload builds tower and projector from the saved config alone
    reloaded = LlavaLlamaForCausalLM(LlavaConfig.from_dict(model.config.to_dict()))
    shapes = {k: v.shape for k, v in model.state_dict().items() if "mm_projector" in k}
    assert shapes == {k: v.shape for k, v in reloaded.state_dict().items() if "mm_projector" in k}


def test_dual_mlp_needs_both_feature_groups(world):
    with pytest.raises(ValueError, match="gives semantic features only"):
        _llava_model(world, "dual_mlp2x_gelu", "semantic")


def test_dual_mlp_needs_a_semhitok_tower():
    from semhitok_llava.projector import DualMLPProjector

    config = types.SimpleNamespace(mm_vision_tower="openai/clip-vit-large-patch14-336")
    with pytest.raises(ValueError, match="needs --vision_tower semhitok"):
        DualMLPProjector.from_config(config)


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("semhitok:no-such-preset", "no-such-preset"),
        ("semhitok:/nonexistent/semhitok-tokenizer", "/nonexistent/semhitok-tokenizer"),
        ("semhitok:someone/missing-tokenizer", "offline"),
    ],
)
def test_a_wrong_tower_spec_fails_naming_it(spec, named):
    from llava.model import llava_arch

    with pytest.raises(Exception, match=named) as info:
        llava_arch.build_vision_tower(types.SimpleNamespace(vision_tower=spec))
    assert spec.removeprefix("semhitok:") in str(info.value)


def test_reload_refuses_a_tokenizer_that_changed(world):
    config = json.loads((world.finetune / "config.json").read_text())
    record = {**config["mm_semhitok"], "sha256": "0" * 64}
    args = types.SimpleNamespace(mm_semhitok=record, mm_vision_select_feature="patch")
    tower = SemHiTokVisionTower(config["mm_vision_tower"], args, delay_load=True)
    with pytest.raises(CheckpointMismatchError, match="not the ones this LLaVA checkpoint"):
        tower.load_model()


def test_finetune_refuses_an_adapter_pretrained_on_another_tokenizer(world, tmp_path):
    adapter_dir = tmp_path / "other-pretrain"
    adapter_dir.mkdir()
    config = json.loads((world.pretrain / "config.json").read_text())
    config["mm_semhitok"]["sha256"] = "f" * 64
    (adapter_dir / "config.json").write_text(json.dumps(config))
    shutil.copy(world.pretrain / "mm_projector.bin", adapter_dir)
    model = LlavaLlamaForCausalLM(LlavaConfig.from_pretrained(world.root / "llm"))
    args = types.SimpleNamespace(
        vision_tower=f"semhitok:{world.root / 'tokenizer'}",
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        pretrain_mm_mlp_adapter=str(adapter_dir / "mm_projector.bin"),
        mm_patch_merge_type="flat",
        mm_projector_type="dual_mlp2x_gelu",
    )
    with pytest.raises(CheckpointMismatchError, match="was trained on SemHiTok"):
        model.get_model().initialize_vision_modules(args)


def test_an_undecodable_image_fails_with_its_file_name(world, monkeypatch):
    broken = world.root / "images" / "broken.png"
    broken.write_bytes((world.root / "images" / "coffee.png").read_bytes()[:300])
    # the launcher made LLaVA's training loader name bad files ...
    assert isinstance(llava_train.Image, NamingImageModule)
    data = world.root / "broken.json"
    turns = [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]
    data.write_text(json.dumps([{"id": "b", "image": "broken.png", "conversations": turns}]))
    tokenizer = LlamaTokenizer.from_pretrained(world.root / "llm")
    tower = world.model.get_vision_tower()
    data_args = types.SimpleNamespace(
        image_folder=str(world.root / "images"),
        image_processor=tower.image_processor,
        image_aspect_ratio="pad",
        is_multimodal=True,
        mm_use_im_start_end=False,
    )
    dataset = llava_train.LazySupervisedDataset(str(data), tokenizer, data_args)
    with pytest.raises(ImageReadError, match=r"broken\.png"):
        dataset[0]
    # ... and the same shim serves model_vqa_loader's dataset
    import llava.eval.model_vqa_loader as vqa

    name_image_errors(vqa)
    monkeypatch.setattr(vqa, "args", types.SimpleNamespace(conv_mode="vicuna_v1"), raising=False)
    questions = [{"question_id": 0, "image": "broken.png", "text": QUESTION}]
    loader = vqa.CustomDataset(
        questions, str(world.root / "images"), tokenizer, tower.image_processor, world.model.config
    )
    with pytest.raises(ImageReadError, match=r"broken\.png"):
        loader[0]
    broken.unlink()


@pytest.mark.slow
def test_an_import_error_inside_llava_is_reported_not_swallowed():
    code = (
        "import sys; sys.modules['llava.mm_utils'] = None\n"
        "from semhitok_plugin.plugins import activate\n"
        "activate('llava')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "LlavaImportError" in result.stderr and "llava.mm_utils" in result.stderr


def test_training_refuses_a_transformers_version_known_to_break(monkeypatch):
    import transformers

    monkeypatch.setattr(transformers, "__version__", "4.53.0")
    with pytest.raises(RuntimeError, match="_get_train_sampler"):
        check_transformers_for_training()
    monkeypatch.setattr(transformers, "__version__", "4.46.3")
    check_transformers_for_training()  # the pinned version passes


def test_activate_names_the_installed_integrations():
    with pytest.raises(ConfigError, match="known: llamagen, llava"):
        activate("no-such-framework")


def test_the_smoke_run_is_a_dev_script_run_from_the_repository_root():
    """``PYTHONPATH=tests python -m semhitok_fixtures.llava_smoke`` (the README's command); the
    shipped ``semhitok_llava`` carries no smoke module."""
    env = {**os.environ, "PYTHONPATH": "tests"}
    result = subprocess.run(
        [sys.executable, "-m", "semhitok_fixtures.llava_smoke", "--help"],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m semhitok_fixtures.llava_smoke")
    assert importlib.util.find_spec("semhitok_llava.smoke") is None
