"""The LLaVA-v1.5 recipe end to end on a CPU, in about a minute (from the repository root)::

    PYTHONPATH=tests python -m semhitok_fixtures.llava_smoke [-o DIR] [--tokenizer tiny]

Builds a tiny world in ``--out`` -- a SentencePiece Llama tokenizer (byte fallback, so it never
emits the unk token LLaVA pads with), a random 2-layer Llama, four real photos with captions in
LLaVA's JSON format, and a SemHiTok tokenizer (``--tokenizer``: the random ``tiny`` preset by
default, or e.g. the demo's trained ``outputs/demo/stage2/final``) -- then runs, each in its own
process exactly as on a cluster: ``semhitok-llava-train`` pretrain (``--version plain``, projector
only), finetune (``--version v1``, from the pretrain's ``mm_projector.bin``) and
``semhitok-llava-vqa`` on two questions. It checks nothing about quality: the model is random
and tiny. It shows that every step of the protocol runs. ``--device cuda`` runs the GPU path
instead: training in bf16 on the GPU and LLaVA's ``model_vqa_loader`` unchanged (no remapping).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

CAPTIONS = {
    "astronaut": "an astronaut in a white suit",
    "coffee": "a cup of coffee on a saucer",
    "chelsea": "a tabby cat looking left",
    "rocket": "a rocket on the launch pad",
}
QUESTION = "What is in the image?"


def build_world(root: Path, tokenizer: str = "tiny") -> None:
    """Write ``llm/``, ``images/``, ``pretrain.json``, ``finetune.json``, ``questions.jsonl`` and
    ``tokenizer/`` (a SemHiTok ``save_pretrained`` folder) under ``root``."""
    from semhitok_plugin import load_model
    from semhitok_plugin.samples import sample_photo

    root.mkdir(parents=True, exist_ok=True)
    load_model(tokenizer, seed=0).save_pretrained(root / "tokenizer")
    _tiny_llama(root / "llm")
    (root / "images").mkdir(exist_ok=True)
    for name in CAPTIONS:
        sample_photo(name).save(root / "images" / f"{name}.png")
    for split, prompt in (("pretrain", "<image>"), ("finetune", f"<image>\n{QUESTION}")):
        rows = [
            {
                "id": name,
                "image": f"{name}.png",
                "conversations": [
                    {"from": "human", "value": prompt},
                    {"from": "gpt", "value": caption},
                ],
            }
            for name, caption in CAPTIONS.items()
        ]
        (root / f"{split}.json").write_text(json.dumps(rows))
    questions = [
        {"question_id": i, "image": f"{name}.png", "text": QUESTION}
        for i, name in enumerate(list(CAPTIONS)[:2])
    ]
    (root / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))


def _tiny_llama(folder: Path) -> None:
    import sentencepiece as spm
    import torch
    from llava.conversation import conv_templates
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    corpus = [conv_templates["vicuna_v1"].system, f"USER: {QUESTION} ASSISTANT:"]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([*corpus, *CAPTIONS.values()] * 20),
        model_writer=model,
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,  # never emit unk: LLaVA pads with it
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spm.model").write_bytes(model.getvalue())
    tokenizer = LlamaTokenizer(vocab_file=str(folder / "spm.model"), legacy=True)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
    )
    LlamaForCausalLM(config).save_pretrained(folder)


def train_args(root: Path, split: str, out: Path, steps: int = 12) -> list[str]:
    """LLaVA training flags for one stage of the smoke run (the v1.5 recipe's, scaled down)."""
    stage = (
        ["--version", "plain", "--tune_mm_mlp_adapter", "True"]
        if split == "pretrain"
        else [
            "--version", "v1",
            "--pretrain_mm_mlp_adapter", str(root / "llava-tiny-pretrain" / "mm_projector.bin"),
            "--image_aspect_ratio", "pad",
            "--group_by_modality_length", "True",
        ]
    )  # fmt: skip
    return [
        *stage,
        "--model_name_or_path", str(root / "llm"),
        "--data_path", str(root / f"{split}.json"),
        "--image_folder", str(root / "images"),
        "--vision_tower", f"semhitok:{root / 'tokenizer'}",
        "--mm_projector_type", "dual_mlp2x_gelu",
        "--mm_vision_select_layer", "-2",
        "--mm_use_im_start_end", "False",
        "--mm_use_im_patch_token", "False",
        "--output_dir", str(out),
        "--max_steps", str(steps),
        "--per_device_train_batch_size", "4",
        "--learning_rate", "1e-3",
        "--lr_scheduler_type", "constant",
        "--logging_steps", "1",
        "--save_strategy", "no",
        "--report_to", "none",
        "--model_max_length", "256",
        "--lazy_preprocess", "True",
        "--dataloader_num_workers", "0",
    ]  # fmt: skip


def vqa_args(
    root: Path, checkpoint: Path, answers: Path, max_new_tokens: int = 6, device: str = "cpu"
) -> list[str]:
    return [
        "--device", device,
        "--model-path", str(checkpoint),
        "--question-file", str(root / "questions.jsonl"),
        "--image-folder", str(root / "images"),
        "--answers-file", str(answers),
        "--temperature", "0",
        "--conv-mode", "vicuna_v1",
        "--max_new_tokens", str(max_new_tokens),
    ]  # fmt: skip


def losses(run_dir: Path) -> list[float]:
    """Training losses logged by LLaVA's trainer (``trainer_state.json``)."""
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m semhitok_fixtures.llava_smoke", description=__doc__
    )
    parser.add_argument("-o", "--out", type=Path, default=Path("outputs/llava-smoke"))
    parser.add_argument("--tokenizer", default="tiny", help="preset or save_pretrained folder")
    parser.add_argument("--steps", type=int, default=12, help="training steps per stage")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args(argv)
    root = args.out.resolve()
    print(f"building the tiny world in {root} ...", flush=True)
    build_world(root, args.tokenizer)
    python = [sys.executable, "-m"]
    gpu = ["--bf16", "True"] if args.device == "cuda" else ["--use_cpu", "True"]
    for split in ("pretrain", "finetune"):
        out = root / f"llava-tiny-{split}"
        print(f"semhitok-llava-train ({split}) -> {out}", flush=True)
        flags = [*train_args(root, split, out, args.steps), *gpu]
        subprocess.run([*python, "semhitok_llava.train", *flags], check=True)
        curve = losses(out)
        print(f"  loss {curve[0]:.3f} -> {curve[-1]:.3f} over {len(curve)} steps")
    answers = root / "answers.jsonl"
    checkpoint = root / "llava-tiny-finetune"
    print(f"semhitok-llava-vqa -> {answers}", flush=True)
    subprocess.run(
        [*python, "semhitok_llava.vqa", *vqa_args(root, checkpoint, answers)], check=True
    )
    for line in answers.read_text().splitlines():
        row = json.loads(line)
        print(f"  question {row['question_id']}: {row['text']!r}")


if __name__ == "__main__":
    main()
