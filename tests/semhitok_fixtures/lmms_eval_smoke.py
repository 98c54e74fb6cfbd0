"""CPU smoke run of ``python -m lmms_eval --model semhitok_qwen`` on a local POPE-format task.

Writes a tiny random unified MLLM (unless ``--model`` names one), four POPE-style questions about
scikit-image's bundled photos saved with ``datasets.save_to_disk``, and the local task folder,
then runs the stock lmms-eval CLI on them and prints its metric table. The scores are those of a
random model; the run shows that every piece is wired (needs the ``samples`` extra). From the
repository root::

    PYTHONPATH=tests python -m semhitok_fixtures.lmms_eval_smoke [--out DIR] [--model DIR]

``--out`` defaults to ``outputs/smoke-lmms``, ``--device`` to ``cpu``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from semhitok_lmms_eval.local_tasks import write

POPE_QUESTIONS = {  # bundled photo: (question, answer)
    "astronaut": ("Is there a person in the image?", "yes"),
    "coffee": ("Is there a cup?", "yes"),
    "chelsea": ("Is there a cat in the image? Answer in one word.", "yes"),
    "rocket": ("Is there a dog in the image? Please answer yes or no, and nothing else.", "no"),
}


def write_sample_pope(data_root: Path) -> Path:
    """A POPE-format ``DatasetDict({"test": ...})`` (the columns lmms_eval/tasks/pope/utils.py
    reads) saved at ``data_root/pope``."""
    import datasets

    from semhitok_plugin.samples import sample_photo

    features = datasets.Features(
        {name: datasets.Value("string") for name in ("question_id", "question", "answer")}
        | {"image": datasets.Image()}
    )
    rows = {
        "question_id": [str(i) for i in range(len(POPE_QUESTIONS))],
        "question": [q for q, _ in POPE_QUESTIONS.values()],
        "answer": [a for _, a in POPE_QUESTIONS.values()],
        "image": [sample_photo(name) for name in POPE_QUESTIONS],
    }
    target = data_root / "pope"
    pope = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"test": pope}).save_to_disk(str(target))
    return target


def lmms_eval_command(model: Path, tasks: Path, device: str, batch_size: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lmms_eval",
        "--model",
        "semhitok_qwen",
        "--model_args",
        f"pretrained={model},device={device}",
        "--tasks",
        "pope_local",
        "--include_path",
        str(tasks),
        "--limit",
        str(len(POPE_QUESTIONS)),
        "--batch_size",
        str(batch_size),
    ]


def offline_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m semhitok_fixtures.lmms_eval_smoke")
    parser.add_argument("--out", type=Path, default=Path("outputs/smoke-lmms"))
    parser.add_argument("--model", type=Path, help="a unified MLLM directory (default: tiny)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    model = args.model
    if model is None:
        from .tiny_qwen import save_tiny_unified

        model = save_tiny_unified(out / "tiny-mllm")
    write_sample_pope(out / "data")
    write(out / "data", out / "tasks", ["pope"])
    command = lmms_eval_command(model.resolve(), out / "tasks", args.device)
    print("$", " ".join(command), flush=True)
    # lmms-eval exits 0 even when the evaluation failed: the printed table is the result
    return subprocess.run(command, env=offline_env(), cwd=out).returncode


if __name__ == "__main__":
    sys.exit(main())
