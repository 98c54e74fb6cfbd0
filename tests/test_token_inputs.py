"""Malformed token inputs: every one is refused with an error that names the problem
and, for files, the file; none decodes to an image. The inputs are the builders of
``semhitok_fixtures.bad_tokens``, fed through the real CLI and API."""

import contextlib
import os
import pickle
import re
import shutil
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from semhitok_fixtures.bad_tokens import (
    BOMB_BYTES,
    BOMB_LIMIT,
    MODEL,
    PICKLE_MARKER,
    TouchOnUnpickle,
    probe,
    run_decode,
    token_arrays,
    token_byte_limit,
    write_bad_token_files,
)
from semhitok_llamagen import SemHiTokVQModel
from semhitok_plugin import TokenIdError, load_model, token_files
from semhitok_plugin.cli import main
from semhitok_plugin.images import to_pil
from semhitok_plugin.token_files import TokenFileError, read_tokens


@pytest.fixture(scope="module")
def model():
    return load_model(MODEL)  # what ``semhitok decode -m tiny`` builds: same seed, same weights


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokens")
    return directory, probe(directory)


@pytest.fixture(scope="module")
def probes(probed):
    return probed[1]


VOCAB = "outside the valid range [0, 256)"
WIDE = "which cannot hold every id in [0, 256) exactly (ids may have wrapped around): use int32"
# (entry point, start of the input's words, start of the outcome the probe must report)
EXPECTED = [
    ("semhitok decode", "not a zip archive", "exit 2: error: not_a_zip.npz is not a SemHiTok "
     "token file: no zip signature (starts with b'ids!')"),
    ("semhitok decode", "archive cut in half", "exit 2: error: truncated.npz is not a SemHiTok "
     "token file (.npz): File is not a zip file"),
    ("semhitok decode", "a bare .npy array", "exit 2: error: single_array.npz holds a single "
     ".npy array, not a .npz token archive"),
    ("semhitok decode", "flat_ids header declares", "exit 2: error: lying_header.npz: "
     "flat_ids.npy declares a (100000000000, 8, 8) int32 array (25,600,000,000,000 bytes) but "
     "holds 64 bytes"),
    ("semhitok decode", "archive without flat_ids", "exit 2: error: no_flat_ids.npz lacks "
     "flat_ids (it holds ['grid', 'vocab_size', 'model', 'files'])"),
    ("semhitok decode", "flat_ids as a pickled object array", "exit 2: error: pickled_ids.npz: "
     "unreadable token archive: Object arrays cannot be loaded when allow_pickle=False"),
    ("semhitok decode", "a pickle, not an archive", "exit 2: error: pickle.npz is not a "
     "SemHiTok token file: no zip signature (starts with b'\\x80"),
    ("semhitok decode", "float32 ids", "exit 2: error: float_ids.npz: flat_ids must be integer "
     "ids, got float32 (ids are never rounded)"),
    ("semhitok decode", "float64 ids with a NaN", "exit 2: error: nan_ids.npz: flat_ids must be "
     "integer ids, got float64 (ids are never rounded)"),
    ("semhitok decode", "bool ids", "exit 2: error: bool_ids.npz: flat_ids must be integer ids, "
     "got bool (ids are never rounded)"),
    ("semhitok decode", "int64 id 2**32 + 7", "exit 2: error: int64_beyond_int32.npz: flat_ids "
     f"contains 4294967303, {VOCAB} (first at index (1, 2, 3)) (image 'photos/b.png')"),
    ("semhitok decode", "uint64 id 2**63 + 7", "exit 2: error: uint64_ids.npz: flat_ids has "
     f"dtype torch.uint64, {WIDE}"),
    ("semhitok decode", "int8 ids for a 256-id vocabulary", "exit 2: error: int8_ids.npz: "
     f"flat_ids has dtype torch.int8, {WIDE}"),
    ("semhitok decode", "a negative id", "exit 2: error: negative_ids.npz: flat_ids contains -1, "
     f"{VOCAB} (first at index (1, 2, 3)) (image 'photos/b.png')"),
    ("semhitok decode", "an id equal to vocab_size", "exit 2: error: id_at_vocab_size.npz: "
     f"flat_ids contains 256, {VOCAB} (first at index (1, 2, 3)) (image 'photos/b.png')"),
    ("semhitok decode", "ids (2, 4, 16) with grid metadata 8x8", "exit 2: error: "
     "wrong_grid_ids.npz: flat_ids has shape (2, 4, 16), expected (N, 8, 8) for the file's grid"),
    ("semhitok decode", "grid metadata 16x16", "exit 2: error: grid_metadata.npz holds ids of a "
     "tokenizer with vocab 256 and grid (16, 16) (model 'tiny'); this model has vocab 256 and "
     "grid (8, 8)"),
    ("semhitok decode", "written by siglip-l16-256", "exit 2: error: other_preset.npz holds ids "
     "of a tokenizer with vocab 196608 and grid (16, 16) (model 'siglip-l16-256'); this model "
     "has vocab 256 and grid (8, 8)"),
    ("semhitok decode", "written by a K=128 x m=4", "exit 2: error: other_vocabulary.npz holds "
     "ids of a tokenizer with vocab 512 and grid (8, 8) (model 'k128-m4'); this model has vocab "
     "256 and grid (8, 8)"),
    ("semhitok decode", "same vocab and grid", "exit 2: error: other_model.npz was written by "
     "model 'another-tiny-checkpoint', not 'tiny': another tokenizer's codes would give a wrong "
     "image. Decode with -m another-tiny-checkpoint, or pass --allow-other-model"),
    ("semhitok decode", "1 file name for 2 token maps", "exit 2: error: files_count.npz: files "
     "must name each of the 2 token maps, got (1,)"),
    ("semhitok decode", "vocab_size as an array of 2", "exit 2: error: vocab_array.npz: "
     "vocab_size must be one integer, got array([256, 256])"),
    ("semhitok decode", "grid as a single number", "exit 2: error: grid_scalar.npz: grid must be "
     "2 integers (rows, cols), got array(8, dtype=int32)"),
    ("semhitok decode", "deflate bomb", "exit 2: error: deflate_bomb.npz inflates to 67,109,408 "
     "bytes, over the limit of 16,777,216"),
    ("semhitok decode", "big-endian int32 ids", "decoded; 2 images identical to the "
     "native-order file's"),
    ("semhitok decode", "two images with the same file stem", "2 images written: x-00000.png, "
     "x-00001.png"),
    ("SemHiTok.decode", "float ids", "TokenIdError: flat_ids must be an integer tensor, got "
     "dtype torch.float32"),
    ("SemHiTok.decode", "an id equal to vocab_size", f"TokenIdError: flat_ids contains 256, "
     f"{VOCAB} (first at index (0, 2, 5))"),
    ("SemHiTok.decode", "a negative id", f"TokenIdError: flat_ids contains -1, {VOCAB} (first "
     "at index (0, 0, 0))"),
    ("SemHiTok.decode", "ids (1, 4, 16)", "TokenIdError: flat_ids must have shape (B, 8, 8) or "
     "(B, 64) for this tokenizer, got (1, 4, 16)"),
    ("SemHiTok.decode", "int8 ids", f"TokenIdError: flat_ids has dtype torch.int8, {WIDE}"),
    ("SemHiTok.decode", "a numpy array", "TokenIdError: flat_ids must be a torch tensor, got "
     "ndarray"),
    ("SemHiTok.semantic_features", "sem_id equal to K", "TokenIdError: sem_ids contains 64, "
     "outside the valid range [0, 64) (first at index (0, 0, 0))"),
    ("SemHiTok.semantic_features", "sem_ids (1, 2, 32)", "TokenIdError: sem_ids must have shape "
     "(B, 8, 8) or (B, 64) for this tokenizer, got (1, 2, 32)"),
    ("merge_ids", "pix_id equal to m", "TokenIdError: pix_ids contains 4, outside the valid "
     "range [0, 4) (first at index (0, 0, 0))"),
    ("split_ids", "float flat ids", "TokenIdError: flat_ids must be an integer tensor, got dtype "
     "torch.float64"),
    ("LlamaGen decode_code", "float codes", "TokenIdError: codes must be an integer tensor, got "
     "dtype torch.float32"),
    ("LlamaGen decode_code", "int64 code 2**32 + 7", f"TokenIdError: codes contains 4294967303, "
     f"{VOCAB} (first at index (0,))"),
    ("LlamaGen decode_code", "shape [1, C, 4, 16]", "TokenIdError: shape asks for a 4x16 grid, "
     "this tokenizer's is 8x8: use --image-size 64 and --downsample-size 8"),
    ("LLaVA tower features_from_ids", "float ids", "TokenIdError: flat_ids must be an integer "
     "tensor, got dtype torch.float32"),
    ("LLaVA tower features_from_ids", "an id equal to vocab_size", "TokenIdError: flat_ids "
     f"contains 256, {VOCAB} (first at index (0, 21))"),
    ("MLLM processor.decode", "a text id inside an image", "ValueError: the image opened at "
     "position 0 is not 64 image ids closed by <|image_end|>"),
    ("MLLM processor.decode", "an id past the image range", "ValueError: the image opened at "
     "position 0 is not 64 image ids closed by <|image_end|>"),
    ("MLLM processor.encode_images", "float image ids", "TokenIdError: image ids must be an "
     "integer tensor, got dtype torch.float32"),
    ("MLLM processor.encode_images", "image id equal to K*m", "TokenIdError: image ids contains "
     f"256, {VOCAB} (first at index (0,))"),
]  # fmt: skip


@pytest.mark.parametrize(
    "entry, words, expected", EXPECTED, ids=[f"{e}: {w}" for e, w, _ in EXPECTED]
)
def test_each_token_probe_reports_its_outcome(probes, entry, words, expected):
    (outcome,) = [p.outcome for p in probes if p.entry_point == entry and p.input.startswith(words)]
    assert outcome.startswith(expected)


def test_the_token_probes_are_those_expected_and_decode_nothing_they_refuse(probed):
    directory, probes = probed
    assert {p.family for p in probes} == {"tokens"}
    assert len({(p.entry_point, p.input) for p in probes}) == len(probes) == len(EXPECTED)
    decoded = sorted(p.name for p in directory.glob("*.decoded"))
    assert decoded == ["big_endian.decoded", "native.decoded", "same_stem.decoded"]
    assert not (directory / PICKLE_MARKER).exists()


def test_the_probes_reach_every_entry_point_that_takes_ids(probes):
    assert {p.entry_point for p in probes} == {
        "semhitok decode",
        "SemHiTok.decode",
        "SemHiTok.semantic_features",
        "merge_ids",
        "split_ids",
        "LlamaGen decode_code",
        "LLaVA tower features_from_ids",
        "MLLM processor.decode",
        "MLLM processor.encode_images",
    }


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("truncated.npz", " is not a SemHiTok token file (.npz): File is not a zip file"),
        ("float_ids.npz", ": flat_ids must be integer ids, got float32 (ids are never rounded)"),
        (
            "int64_beyond_int32.npz",
            ": flat_ids contains 4294967303, outside the valid range [0, 256) (first at index "
            "(1, 2, 3)) (image 'photos/b.png')",
        ),
        ("wrong_grid_ids.npz", ": flat_ids has shape (2, 4, 16), expected (N, 8, 8)"),
        (
            "lying_header.npz",
            ": flat_ids.npy declares a (100000000000, 8, 8) int32 array (25,600,000,000,000 "
            "bytes) but holds 64 bytes",
        ),
        ("other_preset.npz", " holds ids of a tokenizer with vocab 196608 and grid (16, 16)"),
        ("other_model.npz", " was written by model 'another-tiny-checkpoint', not 'tiny'"),
    ],
)
def test_read_tokens_names_the_file_and_the_problem(model, tmp_path, name, message):
    (case,) = [c for c in write_bad_token_files(tmp_path, model) if c.path.name == name]
    with pytest.raises(TokenFileError) as err:
        read_tokens(case.path, model)
    assert str(err.value).startswith(f"{case.path}{message}")


def test_a_pickled_payload_is_never_run(model, tmp_path):
    files = {c.path.name: c.path for c in write_bad_token_files(tmp_path / "bad", model)}
    # the payload is live: an unsafe load runs it ...
    unsafe = tmp_path / "unsafe"
    unsafe.mkdir()
    with open(files["pickle.npz"], "rb") as f:
        payload = pickle.load(f)  # proves the payload would run
    assert payload is None and (tmp_path / "bad" / PICKLE_MARKER).exists()
    (tmp_path / "bad" / PICKLE_MARKER).unlink()
    np.savez(unsafe / "t.npz", flat_ids=np.array([TouchOnUnpickle(unsafe / "ran")], object))
    np.load(unsafe / "t.npz", allow_pickle=True)["flat_ids"]
    assert (unsafe / "ran").exists()
    # ... and decode refuses both files without running it
    for name in ("pickle.npz", "pickled_ids.npz"):
        status, err = run_decode(files[name], tmp_path / "out")
        assert status == 2 and str(files[name]) in err
    assert not (tmp_path / "bad" / PICKLE_MARKER).exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_cli_process_exits_2_naming_the_file_without_a_traceback(model, tmp_path):
    (case,) = [c for c in write_bad_token_files(tmp_path, model) if c.path.name == "truncated.npz"]
    result = subprocess.run(
        [sys.executable, "-m", "semhitok_plugin.cli", "decode", str(case.path), "-m", MODEL],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert f"error: {case.path} is not a SemHiTok token file" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "decoded").exists()


def _peak_traced(call) -> int:
    """Peak bytes traced while ``call`` runs, refused or not (numpy reports its buffers)."""
    tracemalloc.start()
    with contextlib.suppress(TokenFileError):
        call()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_a_deflate_bomb_is_refused_before_it_inflates(model, tmp_path):
    (bomb,) = [c for c in write_bad_token_files(tmp_path, model) if c.max_bytes]
    assert bomb.path.stat().st_size * 500 < BOMB_BYTES
    # the bomb is live: a plain load, or ours with room for it, inflates every byte ...
    with token_byte_limit(BOMB_BYTES + 2**20):
        assert read_tokens(bomb.path, model)[0].shape == (BOMB_BYTES // 256, 8, 8)
    assert _peak_traced(lambda: np.load(bomb.path)["flat_ids"]) >= BOMB_BYTES
    # ... and over the limit it is refused from the zip directory, inflating nothing
    with token_byte_limit(BOMB_LIMIT), pytest.raises(TokenFileError, match="over the limit"):
        read_tokens(bomb.path, model)
    with token_byte_limit(BOMB_LIMIT):
        assert _peak_traced(lambda: read_tokens(bomb.path, model)) < 2**20


@pytest.mark.slow
def test_the_token_byte_limit_counts_every_member_and_reads_the_environment(model, tmp_path):
    path = tmp_path / "t.npz"
    np.savez(path, **token_arrays(model))
    held = sum(m.file_size for m in zipfile.ZipFile(path).infolist())
    with token_byte_limit(held):
        assert read_tokens(path, model)[0].shape == (2, 8, 8)
    with token_byte_limit(held - 1), pytest.raises(TokenFileError, match=f"inflates to {held:,}"):
        read_tokens(path, model)
    code = "from semhitok_plugin import token_files; print(token_files.MAX_TOKEN_BYTES)"
    env = {**os.environ, "SEMHITOK_MAX_TOKEN_BYTES": "1234"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.stdout.strip() == "1234" and token_files.MAX_TOKEN_BYTES == 2**32


@pytest.fixture
def checkpoint(model, tmp_path):
    return model.save_pretrained(tmp_path / "ckpt")


def _pngs(directory):
    return {p.name: np.asarray(Image.open(p)) for p in sorted(directory.glob("*.png"))}


def test_another_spelling_of_the_same_checkpoint_decodes(checkpoint, tmp_path, monkeypatch):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(photo)
    tokens = tmp_path / "t.npz"
    assert main(["encode", str(photo), "-m", str(checkpoint), "-o", str(tokens)]) == 0
    monkeypatch.chdir(tmp_path)
    assert main(["decode", str(tokens), "-m", "./ckpt/", "-o", "a"]) == 0
    assert list(_pngs(tmp_path / "a")) == ["photo.png"]


def test_a_renamed_checkpoint_needs_allow_other_model(checkpoint, model, tmp_path, capsys):
    tokens = tmp_path / "t.npz"
    np.savez(tokens, **{**token_arrays(model), "model": np.str_(str(checkpoint))})
    renamed = shutil.copytree(checkpoint, tmp_path / "renamed")
    args = ["decode", str(tokens), "-m", str(renamed), "-o"]
    assert main([*args, str(tmp_path / "refused")]) == 2
    assert f"{tokens} was written by model '{checkpoint}'" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    assert main([*args, str(tmp_path / "a"), "--allow-other-model"]) == 0
    assert main(["decode", str(tokens), "-m", str(checkpoint), "-o", str(tmp_path / "b")]) == 0
    a, b = _pngs(tmp_path / "a"), _pngs(tmp_path / "b")
    assert list(a) == ["a.png", "b.png"] and all(np.array_equal(a[k], b[k]) for k in a)


def test_images_with_the_same_stem_are_all_written(model, tmp_path):
    arrays = token_arrays(model, count=3)
    arrays["files"] = np.array(["x/cat.png", "y/cat.jpg", "dog.png"])
    np.savez(tmp_path / "t.npz", **arrays)
    assert run_decode(tmp_path / "t.npz", tmp_path / "out")[0] == 0
    images = _pngs(tmp_path / "out")
    assert list(images) == ["cat-00000.png", "cat-00001.png", "dog.png"]
    expected = to_pil(model.decode(torch.from_numpy(arrays["flat_ids"]).long()))
    for name, image in zip(images, expected, strict=True):
        assert np.array_equal(images[name], np.asarray(image))


def test_float_codes_reach_llamagen_decode_code_as_an_error_not_a_truncated_image(model):
    codes = torch.randint(0, model.vocab_size, (2, 64))
    vq = SemHiTokVQModel(model)
    assert torch.equal(vq.decode_code(codes.int(), [2, 8, 8, 8]), model.decode(codes))
    with pytest.raises(
        TokenIdError, match=r"codes must be an integer tensor, got dtype torch\.float32"
    ):
        vq.decode_code(codes.float() + 0.5, [2, 8, 8, 8])


def test_wide_unsigned_ids_decode_exactly_and_narrow_ones_are_refused(model):
    ids = torch.randint(0, model.vocab_size, (1, 8, 8))
    for dtype in (torch.uint16, torch.uint32, torch.int32, torch.uint8):
        assert torch.equal(model.decode(ids.to(dtype)), model.decode(ids))
    with pytest.raises(TokenIdError, match=r"int8, which cannot hold every id in \[0, 256\)"):
        model.decode(ids.to(torch.int8))


def test_ids_must_come_in_this_tokenizers_grid(model):
    ids = torch.randint(0, model.vocab_size, (2, 8, 8))
    assert torch.equal(model.decode(ids.flatten(1)), model.decode(ids))
    for shape in [(2, 4, 16), (2, 8, 8, 1), (128,)]:
        with pytest.raises(TokenIdError, match=f"got {re.escape(str(shape))}"):
            model.decode(ids.reshape(shape))
    with pytest.raises(TokenIdError, match=r"sem_ids must have shape \(B, 8, 8\)"):
        model.semantic_features(ids.reshape(2, 16, 4) % model.codebook_size)


def test_out_of_range_error_carries_the_position(model):
    ids = torch.zeros(3, 8, 8, dtype=torch.long)
    ids[2, 6, 1] = -5
    with pytest.raises(TokenIdError, match=r"contains -5, .* \(first at index \(2, 6, 1\)\)") as e:
        model.decode(ids)
    assert e.value.index == (2, 6, 1)
