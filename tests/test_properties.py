"""Property-based tests (Hypothesis) of the id space, both quantizers and the token-file reader.

tests/test_ids.py checks split/merge on random id lists; here: the whole valid range, exactly
which ids and dtypes are refused, SGHC and the semantic codebook against an independent float64
brute force, output shapes and dtypes, and the ids -> features -> ids round trip.

Ties: the quantizers search in float32, so where two codes are within float32's rounding of each
other either may win. Search properties therefore say "the chosen code scores within
``cosine_tolerance(d)`` of the best", never "the chosen id equals the float64 argmax". Properties
whose ids must match exactly are on integers (split/merge, token files) or on inputs proven free
of near-ties (the round trip checks its codebooks' margin first). The Hypothesis profiles (fixed
examples in CI, more random ones locally) are in tests/conftest.py.
"""

import functools
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st

from semhitok_fixtures.bad_tokens import MODEL, token_arrays
from semhitok_plugin import load_model
from semhitok_plugin.ids import TokenIdError, check_ids, merge_ids, split_ids
from semhitok_plugin.semantic_codebook import SemanticCodebook
from semhitok_plugin.sghc import SubCodebookQuantizer
from semhitok_plugin.token_files import TokenFileError, read_tokens

SIZES = st.tuples(st.integers(1, 300), st.integers(1, 16))  # (K, m)
IDS = st.one_of(st.integers(-4, 320), st.integers(-(2**62), 2**62))
INT_DTYPES = [
    torch.int8,
    torch.uint8,
    torch.int16,
    torch.uint16,
    torch.int32,
    torch.uint32,
    torch.int64,
]


@functools.cache
def tiny():
    return load_model(MODEL)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def cosine_tolerance(d: int) -> float:
    """How far a float32 cosine of two d-dim vectors may be from the exact one.

    A float32 dot product of unit vectors is off by at most ``d * eps`` (Higham, Thm 3.1 with
    |x||y| = 1) and each l2-normalisation by a few ``eps``: ``(d + 4) * eps`` per score, so two
    scores compare wrongly only when they are within twice that.
    """
    return 2 * (d + 4) * float(np.finfo(np.float32).eps)


def assert_best_up_to_ties(chosen: np.ndarray, scores: np.ndarray, tolerance: float) -> None:
    """Each row's ``chosen`` column scores within ``tolerance`` of that row's best score."""
    picked = np.take_along_axis(scores, np.asarray(chosen).reshape(-1, 1), axis=1)[:, 0]
    gap = scores.max(axis=1) - picked
    worst = int(gap.argmax())
    assert gap[worst] <= tolerance, (
        f"row {worst}: chose {chosen[worst]} ({picked[worst]:.9f}), "
        f"best is {scores[worst].argmax()} ({scores[worst].max():.9f}), tolerance {tolerance:.1e}"
    )


def min_gap_to_self(codes: torch.Tensor) -> float:
    """Smallest margin by which each unit code beats every other code of its (sub-)codebook
    as its own nearest neighbour: 1 - (largest cosine between two different codes)."""
    cosines = codes @ codes.transpose(-1, -2)
    eye = torch.eye(codes.shape[-2], dtype=torch.bool)
    return 1 - cosines.masked_fill(eye, -1).amax().item()


# -- the id space -----------------------------------------------------------------------------
@given(SIZES)
@example((16384, 12))  # the paper's vocabulary, all 196,608 ids
def test_split_maps_the_whole_range_onto_every_pair_once_in_raster_order(km):
    k, m = km
    flat = torch.arange(k * m)
    sem, pix = split_ids(flat, k, m)
    pairs = torch.cartesian_prod(torch.arange(k), torch.arange(m)).view(-1, 2)
    assert torch.equal(torch.stack([sem, pix], dim=1), pairs)
    assert torch.equal(merge_ids(sem, pix, k, m), flat)


@given(SIZES, IDS, IDS)
def test_merge_accepts_exactly_the_pairs_inside_k_by_m(km, sem, pix):
    k, m = km
    call = functools.partial(merge_ids, torch.tensor([sem]), torch.tensor([pix]), k, m)
    if 0 <= sem < k and 0 <= pix < m:
        back = split_ids(call(), k, m)
        assert (back[0].item(), back[1].item()) == (sem, pix)
        return
    name, bad, upper = ("sem_ids", sem, k) if not 0 <= sem < k else ("pix_ids", pix, m)
    with pytest.raises(TokenIdError) as err:
        call()
    assert f"{name} contains {bad}, outside the valid range [0, {upper})" in str(err.value)


@given(SIZES, st.lists(IDS, min_size=1, max_size=20))
def test_split_refuses_any_id_outside_the_vocabulary_naming_it(km, ids):
    k, m = km
    outside = [i for i in ids if not 0 <= i < k * m]
    if not outside:
        sem, pix = split_ids(torch.tensor(ids), k, m)
        assert (sem.min() >= 0).item() and (sem.max() < k).item() and (pix.max() < m).item()
        return
    bad = min(ids) if min(ids) < 0 else max(ids)
    with pytest.raises(TokenIdError) as err:
        split_ids(torch.tensor(ids), k, m)
    assert f"contains {bad}, outside the valid range [0, {k * m})" in str(err.value)
    assert err.value.index == (ids.index(bad),)


@given(st.sampled_from(INT_DTYPES), st.integers(1, 2**33), st.data())
def test_an_integer_dtype_is_refused_iff_it_cannot_hold_the_vocabulary(dtype, upper, data):
    info = torch.iinfo(dtype)
    values = data.draw(st.lists(st.integers(info.min, info.max), min_size=1, max_size=10))
    ids = torch.tensor(values, dtype=torch.int64).to(dtype)
    if info.max < upper - 1:
        with pytest.raises(TokenIdError, match="cannot hold every id"):
            check_ids(ids, upper, "ids")
    elif all(0 <= v < upper for v in values):
        check_ids(ids, upper, "ids")
    else:
        with pytest.raises(TokenIdError, match="outside the valid range"):
            check_ids(ids, upper, "ids")


@given(
    st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool]),
    st.lists(st.integers(0, 255), min_size=1, max_size=10),
)
def test_float_and_bool_ids_are_refused_even_when_integral(dtype, values):
    with pytest.raises(TokenIdError, match=f"must be an integer tensor, got dtype {dtype}"):
        check_ids(torch.tensor(values).to(dtype), 256, "ids")


# -- the quantizers ---------------------------------------------------------------------------
@given(
    k=st.integers(2, 12),
    m=st.integers(1, 9),
    d=st.integers(2, 8),
    n=st.integers(1, 40),
    seed=st.integers(0, 2**31 - 1),
    steal=st.booleans(),
)
# An own code within 6e-5 of the stolen one: a distance check would fail here.
@example(k=2, m=9, d=2, n=2, seed=5135756, steal=True)
def test_sghc_picks_the_best_candidate_of_its_own_semantic_id_only(k, m, d, n, seed, steal):
    torch.manual_seed(seed)
    q = SubCodebookQuantizer(k, m, d)
    sem = torch.randint(0, k, (n,))
    stolen = q.codebooks.detach()[(sem + 1) % k, torch.randint(0, m, (n,))]
    z = stolen.clone() if steal else torch.randn(n, d)  # steal: the global best is elsewhere
    with torch.no_grad():
        out = q(z, sem)
    assert out.ids.dtype == torch.long and out.ids.shape == (n,)
    assert (out.ids.min() >= 0).item() and (out.ids.max() < m).item()
    # independent brute force over the m candidates of each token's own sub-codebook, in float64
    codes, zs = unit(q.codebooks.detach().double().numpy()), unit(z.double().numpy())
    scores = np.einsum("nmd,nd->nm", codes[sem.numpy()], zs)
    assert_best_up_to_ties(out.ids.numpy(), scores, cosine_tolerance(d))
    # A code of sem's own, even when (steal) the global best is a code of another sub-codebook.
    # Not "far from the stolen code": an own code may lie within rounding of it by chance.
    assert torch.equal(out.quantized, q.normalized()[sem, out.ids])


@given(
    k=st.integers(1, 40),
    d=st.integers(2, 8),
    n=st.integers(1, 60),
    chunk=st.integers(1, 70),
    scale=st.floats(0.01, 100),
    seed=st.integers(0, 2**31 - 1),
)
# Two codes within rounding of each other: rescaling flips the float32 argmax at row 33.
@example(k=40, d=2, n=40, chunk=1, scale=70.6875, seed=23864)
def test_semantic_nearest_is_the_cosine_argmax_for_any_chunk_size(k, d, n, chunk, scale, seed):
    torch.manual_seed(seed)
    cb = SemanticCodebook(k, d, chunk_size=chunk, kmeans_init=False)
    z = torch.randn(n, d)
    ids = cb.nearest(F.normalize(z, dim=-1))
    with torch.no_grad():
        rescaled = cb(scale * z).ids  # cosine: the input's scale is irrelevant, up to ties
    scores = unit(z.double().numpy()) @ unit(cb.codebook.double().numpy()).T
    for chosen in (ids, rescaled):
        assert chosen.shape == (n,) and chosen.dtype == torch.long
        assert_best_up_to_ties(chosen.numpy(), scores, cosine_tolerance(d))


@given(
    lead=st.lists(st.integers(1, 4), max_size=3),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    k=st.integers(1, 20),
    m=st.integers(1, 6),
    d=st.integers(1, 8),
)
def test_quantizers_keep_the_leading_shape_and_the_codebook_dtype(lead, dtype, k, m, d):
    z = torch.randn(*lead, d).to(dtype)
    with torch.no_grad():
        sem = SemanticCodebook(k, d, kmeans_init=False)(z)
        pix = SubCodebookQuantizer(k, m, d)(z, sem.ids)
    for out, size in ((sem, k), (pix, m)):
        assert out.quantized.shape == z.shape and out.quantized.dtype == torch.float32
        assert out.ids.shape == tuple(lead) and out.ids.dtype == torch.long
        assert (out.ids.min() >= 0).item() and (out.ids.max() < size).item()


@given(st.integers(1, 3), st.data())
def test_ids_to_features_to_ids_round_trip(batch, data):
    """Exact ids: every code is its own nearest code by a margin far above float32 rounding."""
    model = tiny()
    for codes in (model.semantic_codebook.codebook, model.pixel_quantizer.normalized()):
        assert min_gap_to_self(codes.detach()) > 100 * cosine_tolerance(codes.shape[-1])
    h, w = model.grid_size
    values = st.lists(
        st.integers(0, model.vocab_size - 1), min_size=batch * h * w, max_size=batch * h * w
    )
    flat = torch.tensor(data.draw(values)).view(batch, h, w)
    sem_features, pix_features = model.embed_ids(flat)
    with torch.no_grad():
        sem = model.semantic_codebook(sem_features).ids
        pix = model.pixel_quantizer(pix_features, sem).ids
    again = merge_ids(sem, pix, model.codebook_size, model.sub_codebook_size)
    assert torch.equal(again.view(batch, h, w), flat)


# -- the token-file reader --------------------------------------------------------------------
FILE_DTYPES = ["<i4", ">i4", "<i8", ">i8", "<i2", "|u1", "<u2", "<u4"]


@given(st.sampled_from(FILE_DTYPES), st.integers(1, 3), st.integers(0, 2**32 - 1), st.data())
def test_read_tokens_returns_in_range_ids_unchanged_and_names_any_other(dtype, count, seed, data):
    model = tiny()
    info, (h, w), vocab = np.iinfo(np.dtype(dtype)), model.grid_size, model.vocab_size
    ids = np.random.default_rng(seed).integers(0, vocab, count * h * w)
    edges = [-3, -1, 0, vocab - 1, vocab, vocab + 1, 2**31, 2**32 + 5, -(2**31) - 1]
    edge = st.sampled_from([v for v in edges if info.min <= v <= info.max])
    edits = st.lists(st.tuples(st.integers(0, len(ids) - 1), edge), max_size=3)
    for position, value in data.draw(edits):
        ids[position] = value
    values = ids.tolist()
    arrays = token_arrays(model, count)
    arrays["flat_ids"] = ids.astype(dtype).reshape(count, h, w)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "t.npz"
        np.savez(path, **arrays)
        if all(0 <= v < vocab for v in values):
            flat, files = read_tokens(path, model)
            assert flat.dtype == torch.long and flat.flatten().tolist() == values
            assert files == list(arrays["files"])
            return
        with pytest.raises(TokenFileError) as err:
            read_tokens(path, model)
    bad = min(values) if min(values) < 0 else max(values)
    image = str(arrays["files"][values.index(bad) // (h * w)])
    assert str(err.value).startswith(f"{path}: flat_ids contains {bad}, outside the valid range")
    assert str(err.value).endswith(f"(image {image!r})")
