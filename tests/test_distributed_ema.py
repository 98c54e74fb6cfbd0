"""EMA codebook statistics are all-reduced across ranks (2 CPU processes, gloo)."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from semhitok_plugin.semantic_codebook import SemanticCodebook

K, D, STEPS = 16, 4, 3
CASES = {
    "kmeans_and_restarts": {"kmeans_init": True, "dead_code_patience": 1},
    "plain": {"kmeans_init": False, "dead_code_patience": 0},
}


def rank_batch(rank: int, step: int) -> torch.Tensor:
    return torch.randn(24, D, generator=torch.Generator().manual_seed(100 * rank + step))


def build(**kw) -> SemanticCodebook:
    torch.manual_seed(0)
    return SemanticCodebook(K, D, decay=0.8, **kw)


def worker(rank: int, init_file: str, out_dir: str) -> None:
    codebooks = {name: build(**kw) for name, kw in CASES.items()}  # built *before* the group
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(1 + rank)  # ranks draw different random numbers; results must still agree
    for name, codebook in codebooks.items():
        for step in range(STEPS):
            codebook(rank_batch(rank, step), update=True)
        torch.save(codebook.codebook, f"{out_dir}/{name}-rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(str(tmp / "init"), str(tmp)), nprocs=2)
    return {name: [torch.load(tmp / f"{name}-rank{r}.pt") for r in (0, 1)] for name in CASES}


@pytest.mark.slow
def test_ranks_end_with_identical_codebooks_with_kmeans_and_restarts(rank_results):
    a, b = rank_results["kmeans_and_restarts"]
    assert torch.equal(a, b)


def test_two_ranks_equal_one_process_on_the_union_of_their_batches(rank_results):
    a, b = rank_results["plain"]
    single = build(**CASES["plain"])
    for step in range(STEPS):
        single(torch.cat([rank_batch(0, step), rank_batch(1, step)]), update=True)
    torch.testing.assert_close(a, single.codebook)
    torch.testing.assert_close(b, single.codebook)
