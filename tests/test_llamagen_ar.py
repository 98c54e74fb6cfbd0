"""The AR side of the LlamaGen integration: codes extracted for LlamaGen, read back as LlamaGen
reads them, trained on and sampled from with a tiny class-conditional GPT, decoded to images.

LlamaGen is not installable here; its reader and training step are re-stated below from the
FoundationVision/LlamaGen source (``dataset/imagenet.py``, ``autoregressive/train/train_c2i.py``,
``autoregressive/models/gpt.py``), line numbers as of commit 5a50452d.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_gpt import TinyGPT, generate
from torch.utils.data import DataLoader

from semhitok_llamagen.dataset import CodeDataset, code_dirs, count_files, path_problems
from semhitok_llamagen.extract import LlamaGenTransform, extract, main
from semhitok_plugin import load_model
from semhitok_plugin.samples import sample_photo

SIZE, GRID, VOCAB = 64, 8, 256  # the tiny preset
CLASSES = {"class_a": ("astronaut", "coffee"), "class_b": ("chelsea", "rocket")}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for cls, names in CLASSES.items():
        (root / cls).mkdir()
        for name in names:
            sample_photo(name).save(root / cls / f"{name}.jpg", quality=95)
    (root / "class_b" / "broken.jpg").write_bytes(b"not a jpeg at all")  # sorts first in class_b
    return root


@pytest.fixture(scope="module")
def tokenizer():
    return load_model("tiny")  # seed 0: the same weights main() builds from "--model tiny"


@pytest.fixture(scope="module")
def codes(image_folder, tmp_path_factory):
    """Extract through the command line entry point, as a user would."""
    code_path = tmp_path_factory.mktemp("codes") / "imagenet_code_c2i_flip"
    args = [
        "--model",
        "tiny",
        "--data-path",
        str(image_folder),
        "--code-path",
        str(code_path),
        "--image-size",
        str(SIZE),
        "--batch-size",
        "3",
        "--num-workers",
        "0",
        "--no-progress",
    ]
    assert main(args) == 0
    return code_path


def llamagen_getitem(feature_dir: str, label_dir: str, idx: int):
    """``CustomDataset.__getitem__`` (dataset/imagenet.py:34-50, flip rule :12, twin dir
    :14-21), restated: no dtype cast anywhere."""
    flip = "flip" in feature_dir  # :12
    aug_feature_dir = feature_dir.replace("ten_crop/", "ten_crop_105/")  # :14-15
    aug_label_dir = label_dir.replace("ten_crop/", "ten_crop_105/")
    if not (os.path.exists(aug_feature_dir) and os.path.exists(aug_label_dir)):  # :16-21
        aug_feature_dir = aug_label_dir = None
    if aug_feature_dir is not None and torch.rand(1) < 0.5:  # :35-40
        feature_dir, label_dir = aug_feature_dir, aug_label_dir
    features = np.load(os.path.join(feature_dir, f"{idx}.npy"))  # :45
    if flip:  # :46-48
        aug_idx = torch.randint(low=0, high=features.shape[1], size=(1,)).item()
        features = features[:, aug_idx]
    labels = np.load(os.path.join(label_dir, f"{idx}.npy"))  # :49
    return torch.from_numpy(features), torch.from_numpy(labels)  # :50


def llamagen_batch(x: torch.Tensor, y: torch.Tensor):
    """train_c2i.py:190-191."""
    return x.reshape(x.shape[0], -1), y.reshape(-1)


def test_layout_dtypes_and_values(codes, image_folder, tokenizer):
    codes_dir, labels_dir = code_dirs(codes, SIZE)
    assert codes_dir.name == "imagenet64_codes" and labels_dir.name == "imagenet64_labels"
    assert sorted(os.listdir(codes_dir)) == [f"{i}.npy" for i in range(4)]  # broken.jpg skipped
    assert sorted(os.listdir(labels_dir)) == [f"{i}.npy" for i in range(4)]
    skipped = (codes / "imagenet64_skipped.txt").read_text().splitlines()
    assert [os.path.basename(p) for p in skipped] == ["broken.jpg"]
    sources = (codes / "imagenet64_sources.txt").read_text().splitlines()
    assert [os.path.basename(p) for p in sources] == [
        "astronaut.jpg",
        "coffee.jpg",
        "chelsea.jpg",
        "rocket.jpg",
    ]
    for i in range(4):
        c, lab = np.load(codes_dir / f"{i}.npy"), np.load(labels_dir / f"{i}.npy")
        # extract_codes_c2i.py:104-111: codes (1, num_aug, h*w), labels (1,)
        assert c.shape == (1, 2, GRID * GRID) and c.dtype == np.int32
        assert lab.shape == (1,) and lab.dtype == np.int64 and lab[0] == (i >= 2)
        assert c.min() >= 0 and c.max() < VOCAB
    # file 2 is chelsea: [image, horizontal flip] of ADM's centre crop, encoded by the tokenizer
    from PIL import Image

    x = LlamaGenTransform(SIZE, False, 1.1)(Image.open(sources[2]).convert("RGB"))[None]
    expect = torch.cat([tokenizer.encode(x).flat_ids, tokenizer.encode(x.flip(-1)).flat_ids])
    assert np.array_equal(np.load(codes_dir / "2.npy")[0], expect.reshape(2, -1).numpy())
    assert not np.array_equal(expect[0], expect[1])  # the flip is a different token sequence


def test_read_back_exactly_as_llamagen(codes):
    feature_dir, label_dir = (str(d) for d in code_dirs(codes, SIZE))
    torch.manual_seed(0)
    items = [llamagen_getitem(feature_dir, label_dir, i) for i in range(4)]
    for features, labels in items:
        assert features.shape == (1, GRID * GRID) and features.dtype == torch.int32
        assert labels.shape == (1,) and labels.dtype == torch.int64
    x, y = llamagen_batch(*torch.utils.data.default_collate(items))
    assert x.shape == (4, GRID * GRID) and y.tolist() == [0, 0, 1, 1]
    # one of the two augmentations of each file, drawn by torch.randint as upstream
    for i, row in enumerate(x):
        stored = np.load(os.path.join(feature_dir, f"{i}.npy"))[0]
        assert any(np.array_equal(row.numpy(), a) for a in stored)


def test_path_name_without_marker_breaks_llamagen_and_is_refused(codes, image_folder, tmp_path):
    # the same files under a path without "flip": CustomDataset returns both augmentations
    plain = tmp_path / "imagenet_code_c2i"
    os.symlink(codes, plain)
    feature_dir, label_dir = (str(d) for d in code_dirs(plain, SIZE))
    x, _ = llamagen_batch(
        *torch.utils.data.default_collate([llamagen_getitem(feature_dir, label_dir, 0)])
    )
    assert x.shape == (1, 2 * GRID * GRID)  # 128 tokens for a block_size of 64
    assert path_problems(plain, ten_crop=False, crop_range=1.1)
    with pytest.raises(SystemExit):  # argparse error naming the rule
        main(
            [
                "--model",
                "tiny",
                "--data-path",
                str(image_folder),
                "--code-path",
                str(plain),
                "--no-progress",
                "--num-workers",
                "0",
            ]
        )


def test_int32_targets_fail_llamagen_cross_entropy_and_the_cast_fixes_it(codes):
    feature_dir, label_dir = (str(d) for d in code_dirs(codes, SIZE))
    torch.manual_seed(0)
    z, _ = llamagen_batch(
        *torch.utils.data.default_collate(
            [llamagen_getitem(feature_dir, label_dir, i) for i in range(4)]
        )
    )
    assert z.dtype == torch.int32
    model = TinyGPT(VOCAB, GRID * GRID, num_classes=2)
    # gpt.py:379: F.cross_entropy(logits.view(-1, V), targets.view(-1)), no cast before it
    logits = torch.randn(z.numel(), VOCAB)
    with pytest.raises(RuntimeError, match="Long"):
        F.cross_entropy(logits, z.view(-1))
    assert torch.isfinite(F.cross_entropy(logits, z.view(-1).long()))
    # the documented fix: our reader (LlamaGen's read rule + int64 cast)
    dataset = CodeDataset(feature_dir, label_dir)
    assert len(dataset) == 4 and dataset.flip
    zl, cl = llamagen_batch(*torch.utils.data.default_collate([dataset[i] for i in range(4)]))
    assert zl.dtype == torch.int64 and cl.dtype == torch.int64
    _, loss = model(cond_idx=cl, idx=zl[:, :-1], targets=zl)
    assert torch.isfinite(loss)


@pytest.mark.slow
def test_train_sample_decode(codes, tokenizer):
    from semhitok_llamagen.vq_model import SemHiTokVQModel

    torch.manual_seed(0)
    feature_dir, label_dir = code_dirs(codes, SIZE)
    loader = DataLoader(CodeDataset(feature_dir, label_dir), batch_size=4, shuffle=True)
    model = TinyGPT(VOCAB, GRID * GRID, num_classes=2, dim=64, n_layer=2, n_head=4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    model.train()
    for _ in range(200):  # one batch an epoch: memorises the 8 sequences
        for x, y in loader:
            z, c = llamagen_batch(x, y)
            _, loss = model(cond_idx=c, idx=z[:, :-1], targets=z)  # train_c2i.py:194
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    first, last = losses[0], np.mean(losses[-5:])
    assert first > 0.9 * np.log(VOCAB)  # starts near uniform over 256 ids
    assert last < 0.1 * first, (first, last)

    model.eval()
    cond = torch.tensor([0, 1])
    ids = generate(
        model,
        cond,
        GRID * GRID,
        cfg_scale=2.0,
        top_k=50,
        generator=torch.Generator().manual_seed(0),
    )
    assert ids.shape == (2, GRID * GRID) and ids.dtype == torch.int32  # as generate.py:166,176
    assert ids.min() >= 0 and ids.max() < VOCAB
    # LlamaGen decodes: vq_model.decode_code(index_sample, qzshape) (sample_c2i.py:79, :92)
    vq = SemHiTokVQModel(tokenizer)
    qzshape = [2, 8, GRID, GRID]  # [n, --codebook-embed-dim, latent, latent]
    images = vq.decode_code(ids, qzshape)
    assert images.shape == (2, 3, SIZE, SIZE)
    assert torch.equal(images, tokenizer.decode(ids.long().reshape(2, GRID, GRID)))
    assert images.min() >= -1 and images.max() <= 1
    # the class condition steers: greedy samples reproduce a training sequence of their class
    greedy = generate(model, cond, GRID * GRID, cfg_scale=2.0, top_k=1)
    train = {(i, a): np.load(feature_dir / f"{i}.npy")[0, a] for i in range(4) for a in range(2)}
    for label, row in zip(cond.tolist(), greedy.numpy(), strict=True):
        nearest = max(train, key=lambda k: (train[k] == row).sum())
        agreement = (train[nearest] == row).mean()
        assert (nearest[0] >= 2) == label and agreement > 0.9, (label, nearest, agreement)


def test_ten_crop_and_its_105_twin(image_folder, tmp_path):
    root = tmp_path / "imagenet_code_c2i_flip_ten_crop"
    twin = tmp_path / "imagenet_code_c2i_flip_ten_crop_105"
    model = load_model("tiny")
    r = extract(model, image_folder, root, ten_crop=True, crop_range=1.1, limit=2, progress=False)
    r105 = extract(
        model, image_folder, twin, ten_crop=True, crop_range=1.05, limit=2, progress=False
    )
    assert (r.total, r.num_aug, r105.total) == (2, 10, 2)
    feature_dir, label_dir = (str(d) for d in code_dirs(root, SIZE))
    a = np.load(os.path.join(feature_dir, "0.npy"))
    assert a.shape == (1, 10, GRID * GRID) and a.dtype == np.int32
    assert not np.array_equal(a, np.load(code_dirs(twin, SIZE)[0] / "0.npy"))  # another crop
    torch.manual_seed(0)
    features, _ = llamagen_getitem(feature_dir, label_dir, 0)  # finds the twin
    assert features.shape == (1, GRID * GRID)
    dataset = CodeDataset(feature_dir, label_dir)
    assert dataset.aug_feature_dir == feature_dir.replace("ten_crop/", "ten_crop_105/")
    with pytest.raises(ValueError, match="ten_crop_105"):  # 1.05 codes into the 1.1 directory
        extract(model, image_folder, root, ten_crop=True, crop_range=1.05, progress=False)


def test_resume_skips_written_files(image_folder, tmp_path):
    root = tmp_path / "codes_flip"
    model = load_model("tiny")
    first = extract(model, image_folder, root, limit=3, progress=False)
    assert (first.written, first.total, len(first.skipped)) == (2, 2, 1)  # broken.jpg is 3rd
    codes_dir, _ = code_dirs(root, SIZE)
    mtime = os.path.getmtime(codes_dir / "0.npy")
    (codes_dir / "1.npy").unlink()  # a run killed mid-write
    again = extract(model, image_folder, root, progress=False)
    assert (again.resumed, again.written, again.total, again.skipped) == (1, 3, 4, [])
    assert os.path.getmtime(codes_dir / "0.npy") == mtime
    assert count_files(codes_dir) == 4
    sources = (root / "imagenet64_sources.txt").read_text().splitlines()
    assert [os.path.basename(p) for p in sources] == [
        "astronaut.jpg",
        "coffee.jpg",
        "chelsea.jpg",
        "rocket.jpg",
    ]


@pytest.mark.slow
def test_the_launcher_gives_llamagens_build_dataset_int64_codes_of_every_file(
    codes, llamagen_root, tmp_path
):
    """train_c2i.py: dataset = build_dataset(args) with --dataset imagenet_code; x, y = batch."""
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            import argparse
            from dataset.build import build_dataset
            parser = argparse.ArgumentParser()
            parser.add_argument("--code-path", type=str, required=True)
            parser.add_argument("--image-size", type=int, choices=[256, 384, 448, 512])
            parser.add_argument("--dataset", type=str, default="imagenet_code")
            args = parser.parse_args()
            dataset = build_dataset(args)
            x, y = dataset[0]
            print(x.dtype, y.dtype, tuple(x.shape), len(dataset))
            """
        )
    )
    args = ["--code-path", str(codes), "--image-size", str(SIZE)]
    out = subprocess.run(
        [sys.executable, "-m", "semhitok_llamagen.run", str(script), *args],
        capture_output=True,
        text=True,
        cwd=llamagen_root,
    )
    assert out.stdout.split() == ["torch.int64", "torch.int64", "(1,", f"{GRID * GRID})", "4"], (
        out.stderr[-2000:]
    )
