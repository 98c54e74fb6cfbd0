import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semhitok_plugin.semantic_codebook import SemanticCodebook


def reference_ema_step(codebook: np.ndarray, z: np.ndarray, decay: float):
    """Eq. (4) by hand, in float64 loops: move each used code towards its members' mean."""
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    ids = (z @ codebook.T).argmax(1)
    new = codebook.copy()
    for k in range(len(codebook)):
        members = z[ids == k]
        if len(members):
            mean = members.mean(0) / np.linalg.norm(members.mean(0))
            moved = decay * codebook[k] + (1 - decay) * mean
            new[k] = moved / np.linalg.norm(moved)
    return ids, new


def make_codebook(k=16, d=6, **kw):
    torch.manual_seed(0)
    kw = {"kmeans_init": False, "dead_code_patience": 0, **kw}
    return SemanticCodebook(k, d, **kw)


def test_ema_update_matches_hand_computed_reference():
    cb = make_codebook(decay=0.9)
    z = torch.randn(40, 6)
    before = cb.codebook.double().numpy().copy()
    out = cb(z, update=True)
    ids, expected = reference_ema_step(before, z.double().numpy(), 0.9)
    np.testing.assert_array_equal(out.ids.numpy(), ids)
    np.testing.assert_allclose(cb.codebook.numpy(), expected, atol=1e-6)
    assert (np.abs(cb.codebook.numpy() - before).max(1) > 0).sum() == len(np.unique(ids))


def test_no_update_without_update_flag():
    cb = make_codebook()
    before = cb.codebook.clone()
    cb(torch.randn(30, 6))
    assert torch.equal(cb.codebook, before)


def test_quantized_rows_straight_through_and_commitment():
    cb = make_codebook(commitment_weight=0.25)
    z = torch.randn(2, 5, 6, requires_grad=True)
    out = cb(z)
    assert out.ids.shape == (2, 5)
    torch.testing.assert_close(out.quantized, cb.codebook[out.ids])  # forward value: the codes
    zn = F.normalize(z, dim=-1)
    expected = 0.25 * ((zn - cb.codebook[out.ids]) ** 2).mean()
    torch.testing.assert_close(out.losses["commitment"], expected)
    out.quantized.sum().backward()  # straight-through: gradient reaches the input
    assert z.grad is not None and z.grad.abs().sum() > 0
    with torch.no_grad():  # inference: exactly the codebook rows, no STE arithmetic
        assert torch.equal(cb(z).quantized, cb.codebook[out.ids])


def test_chunked_search_equals_full_argmax():
    cb = make_codebook(k=50, chunk_size=7)
    z = F.normalize(torch.randn(33, 6), dim=-1)
    assert torch.equal(cb.nearest(z), (z @ cb.codebook.T).argmax(1))


def test_dead_codes_are_restarted_on_batch_vectors():
    cb = make_codebook(k=8, d=4, dead_code_patience=2)
    # All inputs sit next to codes 0 and 1, so codes 2..7 are never used.
    anchors = cb.codebook[:2]
    z = anchors.repeat(10, 1) + 1e-3 * torch.randn(20, 4)
    idle_codes = cb.codebook[2:].clone()
    cb(z, update=True)
    assert torch.equal(cb.codebook[2:], idle_codes)  # idle for 1 step: untouched
    assert cb.idle_steps[2:].tolist() == [1] * 6
    cb(z, update=True)  # idle for 2 steps: restarted onto input vectors
    batch = F.normalize(z, dim=-1)
    for code in cb.codebook[2:]:
        assert torch.isclose(batch @ code, torch.tensor(1.0), atol=1e-6).any()
    assert cb.idle_steps.tolist() == [0] * 8


def test_usage_counts_are_exact_over_many_calls():
    cb = make_codebook(k=20)
    seen = []
    for n in (13, 50, 7):
        seen.append(cb(torch.randn(n, 6), update=True).ids)
    all_ids = torch.cat(seen).numpy()
    expected = np.bincount(all_ids, minlength=20)
    np.testing.assert_array_equal(cb.usage.counts.numpy(), expected)
    p = expected[expected > 0] / expected.sum()
    assert cb.usage.perplexity() == pytest.approx(float(np.exp(-(p * np.log(p)).sum())))
    assert cb.usage.fraction_used() == pytest.approx((expected > 0).mean())
    cb.usage.reset()
    assert cb.usage.counts.sum() == 0


def test_kmeans_init_reaches_a_lloyd_fixed_point():
    cb = make_codebook(k=4, d=3, kmeans_init=True, kmeans_iters=25)
    z = torch.eye(3).repeat_interleave(30, 0) + 0.1 * torch.randn(90, 3)
    assert not cb.initialized
    cb(z, update=True)
    assert cb.initialized
    zn = F.normalize(z, dim=-1)
    ids = cb.nearest(zn)
    for k in ids.unique():
        mean = F.normalize(zn[ids == k].mean(0), dim=0)
        # After one EMA step a converged centre moves only by (1 - decay) * tiny.
        assert torch.dot(mean, cb.codebook[k]) > 0.999


def test_init_flag_is_read_once_until_reset():
    """The first update reads ``initialized`` (k-means when unset), later ones do not; a caller
    that puts the buffers back (a skipped step) asks for the check again."""
    cb = make_codebook(k=4, d=3, kmeans_init=True, kmeans_iters=2)
    z = torch.randn(40, 3)
    assert cb.init_pending
    saved = {k: v.clone() for k, v in cb.state_dict().items()}
    cb(z, update=True)
    assert cb.initialized and not cb.init_pending
    for name, buffer in cb.named_buffers():
        if name in saved:
            buffer.copy_(saved[name])  # the restore: uninitialised again, behind the cache's back
    assert not cb.init_pending  # the cache still says checked: the next update would skip k-means
    cb.reset_init_check()
    assert cb.init_pending
    cb(z, update=True)
    assert cb.initialized
    cb.load_state_dict(saved)
    assert cb.init_pending  # a loaded state is read again too


def test_search_runs_in_full_precision_under_autocast():
    cb = make_codebook(k=4096, d=48)
    z = torch.randn(512, 48)
    expected = cb(z).ids
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cb(z.bfloat16())
    # bf16 inputs are a rounding of z, so compare against the search on those same inputs
    assert torch.equal(out.ids, cb(z.bfloat16().float()).ids)
    assert out.quantized.dtype == torch.float32
    assert (out.ids == expected).float().mean() > 0.9
