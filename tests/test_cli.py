import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semhitok_plugin.cli import main
from semhitok_plugin.images import center_crop, load_image, to_tensor
from semhitok_plugin.samples import write_sample_photos


@pytest.fixture
def saved_model(tiny_model, photos, tmp_path):
    tiny_model.train()(photos, stage="semantic")
    return tiny_model.eval(), tiny_model.save_pretrained(tmp_path / "model")


@pytest.fixture
def image_files(tmp_path):
    paths = write_sample_photos(tmp_path / "images", ("astronaut", "coffee", "chelsea"))
    jpg = paths[1].with_suffix(".jpg")  # one JPEG among the PNGs
    Image.open(paths[1]).save(jpg, quality=95)
    return [paths[0], jpg, paths[2]]


def test_encode_decode_round_trip_on_real_photos(saved_model, image_files, tmp_path, capsys):
    model, model_dir = saved_model
    tokens = tmp_path / "tokens.npz"
    assert main(["encode", *map(str, image_files), "-m", str(model_dir), "-o", str(tokens)]) == 0
    with np.load(tokens) as data:
        assert data["flat_ids"].dtype == np.int32 and data["flat_ids"].shape == (3, 8, 8)
        assert tuple(data["grid"]) == (8, 8) and int(data["vocab_size"]) == 256
        ids = torch.from_numpy(data["flat_ids"].astype(np.int64))
    crops = to_tensor([center_crop(load_image(p), 64) for p in image_files])
    assert torch.equal(ids, model.encode(crops).flat_ids)

    decoded, recon = tmp_path / "decoded", tmp_path / "recon"
    assert main(["decode", str(tokens), "-m", str(model_dir), "-o", str(decoded)]) == 0
    assert (
        main(["reconstruct", *map(str, image_files), "-m", str(model_dir), "-o", str(recon)]) == 0
    )
    for path in image_files:
        a = np.asarray(Image.open(decoded / f"{path.stem}.png"))
        b = np.asarray(Image.open(recon / f"{path.stem}.png"))
        assert a.shape == (64, 64, 3) and np.array_equal(a, b)
    assert (recon / "grid.png").is_file()


def test_unreadable_file_is_named_and_fails(saved_model, image_files, tmp_path, capsys):
    _, model_dir = saved_model
    bad = tmp_path / "broken.jpg"
    bad.write_text("this is not a JPEG")
    tokens = tmp_path / "tokens.npz"
    assert main(["encode", str(bad), "-m", str(model_dir), "-o", str(tokens)]) != 0
    assert "broken.jpg" in capsys.readouterr().err
    # in a batch, the good images are still written and the bad one is reported
    status = main(
        ["encode", str(image_files[0]), str(bad), "-m", str(model_dir), "-o", str(tokens)]
    )
    assert status == 1 and "broken.jpg" in capsys.readouterr().err
    with np.load(tokens) as data:
        assert list(data["files"]) == [str(image_files[0])]


def test_decode_refuses_ids_of_another_vocabulary(saved_model, tmp_path, capsys):
    _, model_dir = saved_model
    tokens = tmp_path / "foreign.npz"
    np.savez(
        tokens,
        flat_ids=np.zeros((1, 8, 8), np.int32),
        grid=np.array([8, 8]),
        vocab_size=np.int64(196_608),
        model=np.str_("siglip-l16-256"),
    )
    assert main(["decode", str(tokens), "-m", str(model_dir), "-o", str(tmp_path / "x")]) == 2
    assert "vocab 196608" in capsys.readouterr().err


def test_decode_refuses_out_of_range_ids(saved_model, tmp_path, capsys):
    _, model_dir = saved_model
    tokens = tmp_path / "bad.npz"
    ids = np.zeros((1, 8, 8), np.int32)
    ids[0, 3, 3] = 256
    np.savez(tokens, flat_ids=ids, grid=np.array([8, 8]), vocab_size=np.int64(256))
    assert main(["decode", str(tokens), "-m", str(model_dir), "-o", str(tmp_path / "x")]) == 2
    assert "outside the valid range [0, 256)" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_trains_evaluates_and_reports_every_output(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path), "--steps-scale", "0.01"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    metrics = summary["heldout_metrics"]
    assert metrics["images"] == len(list((tmp_path / "data" / "heldout").glob("*.png")))
    assert "RANDOM" in metrics["backbones"]  # offline: says its rFID/LPIPS are smoke-test only
    baselines = summary["baselines"]
    assert baselines["bits_per_image"] == 64 * 11  # 8 x 8 tokens, 256 x 8 flat ids
    assert baselines["thumbnail"]["images"] == baselines["kmeans"]["images"] == metrics["images"]
    unseen = summary["unseen"]
    assert unseen["metrics"]["images"] == unseen["baselines"]["kmeans"]["images"] == 30
    rows = [line for line in out.splitlines() if " | " in line]
    assert [row.split(" ")[0] for row in rows[2:]] == ["tokenizer", "thumbnail", "k-means,"]
    tokenizer_row = f"{metrics['psnr']:.2f}  {metrics['ssim']:.3f} |"
    assert tokenizer_row in rows[2]
    for path in ("stage2/final", "summary.json", "stage2/metrics.jsonl"):
        assert str(tmp_path / path) in out and (tmp_path / path).exists()
    for line in out.splitlines():
        if line.startswith(("reconstruction grid:", "semantic token map:")):
            assert Path(line.split(":", 1)[1].strip()).is_file()


@pytest.mark.slow
def test_info_for_the_paper_preset_offline(run_cli):
    run = run_cli("info", "siglip-l16-256", HF_HUB_OFFLINE="1")
    assert "16x16 = 256 per image" in run.stdout
    assert "196,608" in run.stdout
    assert "params teacher           316.0 M" in run.stdout
    assert "architecture built without weights" in run.stdout


def test_outputs_named_alike_do_not_overwrite_each_other(saved_model, image_files, tmp_path):
    """Same stem in two folders, and an image called grid.png: every output keeps its own file,
    and encode's token maps, reconstruct's images and decode's images share one naming."""
    _, model_dir = saved_model
    twin = tmp_path / "other" / image_files[0].name
    twin.parent.mkdir()
    Image.open(image_files[1]).save(twin)  # another picture under the same name
    grid_named = tmp_path / "grid.png"
    Image.open(image_files[2]).save(grid_named)
    inputs = [str(image_files[0]), str(twin), str(grid_named)]
    model = ["-m", str(model_dir)]
    tokens, maps, recon, decoded = (tmp_path / n for n in ("t.npz", "maps", "recon", "decoded"))
    assert main(["encode", *inputs, *model, "-o", str(tokens), "--token-maps", str(maps)]) == 0
    assert main(["reconstruct", *inputs, *model, "-o", str(recon)]) == 0
    assert main(["decode", str(tokens), *model, "-o", str(decoded)]) == 0
    stem = image_files[0].stem
    twins = {f"{stem}-00000.png", f"{stem}-00001.png"}
    assert {p.name for p in maps.iterdir()} == twins | {"grid.png"}
    assert {p.name for p in decoded.iterdir()} == twins | {"grid.png"}
    assert {p.name for p in recon.iterdir()} == twins | {"grid-00002.png", "grid.png"}
    pixels = {(d.name, n): np.asarray(Image.open(d / n)) for d in (recon, decoded) for n in twins}
    first, second = sorted(twins)
    assert not np.array_equal(pixels["recon", first], pixels["recon", second])  # two pictures
    for name in twins:  # decode and reconstruct agree file by file
        assert np.array_equal(pixels["recon", name], pixels["decoded", name])
    assert Image.open(recon / "grid.png").size != Image.open(recon / "grid-00002.png").size
