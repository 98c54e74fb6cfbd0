"""Tokenizing at scale: ``semhitok encode`` under torchrun writes a sharded token set with the ids
of a single-process run, resumes after a kill, and every consumer reads it: ``read_tokens`` and
``semhitok decode``, the unified MLLM's JSONL and LlamaGen's code layout.

Ranks are started as torchrun starts them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in the
environment, gloo on the CPU) by forking this process, which keeps them to a second each; the
``slow`` tests run the real ``torchrun`` (``python -m torch.distributed.run``) end to end.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from semhitok_fixtures.tiny_qwen import save_tiny_unified
from semhitok_plugin import load_model
from semhitok_plugin import sharded_encode as sharded_encode_module
from semhitok_plugin.cli import main
from semhitok_plugin.images import center_crop
from semhitok_plugin.samples import sample_photo
from semhitok_plugin.token_files import INDEX_NAME, TokenFileError, TokenSet, read_tokens
from semhitok_qwen import load_unified
from semhitok_qwen.data import Collator, DataFormatError, UnifiedDataset, read_jsonl
from semhitok_qwen.train import add_arguments, build_trainer

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "retina")


# -- launching ranks -------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(entry, argv: list[str], env: dict[str, str], log: Path) -> None:
    os.environ.update(env)
    with log.open("w", buffering=1) as f:  # this rank's output, for the test to read
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        sys.stdout = sys.stderr = f  # past pytest's capture
        torch.set_num_threads(1)
        code = entry(argv)
    os._exit(code)  # no pytest teardown in a forked child


def run_ranks(entry, argv: list[str], world: int, logs: Path) -> list[tuple[int, str]]:
    """``entry(argv)`` on ``world`` forked ranks joined as torchrun joins them; each rank's
    exit code and output."""
    logs.mkdir(parents=True, exist_ok=True)
    port, fork = str(_free_port()), multiprocessing.get_context("fork")
    ranks = []
    for rank in range(world):
        env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)}
        env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        log = logs / f"rank{rank}.log"
        ranks.append((fork.Process(target=_rank, args=(entry, argv, env, log)), log))
    parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the fast tokenizers' fork warning
    for process, _ in ranks:
        process.start()
    if parallelism is None:
        del os.environ["TOKENIZERS_PARALLELISM"]
    else:
        os.environ["TOKENIZERS_PARALLELISM"] = parallelism
    for process, _ in ranks:
        process.join(timeout=300)
    return [(process.exitcode, log.read_text()) for process, log in ranks]


# -- the corpus and its encodings ------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Five photos and an unreadable file in a list, then two tar shards (3 images, and 1 image
    and an unreadable member): nine readable images, cut with --shard-size 2 into 3 file shards
    and 2 tar shards."""
    import tarfile

    root = tmp_path_factory.mktemp("corpus")
    (root / "photos").mkdir()
    paths = []
    for name in PHOTOS:
        center_crop(sample_photo(name), 96).save(root / "photos" / f"{name}.png")
        paths.append(root / "photos" / f"{name}.png")
    (root / "photos" / "broken.jpg").write_bytes(b"not a JPEG at all")
    listed = [paths[0], root / "photos" / "broken.jpg", *paths[1:]]
    (root / "list.txt").write_text("".join(f"{p}\n" for p in listed))
    (root / "shards").mkdir()
    for number, members in enumerate((paths[:3], paths[3:4])):
        with tarfile.open(root / "shards" / f"{number:06d}.tar", "w") as tar:
            for path in members:
                tar.add(path, arcname=f"{path.stem}.png")
            if number == 1:
                tar.add(root / "photos" / "broken.jpg", arcname="broken.png")
    inputs = [str(root / "list.txt"), str(root / "shards" / "{000000..000001}.tar")]
    return SimpleNamespace(root=root, inputs=inputs, photos=paths)


def encode_args(corpus, output: Path, *extra: str) -> list[str]:
    return ["encode", *corpus.inputs, "-m", "tiny", "-o", str(output), *extra]


@pytest.fixture(scope="module")
def single(corpus):
    """One process, no torchrun: the single token file ``semhitok encode`` has always written."""
    out = corpus.root / "single.npz"
    assert main(encode_args(corpus, out)) == 1  # broken.jpg fails the call, nothing else
    return out


@pytest.fixture(scope="module")
def two_ranks(corpus):
    out = corpus.root / "set2"
    logs = run_ranks(main, encode_args(corpus, out, "--shard-size", "2"), 2, corpus.root / "logs2")
    return SimpleNamespace(path=out, logs=logs)


@pytest.fixture(scope="module")
def model():
    return load_model("tiny")


def one_rank(argv: list[str], monkeypatch) -> int:
    """The CLI as torchrun's only rank runs it: sharded, without a process group."""
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(name, value)
    return main(argv)


# -- two ranks = one process -----------------------------------------------------------------------
def test_two_ranks_give_the_ids_of_one_process(two_ranks, single, corpus, model):
    (code0, log0), (code1, log1) = two_ranks.logs
    assert (code0, code1) == (1, 0)  # rank 0 reports the set, and its unreadable image
    assert "encoded 9 of 11 images in " in log0 and "on 2 ranks, 2 failed" in log0
    assert "2 of 11 images failed" in log0 and "wrote 9 token maps" in log0
    assert f"cannot read image '{corpus.root / 'photos' / 'broken.jpg'}'" in log0 + log1
    ids, names = read_tokens(two_ranks.path, model)
    expected_ids, expected_names = read_tokens(single, model)
    assert names == expected_names and torch.equal(ids, expected_ids)
    assert names[:2] == [str(corpus.photos[0]), str(corpus.photos[1])]  # input order
    tar = str(corpus.root / "shards" / "000000.tar")
    assert names[5:8] == [f"{tar}/astronaut", f"{tar}/coffee", f"{tar}/chelsea"]
    assert torch.equal(ids[5], ids[0])  # a tar member is the same image as its file
    index = json.loads((two_ranks.path / INDEX_NAME).read_text())
    assert [s["images"] for s in index["shards"]] == [1, 2, 2, 3, 1]
    broken = [str(corpus.root / "photos" / "broken.jpg"), f"{tar[:-5]}1.tar/broken"]
    assert [name for name, _ in index["failures"]] == broken
    assert index["failures"][1][1] == f"cannot identify image file {broken[1]!r}"  # no address
    assert (index["model"], index["grid"], index["vocab_size"], index["precision"]) == (
        "tiny",
        [8, 8],
        256,
        "fp32",
    )
    assert read_tokens(two_ranks.path / INDEX_NAME, model)[1] == names  # the index names it too


def test_one_rank_writes_the_same_shards_and_index(two_ranks, corpus, model, monkeypatch):
    """Also with its images decoded by DataLoader workers: the ids and their order hold."""
    out = corpus.root / "set1"
    argv = encode_args(corpus, out, "--shard-size", "2", "--num-workers", "2")
    assert one_rank(argv, monkeypatch) == 1
    assert (out / INDEX_NAME).read_bytes() == (two_ranks.path / INDEX_NAME).read_bytes()
    for shard in sorted(two_ranks.path.glob("shard-*.npz")):
        with np.load(shard) as a, np.load(out / shard.name) as b:
            assert a.files == b.files
            assert all(np.array_equal(a[k], b[k]) for k in a.files), shard.name


def test_decode_reads_a_set_as_it_reads_a_token_file(two_ranks, single, tmp_path):
    for source, folder in ((single, "from_file"), (two_ranks.path, "from_set")):
        assert main(["decode", str(source), "-m", "tiny", "-o", str(tmp_path / folder)]) == 0
    pngs = sorted(p.name for p in (tmp_path / "from_file").iterdir())
    assert len(pngs) == 9 and pngs == sorted(p.name for p in (tmp_path / "from_set").iterdir())
    for name in pngs:
        a, b = (np.asarray(Image.open(tmp_path / f / name)) for f in ("from_file", "from_set"))
        assert np.array_equal(a, b), name


# -- resuming --------------------------------------------------------------------------------------
def test_a_rerun_rewrites_only_the_missing_shard(two_ranks, model, corpus, tmp_path, monkeypatch):
    out = tmp_path / "set"
    shutil.copytree(two_ranks.path, out)
    (out / "shard-000001.npz").unlink()
    (out / INDEX_NAME).unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.npz")}
    with pytest.raises(TokenFileError, match="not a finished token set"):
        read_tokens(out, model)
    assert one_rank(encode_args(corpus, out, "--shard-size", "2"), monkeypatch) == 1
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.npz") if p.name in kept} == kept
    assert (out / INDEX_NAME).read_bytes() == (two_ranks.path / INDEX_NAME).read_bytes()


def test_a_run_killed_after_one_shard_finishes_on_rerun(two_ranks, corpus, tmp_path, monkeypatch):
    out = tmp_path / "set"
    write = sharded_encode_module.write_tokens

    def killed_after_first(path, *args, **kwargs):
        if any(out.glob("shard-*.npz")):
            raise KeyboardInterrupt  # as a SIGINT between two shards
        return write(path, *args, **kwargs)

    monkeypatch.setattr(sharded_encode_module, "write_tokens", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        one_rank(encode_args(corpus, out, "--shard-size", "2"), monkeypatch)
    assert [p.name for p in out.iterdir()] == ["shard-000000.npz"]  # no index, no part file
    monkeypatch.setattr(sharded_encode_module, "write_tokens", write)
    assert one_rank(encode_args(corpus, out, "--shard-size", "2"), monkeypatch) == 1
    assert (out / INDEX_NAME).read_bytes() == (two_ranks.path / INDEX_NAME).read_bytes()


def test_a_shard_of_other_inputs_is_never_overwritten(
    two_ranks, corpus, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "set"
    shutil.copytree(two_ranks.path, out)
    before = (out / "shard-000000.npz").read_bytes()
    assert one_rank(encode_args(corpus, out, "--shard-size", "3"), monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out / 'shard-000000.npz'} holds other images" in err
    assert (out / "shard-000000.npz").read_bytes() == before
    assert (out / INDEX_NAME).read_bytes() == (two_ranks.path / INDEX_NAME).read_bytes()


def test_a_rerun_at_another_precision_stops_at_the_first_shard(
    two_ranks, corpus, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "set"
    shutil.copytree(two_ranks.path, out)
    argv = encode_args(corpus, out, "--shard-size", "2", "--precision", "bf16")
    assert one_rank(argv, monkeypatch) == 2
    err = capsys.readouterr().err
    assert "vocab 256, fp32), this pass by model 'tiny' (grid 8x8, vocab 256, bf16)" in err
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in two_ranks.path.iterdir())


# -- reading a set: every check names the file -----------------------------------------------------
@pytest.fixture
def copy(two_ranks, tmp_path):
    out = tmp_path / "set"
    shutil.copytree(two_ranks.path, out)
    return out


def _edit_index(path: Path, edit) -> None:
    fields = json.loads((path / INDEX_NAME).read_text())
    edit(fields)
    (path / INDEX_NAME).write_text(json.dumps(fields))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "shard-000003.npz").unlink(), "shard-000003.npz: shard 3 of the token set"),
        (lambda p: (p / INDEX_NAME).write_text("{not json"), "index.json is not a token-set"),
        (lambda p: (p / INDEX_NAME).unlink(), "not a finished token set"),
        (
            lambda p: shutil.copy(p / "shard-000002.npz", p / "shard-000001.npz"),
            "shard-000001.npz holds",
        ),
        (
            lambda p: _edit_index(p, lambda f: f["images"][0].__setitem__(2, 5)),
            "index.json: malformed token-set index: image",
        ),
        (
            lambda p: _edit_index(p, lambda f: f.__setitem__("version", 9)),
            "index.json: token-set version 9",
        ),
        (
            lambda p: _edit_index(p, lambda f: f["shards"][0].__setitem__("file", "../x.npz")),
            "a shard's file must be a name in the set's folder",
        ),
        (
            lambda p: _edit_index(p, lambda f: f.__setitem__("vocab_size", 512)),
            "holds ids of a tokenizer with vocab 512",
        ),
        (
            lambda p: (p / "shard-000004.npz").write_bytes(b"PK\x03\x04 torn"),
            "shard-000004.npz is not a SemHiTok token file",
        ),
    ],
)
def test_a_damaged_set_is_an_error_naming_the_file(copy, model, damage, message):
    damage(copy)
    with pytest.raises(TokenFileError, match=re.escape(message)) as err:
        read_tokens(copy, model)
    assert str(copy) in str(err.value)


def test_decode_reports_a_missing_shard_in_one_line(copy, tmp_path, capsys):
    (copy / "shard-000002.npz").unlink()
    assert main(["decode", str(copy), "-m", "tiny", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{copy / 'shard-000002.npz'}: shard 2" in err


def test_token_set_reads_one_image_at_a_time(two_ranks, single, model):
    tokens = TokenSet(two_ranks.path, model)
    ids, names = read_tokens(single, model)
    assert len(tokens) == 9 and all(torch.equal(tokens[i], ids[i]) for i in (8, 0, 4))
    assert tokens.position(names[3]) == 3
    assert str(Path(names[0]).parent / "broken.jpg") in tokens.failures
    assert len(tokens.failures) == 2


# -- the unified MLLM trains from ids --------------------------------------------------------------
@pytest.fixture(scope="module")
def mllm(tmp_path_factory):
    """A tiny MLLM, its sample JSONL (images as files), the same images as a token set written
    with the MLLM's own tokenizer, and the JSONL with each image a reference into that set."""
    from semhitok_qwen.data import write_sample_jsonl

    root = tmp_path_factory.mktemp("mllm")
    model_dir = save_tiny_unified(root / "model")
    data = write_sample_jsonl(root / "data")
    lines = [json.loads(line) for line in data.read_text().splitlines()]
    photos = sorted({str(data.parent / i) for line in lines for i in line.get("images", [])})
    tokens = root / "tokens"
    argv = ["encode", *photos, "-m", str(model_dir / "semhitok"), "-o", str(tokens)]
    logs = run_ranks(main, [*argv, "--shard-size", "3"], 2, root / "logs")
    assert [code for code, _ in logs] == [0, 0], logs

    def reference(n: int, image: str) -> dict:  # by source, and by position every other line
        path = str(data.parent / image)
        if n % 2:
            return {"tokens": "../tokens", "index": photos.index(path)}  # relative to the JSONL
        return {"tokens": str(tokens), "source": path}

    for n, line in enumerate(lines):
        if "images" in line:
            line["images"] = [reference(n, image) for image in line["images"]]
    refs = data.parent / "train_tokens.jsonl"
    refs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return SimpleNamespace(root=root, model=model_dir, data=data, refs=refs, tokens=tokens)


def test_mllm_samples_from_a_token_set_equal_those_from_images(mllm):
    _, processor = load_unified(mllm.model)
    a, b = (
        UnifiedDataset(read_jsonl([path]), processor, cfg_dropout=0.0)
        for path in (mllm.data, mllm.refs)
    )
    assert len(a) == len(b) > 0
    for i in range(len(a)):
        assert torch.equal(a[i]["input_ids"], b[i]["input_ids"]), i
        assert torch.equal(a[i]["labels"], b[i]["labels"]), i


def test_mllm_first_step_loss_is_the_same_from_ids(mllm):
    def first_loss(data: Path, out: str) -> float:
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        flags = f"--model {mllm.model} --data {data} --output-dir {mllm.root / out}"
        flags += " --max-steps 1 --logging-steps 1 --batch-size 4 --grad-accum 1 --seed 0"
        flags += " --num-workers 0 --report-to none --save-steps 10"
        trainer = build_trainer(parser.parse_args(flags.split()))
        return trainer.train().training_loss

    assert first_loss(mllm.refs, "from_ids") == first_loss(mllm.data, "from_images")


def test_mllm_never_runs_the_tokenizer_for_referenced_images(mllm, monkeypatch):
    _, processor = load_unified(mllm.model)
    dataset = UnifiedDataset(read_jsonl([mllm.refs]), processor)

    def refuse(images):
        raise AssertionError("the tokenizer ran")

    monkeypatch.setattr(processor.image_tokenizer, "encode", refuse)
    batch = Collator(processor.pad_token_id)([dataset[i] for i in range(len(dataset))])
    assert processor.image_start_id in batch["input_ids"]


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ({"tokens": "tokens", "index": 99}, "index 99, but"),
        ({"tokens": "tokens", "source": "nowhere.png"}, "has no image 'nowhere.png'"),
        ({"tokens": "missing", "index": 0}, "missing"),
        ({"tokens": "tokens", "index": -1}, '"index" must be an integer >= 0'),
        ({"tokens": "tokens"}, 'an image is a file path, {"tokens"'),
    ],
)
def test_a_bad_token_reference_names_the_line(mllm, image, message):
    _, processor = load_unified(mllm.model)
    data = mllm.root / "bad.jsonl"
    turns = [{"role": "user", "content": "<image>\nDescribe."}]
    turns.append({"role": "assistant", "content": "a picture"})
    data.write_text(json.dumps({"messages": turns, "images": [image]}) + "\n")
    with pytest.raises(DataFormatError, match=f"{re.escape(f'{data}:1: ')}.*{re.escape(message)}"):
        UnifiedDataset(read_jsonl([data]), processor)


def test_an_image_unreadable_when_the_set_was_written_drops_its_sample(mllm, two_ranks, tmp_path):
    # the set of the tiny preset: the MLLM's tokenizer has the same grid and vocabulary
    _, processor = load_unified(mllm.model)
    broken = TokenSet(two_ranks.path, processor.image_tokenizer, allow_other_model=True)
    data = tmp_path / "data.jsonl"
    turns = [{"role": "user", "content": "<image>\nDescribe."}]
    turns.append({"role": "assistant", "content": "a picture"})
    for source in (*broken.failures, broken.sources[0]):
        line = {"messages": turns, "images": [{"tokens": str(two_ranks.path), "source": source}]}
        with data.open("a") as f:
            f.write(json.dumps(line) + "\n")
    item = UnifiedDataset(read_jsonl([data]), processor)[0]
    # dropped as bad images, the next sample served
    assert item["skipped"].tolist() == [len(broken.failures), 0]


# -- LlamaGen extraction under torchrun ------------------------------------------------------------
@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Five readable photos in two classes and an unreadable one, as ImageFolder lists them."""
    root = tmp_path_factory.mktemp("imagefolder")
    classes = {"class_a": ("astronaut", "coffee"), "class_b": ("chelsea", "rocket", "retina")}
    for cls, names in classes.items():
        (root / cls).mkdir()
        for name in names:
            center_crop(sample_photo(name), 96).save(root / cls / f"{name}.jpg", quality=95)
    (root / "class_b" / "broken.jpg").write_bytes(b"not a jpeg at all")
    return root


def extract_args(image_folder: Path, code_path: Path) -> list[str]:
    return [
        *("--model", "tiny", "--data-path", str(image_folder), "--code-path", str(code_path)),
        *("--batch-size", "2", "--num-workers", "0", "--no-progress"),
    ]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_llamagen_extraction_on_two_ranks_writes_the_files_of_one(image_folder, tmp_path):
    from semhitok_llamagen.extract import main as extract_main

    one, two = tmp_path / "one" / "codes_flip", tmp_path / "two" / "codes_flip"
    assert extract_main(extract_args(image_folder, one)) == 0
    logs = run_ranks(extract_main, extract_args(image_folder, two), 2, tmp_path / "logs")
    assert [code for code, _ in logs] == [0, 0], logs
    assert "wrote 5 images (0 already there, 1 unreadable skipped)" in logs[0][1]
    files = tree(one)
    assert len([f for f in files if f.startswith("imagenet64_codes/")]) == 5
    assert tree(two) == files  # byte for byte, the staging folder gone


def test_llamagen_extraction_resumes_with_another_number_of_ranks(image_folder, tmp_path):
    from semhitok_llamagen.extract import main as extract_main

    one, two = tmp_path / "one" / "codes_flip", tmp_path / "two" / "codes_flip"
    assert extract_main(extract_args(image_folder, one)) == 0
    assert run_ranks(extract_main, extract_args(image_folder, two), 2, tmp_path / "a")[0][0] == 0
    for name in ("imagenet64_codes/3.npy", "imagenet64_codes/4.npy"):
        (two / name).unlink()  # a run killed mid-way
    assert extract_main(extract_args(image_folder, two)) == 0  # one rank this time
    assert tree(two) == tree(one)


# -- the real torchrun -----------------------------------------------------------------------------
def torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", str(_free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_torchrun_encodes_and_resumes_through_the_module_and_the_script(
    corpus, single, model, tmp_path
):
    out = tmp_path / "set"
    argv = encode_args(corpus, out, "--shard-size", "2")
    first = torchrun("-m", "semhitok_plugin.cli", *argv)
    assert "on 2 ranks, 2 failed" in first.stderr, first.stderr[-3000:]
    ids, names = read_tokens(out, model)
    expected_ids, expected_names = read_tokens(single, model)
    assert names == expected_names and torch.equal(ids, expected_ids)
    index = (out / INDEX_NAME).read_bytes()
    (out / "shard-000004.npz").unlink()
    (out / INDEX_NAME).unlink()
    script = Path(sys.executable).parent / "semhitok"
    again = torchrun("--no-python", str(script), *argv)
    assert "4 shards kept from an earlier run" in again.stderr, again.stderr[-3000:]
    assert (out / INDEX_NAME).read_bytes() == index


@pytest.mark.slow
def test_torchrun_runs_the_llamagen_extractor(image_folder, tmp_path):
    from semhitok_llamagen.extract import main as extract_main

    one, two = tmp_path / "one" / "codes_flip", tmp_path / "two" / "codes_flip"
    assert extract_main(extract_args(image_folder, one)) == 0
    run = torchrun("-m", "semhitok_llamagen.extract", *extract_args(image_folder, two))
    assert run.returncode == 0, run.stderr[-3000:]
    assert tree(two) == tree(one)
