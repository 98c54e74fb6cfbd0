"""Generation evaluation on the CPU: ``semhitok-qwen eval-gen`` / ``eval-gen-metrics`` with a tiny
random unified MLLM, a reference folder of the bundled photos and random-weight metric backbones
saved to local files (so every number here is meaningless, and the output says so), plus the
LlamaGen class-to-image helpers (``semhitok_llamagen.c2i_eval``)."""

import argparse
import hashlib
import inspect
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import pytorch_fid.inception
import torch
from PIL import Image
from pytorch_fid.fid_score import calculate_fid_given_paths

from semhitok_fixtures.tiny_qwen import save_tiny_unified, tiny_tokenizer
from semhitok_llamagen import c2i_eval
from semhitok_plugin import evaluation as ev
from semhitok_plugin.samples import sample_photo
from semhitok_qwen import cli, eval_gen, load_unified
from semhitok_qwen.eval_gen import (
    ANSWER,
    QUESTION,
    Prompt,
    PromptFileError,
    Ranks,
    Sampling,
    SemHiTokQwenVQA,
    TransformersVQA,
    generate_folder,
    load_vqa_scorer,
    read_prompts,
)
from semhitok_qwen.generation import TextOnly, generate_image

# GenAI-Bench's layout (genai_image.json + genai_skills.json), with MJHQ-30K-style categories
PROMPTS = [
    ("a cat on a red sofa", "animals"),
    ("two cats asleep", "animals"),
    ("a cup of coffee", "animals"),
    ("a rocket on the launch pad", "vehicles"),
    ("a red car", "vehicles"),
    ("no bicycle in the street", "vehicles"),
    ("an astronaut with a flag", "people"),
    ("three people, none of them smiling", "people"),
]
SKILLS = {"basic": [0, 1, 2, 3, 4, 5], "advanced": [5, 6, 7], "counting": [1, 7], "negation": [5]}
REFERENCE = {"animals": ("chelsea", "coffee"), "vehicles": ("rocket", "hubble_deep_field")}
REFERENCE["people"] = ("astronaut", "retina")
BATCH = "3"  # batches [0-2], [3-5], [6-7]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_unified(tmp_path_factory.mktemp("mllm"))


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("genai")
    entries = {f"{i:05d}": {"prompt": p, "category": c} for i, (p, c) in enumerate(PROMPTS)}
    (folder / "genai_image.json").write_text(json.dumps(entries))
    (folder / "genai_skills.json").write_text(json.dumps(SKILLS))
    return folder / "genai_image.json"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One subfolder per category, as MJHQ-30K's mjhq30k_imgs."""
    root = tmp_path_factory.mktemp("reference")
    for category, names in REFERENCE.items():
        (root / category).mkdir()
        for name in names:
            sample_photo(name).save(root / category / f"{name}.jpg", quality=95)
    return root


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """A random FID Inception in pytorch-fid's file format and name (He-initialised: PyTorch's
    default init leaves pool3 near 0)."""
    path = tmp_path_factory.mktemp("inception") / ev.INCEPTION_FILE
    torch.manual_seed(7)
    net = ev.fid_inception_network()
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny random open_clip model in open_clip's local-dir layout (its SimpleTokenizer needs
    the 49,408-id text vocabulary)."""
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    arch = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "patch_size": 8,
            "head_width": 16,
        },
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2},
    }
    arch["text_cfg"]["layers"] = 1
    folder = tmp_path_factory.mktemp("clip")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": arch}))
    torch.manual_seed(3)
    save_file(CLIP(**arch).state_dict(), str(folder / "open_clip_model.safetensors"))
    return folder


def run_eval_gen(model_dir, prompt_file, output, *extra) -> int:
    args = ["eval-gen", "-m", str(model_dir), "--prompts", str(prompt_file), "-o", str(output)]
    return cli.main([*args, "--batch-size", BATCH, "--no-progress", *extra])


@pytest.fixture(scope="module")
def full_run(model_dir, prompt_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    assert run_eval_gen(model_dir, prompt_file, out) == 0
    return out


def same_files(a, b) -> None:
    names = sorted(os.listdir(a / "images"))
    assert names == sorted(os.listdir(b / "images"))
    for name in names:
        assert (a / "images" / name).read_bytes() == (b / "images" / name).read_bytes(), name
    assert (a / "manifest.jsonl").read_bytes() == (b / "manifest.jsonl").read_bytes()


# -- prompts ---------------------------------------------------------------------------------------
def test_prompt_files_of_each_benchmark(tmp_path, prompt_file):
    genai = read_prompts(prompt_file)
    assert [p.id for p in genai] == [f"{i:05d}" for i in range(8)]
    assert genai[5] == Prompt("00005", PROMPTS[5][0], "vehicles", ("advanced", "basic", "negation"))
    mjhq = tmp_path / "meta_data.json"  # MJHQ-30K: {id: {category, prompt}}
    mjhq.write_text(json.dumps({"2d0d": {"category": "people", "prompt": "a man"}}))
    assert read_prompts(mjhq) == [Prompt("2d0d", "a man", "people")]
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"prompt": "a"}, {"prompt": "b", "id": "x", "tags": ["t"]}]))
    assert read_prompts(listed) == [Prompt("00000", "a"), Prompt("x", "b", None, ("t",))]
    lines = tmp_path / "p.jsonl"
    lines.write_text('{"prompt": "a", "category": "c"}\n\n{"prompt": "b", "id": 7}\n')
    assert read_prompts(lines) == [Prompt("00000", "a", "c"), Prompt("7", "b")]


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"prompt": "a"}\n{"text": "b"}\n', "p.jsonl:2: needs a 'prompt' string"),
        ('{"prompt": "a", "id": "x"}\n{"prompt": "b", "id": "x"}\n', "id 'x' occurs twice"),
        ('{"prompt": "a", "id": "../x"}\n', "not usable as a file name"),
        ('{"prompt": "a"\n', "p.jsonl:1: not JSON"),
        ("", "holds no prompts"),
    ],
)
def test_bad_prompt_files_name_the_entry(tmp_path, text, message):
    (tmp_path / "p.jsonl").write_text(text)
    with pytest.raises(PromptFileError, match=message.replace("(", r"\(").replace(".", r"\.")):
        read_prompts(tmp_path / "p.jsonl")


def test_default_sampling_is_generate_images(model_dir):
    """The paper gives no settings for Tab. 8: eval-gen samples as generate_image does."""
    defaults = inspect.signature(generate_image).parameters
    sampling = Sampling()
    for name in ("cfg_scale", "temperature", "top_k", "top_p"):
        assert getattr(sampling, name) == defaults[name].default
    parser = cli.build_parser()
    args = parser.parse_args(["eval-gen", "-m", "m", "--prompts", "p", "-o", "o"])
    assert (args.cfg_scale, args.temperature, args.top_k, args.top_p, args.seed) == (
        4.0,
        1.0,
        None,
        None,
        0,
    )
    assert args.batch_size == Sampling().batch_size


# -- generation ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_images_manifest_and_seeds(full_run, model_dir):
    records = [json.loads(line) for line in (full_run / "manifest.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [f"{i:05d}" for i in range(8)]
    assert records[4] == {
        "id": "00004",
        "prompt": "a red car",
        "category": "vehicles",
        "tags": ["basic"],
        "file": "images/00004.png",
        "seed": 1,
        "batch": 1,
        "settings": {
            "cfg_scale": 4.0,
            "temperature": 1.0,
            "top_k": None,
            "top_p": None,
            "seed": 0,
            "batch_size": 3,
        },
    }
    model, processor = load_unified(model_dir)
    batch = [p for p, _ in PROMPTS[3:6]]  # batch 1, seed 0 + 1
    expected = generate_image(model, processor, batch, seed=1).images
    for i, image in enumerate(expected):
        got = np.asarray(Image.open(full_run / "images" / f"{3 + i:05d}.png"))
        assert np.array_equal(got, np.asarray(image))
    assert not list((full_run / "images").glob(".*"))  # no temporary files left


class Killed(BaseException):
    """A kill: nothing after it runs (not even ``except Exception``)."""


@pytest.mark.slow
def test_resume_after_a_kill_reproduces_the_uninterrupted_run(
    full_run, model_dir, prompt_file, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "killed"
    save, calls = eval_gen.save_png, []

    def killed_after_four(image, path):
        calls.append(path)
        if len(calls) == 5:  # killed while writing the fifth: half a PNG under the temp name
            partial = path.with_name(f".{path.name}.99999.tmp")
            partial.write_bytes((full_run / "images" / path.name).read_bytes()[:100])
            raise Killed
        save(image, path)

    monkeypatch.setattr(eval_gen, "save_png", killed_after_four)
    with pytest.raises(Killed):
        run_eval_gen(model_dir, prompt_file, out)
    monkeypatch.setattr(eval_gen, "save_png", save)
    left = {f"{i:05d}.png" for i in range(4)} | {".00004.png.99999.tmp"}
    assert set(os.listdir(out / "images")) == left
    assert not (out / "manifest.jsonl").exists()
    capsys.readouterr()
    assert run_eval_gen(model_dir, prompt_file, out) == 0  # batch 0 kept; batches 1 and 2 sampled
    assert "wrote 4 images" in capsys.readouterr().out
    same_files(out, full_run)  # the stale temporary file is gone too


@pytest.mark.slow
def test_a_limited_run_is_a_prefix_of_the_full_run(full_run, model_dir, prompt_file, tmp_path):
    out = tmp_path / "limited"
    assert run_eval_gen(model_dir, prompt_file, out, "--limit", "4") == 0  # cuts batch 1
    assert sorted(os.listdir(out / "images")) == [f"{i:05d}.png" for i in range(4)]
    for i in range(4):
        name = f"{i:05d}.png"
        assert (out / "images" / name).read_bytes() == (full_run / "images" / name).read_bytes()
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 4
    assert run_eval_gen(model_dir, prompt_file, out) == 0
    same_files(out, full_run)


def test_resuming_with_other_settings_is_refused(full_run, model_dir, prompt_file, capsys):
    assert run_eval_gen(model_dir, prompt_file, full_run, "--cfg-scale", "2") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "(cfg_scale 4.0 -> 2.0)" in err and "settings.json" in err


@pytest.mark.slow
def test_ranks_share_the_work_and_write_the_same_files(full_run, model_dir, prompt_file, tmp_path):
    """torchrun's ranks each sample the batches b = rank (mod world size); the images do not
    depend on the world size (here the two ranks run one after the other, without a group)."""
    model, processor = load_unified(model_dir)
    prompts, out = read_prompts(prompt_file), tmp_path / "ranks"
    run = {"model": str(model_dir), "image_tokenizer": None, "dtype": "float32"}
    sampling = Sampling(batch_size=int(BATCH))
    kwargs = dict(run=run, progress=False)
    assert (
        generate_folder(model, processor, prompts, out, sampling, ranks=Ranks(1, 2), **kwargs) == 3
    )
    assert not (out / "manifest.jsonl").exists()  # rank 0 writes it
    assert (
        generate_folder(model, processor, prompts, out, sampling, ranks=Ranks(0, 2), **kwargs) == 5
    )
    same_files(out, full_run)


@pytest.mark.slow
def test_torchrun_gloo_matches_one_process(model_dir, prompt_file, tmp_path):
    """Two CPU ranks (gloo) under torchrun write the files one process writes (both with one
    thread: CPU matmuls may round differently with other thread counts)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    args = ["--prompts", str(prompt_file), "--batch-size", BATCH, "--no-progress"]
    common = ["-m", "semhitok_qwen.cli", "eval-gen", "-m", str(model_dir), *args]
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, *common, "-o", str(one)], env=env, check=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    subprocess.run([*torchrun, *common, "-o", str(two)], env=env, check=True)
    same_files(one, two)


# -- checks before anything runs -------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra, option",
    [
        (["--reference", "/no/such/folder"], "--reference"),
        (["--inception-weights", "/no/such/pt_inception.pth"], "--reference"),
        (["--reference", "REF", "--inception-weights", "/no/such/x.pth"], "--inception-weights"),
        (["--reference", "REF"], "--inception-weights"),  # offline, nothing in torch hub's cache
        (["--clip-model", "ViT-B-32"], "--clip-weights"),
        (["--clip-model", "/no/such/clip"], "--clip-model"),
        (["--vqa-model", "/no/such/model"], "--vqa-model"),
    ],
)
def test_a_missing_weight_or_folder_stops_before_the_model_loads(
    extra, option, reference, prompt_file, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli, "load_unified", never)
    extra = [str(reference) if a == "REF" else a for a in extra]
    assert run_eval_gen("unused", prompt_file, tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and option in err, err
    assert not (tmp_path / "out").exists()


def test_a_missing_prompt_file_is_named(tmp_path, capsys):
    assert run_eval_gen("unused", tmp_path / "none.json", tmp_path / "out") == 2
    assert "--prompts" in capsys.readouterr().err


# -- metrics ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_metrics_of_a_folder(full_run, reference, inception_file, clip_dir, model_dir, capsys):
    args = ["eval-gen-metrics", str(full_run), "--reference", str(reference), "--fid-dims", "64"]
    args += ["--inception-weights", str(inception_file.parent), "--num-workers", "0"]
    args += ["--clip-model", str(clip_dir), "--vqa-model", str(model_dir), "--no-progress"]
    assert cli.main(args) == 0
    metrics = json.loads((full_run / "metrics.json").read_text())
    assert json.loads(capsys.readouterr().out.rsplit("\nwrote ", 1)[0]) == metrics
    fid = metrics["fid"]
    assert fid["overall"]["generated"] == 8 and fid["overall"]["reference"] == 6
    assert sorted(fid["per_category"]) == ["animals", "people", "vehicles"]
    assert fid["per_category"]["people"]["generated"] == 2
    assert all(v["fid"] > 0 for v in [fid["overall"], *fid["per_category"].values()])
    # the weights were loaded through the real path, and are labelled as not pytorch-fid's
    digest = hashlib.sha256(inception_file.read_bytes()).hexdigest()
    assert fid["inception"] == {
        "weights": str(inception_file),
        "sha256": digest,
        "published": False,
    }
    assert fid["comparable"] is False and "not pytorch-fid's published file" in fid["note"]
    assert fid["dims"] == 64 and fid["skipped"] == []
    # the same number as pytorch-fid's own pipeline on the same files and weights
    flat = reference.parent / "reference-flat"
    flat.mkdir(exist_ok=True)
    for path in reference.rglob("*.jpg"):
        shutil.copy(path, flat / path.name)
    net = ev.fid_inception_network()
    net.load_state_dict(torch.load(inception_file, weights_only=True))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pytorch_fid.inception, "fid_inception_v3", lambda: net)
        upstream = calculate_fid_given_paths(
            [str(full_run / "images"), str(flat)], 1, "cpu", 64, num_workers=0
        )
    assert fid["overall"]["fid"] == pytest.approx(upstream, rel=1e-3)

    clip = metrics["clip_score"]
    assert 0 <= clip["overall"] <= 100 and sorted(clip["per_category"]) == sorted(REFERENCE)
    assert clip["model"] == f"local-dir:{clip_dir}"
    vqa = metrics["vqa_score"]
    assert 0 < vqa["overall"] < 1 and vqa["scorer_kind"] == "semhitok_qwen"
    assert sorted(vqa["per_tag"]) == ["advanced", "basic", "counting", "negation"]
    assert vqa["basic"] == vqa["per_tag"]["basic"] and vqa["advanced"] == vqa["per_tag"]["advanced"]
    assert "clip-flant5-xxl" in vqa["note"]


def test_random_backbones_are_labelled(full_run, reference, capsys):
    args = ["eval-gen-metrics", str(full_run), "--reference", str(reference), "--fid-dims", "64"]
    assert cli.main([*args, "--random-backbones", "--num-workers", "0", "--no-progress"]) == 0
    fid = json.loads((full_run / "metrics.json").read_text())["fid"]
    assert fid["inception"]["weights"].startswith("RANDOM") and "random Inception" in fid["note"]


def test_metrics_need_something_to_compute(full_run, capsys):
    assert cli.main(["eval-gen-metrics", str(full_run)]) == 2
    assert "--reference, --clip-model and/or --vqa-model" in capsys.readouterr().err


def test_semhitok_qwen_vqascore_is_the_probability_of_yes(model_dir):
    model, processor = load_unified(model_dir)
    scorer = load_vqa_scorer(model_dir, torch.device("cpu"))
    assert isinstance(scorer, SemHiTokQwenVQA)
    images = [sample_photo("chelsea"), sample_photo("rocket")]
    prompts = ["a cat", "a rocket on the launch pad under a blue sky"]
    batched = scorer(images, prompts)
    (yes,) = processor.tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    for image, prompt, score in zip(images, prompts, batched, strict=True):
        conversation = [[{"role": "user", "content": f"<image>\n{QUESTION.format(prompt)}"}]]
        with torch.no_grad():
            logits = model(**processor(conversation, [[image]])).logits[:, -1]
        expected = TextOnly(processor)(None, logits).softmax(-1)[0, yes]
        assert float(score) == pytest.approx(float(expected), rel=1e-4)


def save_tiny_llava(directory) -> None:
    """A tiny random LLaVA (transformers' image-text-to-text model) with a chat template."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2Config,
    )

    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=8,
    )  # fmt: skip
    text = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=16,  # (32 / 8)^2 patches, the CLS token dropped ("default")
        vision_feature_select_strategy="default",
    )
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    torch.manual_seed(5)
    LlavaForConditionalGeneration(config).save_pretrained(directory)
    LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        chat_template=template,
    ).save_pretrained(directory)


def test_transformers_vqascore_is_the_probability_of_yes(tmp_path):
    save_tiny_llava(tmp_path / "llava")
    scorer = load_vqa_scorer(tmp_path / "llava", torch.device("cpu"))
    assert isinstance(scorer, TransformersVQA)
    images = [sample_photo("chelsea"), sample_photo("rocket")]
    prompts = ["a cat", "a rocket on the launch pad under a blue sky"]
    batched = scorer(images, prompts)  # left-padded together
    (yes,) = scorer.answer.tolist()
    for image, prompt, score in zip(images, prompts, batched, strict=True):
        message = [{"type": "image"}, {"type": "text", "text": QUESTION.format(prompt)}]
        text = scorer.processor.apply_chat_template(
            [{"role": "user", "content": message}], add_generation_prompt=True
        )
        with torch.no_grad():
            inputs = scorer.processor(images=[image], text=[text], return_tensors="pt")
            logits = scorer.model(**inputs).logits[:, -1]
        assert float(score) == pytest.approx(float(logits.softmax(-1)[0, yes]), rel=1e-4)


# -- LlamaGen class-to-image -----------------------------------------------------------------------
def test_npz_round_trip_as_the_evaluator_reads_it(tmp_path, capsys):
    folder = tmp_path / "samples"
    folder.mkdir()
    names = ("astronaut", "coffee", "chelsea", "rocket", "retina")
    arrays = []
    for i, name in enumerate(names):
        image = sample_photo(name).resize((24, 16))
        image.save(folder / f"{i:06d}.png")
        arrays.append(np.asarray(image))
    assert c2i_eval.main(["npz", str(folder)]) == 0
    out = capsys.readouterr().out
    assert (
        f"python evaluations/c2i/evaluator.py VIRTUAL_imagenet256_labeled.npz {folder}.npz" in out
    )
    with np.load(f"{folder}.npz") as data:
        assert list(data) == ["arr_0"]
        assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (5, 16, 24, 3)
        assert np.array_equal(data["arr_0"], np.stack(arrays))
    # ADM's evaluator streams the member: magic, header, then raw rows
    with zipfile.ZipFile(f"{folder}.npz") as zf, zf.open("arr_0.npy") as f:
        assert np.lib.format.read_magic(f) == (1, 0)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        assert (shape, fortran, dtype) == ((5, 16, 24, 3), False, np.uint8)
        first = np.frombuffer(f.read(16 * 24 * 3), np.uint8).reshape(16, 24, 3)
        assert np.array_equal(first, arrays[0])
    assert c2i_eval.write_npz(folder, tmp_path / "three.npz", num=3) == (3, 16, 24, 3)
    sample_photo("coffee").resize((8, 8)).save(folder / "000005.png")
    assert c2i_eval.main(["npz", str(folder), "-o", str(tmp_path / "bad.npz")]) == 2
    assert "000005.png is (8, 8, 3)" in capsys.readouterr().err
    assert not (tmp_path / "bad.npz").exists() and not list(tmp_path.glob(".*.tmp"))


def test_gpt_weights_make_a_training_checkpoint_loadable_by_the_sampler(tmp_path, monkeypatch):
    """LlamaGen's train_c2i.py checkpoint holds argparse.Namespace, which the sampler's
    ``torch.load`` refuses under torch >= 2.6; gpt-weights writes tensors only."""
    model, ema = {"w": torch.ones(2)}, {"w": torch.full((2,), 3.0)}
    ckpt = tmp_path / "0005000.pt"
    args = argparse.Namespace(gpt_model="GPT-B", vocab_size=256)
    torch.save({"model": model, "ema": ema, "optimizer": {}, "steps": 5, "args": args}, ckpt)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt, map_location="cpu")  # what sample_c2i_ddp.py does
    monkeypatch.chdir(tmp_path)
    (tmp_path / c2i_eval.SAMPLER).parent.mkdir(parents=True)
    (tmp_path / c2i_eval.SAMPLER).write_text("")
    with pytest.raises(ValueError, match="gpt-weights"):
        c2i_eval.check_sampling_inputs(str(ckpt), str(ckpt))
    assert c2i_eval.main(["gpt-weights", str(ckpt), "-o", "gpt.pt", "--ema"]) == 0
    converted = torch.load(tmp_path / "gpt.pt", map_location="cpu")
    assert list(converted) == ["model"] and torch.equal(converted["model"]["w"], ema["w"])
    c2i_eval.check_sampling_inputs(str(ckpt), "gpt.pt")


@pytest.mark.parametrize(
    "vq_model, flags",
    [
        ("SemHiTok-16", "--codebook-size 196608 --codebook-embed-dim 56 --image-size 256 "
         "--downsample-size 16 --image-size-eval 256"),
        ("SemHiTok-14-384", "--codebook-size 196608 --codebook-embed-dim 56 --image-size 384 "
         "--downsample-size 14 --image-size-eval 256"),
        ("mine", "--codebook-size 256 --codebook-embed-dim"),
    ],
)  # fmt: skip
def test_the_sampling_command(vq_model, flags, monkeypatch, capsys):
    monkeypatch.setenv("SEMHITOK_LLAMAGEN_MODELS", "mine=tiny")
    argv = ["sample", "--vq-model", vq_model, "--vq-ckpt", "vq.pt", "--gpt-model", "GPT-B"]
    argv += ["--gpt-ckpt", "gpt.pt", "--nproc-per-node", "2", "--dry-run", "--", "--cfg-scale", "2"]
    assert c2i_eval.main(argv) == 0
    command = capsys.readouterr().out.strip()
    assert command.startswith(
        "torchrun --nproc_per_node=2 -m semhitok_llamagen.run "
        f"autoregressive/sample/sample_c2i_ddp.py --vq-model {vq_model} {flags}"
    )
    assert command.endswith("--num-fid-samples 50000 --sample-dir samples --cfg-scale 2")


def test_launcher_options_go_before_the_sampler():
    command = c2i_eval.sample_command(
        vq_model="SemHiTok-16",
        vq_ckpt="vq.pt",
        gpt_model="GPT-B",
        gpt_ckpt="gpt.pt",
        nproc_per_node=8,
        extra=["--semhitok-head", "factorised", "--top-k", "24000", "--semhitok-head-rank=64"],
    )
    run = command.index("semhitok_llamagen.run")
    launcher = ["--semhitok-head", "factorised", "--semhitok-head-rank=64", c2i_eval.SAMPLER]
    assert command[run + 1 : run + 5] == launcher
    assert command[-2:] == ["--top-k", "24000"]
