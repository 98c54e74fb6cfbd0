"""The SemHiTok LLaVA tower's forward cost per image, next to LLaVA's own CLIP-L/336 tower.

Both towers are built by the real classes with random weights (the cost does not depend on the
weights) and timed in one process, alternately, on the same device, dtype and images:

* LLaVA's ``CLIPVisionTower`` (llava/model/multimodal_encoder/clip_encoder.py), loaded from a
  local folder holding a random model shaped like ``openai/clip-vit-large-patch14-336`` (24 x
  1024, 577 tokens, features of layer -2 as LLaVA-v1.5 selects them);
* ``SemHiTokVisionTower`` around a random tokenizer of each paper preset (teacher, semantic
  codebook and decoder, pixel encoder and SGHC: everything the tower runs).

Reported per tower: milliseconds per image (median over rounds), images/s, time relative to
CLIP-L/336, the visual tokens it hands the LLM per image and, on CUDA, the memory one forward
needs beyond the resident weights. CPU runs use float32; CUDA runs use bfloat16, the dtype LLaVA
casts the tower to when training with --bf16.

    python benchmarks/llava_tower.py [--device cpu|cuda] [--batch 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from quantizer import write_report  # sibling script: one machine record for all reports

PRESETS = ("siglip-l16-256", "siglip-so400m14-384")
CLIP = "clip-l14-336 (LLaVA)"


def clip_tower(folder: Path):
    """LLaVA's CLIP tower, loaded by LLaVA's code from a folder with a random CLIP-L/14-336."""
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )
    CLIPVisionModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size=336).save_pretrained(folder)
    args = types.SimpleNamespace(mm_vision_select_layer=-2, mm_vision_select_feature="patch")
    return CLIPVisionTower(str(folder), args=args)


def semhitok_tower(preset: str):
    from semhitok_llava.tower import SemHiTokVisionTower
    from semhitok_plugin import SemHiTok, get_preset

    config = get_preset(preset)
    config.teacher.weights = None  # random teacher: same cost, no download
    return SemHiTokVisionTower(f"semhitok:{preset}", tokenizer=SemHiTok(config))


def timed(tower, images: torch.Tensor, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    features = tower(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert features.shape[:2] == (images.shape[0], tower.num_patches)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=2, help="images per forward (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="timed forwards per tower")
    parser.add_argument("--out", type=Path, help="JSON report (default: results/llava_tower_DEV)")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out = args.out or Path(__file__).parent / "results" / f"llava_tower_{device.type}.json"

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        towers = {CLIP: clip_tower(Path(folder))}
    towers.update({f"semhitok {p}": semhitok_tower(p) for p in PRESETS})
    inputs = {}
    for name, tower in towers.items():
        tower.to(device=device, dtype=dtype)
        size = tower.config.image_size
        inputs[name] = torch.rand(args.batch, 3, size, size, device=device) * 2 - 1
        print(f"warming up {name} ...", file=sys.stderr, flush=True)
        timed(tower, inputs[name], device)
    seconds = {name: [] for name in towers}
    peaks = {}
    for _ in range(args.rounds):  # alternate the towers, so machine noise hits all alike
        for name, tower in towers.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                resident = torch.cuda.memory_allocated()  # every tower's weights and inputs
            seconds[name].append(timed(tower, inputs[name], device))
            if device.type == "cuda":
                peaks[name] = (torch.cuda.max_memory_allocated() - resident) / 2**20

    clip_s = statistics.median(seconds[CLIP])
    rows = {}
    for name, tower in towers.items():
        median = statistics.median(seconds[name])
        rows[name] = {
            "ms_per_image": 1000 * median / args.batch,
            "images_per_s": args.batch / median,
            "time_vs_clip": median / clip_s,
            "visual_tokens": tower.num_patches,
            "feature_width": tower.hidden_size,
            "image_size": tower.config.image_size,
            "params_m": sum(p.numel() for p in tower.parameters()) / 1e6,
            "seconds": seconds[name],
            **({"forward_peak_cuda_mib": peaks[name]} if name in peaks else {}),
        }
    print(f"{'tower':<32}{'ms/image':>10}{'images/s':>10}{'vs CLIP':>9}{'tokens':>8}")
    for name, r in rows.items():
        print(
            f"{name:<32}{r['ms_per_image']:>10.1f}{r['images_per_s']:>10.2f}"
            f"{r['time_vs_clip']:>8.2f}x{r['visual_tokens']:>8}"
        )
    parameters = {"device": device.type, "dtype": str(dtype), **vars(args), "out": str(out)}
    write_report(out, device, parameters, towers=rows)


if __name__ == "__main__":
    main()
