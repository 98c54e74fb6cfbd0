"""The benchmark runner and its FLOP counts: analytic counts against torch's FLOP counter, the
command line, how skipped and failed cases are reported, and the quick path end to end (table,
JSON, plots)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import runner
from benchmarks.suite import Skip
from benchmarks.suite.flops import tokenizer_flops
from semhitok_plugin import SemHiTok, get_preset
from semhitok_plugin.config import (
    PixelConfig,
    SemanticConfig,
    SemHiTokConfig,
    TeacherConfig,
    ViTConfig,
)

ROOT = Path(__file__).resolve().parents[1]
REPORT_KEYS = {
    "date",
    "machine",
    "parameters",
    "limit_gflop_per_s",
    "rows",
    "skipped",
    "failed",
    "case_seconds",
    "plots",
    "plots_skipped",
    "wall_s",
}
# One thread: when another process shares the cores, torch's worker threads wait on each other
# and sub-millisecond ops run 10-100x slower in some rounds only, which no timing assertion
# survives; one thread just runs slower, evenly.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


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


def test_help_lists_every_case_and_its_options():
    parser, owner = runner.build_parser()
    text = parser.format_help()
    for name in runner.CASES:
        assert f"\n  {name}: " in text, name
    for option in ("--stages", "--variants", "--tokens", "--images", "--lm", "--grid", "--steps"):
        assert option in text
    # every case-specific option belongs to a case, and a group is titled by it
    assert set(owner.values()) <= set(runner.CASES)
    assert owner["tokens"] == "quantizer" and owner["stages"] == "train"
    assert "train options" in text


def test_command_line(capsys):
    args = runner.parse_args(["quantizer", "--device", "cpu"])
    assert args.cases == ["quantizer"] and args.options == {"tokens": 256}
    assert args.out == Path("benchmarks/results/quantizer_cpu.json")
    args = runner.parse_args(["tokenize,train", "--quick", "--results", "x", "--device", "cpu"])
    assert args.cases == ["tokenize", "train"] and args.repeats == 2
    assert args.out == Path("x/bench_cpu_quick.json") and args.plots == Path("x/plots")
    assert runner.parse_args(["--device", "cpu"]).cases == list(runner.SUITE)
    # an option of a case that is not run is refused, not silently ignored
    with pytest.raises(SystemExit):
        runner.parse_args(["tokenize", "--tokens", "64"])
    assert "--tokens is an option of quantizer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        runner.parse_args(["no_such_case"])
    assert "unknown cases ['no_such_case']" in capsys.readouterr().err


def fake_case(name: str, run, uses_limit: bool = False) -> types.ModuleType:
    module = types.ModuleType(name)
    module.NAME, module.run, module.USES_LIMIT = name, run, uses_limit
    return module


def raises(err: BaseException):
    def run(ctx):
        raise err

    return run


@pytest.fixture
def fake_cases(monkeypatch):
    """Cases that skip, fail and succeed, registered like the real ones."""
    from benchmarks.suite import Row

    def ok(ctx):
        return [Row("ok", "row", {"peak_seen": ctx.peak_flops}, {"images_per_s": 2.0}, None)]

    cases = {
        "needs_pkg": fake_case("needs_pkg", raises(ModuleNotFoundError(name="absent_pkg"))),
        "skips": fake_case("skips", raises(Skip("no GPU here"))),
        "broken": fake_case("broken", raises(ValueError("boom"))),
        # a missing module of our own is a bug: reported as failed, not skipped
        "own_import": fake_case(
            "own_import", raises(ModuleNotFoundError(name="semhitok_plugin.gone"))
        ),
        "ok": fake_case("ok", ok, uses_limit=True),
    }
    for name, module in cases.items():
        monkeypatch.setitem(sys.modules, f"fake_cases.{name}", module)
        monkeypatch.setitem(runner.CASES, name, f"fake_cases.{name}")
    return cases


def test_skipped_and_failed_cases_are_reported(fake_cases, tmp_path, capsys):
    out = tmp_path / "report.json"
    argv = [*fake_cases, "--device", "cpu", "--quick", "--out", str(out), "--no-plots"]
    assert runner.main(argv) == 1  # a failed case fails the run ...
    report = json.loads(out.read_text())
    assert set(report) == REPORT_KEYS
    assert report["skipped"] == {
        "needs_pkg": "needs the absent_pkg package, which is not installed",
        "skips": "no GPU here",
    }
    assert set(report["failed"]) == {"broken", "own_import"}
    assert "ValueError: boom" in report["failed"]["broken"]
    # ... but the others still ran: limit first, since "ok" divides by the matmul limit
    assert [r["case"] for r in report["rows"]] == ["limit", "ok"]
    assert next(iter(report["case_seconds"])) == "limit"
    row = report["rows"][1]
    assert row == {
        "case": "ok",
        "name": "row",
        "params": {"peak_seen": report["limit_gflop_per_s"] * 1e9},
        "metrics": {"images_per_s": 2.0},
        "reference": None,
    }
    assert report["parameters"]["cases"] == list(fake_cases)
    assert report["plots"] == [] and report["plots_skipped"] == "--no-plots"
    stdout = capsys.readouterr().out
    assert "skipped skips: no GPU here" in stdout and "FAILED broken" in stdout


@pytest.mark.slow
def test_runner_quick_end_to_end(tmp_path):
    out, plots = tmp_path / "bench.json", tmp_path / "plots"
    cmd = [sys.executable, "-m", "benchmarks", "tokenize", "--quick", "--device", "cpu"]
    cmd += ["--repeats", "3", "--out", str(out), "--plots", str(plots)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 60, f"quick run took {elapsed:.0f} s"

    report = json.loads(out.read_text())
    assert set(report) == REPORT_KEYS
    assert report["machine"]["cpu_count"] and report["failed"] == {}
    rows = report["rows"]
    assert rows[0]["case"] == "limit"  # run first: tokenize divides by its rate
    limit = [r for r in rows if r["case"] == "limit"]
    assert limit and report["limit_gflop_per_s"] == max(r["metrics"]["gflop_per_s"] for r in limit)
    tok = {r["name"]: r for r in rows if r["case"] == "tokenize"}
    assert set(tok) == {f"tiny {op} b{b}" for op in ("encode", "decode") for b in (1, 8)}
    for row in tok.values():
        m = row["metrics"]
        assert m["images_per_s"] > 0
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


GPU_CASES = ("tokenize", "train", "llava_tower", "mllm_generation")


def gpu_script(*args: str, python: str) -> subprocess.CompletedProcess:
    env = {**ENV, "PYTHON": python}  # PYTHON set: no install step
    cmd = ["bash", "benchmarks/gpu.sh", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_gpu_script_commands(tmp_path):
    """The runner calls gpu.sh makes on a GPU (echoed, not run), read by the runner's parser."""
    proc = gpu_script(str(tmp_path), python="echo")
    assert proc.returncode == 0, proc.stderr
    calls = {}
    for line in proc.stdout.splitlines():
        words = line.split()
        assert words[:2] == ["-m", "benchmarks"] and "--device cuda" in line, line
        # the runner takes it (one known case, only its own options); this machine has no GPU
        args = runner.parse_args([w.replace("cuda", "cpu") for w in words[2:]])
        (case,) = args.cases
        calls[case] = args
    assert tuple(calls) == GPU_CASES
    for args in calls.values():
        assert args.results == tmp_path and args.no_plots and not args.quick
    tokenize, train, tower, mllm = calls.values()
    assert tokenize.presets == ["siglip-l16-256", "siglip-so400m14-384"]
    assert max(tokenize.batches) == 128
    assert train.presets == ["siglip-l16-256"] and train.stages == ("pixel",)
    assert train.variants == ("compile",)  # plain is always measured next to it
    assert tower.presets == tokenize.presets
    assert (mllm.lm, mllm.grid) == ("qwen2.5-7b", 16)


@pytest.mark.slow
def test_gpu_script_dry_run(tmp_path):
    """gpu.sh --dry-run: the same runner calls on the CPU at tiny sizes (about 25 s)."""
    proc = gpu_script("--dry-run", str(tmp_path), python=sys.executable)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = {p.name: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert set(reports) == {f"{case}_cpu_quick.json" for case in GPU_CASES}
    for name, report in reports.items():
        assert set(report) == REPORT_KEYS
        assert report["failed"] == {} and report["skipped"] == {}, name
        case = name.removesuffix("_cpu_quick.json")
        assert report["parameters"]["cases"] == [case]
        assert [r for r in report["rows"] if r["case"] == case], name
    train = [r for r in reports["train_cpu_quick.json"]["rows"] if r["case"] == "train"]
    assert {r["params"]["stage"] for r in train} == {"pixel"}
