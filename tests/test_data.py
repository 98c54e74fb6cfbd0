"""The data pipeline on small datasets of real photos with broken files mixed in."""

from __future__ import annotations

import io
import json
import logging
import tarfile
import threading
from itertools import islice
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import webdataset as wds

from semhitok_plugin import data
from semhitok_plugin.config import ConfigError
from semhitok_plugin.data import DataConfig, DataSourceError, ImageStream, eval_batches
from semhitok_plugin.images import center_crop, load_image, to_tensor
from semhitok_plugin.samples import SAMPLE_PHOTOS, sample_photo

SIZE = 32
BROKEN = ("a/notes.jpg", "b/truncated.jpg", "empty.png")  # text, truncated JPEG, zero bytes


def _jpeg_bytes(name: str) -> bytes:
    buffer = io.BytesIO()
    sample_photo(name).resize((96, 72)).save(buffer, "JPEG")
    return buffer.getvalue()


def _write_shard(path: Path, members: list[tuple[str, str, bytes, dict[str, bytes]]]) -> None:
    with wds.TarWriter(str(path)) as writer:
        for key, ext, image, extra in members:
            writer.write({"__key__": key, ext: image, **extra})


@pytest.fixture(scope="session")
def ds(tmp_path_factory) -> SimpleNamespace:
    """Six photos (PNG and JPEG, in nested folders) plus three broken files, as a folder, a .txt
    list, a .jsonl list with labels, and two tar shards (labels as ``cls`` in one, ``json`` in the
    other); ``clean``: the six photos alone as a folder, as three shards and as one shard."""
    root = tmp_path_factory.mktemp("data")
    images = root / "images"
    for sub in ("a", "b"):
        (images / sub).mkdir(parents=True)
    good = {}
    for i, name in enumerate(SAMPLE_PHOTOS):
        photo = sample_photo(name)
        photo.thumbnail((112, 112))
        rel = f"{'ab'[i % 2]}/{name}.{'png' if i < 3 else 'jpg'}"
        photo.save(images / rel)
        good[rel] = i
    (images / BROKEN[0]).write_text("this is not an image")
    (images / BROKEN[1]).write_bytes(_jpeg_bytes("chelsea")[:1500])
    (images / BROKEN[2]).write_bytes(b"")
    (images / "README.txt").write_text("not an image file: ignored")
    rels = sorted(good.keys() | set(BROKEN), key=lambda rel: images / rel)
    labels = {rel: good.get(rel, 100 + i) for i, rel in enumerate(rels)}

    (root / "list.txt").write_text("".join(f"images/{rel}\n\n" for rel in rels))
    lines = [json.dumps({"path": f"images/{rel}", "label": labels[rel]}) for rel in rels]
    (root / "list.jsonl").write_text("\n".join(lines) + "\n")
    members = []
    for i, rel in enumerate(rels):
        key, ext = rel.rsplit(".", 1)
        label = str(labels[rel]).encode()
        extra = {"cls": label} if i < 5 else {"json": json.dumps({"label": labels[rel]}).encode()}
        members.append((key, ext, (images / rel).read_bytes(), extra))
    _write_shard(root / "shard-00000.tar", members[:5])
    _write_shard(root / "shard-00001.tar", members[5:])

    clean = root / "clean"
    clean.mkdir()
    good_rels = [rel for rel in rels if rel in good]
    for i, rel in enumerate(good_rels):
        (clean / f"{i}.png").write_bytes((images / rel).read_bytes())
    photos = [(f"{i}", "png", (clean / f"{i}.png").read_bytes(), {}) for i in range(6)]
    for s in range(3):
        _write_shard(root / f"clean-{s}.tar", photos[2 * s : 2 * s + 2])
    _write_shard(root / "clean-all.tar", photos)

    refs = {rel: to_tensor([center_crop(load_image(images / rel), SIZE)])[0] for rel in good_rels}
    return SimpleNamespace(
        root=root,
        images=images,
        good=good_rels,
        labels=[labels[rel] for rel in good_rels],
        refs=refs,
        names={ref.numpy().tobytes(): rel for rel, ref in refs.items()},
        sources={
            "folder": str(images),
            "txt": str(root / "list.txt"),
            "jsonl": str(root / "list.jsonl"),
            "tar-braces": str(root / "shard-{00000..00001}.tar"),
            "tar-glob": str(root / "shard-*.tar"),
        },
        clean={
            "folder": str(clean),
            "tar": str(root / "clean-{0..2}.tar"),
            "one-shard": str(root / "clean-all.tar"),
        },
    )


def _names(ds, images: torch.Tensor) -> list[str]:
    """Which photo each centre-cropped image is (KeyError if it is none of them)."""
    return [ds.names[image.numpy().tobytes()] for image in images]


def _take(stream, n: int) -> list[dict]:
    return list(islice(iter(stream), n))


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["images"], y["images"])
        assert (x["labels"] is None) == (y["labels"] is None)
        assert x["labels"] is None or torch.equal(x["labels"], y["labels"])
        assert x["skipped"] == y["skipped"]


@pytest.mark.parametrize(
    ("kind", "workers"),
    [
        ("folder", 0),
        ("txt", 0),
        ("jsonl", 0),
        ("tar-braces", 0),
        ("tar-glob", 0),
        ("jsonl", 2),
        ("tar-glob", 2),
    ],
)
def test_every_source_gives_the_centre_crops_labels_and_skips(ds, kind, workers):
    config = DataConfig(ds.sources[kind], image_size=SIZE, num_workers=workers)
    batches = list(eval_batches(config, 4))
    images = torch.cat([b["images"] for b in batches])
    assert torch.equal(images, torch.stack([ds.refs[rel] for rel in ds.good]))  # images.center_crop
    assert sum(b["skipped"] for b in batches) == len(BROKEN)
    if kind in ("folder", "txt"):
        assert all(b["labels"] is None for b in batches)
    else:
        assert torch.cat([b["labels"] for b in batches]).tolist() == ds.labels


@pytest.mark.parametrize("kind", ["folder", "tar-braces"])
def test_broken_files_are_skipped_counted_and_logged_once(ds, kind, caplog):
    caplog.set_level(logging.WARNING, logger="semhitok_plugin.data")
    stream = ImageStream(DataConfig(ds.sources[kind], image_size=SIZE), batch_size=9)
    batches = _take(stream, 3)  # one batch = one epoch of 6 photos and 3 broken files
    assert [(len(b["images"]), b["skipped"]) for b in batches] == [(6, 3)] * 3
    assert stream.skipped_total == 9
    assert stream.state_dict() == {"epoch": 3, "position": 0, "skipped_total": 9}
    logged = [r.getMessage() for r in caplog.records if r.name == "semhitok_plugin.data"]
    for rel in BROKEN:
        assert sum(Path(rel).stem in message for message in logged) == 1
    assert len(logged) == len(BROKEN)


def test_batches_without_a_readable_image_are_folded_into_the_next(ds):
    stream = ImageStream(DataConfig(ds.sources["folder"], image_size=SIZE), batch_size=1)
    batches = _take(stream, 12)  # the photos of two epochs
    assert all(len(b["images"]) == 1 for b in batches)
    state = stream.state_dict()
    assert sum(b["skipped"] for b in batches) == stream.skipped_total >= len(BROKEN)
    assert state["epoch"] * 9 + state["position"] == 12 + stream.skipped_total


def _resume_matches(source: str, num_workers: int, batch_size: int, k: int, m: int) -> None:
    """k batches, state_dict, a new stream, load_state_dict, m batches == batches k..k+m of an
    uninterrupted stream in the main process."""
    config = DataConfig(source, image_size=SIZE, num_workers=num_workers)
    reference = ImageStream(DataConfig(source, image_size=SIZE), batch_size, seed=3)
    expected = _take(reference, k + m)
    first = ImageStream(config, batch_size, seed=3)
    assert len(_take(first, k)) == k
    resumed = ImageStream(config, batch_size, seed=3)
    resumed.load_state_dict(first.state_dict())
    after = _take(resumed, m)
    _assert_same(after, expected[k:])
    assert resumed.state_dict() == reference.state_dict()
    restarted = expected[:m]  # what ignoring the state would give
    assert not all(
        torch.equal(a["images"], b["images"]) for a, b in zip(after, restarted, strict=True)
    )


def test_resume_is_exact_for_files_with_workers(ds):
    # crosses two epoch boundaries; random crops and flips; 2 workers vs. the main process
    _resume_matches(ds.sources["jsonl"], num_workers=2, batch_size=4, k=3, m=4)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_is_exact_for_shards(ds, num_workers):
    _resume_matches(ds.sources["tar-braces"], num_workers, batch_size=2, k=5, m=5)


@pytest.mark.parametrize("kind", ["folder", "tar-braces"])
def test_reading_batches_leaves_the_global_rng_alone(ds, kind):
    """A resumed run opens its streams at a later step than the uninterrupted one; if opening one
    drew from the global RNG, the training step's own draws (sub-codebook init) would differ."""
    config = DataConfig(ds.sources[kind], image_size=SIZE, crop="random", num_workers=1)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    _take(ImageStream(config, 2, seed=1), 2)
    next(iter(eval_batches(config, 2)))
    assert torch.equal(torch.get_rng_state(), before)


def test_resuming_shards_does_not_decode_consumed_samples(ds, monkeypatch):
    config = DataConfig(ds.clean["tar"], image_size=SIZE)
    first = ImageStream(config, 2)
    _take(first, 4)
    assert first.state_dict() == {"epoch": 1, "position": 2, "skipped_total": 0}
    decoded = []

    def counting_load_image(source):
        decoded.append(source)
        return load_image(source)

    monkeypatch.setattr(data, "load_image", counting_load_image)
    resumed = ImageStream(config, 2)
    resumed.load_state_dict(first.state_dict())
    _take(resumed, 1)
    assert len(decoded) == 2


@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_ranks_see_disjoint_samples_that_cover_the_epoch(ds, kind):
    config = DataConfig(ds.clean[kind], image_size=SIZE, crop="center")
    seen = []
    for rank in (0, 1):
        stream = ImageStream(config, 1, seed=5, rank=rank, world_size=2)
        names = []
        for batch in stream:
            names += _names(ds, batch["images"])
            if stream.state_dict()["epoch"] == 1:
                break
        seen.append(names)
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(ds.good)
    passes = [eval_batches(config, 2, rank=rank, world_size=2) for rank in (0, 1)]
    split = [[n for b in batches for n in _names(ds, b["images"])] for batches in passes]
    assert not set(split[0]) & set(split[1])
    assert sorted(split[0] + split[1]) == sorted(ds.good)


@pytest.mark.parametrize(
    ("kind", "buffer"), [("folder", 0), ("tar", 1000), ("tar", 0), ("one-shard", 1000)]
)
def test_each_epoch_has_its_own_order(ds, kind, buffer):
    # shards: the shard order (alone when there is no shuffle buffer) and the shuffle buffer
    config = DataConfig(ds.clean[kind], image_size=SIZE, crop="center", shuffle_buffer=buffer)
    stream = ImageStream(config, 6, seed=1)
    epochs = [_names(ds, batch["images"]) for batch in _take(stream, 3)]
    assert all(sorted(epoch) == sorted(ds.good) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) == 3


def test_random_crops_depend_on_epoch_and_seed_and_flips_mirror(ds, tmp_path):
    # one photo, so batch i holds that photo's crop of epoch i
    listed = tmp_path / "one.txt"
    listed.write_text(f"{ds.images / ds.good[0]}\n")
    config = DataConfig(str(listed), image_size=SIZE, scale=(0.2, 0.5), flip=False)
    crops = torch.cat([b["images"] for b in _take(ImageStream(config, 1), 8)])
    assert crops.shape == (8, 3, SIZE, SIZE) and crops.min() >= -1 and crops.max() <= 1
    assert len({crop.numpy().tobytes() for crop in crops}) == 8
    other_seed = torch.cat([b["images"] for b in _take(ImageStream(config, 1, seed=1), 8)])
    assert not any(torch.equal(a, b) for a, b in zip(crops, other_seed, strict=True))
    flip_config = DataConfig(str(listed), image_size=SIZE, scale=(0.2, 0.5))
    flips = torch.cat([b["images"] for b in _take(ImageStream(flip_config, 1), 8)])
    mirrored = [
        torch.equal(f, c.flip(-1)) and not torch.equal(f, c)
        for f, c in zip(flips, crops, strict=True)
    ]
    assert all(m or torch.equal(f, c) for m, f, c in zip(mirrored, flips, crops, strict=True))
    assert 0 < sum(mirrored) < 8


def test_hue_rotation_recolours_crops_but_not_their_brightness_or_greys(ds, tmp_path):
    """The same crops (same seed), each hue-rotated by its own seeded angle: resumable like
    the crop; a grey photo has no hue to rotate."""
    listed = tmp_path / "one.txt"
    listed.write_text(f"{ds.images / ds.good[0]}\n")
    grey = tmp_path / "grey.png"
    sample_photo("astronaut").convert("L").convert("RGB").save(grey)
    (tmp_path / "grey.txt").write_text(f"{grey}\n")

    def crops(source, **kw):
        config = DataConfig(str(source), image_size=SIZE, scale=(0.2, 0.5), flip=False, **kw)
        return torch.cat([b["images"] for b in _take(ImageStream(config, 1), 4)])

    plain, rotated = crops(listed), crops(listed, hue=0.5)
    assert torch.equal(rotated, crops(listed, hue=0.5))
    assert all((a - b).abs().mean() > 0.02 for a, b in zip(plain, rotated, strict=True))
    value = (plain.max(1).values - rotated.max(1).values).abs()  # HSV value: the largest channel
    assert value.max() <= 2 / 255 + 1e-6
    assert torch.equal(crops(tmp_path / "grey.txt"), crops(tmp_path / "grey.txt", hue=0.5))


def test_truncated_shard_keeps_its_readable_samples_and_counts_the_rest(ds, tmp_path):
    members = [
        (f"{i}", "png", (Path(ds.clean["folder"]) / f"{i}.png").read_bytes(), {}) for i in range(3)
    ]
    shard = tmp_path / "cut.tar"
    _write_shard(shard, members)
    with tarfile.open(shard) as tar:
        third = tar.getmember("2.png")
    shard.write_bytes(shard.read_bytes()[: third.offset_data + 100])
    batches = list(eval_batches(DataConfig(str(shard), image_size=SIZE), 8))
    assert [(len(b["images"]), b["skipped"]) for b in batches] == [(2, 1)]


def test_a_source_without_any_readable_image_raises_instead_of_spinning(ds, tmp_path):
    for rel in BROKEN:
        (tmp_path / Path(rel).name).write_bytes((ds.images / rel).read_bytes())
    stream = ImageStream(DataConfig(str(tmp_path), image_size=SIZE), 2)
    errors = []

    def consume() -> None:
        try:
            _take(stream, 1)
        except RuntimeError as err:
            errors.append(str(err))

    thread = threading.Thread(target=consume, daemon=True)  # a regression spins, not hangs us
    thread.start()
    thread.join(timeout=30)
    assert errors and "no readable image in a whole epoch" in errors[0]


@pytest.mark.parametrize("make", [ImageStream, eval_batches])
def test_missing_or_empty_sources_raise_naming_the_path(ds, tmp_path, make):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    (tmp_path / "blank.txt").write_text("\n\n")
    cases = {
        str(tmp_path / "nowhere"): FileNotFoundError,
        str(tmp_path / "nowhere.jsonl"): FileNotFoundError,
        str(ds.root / "shard-{00000..00002}.tar"): FileNotFoundError,
        str(tmp_path / "empty"): ValueError,
        str(tmp_path / "blank.txt"): ValueError,
    }
    for source, error in cases.items():
        with pytest.raises(error) as info:
            make(DataConfig(source), 2)
        assert source in str(info.value)


@pytest.mark.parametrize(
    "bad",
    [
        {"crop": "middle"},
        {"scale": (0.8, 0.5)},
        {"scale": (0.0, 1.0)},
        {"image_size": 0},
        {"hue": 0.6},
        {"hue": -0.1},
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        DataConfig("images", **bad)


@pytest.mark.parametrize(
    ("lines", "named"),
    [
        ("{oops", "line 1"),
        ('{"name": "a.png"}', "line 1"),
        ('{"path": 3}', "line 1"),
        ('{"path": "a.png"}\n\n{"path": "b.png", "label": "3"}', "line 3"),
        ('{"path": "a.png", "label": 1}\n{"path": "b.png"}', "label all or none"),
    ],
)
def test_a_malformed_jsonl_list_is_a_data_source_error_naming_the_line(tmp_path, lines, named):
    listing = tmp_path / "list.jsonl"
    listing.write_text(lines + "\n")
    with pytest.raises(DataSourceError) as info:
        data.image_files(listing)
    assert str(listing) in str(info.value) and named in str(info.value)


def test_more_ranks_than_files_is_an_error(ds):
    with pytest.raises(ValueError, match="world_size=3"):
        ImageStream(DataConfig(ds.sources["tar-glob"]), 2, rank=0, world_size=3)
