import json
import time

import pytest
import timm
import torch
from safetensors.torch import save_file

from semhitok_plugin import CheckpointMismatchError, ConfigError, SemHiTok, WeightsNotFoundError
from semhitok_plugin.model import load_model, resolve_config


def test_save_load_is_bit_exact(tiny_model, photos, tmp_path):
    tiny_model.train()(photos, stage="semantic")  # non-trivial EMA state
    tiny_model.eval().save_pretrained(tmp_path)
    loaded = SemHiTok.from_pretrained(tmp_path)
    assert loaded.config == tiny_model.config
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    a, b = tiny_model.encode(photos), loaded.encode(photos)
    assert torch.equal(a.flat_ids, b.flat_ids)
    assert torch.equal(tiny_model.decode(a.flat_ids), loaded.decode(b.flat_ids))


def test_checkpoint_is_self_contained_offline(tiny_model, tmp_path):
    """The config names hub teacher weights that cannot be fetched; loading still works,
    because every weight, the teacher's included, comes from the checkpoint."""
    tiny_model.config.teacher.weights = "timm/unreachable-teacher"
    tiny_model.save_pretrained(tmp_path)
    loaded = SemHiTok.from_pretrained(tmp_path)
    for key, value in tiny_model.teacher.state_dict().items():
        assert torch.equal(value, loaded.teacher.state_dict()[key])


def test_mismatched_config_names_the_offending_weights(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["semantic"]["codebook_size"] = 32
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointMismatchError,
        match=r"semantic_codebook.codebook: checkpoint "
        r"\(64, 8\) vs config \(32, 8\)",
    ):
        SemHiTok.from_pretrained(tmp_path)


def test_unknown_config_keys_are_rejected(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["pixel"]["subcodebook_size"] = 8  # typo of sub_codebook_size
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"config.pixel has unknown keys \['subcodebook_size'\]"):
        SemHiTok.from_pretrained(tmp_path)


def tiny_timm_teacher(tiny_config):
    t = tiny_config.teacher
    torch.manual_seed(123)
    return timm.create_model(t.model_name, pretrained=False, img_size=64, **t.model_kwargs).eval()


@pytest.mark.parametrize("layout", ["dir-safetensors", "file-bin"])
def test_teacher_weights_load_through_the_real_path(tiny_config, photos, tmp_path, layout):
    reference = tiny_timm_teacher(tiny_config)
    if layout == "dir-safetensors":
        save_file(reference.state_dict(), str(tmp_path / "model.safetensors"))
        tiny_config.teacher.weights = str(tmp_path)
    else:
        torch.save(reference.state_dict(), tmp_path / "weights.bin")
        tiny_config.teacher.weights = str(tmp_path / "weights.bin")
    model = SemHiTok(tiny_config)
    with torch.no_grad():
        expected = reference.forward_features(photos)  # final norm, patch tokens (no prefix)
    torch.testing.assert_close(model.teacher(photos), expected, rtol=0, atol=0)


def test_teacher_feature_layer_is_configurable(tiny_config, photos):
    reference = tiny_timm_teacher(tiny_config)
    tiny_config.teacher.feature_layer, tiny_config.teacher.feature_norm = 0, False
    model = SemHiTok(tiny_config, load_teacher_weights=False)
    model.teacher.backbone.module.load_state_dict(reference.state_dict())
    first_block = []  # the first block's output (no final norm) in timm's own forward
    reference.blocks[0].register_forward_hook(lambda module, args, out: first_block.append(out))
    with torch.no_grad():
        reference.forward_features(photos)
    torch.testing.assert_close(model.teacher(photos), first_block[0])


def test_teacher_stays_frozen_in_training_mode(tiny_model):
    tiny_model.train()
    assert not tiny_model.teacher.training
    assert not any(p.requires_grad for p in tiny_model.teacher.parameters())


def test_offline_hub_teacher_fails_fast_with_a_clear_message(tiny_config):
    tiny_config.teacher.weights = "some-org/missing-siglip"
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as err:
        SemHiTok(tiny_config)
    assert time.monotonic() - start < 5
    message = str(err.value)
    for part in ("some-org/missing-siglip", "HF_HUB_OFFLINE=1", "--teacher-weights"):
        assert part in message


def test_missing_local_teacher_path_names_it(tiny_config, tmp_path):
    tiny_config.teacher.weights = str(tmp_path / "nowhere" / "teacher.safetensors")
    with pytest.raises(WeightsNotFoundError, match=r"nowhere/teacher\.safetensors"):
        SemHiTok(tiny_config)


def test_load_model_rejects_unknown_specs():
    with pytest.raises(WeightsNotFoundError, match="not a preset"):
        load_model("no such model!")


def test_a_spec_names_one_place_for_config_and_weights(tiny_model, tmp_path, monkeypatch):
    """A directory called like a preset is a checkpoint for the config and the weights alike."""
    monkeypatch.chdir(tmp_path)
    assert resolve_config("tiny") == (tiny_model.config, "preset")
    tiny_model.config.semantic.commitment_weight = 0.5  # a config no preset has
    tiny_model.save_pretrained(tmp_path / "tiny")
    config, kind = resolve_config("tiny")
    assert config == tiny_model.config and kind == "checkpoint (tiny)"
    assert load_model("tiny").config == tiny_model.config
    assert resolve_config("tiny/config.json")[0] == tiny_model.config


def test_open_clip_teacher_backend(tiny_config, photos, tmp_path):
    open_clip = pytest.importorskip("open_clip")
    arch = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 64,
            "layers": 2,
            "width": 32,
            "patch_size": 8,
            "head_width": 16,
        },
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
    }
    (tmp_path / "tiny-clip-test.json").write_text(json.dumps(arch))
    open_clip.add_model_config(tmp_path / "tiny-clip-test.json")
    torch.manual_seed(7)
    clip = open_clip.create_model("tiny-clip-test").eval()
    torch.save(clip.state_dict(), tmp_path / "open_clip_pytorch_model.bin")  # full CLIP checkpoint
    tiny_config.teacher.backend = "open_clip"
    tiny_config.teacher.model_name = "tiny-clip-test"
    tiny_config.teacher.model_kwargs = {}
    tiny_config.teacher.weights = str(tmp_path)
    model = SemHiTok(tiny_config)
    clip.visual.output_tokens = True
    with torch.no_grad():
        _, expected = clip.visual(photos)  # open_clip's own token output (after ln_post)
    assert model.teacher.embed_dim == 32
    torch.testing.assert_close(model.teacher(photos), expected)
