import pytest
import torch
import torch.nn.functional as F

from semhitok_plugin.ids import TokenIdError
from semhitok_plugin.sghc import SubCodebookQuantizer


def make(k=37, m=5, d=6, **kw):
    torch.manual_seed(0)
    return SubCodebookQuantizer(k, m, d, **kw)


def masked_flat_search(q: SubCodebookQuantizer, z: torch.Tensor, sem: torch.Tensor):
    """Brute-force reference: search all K*m codes, with every code outside sub-codebook[sem]
    masked out. Returns flat ids."""
    codes = F.normalize(q.codebooks.detach(), dim=-1).reshape(-1, q.dim)
    scores = F.normalize(z, dim=-1) @ codes.T  # (N, K*m)
    owner = torch.arange(len(codes)) // q.sub_size
    scores[owner[None, :] != sem[:, None]] = -torch.inf
    return scores.argmax(1)


def test_pixel_ids_equal_masked_flat_search_reference():
    q = make()
    z, sem = torch.randn(500, 6), torch.randint(0, 37, (500,))
    with torch.no_grad():
        out = q(z, sem)
    flat = masked_flat_search(q, z, sem)
    assert torch.equal(sem * q.sub_size + out.ids, flat)
    # and the quantised vector is exactly sub-codebook[sem][pix], normalised
    assert torch.equal(out.quantized, q.normalized()[sem, out.ids])


def test_unrestricted_search_would_differ():
    """The hierarchy matters: the global nearest code often lies in another sub-codebook."""
    q = make()
    z, sem = torch.randn(500, 6), torch.randint(0, 37, (500,))
    codes = q.normalized().detach().reshape(-1, q.dim)
    global_owner = (F.normalize(z, dim=-1) @ codes.T).argmax(1) // q.sub_size
    assert (global_owner != sem).float().mean() > 0.5


def test_shapes_losses_and_gradients():
    q = make(commitment_weight=0.25, codebook_weight=1.0)
    z = torch.randn(2, 9, 6, requires_grad=True)
    sem = torch.randint(0, 37, (2, 9))
    out = q(z, sem)
    assert out.ids.shape == (2, 9) and out.quantized.shape == (2, 9, 6)
    zn, qv = F.normalize(z, dim=-1), q.normalized()[sem, out.ids]
    torch.testing.assert_close(out.losses["codebook"], ((qv - zn) ** 2).mean())
    torch.testing.assert_close(out.losses["commitment"], 0.25 * ((qv - zn) ** 2).mean())
    (out.quantized.sum() + sum(out.losses.values())).backward()
    assert z.grad.abs().sum() > 0  # straight-through reaches the encoder
    touched = q.codebooks.grad.abs().sum((1, 2)) > 0
    assert set(touched.nonzero().flatten().tolist()) == set(sem.flatten().tolist())


def test_usage_is_counted_per_flat_id():
    q = make(k=4, m=3, d=2)
    ids = []
    with torch.no_grad():
        for _ in range(3):
            sem = torch.randint(0, 4, (50,))
            ids.append(sem * 3 + q(torch.randn(50, 2), sem).ids)
    expected = torch.bincount(torch.cat(ids), minlength=12)
    assert torch.equal(q.usage.counts, expected)


def test_no_k_times_m_wide_intermediate():
    """K*m = 4M codes: a per-token flat search over 4,096 tokens would need 64 GB; SGHC needs
    only the 4 candidates of each token."""
    q = make(k=2**20, m=4, d=4)
    z, sem = torch.randn(4096, 4), torch.randint(0, 2**20, (4096,))
    with torch.no_grad():  # a K*m-wide search would fail to allocate here
        out = q(z, sem)
        scores = torch.einsum("nmd,nd->nm", q.normalized()[sem].double(), F.normalize(z).double())
    chosen = scores.gather(1, out.ids[:, None]).squeeze(1)
    assert (scores.amax(1) - chosen).max() < 1e-6  # the best of its own 4, up to float32 ties


def test_lookup_validates_ranges():
    q = make(k=4, m=3, d=2)
    with pytest.raises(TokenIdError, match=r"pix_ids contains 3, outside the valid range \[0, 3\)"):
        q.lookup(torch.tensor([0]), torch.tensor([3]))


def test_search_runs_in_full_precision_under_autocast():
    q = make(k=8, m=64, d=8)
    z, sem = torch.randn(2000, 8), torch.randint(0, 8, (2000,))
    with torch.no_grad():
        expected = q(z.bfloat16().float(), sem).ids
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(q(z.bfloat16(), sem).ids, expected)
