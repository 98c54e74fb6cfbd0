"""SemHiTok against LlamaGen's VQ-model contract, call site by call site.

Each test repeats what a LlamaGen script does with its tokenizer (FoundationVision/LlamaGen,
file named in the test) and checks the result. LlamaGen is not on PyPI: with
``LLAMAGEN_PATH=/path/to/LlamaGen`` the registration tests run against that checkout (the
``llamagen_root`` fixture in conftest.py); without it, against stand-in modules at LlamaGen's
import paths.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import LLAMAGEN

from semhitok_llamagen import LlamaGenNotFoundError, SemHiTokVQModel, register, vq_model_factory
from semhitok_llamagen.export import export
from semhitok_llamagen.export import main as export_main
from semhitok_plugin import CheckpointMismatchError, SemHiTok, TokenIdError, get_preset
from semhitok_plugin.plugins import activate


@pytest.fixture(scope="module")
def vq():
    torch.manual_seed(0)
    return SemHiTokVQModel(SemHiTok(get_preset("tiny")), "tiny")


def test_encode_unpacks_as_extract_codes_c2i_does(vq, photos):
    # autoregressive/train/extract_codes_c2i.py (batch size 1): x_all = cat([x, flip(x)]);
    # _, _, [_, _, indices] = vq_model.encode(x_all); codes = indices.reshape(1, num_aug, -1)
    x = photos[2:3]
    x_all = torch.cat([x, torch.flip(x, dims=[-1])])
    quant, _, [_, _, indices] = vq.encode(x_all)
    assert indices.dtype == torch.int64 and indices.shape == (2 * 8 * 8,)
    codes = indices.reshape(x.shape[0], 2, -1)
    flat = vq.tokenizer.encode(x_all).flat_ids  # (2, h, w): raster order per image
    assert torch.equal(codes[0], flat.flatten(1))
    assert quant.shape == (2, vq.embed_dim, 8, 8)


def test_quant_is_the_semantic_and_pixel_code_of_each_cell(vq, photos):
    quant, _, (_, _, indices) = vq.encode(photos)
    sem, pix = vq.tokenizer.embed_ids(indices.view(len(photos), -1))
    cell = quant[1, :, 3, 5]  # row 3, column 5 = raster position 3 * 8 + 5
    torch.testing.assert_close(cell, torch.cat([sem[1, 29], pix[1, 29]]))


@pytest.mark.parametrize("layout", ["int32 (B, h*w)", "int64 (B*h*w,)"])
def test_decode_code_takes_both_layouts_and_ignores_the_cli_channel_count(vq, photos, layout):
    # autoregressive/sample/sample_c2i.py: qzshape = [n, args.codebook_embed_dim, latent, latent];
    # samples = vq_model.decode_code(index_sample, qzshape)  (codebook_embed_dim: a CLI value)
    _, _, (_, _, indices) = vq.encode(photos)
    codes = indices.view(4, -1).int() if layout.startswith("int32") else indices
    qzshape = [4, 8, 8, 8]  # LlamaGen's default --codebook-embed-dim 8, not our 12 channels
    samples = vq.decode_code(codes, qzshape)
    assert torch.equal(samples, vq.tokenizer.decode(indices.view(4, 8, 8)))
    assert samples.shape == (4, 3, 64, 64)


def test_decode_matches_decode_code_and_reconstruct(vq, photos):
    quant, _, (_, _, indices) = vq.encode(photos)
    assert torch.equal(vq.decode(quant), vq.decode_code(indices, [4, 0, 8, 8]))
    assert torch.equal(vq.decode(quant), vq.tokenizer.reconstruct(photos))


def test_decode_code_names_a_wrong_grid_and_out_of_range_ids(vq):
    with pytest.raises(TokenIdError, match=r"16x16 grid.*8x8.*--image-size 64"):
        vq.decode_code(torch.zeros(2, 256, dtype=torch.int32), [2, 8, 16, 16])
    with pytest.raises(TokenIdError, match=r"outside the valid range \[0, 256\)"):
        vq.decode_code(torch.full((1, 64), 256), [1, 8, 8, 8])


def test_exported_checkpoint_loads_strictly_as_the_scripts_load_it(vq, tmp_path, photos):
    export_path = tmp_path / "semhitok.pt"
    vq.tokenizer.save_pretrained(tmp_path / "tok")
    export(str(tmp_path / "tok"), export_path)
    # sample_c2i.py: vq_model = VQ_models[args.vq_model](codebook_size=..., codebook_embed_dim=...)
    # checkpoint = torch.load(args.vq_ckpt, map_location="cpu")  (weights_only: tensors only)
    # vq_model.load_state_dict(checkpoint["model"])
    vq_model = vq_model_factory("tiny")(codebook_size=256, codebook_embed_dim=8)
    checkpoint = torch.load(export_path, map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in checkpoint["model"].values())
    vq_model.load_state_dict(checkpoint["model"])
    vq_model.eval()
    _, _, (_, _, indices) = vq.encode(photos)
    assert torch.equal(vq_model.decode_code(indices, [4, 8, 8, 8]), vq.decode_code(indices))


def test_export_prints_flags_each_llamagen_script_accepts(vq, tmp_path, capsys):
    vq.tokenizer.save_pretrained(tmp_path / "tok")
    assert export_main(["--model", str(tmp_path / "tok"), "-o", str(tmp_path / "vq.pt")]) == 0
    lines = capsys.readouterr().out.splitlines()
    grid = "--image-size 64 --downsample-size 8"
    assert (
        lines[1]
        == f"name it for LlamaGen: export SEMHITOK_LLAMAGEN_MODELS=my-semhitok={tmp_path / 'tok'}"
    )
    assert lines[2] == f"train_c2i.py: --vocab-size 256 {grid}"
    assert lines[3] == (
        f"sample_c2i*.py: --vq-model my-semhitok --vq-ckpt {tmp_path / 'vq.pt'} "
        f"--codebook-size 256 --codebook-embed-dim 12 {grid}"
    )


def test_a_checkpoint_that_does_not_fit_is_named(vq):
    state = vq.state_dict()
    state.pop("tokenizer.pixel_quantizer.codebooks")
    model = vq_model_factory("tiny")(codebook_size=256, codebook_embed_dim=8)
    with pytest.raises(
        CheckpointMismatchError, match=r"SemHiTokVQModel\('tiny'\).*missing: tokenizer.pixel_q"
    ):
        model.load_state_dict(state)


def test_factory_explains_the_right_codebook_size():
    with pytest.raises(CheckpointMismatchError, match=r"--codebook-size 256.*--vocab-size 256"):
        vq_model_factory("tiny")(codebook_size=16384, codebook_embed_dim=8)


# -- registration ---------------------------------------------------------------------------------
def test_register_adds_the_presets_to_llamagens_vq_models(llamagen_root, monkeypatch):
    monkeypatch.setenv("SEMHITOK_LLAMAGEN_MODELS", "my-tok=tiny")
    added = register()
    from tokenizer.tokenizer_image.vq_model import VQ_models

    assert {"SemHiTok-16", "SemHiTok-14-384", "my-tok"} <= set(added) <= set(VQ_models)
    assert {"VQ-16", "VQ-8"} <= set(VQ_models)  # LlamaGen's own stay
    model = VQ_models["my-tok"](codebook_size=256, codebook_embed_dim=8)
    assert isinstance(model, SemHiTokVQModel) and model.codebook_size == 256


def test_the_semhitok_entry_point_activates_the_registration(llamagen_root):
    activate("llamagen")  # what a user's code (or a plugin host) calls
    from tokenizer.tokenizer_image.vq_model import VQ_models

    assert "SemHiTok-16" in VQ_models


def test_register_without_llamagen_says_how_to_get_it(monkeypatch):
    for name in [m for m in sys.modules if m == "tokenizer" or m.startswith("tokenizer.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != LLAMAGEN])
    with pytest.raises(LlamaGenNotFoundError, match=r"clone https://github\.com/FoundationVision"):
        register()


@pytest.mark.slow
def test_the_launcher_runs_a_script_with_semhitok_registered(llamagen_root, tmp_path):
    script = tmp_path / "sample.py"
    script.write_text(
        textwrap.dedent(
            """
            import argparse
            from tokenizer.tokenizer_image.vq_model import VQ_models
            parser = argparse.ArgumentParser()
            parser.add_argument("--vq-model", choices=list(VQ_models.keys()))
            parser.add_argument("--codebook-size", type=int)
            parser.add_argument("--downsample-size", type=int, choices=[8, 16], default=16)
            args = parser.parse_args()
            model = VQ_models[args.vq_model](codebook_size=args.codebook_size, codebook_embed_dim=8)
            # sample_t2i.py builds the GPT without vocab_size
            from autoregressive.models.gpt import GPT_models
            gpt = GPT_models["GPT-B"](block_size=64, cls_token_num=120, model_type="t2i")
            print(type(model).__name__, model.codebook_size, args.downsample_size)
            print(gpt["vocab_size"], GPT_models["GPT-B"](vocab_size=7)["vocab_size"])
            """
        )
    )
    env = {**os.environ, "SEMHITOK_LLAMAGEN_MODELS": "tiny-tok=tiny"}
    # --downsample-size 14 (the 384 px preset's /14 teacher) is outside LlamaGen's choices
    sample_args = ["--vq-model", "tiny-tok", "--codebook-size", "256", "--downsample-size", "14"]
    out = subprocess.run(
        [sys.executable, "-m", "semhitok_llamagen.run", str(script), *sample_args],
        capture_output=True,
        text=True,
        cwd=llamagen_root,
        env=env,
    )
    assert out.stdout.split("\n")[:2] == ["SemHiTokVQModel 256 14", "256 7"], out.stderr[-2000:]
