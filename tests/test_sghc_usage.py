"""SGHC sub-codebook usage: data-dependent init, dead-entry restarts (DDP-safe), no weight decay."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from semhitok_plugin.sghc import SubCodebookQuantizer
from semhitok_plugin.training import exempt_from_decay
from semhitok_plugin.usage import CodeUsage

K, M, D = 6, 4, 8


def build(**kw) -> SubCodebookQuantizer:
    torch.manual_seed(0)
    return SubCodebookQuantizer(K, M, D, **kw)


def clustered(n: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features concentrated in a small cap per semantic code, as a trained encoder gives:
    random codes on the sphere then fall mostly on one nearest entry."""
    g = torch.Generator().manual_seed(seed)
    sem = torch.randint(0, K, (n,), generator=g)
    centres = F.normalize(torch.randn(K, D, generator=torch.Generator().manual_seed(99)), dim=-1)
    return centres[sem] + 0.05 * torch.randn(n, D, generator=g), sem


def test_data_init_takes_distinct_routed_features_per_sub_codebook():
    q = build(data_init=True)
    z, sem = clustered()
    q(z, sem, update=True)
    assert q.initialized.all()
    for k in range(K):
        routed = F.normalize(z[sem == k], dim=-1)
        entries = q.codebooks.detach()[k]
        matches = (entries[:, None, :] - routed[None]).abs().amax(-1) < 1e-6  # (m, routed)
        assert matches.any(1).all(), "every entry is one of the features routed to its code"
        assert len({int(i) for i in matches.float().argmax(1)}) == M, "and they are distinct"


def test_data_init_runs_once_and_leaves_unvisited_sub_codebooks_alone():
    q = build(data_init=True)
    z, sem = clustered()
    keep = sem != 0
    before = q.codebooks.detach().clone()
    q(z[keep], sem[keep], update=True)
    assert not q.initialized[0] and torch.equal(q.codebooks[0], before[0])
    after_first = q.codebooks.detach().clone()
    q(z[keep].flip(0), sem[keep].flip(0), update=True)  # initialised codes stay
    assert torch.equal(q.codebooks[1:], after_first[1:])
    q(z, sem, update=False)  # inference never initialises
    assert not q.initialized[0]


def test_data_init_and_restarts_raise_usage_over_random_init():
    z, sem = clustered()
    fractions = {}
    for name, kw in {"random": {}, "data": {"data_init": True, "dead_code_patience": 2}}.items():
        q = build(**kw)
        opt = torch.optim.Adam(q.parameters(), lr=1e-2)
        for _ in range(6):
            out = q(z, sem, update=True)
            opt.zero_grad()
            sum(out.losses.values()).backward()
            opt.step()
        q.usage.reset()
        q(z, sem)
        fractions[name] = q.usage.fraction_used_in_visited_groups()
    assert fractions["data"] == 1.0 and fractions["random"] < 0.6, fractions


def test_dead_entry_is_moved_onto_a_routed_feature_after_patience_visits():
    q = build(data_init=True, dead_code_patience=2)
    z, sem = clustered()
    q(z, sem, update=True)
    with torch.no_grad():
        q.codebooks[1, 3] = -F.normalize(z[sem == 1].mean(0), dim=0)  # never the nearest
    for step in range(3):
        q(z, sem, update=True)
        if step < 2:
            assert q.idle_steps[1, 3] == step + 1  # counted per visit of sub-codebook 1
    routed = F.normalize(z[sem == 1], dim=-1)
    assert (routed - q.codebooks.detach()[1, 3]).abs().amax(-1).min() < 1e-6
    assert q.idle_steps[1, 3] == 0  # restarted before the search: its feature then picks it


def test_idle_counts_only_visits_of_the_sub_codebook():
    q = build(data_init=True, dead_code_patience=2)
    z, sem = clustered()
    q(z, sem, update=True)
    idle = q.idle_steps[0].clone()
    keep = sem != 0
    for _ in range(4):
        q(z[keep], sem[keep], update=True)
    assert torch.equal(q.idle_steps[0], idle)


def test_usage_within_visited_groups():
    usage = CodeUsage(12, group_size=4)
    usage.update(torch.tensor([0, 1, 2, 3, 4, 4]))  # group 0 fully used, group 1 one of 4
    assert usage.fraction_used_in_visited_groups() == pytest.approx((1 + 0.25) / 2)
    assert usage.summary()["used_in_visited_groups"] == pytest.approx(0.625)
    assert usage.summary()["tokens"] == 6


def test_codebooks_and_embeddings_get_no_weight_decay():
    exempt = {
        "pixel_quantizer.codebooks": torch.zeros(4, 3, 2),
        "semantic_codebook.codebook": torch.zeros(4, 2),
        "pixel_encoder.transformer.pos_embed": torch.zeros(1, 4, 2),
        "pixel_decoder.transformer.blocks.0.norm1.weight": torch.zeros(2),
        "pixel_decoder.transformer.proj_in.bias": torch.zeros(2),
    }
    for name, value in exempt.items():
        assert exempt_from_decay(name, torch.nn.Parameter(value)), name
    assert not exempt_from_decay("pixel_decoder.transformer.proj_in.weight", torch.zeros(2, 2))


def rank_batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    return clustered(200, seed=10 * rank + step)


def worker(rank: int, init_file: str, out_dir: str) -> None:
    q = build(data_init=True, dead_code_patience=1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(1 + rank)  # ranks draw different random numbers; results must agree
    for step in range(4):
        q(*rank_batch(rank, step), update=True)
    torch.save({k: v for k, v in q.state_dict().items()}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: ~40 s under load
def test_two_ranks_keep_identical_sub_codebooks(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert a["initialized"].all()


def test_random_crop_usage_counts_tokens_and_visited_sub_codebooks(tmp_path, tiny_model):
    from semhitok_plugin.evaluation import random_crop_usage
    from semhitok_plugin.samples import write_sample_photos

    write_sample_photos(tmp_path, ("astronaut", "coffee"))
    usage = random_crop_usage(tiny_model, tmp_path, crops=40, batch_size=20)
    tokens = 40 * tiny_model.grid_size[0] * tiny_model.grid_size[1]
    assert usage["tokens"] == tokens
    assert 0 < usage["semantic"] <= 1 and 0 < usage["sub_codebook"] <= 1


@pytest.mark.slow  # trains the demo at 1 % of its steps
def test_demo_summary_reports_codebook_usage_over_1280_crops(tmp_path):
    from semhitok_plugin.demo import run_demo

    usage = run_demo(tmp_path, steps_scale=0.01)["codebook_usage"]
    assert usage["tokens"] >= 1280 * 64
    assert set(usage) == {"semantic", "sub_codebook", "tokens"}


def test_data_init_off_keeps_the_codes_even_when_loaded_uninitialised():
    q = build(data_init=False)
    before = q.codebooks.detach().clone()
    q(*clustered(), update=True)
    assert torch.equal(q.codebooks.detach(), before)
