"""The ``semhitok-qwen`` command line, in process, on a tiny random model and real photos."""

import pytest
import torch
from PIL import Image

from semhitok_fixtures import tiny_qwen
from semhitok_fixtures.tiny_qwen import save_tiny_qwen, save_tiny_unified
from semhitok_plugin.samples import sample_photo
from semhitok_plugin.token_files import read_tokens
from semhitok_qwen import load_unified
from semhitok_qwen.cli import main
from semhitok_qwen.generation import chat, generate_image


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_unified(tmp_path_factory.mktemp("mllm"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_init_extends_a_qwen_checkpoint(tmp_path, capsys, dtype):
    qwen = save_tiny_qwen(tmp_path / "qwen")
    out = tmp_path / "m"
    name = str(dtype).removeprefix("torch.")
    assert (
        main(["init", "--qwen", str(qwen), "--tokenizer", "tiny", "--dtype", name, "-o", str(out)])
        == 0
    )
    assert "+ 256 image ids" in capsys.readouterr().out
    model, processor = load_unified(out, torch_dtype="auto")  # checks codebooks vs semhitok/
    assert model.dtype == dtype and model.image_embed.semantic_codes.dtype == torch.float32
    assert model.image_vocab.size == processor.image_tokenizer.vocab_size == 256


@pytest.mark.slow
def test_generate_writes_the_sampled_images_and_their_ids(model_dir, tmp_path):
    out = tmp_path / "gen"
    prompts = ["a photo of a cat", "a rocket"]
    assert main(["generate", "-m", str(model_dir), *prompts, "--seed", "5", "-o", str(out)]) == 0
    model, processor = load_unified(model_dir)
    ids, names = read_tokens(out / "tokens.npz", processor.image_tokenizer)
    expected = generate_image(model, processor, prompts, seed=5, decode=False).ids
    assert torch.equal(ids, expected)  # one batch of two prompts, seed 5, default CFG 4
    assert names == ["000.png", "001.png"]
    for name in names:
        assert Image.open(out / name).size == (64, 64)
    assert (out / "grid.png").is_file()


def test_chat_prints_the_greedy_answer(model_dir, tmp_path, capsys):
    photo = tmp_path / "cat.png"
    sample_photo("chelsea").save(photo)
    args = ["chat", "-m", str(model_dir), "--image", str(photo), "What is it?"]
    assert main([*args, "--max-new-tokens", "6"]) == 0
    model, processor = load_unified(model_dir)
    conversation = [[{"role": "user", "content": "<image>\nWhat is it?"}]]
    (expected,) = chat(model, processor, conversation, [[photo]], max_new_tokens=6)
    assert capsys.readouterr().out == expected + "\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dtype", "float8"], "unknown dtype 'float8'"),
        (["--image", "missing.png"], "missing.png"),
    ],
)
def test_bad_arguments_exit_2_naming_the_problem(model_dir, args, message, capsys):
    assert main(["chat", "-m", str(model_dir), *args, "hi"]) == 2
    assert message in capsys.readouterr().err


def test_a_folder_that_is_not_a_model_is_named(tmp_path, capsys):
    assert main(["generate", "-m", str(tmp_path), "a cat"]) == 2
    assert f"{tmp_path} is not a model folder: no config.json" in capsys.readouterr().err


def test_the_tiny_model_comes_from_a_dev_script_not_the_shipped_cli(tmp_path, capsys):
    """``PYTHONPATH=tests python -m semhitok_fixtures.tiny_qwen -o DIR`` (the README's smoke run)
    writes a loadable tiny model; ``semhitok-qwen`` itself has no test-only subcommand."""
    with pytest.raises(SystemExit):
        main(["tiny", "-o", str(tmp_path / "cli")])
    assert "invalid choice: 'tiny'" in capsys.readouterr().err
    assert tiny_qwen.main(["-o", str(tmp_path / "tiny"), "--seed", "1"]) == 0
    assert capsys.readouterr().out == f"wrote a tiny random unified MLLM to {tmp_path / 'tiny'}\n"
    model, processor = load_unified(tmp_path / "tiny")
    assert model.image_vocab.size == processor.image_tokenizer.vocab_size == 256
