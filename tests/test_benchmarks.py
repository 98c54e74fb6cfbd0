"""The benchmark suite: analytic FLOP counts against torch's FLOP counter, and the runner's
quick path end to end (table, JSON, plots)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from semhitok_plugin import SemHiTok, get_preset
from semhitok_plugin.config import (
    PixelConfig,
    SemanticConfig,
    SemHiTokConfig,
    TeacherConfig,
    ViTConfig,
)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # ``benchmarks`` is a folder of the clone, not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks.suite import Context  # noqa: E402
from benchmarks.suite.flops import tokenizer_flops  # noqa: E402


def counted(fn) -> int:
    """FLOPs torch's own counter sees. SDPA is forced onto its math backend: the fused CPU
    kernel (``_scaled_dot_product_flash_attention_for_cpu``) has no FLOP formula registered in
    torch 2.14 and would count as 0, while the math path counts QK^T and AV as ``bmm``."""
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def mid_config() -> SemHiTokConfig:
    """Mid-size, exercising what ``tiny`` does not: a fractional MLP ratio (SigLIP-so400m's
    4304/1152), a teacher that stops early (layer 1 of 3), a wider pixel branch, the ``sequence``
    concat mode (2L decoder tokens) and different semantic/pixel widths."""
    return SemHiTokConfig(
        image_size=128,
        teacher=TeacherConfig(
            model_name="vit_base_patch16_siglip_256",
            model_kwargs={"embed_dim": 96, "depth": 3, "num_heads": 3, "mlp_ratio": 4304 / 1152},
            patch_size=16,
            feature_layer=1,
        ),
        semantic=SemanticConfig(
            codebook_size=512,
            code_dim=32,
            kmeans_init=False,
            decoder=ViTConfig(width=96, depth=2, heads=3, mlp_ratio=3.0),
        ),
        pixel=PixelConfig(
            sub_codebook_size=8,
            code_dim=8,
            concat="sequence",
            encoder=ViTConfig(width=128, depth=2, heads=4),
            decoder=ViTConfig(width=64, depth=3, heads=4, mlp_ratio=2.5),
        ),
    )


def part_counts(model: SemHiTok, batch: int, device: str = "cpu") -> dict[str, int]:
    """FlopCounterMode on each part, fed tensors of the shapes it sees inside encode/decode."""
    cfg = model.config
    n, sem_d, pix_d = cfg.grid_size[0] * cfg.grid_size[1], cfg.semantic.code_dim, cfg.pixel.code_dim
    x = torch.rand(batch, 3, cfg.canvas_size, cfg.canvas_size, device=device) * 2 - 1
    with torch.no_grad():
        feats = model.teacher(x)
        z = F.normalize(model.semantic_proj(feats), dim=-1).reshape(-1, sem_d)
        pix_z = model.pixel_encoder(x).reshape(-1, pix_d, 1)
    sem_ids = torch.zeros(batch * n, dtype=torch.long, device=device)
    sem_q = torch.randn(batch, n, sem_d, device=device)
    pix_q = torch.randn(batch, n, pix_d, device=device)
    return {
        "teacher": counted(lambda: model.teacher(x)),
        "semantic_proj": counted(lambda: model.semantic_proj(feats)),
        "semantic_search": counted(lambda: model.semantic_codebook.nearest(z)),
        "pixel_encoder": counted(lambda: model.pixel_encoder(x)),
        # SGHC's product, as its forward computes it (the forward itself checks ids on the host)
        "sghc": counted(lambda: torch.bmm(model.pixel_quantizer.normalized()[sem_ids], pix_z)),
        "pixel_decoder": counted(lambda: model.pixel_decoder(sem_q, pix_q)),
        "semantic_decoder": counted(lambda: model.semantic_decoder(sem_q)),
    }


@pytest.mark.parametrize("name", ["tiny", "mid"])
def test_flops_match_torch_counter_on_real_modules(name):
    cfg = get_preset("tiny") if name == "tiny" else mid_config()
    torch.manual_seed(0)
    model = SemHiTok(cfg).eval()
    batch = 3
    ours = tokenizer_flops(cfg, model)
    # Both count only matrix products (2 FLOPs per multiply-add): softmax, norms, GELU, biases,
    # normalisation and argmax are absent on both sides, so the counts agree exactly.
    for part, flops in part_counts(model, batch).items():
        assert ours[part] * batch == flops, part
    # The whole public API, to catch a product the per-part formulas miss.
    images = torch.rand(batch, 3, cfg.image_size, cfg.image_size) * 2 - 1
    ids = model.encode(images).flat_ids
    assert counted(lambda: model.encode(images)) == ours["encode"] * batch
    assert counted(lambda: model.decode(ids)) == ours["decode"] * batch
    # Reading the teacher's shape from the config alone (meta build) gives the same numbers.
    assert tokenizer_flops(cfg) == ours


@pytest.mark.parametrize("preset", ["siglip-l16-256", "siglip-so400m14-384"])
def test_flops_match_torch_counter_at_paper_presets(preset):
    """The paper presets, built on the meta device: shapes only, no memory, no compute."""
    cfg = get_preset(preset)
    cfg.teacher.weights = None
    with torch.device("meta"):
        model = SemHiTok(cfg).eval()
    ours = tokenizer_flops(cfg)
    for part, flops in part_counts(model, batch=2, device="meta").items():
        assert ours[part] * 2 == flops, part
    # The quantisers are a rounding error next to the ViTs (issue 7: <= 5 % of encode *time*).
    assert (ours["semantic_search"] + ours["sghc"]) / ours["encode"] < 0.01
    # SGHC searches m codes per token, not K * m.
    tokens = cfg.grid_size[0] * cfg.grid_size[1]
    assert ours["sghc"] == 2 * tokens * cfg.pixel.sub_codebook_size * cfg.pixel.code_dim


def test_missing_case_module_is_skipped():
    from benchmarks.__main__ import run_cases

    ctx = Context(torch.device("cpu"), torch.float32, True, ("tiny",), 1)
    result = run_cases(ctx, ["no_such_case"])
    assert "no module benchmarks.suite.no_such_case" in result["skipped"]["no_such_case"]
    assert not result["failed"]
    assert [r.case for r in result["rows"]] == ["limit"]  # limit always runs
    assert ctx.peak_flops > 0


def test_runner_quick_end_to_end(tmp_path):
    out, plots = tmp_path / "bench.json", tmp_path / "plots"
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--cases", "limit,tokenize"]
    cmd += ["--repeats", "3", "--out", str(out), "--plots", str(plots)]
    # One thread: when another process shares the cores, torch's worker threads wait on each
    # other and sub-millisecond ops run 10-100x slower in some rounds only, which no
    # timing assertion survives; one thread just runs slower, evenly.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 60, f"quick run took {elapsed:.0f} s"

    report = json.loads(out.read_text())
    assert report["machine"]["cpu_count"] and report["failed"] == {}
    rows = report["rows"]
    limit = [r for r in rows if r["case"] == "limit"]
    assert limit and report["limit_gflop_per_s"] == max(r["metrics"]["gflop_per_s"] for r in limit)
    tok = {r["name"]: r for r in rows if r["case"] == "tokenize"}
    assert set(tok) == {f"tiny {op} b{b}" for op in ("encode", "decode") for b in (1, 8)}
    for row in tok.values():
        m = row["metrics"]
        assert m["images_per_s"] > 0 and m["peak_mib"] >= 0
        assert m["gflop_per_s"] == pytest.approx(m["gflop_per_image"] * m["images_per_s"])
        # Against the matmul probe interleaved with the ops, and against the limit case's figure.
        assert m["fraction_of_limit"] == pytest.approx(m["gflop_per_s"] / m["limit_gflop_per_s"])
        assert m["fraction_of_run_limit"] == pytest.approx(
            m["gflop_per_s"] / report["limit_gflop_per_s"]
        )
        shares = {k: v for k, v in m.items() if k.startswith("share_")}
        assert sum(shares.values()) == pytest.approx(1.0)  # "other" is the remainder ...
        assert all(v > 0 for k, v in shares.items() if k != "share_other")
        assert m["share_other"] == pytest.approx(1 - m["parts_sum"])
        if row["params"]["op"] == "encode":
            assert m["quantization_share"] == pytest.approx(
                m["share_semantic_quantizer"] + m["share_sghc"]
            )
            # ... so the real check is that the parts, each timed alone, account for the whole
            # encode (none missing, none counted twice): their sum is near 1. At the tiny preset
            # encode's own Python (id checks and merging) is 5-30 % of a ~2 ms call, hence the
            # loose bound.
            assert 0.5 < m["parts_sum"] < 1.5, m
    # The table went to stdout, progress to stderr.
    assert "tiny encode b8" in proc.stdout and "fraction_of_limit=" in proc.stdout
    assert "[tokenize] running" in proc.stderr

    try:
        import matplotlib.image
    except ModuleNotFoundError:
        assert report["plots"] == [] and "matplotlib" in report["plots_skipped"]
        return
    names = {"tokenize_throughput.png", "tokenize_shares.png", "fraction_of_limit.png"}
    assert {Path(p).name for p in report["plots"]} == names
    for name in names:
        data = (plots / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = matplotlib.image.imread(plots / name)
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100
