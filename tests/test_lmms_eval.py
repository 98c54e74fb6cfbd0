"""The lmms-eval model ``semhitok_qwen`` and the local-data tasks, against lmms-eval 0.7.3 itself:
the real CLI in a subprocess, and the model class fed lmms-eval ``Instance`` objects."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

pytest.importorskip("lmms_eval")
datasets = pytest.importorskip("datasets")

from lmms_eval.api.instance import Instance  # noqa: E402

from semhitok_fixtures.lmms_eval_smoke import (  # noqa: E402
    POPE_QUESTIONS,
    lmms_eval_command,
    offline_env,
    write_sample_pope,
)
from semhitok_fixtures.tiny_qwen import save_tiny_unified  # noqa: E402
from semhitok_lmms_eval.generation import (  # noqa: E402
    StopOnStrings,
    split_generation_kwargs,
    truncate_at,
)
from semhitok_lmms_eval.local_tasks import TASKS, write  # noqa: E402
from semhitok_lmms_eval.model import SemHiTokQwen, with_placeholders  # noqa: E402
from semhitok_plugin.samples import sample_photo  # noqa: E402
from semhitok_qwen import SemHiTokQwen2ForCausalLM  # noqa: E402
from semhitok_qwen.generation import TextOnly  # noqa: E402

PHOTOS = tuple(POPE_QUESTIONS)
QUESTIONS = tuple(q for q, _ in POPE_QUESTIONS.values())
GREEDY = {"max_new_tokens": 12, "temperature": 0, "do_sample": False}


def readable_head(directory):
    """Give the tiny MLLM a random untied head over printable text tokens only. Its tied random
    head just repeats the prompt's last token (\\n) whatever the prompt; this one answers
    differently per prompt, in text that survives decode/encode."""
    model = SemHiTokQwen2ForCausalLM.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    pieces = ((i, tokenizer.decode([i])) for i in range(len(tokenizer)))
    printable = [i for i, s in pieces if s.isascii() and s.isprintable() and s.strip()]
    head = torch.zeros_like(model.lm_head.weight)
    generator = torch.Generator().manual_seed(1)
    head[printable] = torch.randn(len(printable), head.shape[1], generator=generator)
    with torch.no_grad():
        model.lm_head.weight.copy_(head)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return readable_head(save_tiny_unified(tmp_path_factory.mktemp("tiny-mllm")))


@pytest.fixture(scope="module")
def docs():
    return [{"image": sample_photo(name)} for name in PHOTOS]


@pytest.fixture(scope="module")
def lm(tiny_dir, docs):
    model = SemHiTokQwen(pretrained=str(tiny_dir), device="cpu", batch_size=2)
    model.task_dict = {"t": {"test": docs}}
    return model


def photo(doc):
    return [doc["image"]]


def request(kind, *args, doc_id=0):
    metadata = {"task": "t", "doc_id": doc_id, "repeats": 1}
    return Instance(request_type=kind, arguments=args, idx=0, metadata=metadata)


def gen(context, gen_kwargs, doc_id):
    return request("generate_until", context, dict(gen_kwargs), photo, doc_id, "t", "test")


def answers(lm, contexts, gen_kwargs, batch_size):
    lm.batch_size = batch_size
    reqs = [gen(c, gen_kwargs, i % len(PHOTOS)) for i, c in enumerate(contexts)]
    return lm.generate_until(reqs)


# -- the real CLI ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_evaluates_local_pope(tiny_dir, docs, tmp_path):
    """``python -m lmms_eval --model semhitok_qwen`` resolves the entry point (no fork, no
    LMMS_EVAL_PLUGINS) and scores a local POPE-format dataset; it exits 0 even on failure, so
    the printed metric table is what is checked."""
    write_sample_pope(tmp_path / "data")
    write(tmp_path / "data", tmp_path / "tasks", ["pope"])
    env = offline_env()
    env.pop("LMMS_EVAL_PLUGINS", None)
    command = lmms_eval_command(tiny_dir, tmp_path / "tasks", "cpu")
    out = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    table = [line for line in out.stdout.splitlines() if line.startswith("|pope_local")]
    metrics = {line.split("|")[4].strip() for line in table}
    assert metrics == {
        "pope_accuracy",
        "pope_precision",
        "pope_recall",
        "pope_f1_score",
        "pope_yes_ratio",
    }, out.stdout[-3000:] + out.stderr[-3000:]


# -- loglikelihood --------------------------------------------------------------------------------
def direct_loglikelihood(lm, context, continuation, image):
    """Forward the concatenated ids once; sum log-softmax at the continuation positions."""
    messages = [{"role": "user", "content": "<image>\n" + context}]
    prompt = lm.processor.tokenize_chat(messages, [image], add_generation_prompt=True)[0]
    cont = lm.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + cont])
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0].float()
    steps = logits[len(prompt) - 1 : -1]
    total = steps.log_softmax(-1)[torch.arange(len(cont)), cont].sum()
    greedy = TextOnly(lm.processor)(ids, steps).argmax(-1)
    return float(total), greedy.tolist() == cont


def test_loglikelihood_matches_direct_computation(lm, docs):
    cases = [("Is there a cat?", " yes"), ("Describe the image.", " a photo of a cat"), ("", "no")]
    target = lambda doc: "a cup of coffee"  # noqa: E731  (loglikelihood tasks pass doc_to_target)
    reqs = [request("loglikelihood", c, t, photo, i, "t", "test") for i, (c, t) in enumerate(cases)]
    reqs.append(request("loglikelihood", "What is it?", target, photo, 1, "t", "test"))
    lm.batch_size = 2
    got = lm.loglikelihood(reqs)
    expected = [direct_loglikelihood(lm, c, t, docs[i]["image"]) for i, (c, t) in enumerate(cases)]
    expected.append(direct_loglikelihood(lm, "What is it?", "a cup of coffee", docs[1]["image"]))
    for (value, greedy), (value_ref, greedy_ref) in zip(got, expected, strict=True):
        assert value == pytest.approx(value_ref, abs=1e-3)
        assert greedy is greedy_ref


def test_loglikelihood_is_greedy_for_the_greedy_answer(lm):
    context = "Is there a cat in the image?"
    (first,) = answers(lm, [context], {"max_new_tokens": 1}, batch_size=1)
    assert first, "the tiny model answered the end of turn at once"
    ll = lm.loglikelihood([request("loglikelihood", context, first, photo, 0, "t", "test")])
    other = next(t for t in ("yes", "no", "cat") if t != first)
    ll_other = lm.loglikelihood([request("loglikelihood", context, other, photo, 0, "t", "test")])
    assert ll[0][1] is True and ll_other[0][1] is False
    assert ll[0][0] > ll_other[0][0]


# -- generate_until -------------------------------------------------------------------------------
def test_generate_until_batched_matches_one_by_one_in_request_order(lm):
    """Prompts of different lengths are sorted and padded inside batches; the results come back
    in request order and equal the unbatched answers."""
    contexts = [*QUESTIONS, "Is it?"]
    batched = answers(lm, contexts, GREEDY, batch_size=2)
    single = answers(lm, contexts, GREEDY, batch_size=1)
    assert batched == single
    assert len(set(batched)) > 1  # distinct prompts really got distinct answers


def test_generate_until_respects_max_new_tokens(lm):
    long, mid, short = (
        answers(lm, [QUESTIONS[0]], {**GREEDY, "max_new_tokens": n}, batch_size=1)[0]
        for n in (16, 4, 1)
    )
    assert long.startswith(mid) and mid.startswith(short)
    assert len(short) <= len(mid) < len(long)
    assert len(lm.tokenizer(mid, add_special_tokens=False)["input_ids"]) <= 4 + 1  # BPE re-merge


def test_generate_until_stops_at_until_string(lm):
    (full,) = answers(lm, [QUESTIONS[2]], {**GREEDY, "max_new_tokens": 24}, batch_size=1)
    assert len(full) >= 6, full
    stop = full[3:5]
    kwargs = {**GREEDY, "max_new_tokens": 24, "until": [stop, "never printed"]}
    (cut,) = answers(lm, [QUESTIONS[2]], kwargs, batch_size=1)
    assert cut == full[: full.find(stop)]


def test_stop_criterion_is_per_row(lm):
    ids = [lm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("a cat", "a dog")]
    batch = torch.tensor([[0, *ids[0]], [0, *ids[1]]])
    done = StopOnStrings(lm.tokenizer, ["dog"], prompt_length=1)(batch, None)
    assert done.tolist() == [False, True]


def test_generation_kwargs_from_task_yamls():
    seedbench = {"until": ["ASSISTANT:"], "image_aspect_ratio": "original"}
    until, kwargs = split_generation_kwargs(seedbench, default_max_new_tokens=32)
    assert until == ["ASSISTANT:"]
    assert kwargs == {"max_new_tokens": 32, "do_sample": False, "num_beams": 1}
    pope = {"max_new_tokens": 128, "temperature": 0, "top_p": 1.0, "num_beams": 1}
    assert split_generation_kwargs(pope, 32) == ([], {**kwargs, "max_new_tokens": 128})
    sampled = split_generation_kwargs({"until": "\n", "temperature": 0.7, "top_p": 0.9}, 8)
    assert sampled == (
        ["\n"],
        {"max_new_tokens": 8, "do_sample": True, "num_beams": 1, "temperature": 0.7, "top_p": 0.9},
    )
    assert truncate_at("yes. ASSISTANT: no", ["ASSISTANT:", "."]) == "yes"


def test_placeholders_go_before_the_text_once_per_image():
    assert with_placeholders("Is it a cat?", 2) == "<image><image>\nIs it a cat?"
    assert with_placeholders("<image> vs <image>: same?", 2) == "<image> vs <image>: same?"
    assert with_placeholders("see <image>", 0) == "see "


# -- generate_until_multi_round -------------------------------------------------------------------
def test_generate_until_multi_round_follows_doc_to_text(lm):
    """Round 0 answers the context; doc_to_text(doc, previous_output, round_idx,
    previous_round_info) gives the next round or the terminal signal and the final results."""
    calls = []

    def doc_to_text(doc, previous_output=None, round_idx=None, previous_round_info=None):
        calls.append((round_idx, list(previous_output), previous_round_info))
        if round_idx == 1:
            return [doc["image"]], "Say it again: " + previous_output[-1], False, None, {"r": 1}
        return None, None, True, list(previous_output), None

    lm.batch_size = 2
    reqs = [
        request(
            "generate_until_multi_round",
            q,
            dict(GREEDY),
            photo,
            doc_to_text,
            i,
            "t",
            "test",
            doc_id=i,
        )
        for i, q in enumerate(QUESTIONS[:3])
    ]
    results = lm.generate_until_multi_round(reqs)
    for i, result in enumerate(results):
        assert isinstance(result, list) and len(result) == 2
        lm.batch_size = 1
        first = lm.generate_until([gen(QUESTIONS[i], GREEDY, i)])[0]
        second = lm.generate_until([gen("Say it again: " + first, GREEDY, i)])[0]
        assert result == [first, second]
    assert sorted(c[0] for c in calls) == [1, 1, 1, 2, 2, 2]
    assert all(c[2] == {"r": 1} for c in calls if c[0] == 2)


# -- arguments and registration -------------------------------------------------------------------
def test_manifest_resolves_to_the_model_class():
    """The entry point's payload, through lmms-eval's own registry (which checks the class is an
    ``lmms`` with ``is_simple``); discovery itself is what the CLI test exercises."""
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    from semhitok_lmms_eval.manifest import semhitok_qwen

    registry = ModelRegistryV2()
    registry.register_manifest(semhitok_qwen())
    assert registry.get_model_class("semhitok_qwen") is SemHiTokQwen


def test_model_args_override_cli_keywords(tiny_dir):
    model = SemHiTokQwen.create_from_arg_string(
        f"pretrained={tiny_dir},batch_size=3,dtype=float32", {"batch_size": "1", "device": "cpu"}
    )
    assert model.batch_size == 3 and model.device == torch.device("cpu")
    assert model.model.dtype == torch.float32


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ({"dtype": "float8"}, "float8"),
        ({"batch_size": "auto"}, "auto"),
        ({"pretrained": "/nonexistent/semhitok-qwen"}, "/nonexistent/semhitok-qwen"),
    ],
)
def test_bad_model_args_name_the_value(tiny_dir, args, named):
    with pytest.raises(ValueError, match=named):
        SemHiTokQwen(**{"pretrained": str(tiny_dir), "device": "cpu", **args})


@pytest.mark.slow
def test_local_task_yamls_include_the_upstream_tasks(tmp_path):
    from lmms_eval.tasks import TaskManager
    from lmms_eval.utils import load_yaml_config

    paths = write(tmp_path / "data", tmp_path / "tasks")
    manager = TaskManager(include_path=str(tmp_path / "tasks"))
    for name, path in zip(TASKS, paths, strict=True):
        config = load_yaml_config(str(path))
        assert f"{name}_local" in manager.all_tasks
        assert config["task"] == f"{name}_local"
        assert config["dataset_path"] == str((tmp_path / "data" / name).resolve())
        assert config["dataset_kwargs"] == {"load_from_disk": True}
        assert callable(config["doc_to_visual"]) and config["output_type"] == "generate_until"
        assert "metric_list" in config
    assert load_yaml_config(str(paths[3]))["process_docs"] is None  # GQA: images joined on disk


def test_gqa_questions_get_their_images_joined(docs):
    from semhitok_lmms_eval.local_tasks import join_gqa_images

    images = datasets.Dataset.from_dict(
        {"id": ["n1", "n2"], "image": [docs[0]["image"], docs[2]["image"]]},
        features=datasets.Features({"id": datasets.Value("string"), "image": datasets.Image()}),
    )
    questions = datasets.Dataset.from_dict({"imageId": ["n2", "n1", "n2"], "question": list("abc")})
    joined = join_gqa_images(questions, images)
    assert [row["image"].size for row in joined] == [docs[i]["image"].size for i in (2, 0, 2)]
    assert joined[1]["question"] == "b"


def test_the_smoke_run_is_a_dev_script_run_from_the_repository_root():
    """``PYTHONPATH=tests python -m semhitok_fixtures.lmms_eval_smoke`` (the README's command);
    the shipped ``semhitok_lmms_eval`` carries no smoke module."""
    result = subprocess.run(
        [sys.executable, "-m", "semhitok_fixtures.lmms_eval_smoke", "--help"],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "PYTHONPATH": "tests"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m semhitok_fixtures.lmms_eval_smoke")
    assert importlib.util.find_spec("semhitok_lmms_eval.smoke") is None
