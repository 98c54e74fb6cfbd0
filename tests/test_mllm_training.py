"""Training the unified MLLM: data format, CFG dropout, labels, truncation, the HF-Trainer run,
resume and reload -- on the tiny model and real photos."""

import argparse
import json
import re
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerCallback

from semhitok_fixtures.tiny_qwen import save_tiny_unified
from semhitok_plugin.config import ConfigError
from semhitok_qwen import IGNORE_INDEX, load_unified
from semhitok_qwen.data import (
    Collator,
    DataFormatError,
    Record,
    UnifiedDataset,
    read_jsonl,
    write_sample_jsonl,
)
from semhitok_qwen.train import (
    DEEPSPEED_CONFIGS,
    STAGES,
    add_arguments,
    build_trainer,
    load_stage_config,
    main,
    resume_checkpoint,
    run,
)

STEPS = 8  # the uninterrupted run; the interrupted one stops after STEPS // 2


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("mllm_train")
    model_dir = save_tiny_unified(root / "model")
    data = write_sample_jsonl(root / "data")
    (root / "data" / "corrupt.png").write_bytes(b"this is not a png")
    with data.open("a") as f:  # one unreadable image: skipped and counted, never a crash
        turns = [{"role": "user", "content": "<image>\nDescribe."}]
        turns.append({"role": "assistant", "content": "a picture"})
        f.write(json.dumps({"messages": turns, "images": ["corrupt.png"]}) + "\n")
    _, processor = load_unified(model_dir)
    return SimpleNamespace(root=root, model=model_dir, data=data, processor=processor)


def train_args(world, out, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = f"--model {world.model} --data {world.data} --output-dir {out} --max-steps {STEPS}"
    flags += " --batch-size 4 --grad-accum 1 --lr 3e-3 --num-workers 0 --logging-steps 2"
    flags += f" --save-steps {STEPS // 2} --seed 0 --report-to none"
    return parser.parse_args([*flags.split(), *extra])


class StopAt(TrainerCallback):
    """Ends training after ``step`` (its checkpoint is written first), as a killed run would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step


@pytest.fixture(scope="module")
def trained(world):
    """An uninterrupted run, and one stopped halfway then resumed by ``run(--resume)``."""
    full = build_trainer(train_args(world, world.root / "full"))
    full.train()
    full.save_model()
    halves = world.root / "halves"
    first = build_trainer(train_args(world, halves))
    first.add_callback(StopAt(STEPS // 2))
    first.train()
    assert run(train_args(world, halves, "--resume")) == 0
    return SimpleNamespace(full=full, halves=halves)


def eval_batch(world) -> dict:
    records = read_jsonl([world.data])[:-1]  # without the corrupt line
    dataset = UnifiedDataset(records, world.processor, cfg_dropout=0.0)
    batch = Collator(world.processor.pad_token_id)([dataset[i] for i in range(len(dataset))])
    batch.pop("skipped")
    return batch


@torch.no_grad()
def group_losses(model, batch) -> dict[str, float]:
    """The model's own loss restricted to text targets and to image targets."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    labels = batch["labels"]
    image = model.image_vocab.contains(labels)
    model.eval()
    return {
        name: model(**inputs, labels=labels.masked_fill(~keep, IGNORE_INDEX)).loss.item()
        for name, keep in (("text", ~image), ("image", image))
    }


# -- training --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_lowers_text_and_image_loss(world, trained):
    batch = eval_batch(world)
    before = group_losses(load_unified(world.model)[0], batch)
    after = group_losses(load_unified(world.root / "full")[0], batch)
    assert after["text"] < before["text"] - 0.05, (before, after)
    assert after["image"] < before["image"] - 0.05, (before, after)


def test_metrics_log_text_image_losses_and_skipped_samples(world, trained):
    lines = [json.loads(ln) for ln in (world.root / "full" / "metrics.jsonl").open()]
    steps = [ln for ln in lines if "loss" in ln]
    assert [ln["step"] for ln in steps] == list(range(2, STEPS + 1, 2))
    assert all(ln["text_loss"] > 0 and ln["image_loss"] > 0 for ln in steps)
    assert sum(ln["skipped_bad_image"] for ln in steps) >= 1  # the corrupt photo was met


def test_resumed_run_matches_uninterrupted_run(world, trained):
    resumed, _ = load_unified(trained.halves)
    for name, value in trained.full.model.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, msg=name)

    def losses(out):
        lines = [json.loads(ln) for ln in (out / "metrics.jsonl").open()]
        return [[ln["step"], ln["loss"], ln["image_loss"]] for ln in lines if "loss" in ln]

    torch.testing.assert_close(losses(trained.halves), losses(world.root / "full"))


def test_output_and_checkpoints_load_with_the_trained_logits(world, trained):
    batch = eval_batch(world)
    model = trained.full.model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
        for folder in (world.root / "full", world.root / "full" / f"checkpoint-{STEPS}"):
            loaded, processor = load_unified(folder)
            torch.testing.assert_close(loaded(**batch).logits, expected)
            assert processor.tokenizer.get_vocab() == world.processor.tokenizer.get_vocab()


def test_resume_auto_picks_newest_complete_checkpoint(tmp_path):
    for step, complete in ((4, True), (8, True), (12, False)):  # 12: killed while saving
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert resume_checkpoint("auto", tmp_path) == str(tmp_path / "checkpoint-8")
    assert resume_checkpoint("auto", tmp_path / "checkpoint-4") is None
    assert resume_checkpoint(None, tmp_path) is None
    with pytest.raises(FileNotFoundError, match="not a complete training checkpoint"):
        resume_checkpoint(str(tmp_path / "checkpoint-12"), tmp_path)


# -- labels, CFG dropout, truncation ---------------------------------------------------------------
def test_labels_cover_assistant_turns_and_generated_images_only(world):
    records = read_jsonl([world.data])[:-1]  # without the corrupt line
    dataset = UnifiedDataset(records, world.processor, cfg_dropout=0.0)
    tok, vocab = world.processor.tokenizer, world.processor.image_vocab
    kinds = set()
    for i, record in enumerate(records):
        ids, labels = dataset.tokenize(i)
        ids, labels = torch.tensor(ids), torch.tensor(labels)
        image = vocab.contains(ids)
        if record.text is not None:
            kinds.add("text")
            assert labels.tolist() == ids.tolist() and ids[-1] == tok.eos_token_id
            continue
        answer = record.messages[-1]["content"]
        trained = tok.decode(ids[(labels != IGNORE_INDEX) & ~image])
        if record.generates_image:
            kinds.add("t2i")
            assert image.sum() == world.processor.num_image_tokens
            assert (labels[image] == ids[image]).all()
            assert trained == "<|image_start|><|image_end|><|im_end|>\n"
        else:
            kinds.add("i2t")
            assert image.sum() == world.processor.num_image_tokens
            assert (labels[image] == IGNORE_INDEX).all()
            assert trained == f"{answer}<|im_end|>\n"
    assert kinds == {"text", "t2i", "i2t"}


def _chat(user: str, assistant: str) -> tuple[dict, ...]:
    return ({"role": "user", "content": user}, {"role": "assistant", "content": assistant})


def _synthetic_records(n: int) -> list[Record]:
    records = []
    for i in range(n):
        records += [
            Record(f"t2i:{i}", messages=_chat(f"prompt {i}", "<image>"), images=("x.png",)),
            Record(f"i2t:{i}", messages=_chat(f"<image>\nq {i}", "a"), images=("x.png",)),
            Record(f"text:{i}", text=f"text {i}"),
        ]
    return records


def _dropped(dataset: UnifiedDataset) -> list[int]:
    uncond = dataset.processor.config.unconditional_prompt
    out = []
    for i, record in enumerate(dataset.records):
        if record.text is not None:
            continue
        messages, _ = dataset.conversation(i)
        if not record.is_text_to_image:
            assert messages == list(record.messages)  # understanding samples are never altered
        elif messages[0]["content"] == uncond:
            out.append(i)
        else:
            assert messages == list(record.messages)
    return out


def test_cfg_dropout_replaces_text_to_image_prompts_only(world, monkeypatch):
    monkeypatch.setattr(world.processor.config, "unconditional_prompt", "<unconditional>")
    records = _synthetic_records(300)
    t2i = [i for i, r in enumerate(records) if r.is_text_to_image]

    def dataset(p, seed=0):
        return UnifiedDataset(records, world.processor, cfg_dropout=p, seed=seed)

    assert _dropped(dataset(1.0)) == t2i
    assert _dropped(dataset(0.0)) == []
    half = _dropped(dataset(0.5))
    assert half == _dropped(dataset(0.5))  # reproducible
    assert half != _dropped(dataset(0.5, seed=1))
    assert 0.4 < len(half) / len(t2i) < 0.6
    assert all(records[i].text is None for i in half)


def test_cfg_dropout_reaches_the_tokens(world, monkeypatch):
    monkeypatch.setattr(world.processor.config, "unconditional_prompt", "<unconditional>")
    records = [r for r in read_jsonl([world.data]) if r.is_text_to_image]
    dataset = UnifiedDataset(records, world.processor, cfg_dropout=1.0)
    text = world.processor.decode(dataset[0]["input_ids"], skip_special_tokens=False).text
    assert "<|im_start|>user\n<unconditional><|im_end|>" in text
    assert records[0].messages[0]["content"] not in text


def test_truncation_never_cuts_an_image(world):
    records = read_jsonl([world.data])[:-1]
    last = len(records) - 1  # a text-to-image sample; the first sample is text
    assert records[last].generates_image and records[0].text is not None
    full, _ = UnifiedDataset(records, world.processor).tokenize(last)
    start = full.index(world.processor.image_start_id)

    def item(max_length, index):
        return UnifiedDataset(records, world.processor, max_length=max_length)[index]

    assert len(item(4, 0)["input_ids"]) == 4  # text is cut
    inside = item(start + 10, last)  # the cut would split the image: the next sample instead
    assert inside["skipped"].tolist() == [0, 1]
    assert inside["input_ids"].tolist() == item(start + 10, 0)["input_ids"].tolist()
    whole = item(len(full) - 1, last)  # only the end-of-turn tokens are cut
    assert whole["skipped"].tolist() == [0, 0] and whole["input_ids"].tolist() == full[:-1]


def test_collator_right_pads(world):
    samples = [
        {"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([-100, 6, 7])},
        {"input_ids": torch.tensor([8]), "labels": torch.tensor([8])},
    ]
    for s, skipped in zip(samples, ([1, 0], [0, 2]), strict=True):
        s["skipped"] = torch.tensor(skipped)
    batch = Collator(pad_token_id=0)(samples)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["skipped"].tolist() == [1, 2]


# -- errors ----------------------------------------------------------------------------------------
def test_corrupt_image_is_skipped_and_counted(world):
    records = read_jsonl([world.data])
    dataset = UnifiedDataset(records, world.processor)
    item = dataset[len(records) - 1]  # the corrupt photo: wraps around to the first sample
    assert item["skipped"].tolist() == [1, 0]
    assert item["input_ids"].tolist() == dataset[0]["input_ids"].tolist()


def test_invalid_lines_name_file_and_line(tmp_path):
    good = json.dumps({"text": "fine"})
    cases = {
        "{not json": "not valid JSON",
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}): "no assistant turn",
        json.dumps({"messages": [{"role": "bot", "content": "hi"}]}): "role",
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "<image>"},
                    {"role": "assistant", "content": "a"},
                ],
                "images": [],
            }
        ): "1 <image> placeholders but 0 images",
        json.dumps(
            {
                "messages": [
                    {"role": "assistant", "content": "hi"},
                    {"role": "user", "content": "hi"},
                ]
            }
        ): "opens with an assistant turn",
        json.dumps({"text": "a", "images": []}): "text sample",
    }
    for line, message in cases.items():
        path = tmp_path / "bad.jsonl"
        path.write_text(f"{good}\n\n{line}\n")
        with pytest.raises(DataFormatError, match=rf"bad.jsonl:3: .*{message}"):
            read_jsonl([path])
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl"):
        read_jsonl([tmp_path / "missing.jsonl"])


def test_cli_errors_and_help(world, tmp_path, capsys):
    base = ["--data", str(world.data), "--output-dir", str(tmp_path / "out")]
    assert main(["--model", str(world.model / "qwen"), *base]) == 2  # a plain Qwen2
    assert "not a unified MLLM" in capsys.readouterr().err
    assert main(["--model", str(tmp_path), *base]) == 2
    assert "no config.json" in capsys.readouterr().err
    missing = ["--model", str(world.model), "--data", str(tmp_path / "nope.jsonl")]
    assert main([*missing, "--output-dir", str(tmp_path / "out")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer: [\n")
    assert main(["--model", str(world.model), *base, "--config", str(broken)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: invalid YAML in {broken}: ")
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "--deepspeed" in capsys.readouterr().out


# -- configs ---------------------------------------------------------------------------------------
def test_stage_configs_and_overrides(tmp_path):
    configs = {stage: load_stage_config(stage) for stage in STAGES}
    assert (
        configs["pretrain"].trainer["learning_rate"] > configs["finetune"].trainer["learning_rate"]
    )
    assert all(c.cfg_dropout == 0.1 for c in configs.values())
    override = tmp_path / "o.yaml"
    override.write_text("cfg_dropout: 0.2\ntrainer: {learning_rate: 0.5}\n")
    merged = load_stage_config("finetune", override)
    assert merged.cfg_dropout == 0.2 and merged.trainer["learning_rate"] == 0.5
    assert merged.trainer["lr_scheduler_type"] == "cosine"
    override.write_text("trainer: {learning_rat: 0.5}\n")
    with pytest.raises(ConfigError, match="learning_rat"):
        load_stage_config("finetune", override)
    for text, named in [
        ("cfg_dropout: 1.5\n", "cfg_dropout must be >= 0 and <= 1, got 1.5"),
        ("max_length: 1\n", "max_length must be >= 2, got 1"),
    ]:
        override.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(named)):
            load_stage_config("finetune", override)
    for zero in ("zero2", "zero3"):
        config = json.loads((DEEPSPEED_CONFIGS / f"{zero}.json").read_text())
        assert config["zero_optimization"]["stage"] == int(zero[-1])
        assert config["train_micro_batch_size_per_gpu"] == "auto"
