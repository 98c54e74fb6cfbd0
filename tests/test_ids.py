import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from semhitok_plugin.ids import TokenIdError, merge_ids, split_ids


@given(
    k=st.integers(1, 20000),
    m=st.integers(1, 16),
    data=st.data(),
)
def test_split_merge_round_trip(k, m, data):
    flat = torch.tensor(data.draw(st.lists(st.integers(0, k * m - 1), min_size=1, max_size=50)))
    sem, pix = split_ids(flat, k, m)
    assert sem.min() >= 0 and sem.max() < k and pix.min() >= 0 and pix.max() < m
    assert torch.equal(merge_ids(sem, pix, k, m), flat)
    assert torch.equal(flat, sem * m + pix)  # the paper's flattening: sem * m + pix


def test_paper_vocabulary_fits_int32_not_int16():
    flat = merge_ids(torch.tensor([16383]), torch.tensor([11]), 16384, 12)
    assert flat.item() == 196_607 > torch.iinfo(torch.int16).max


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (torch.tensor([0, 196_608]), r"196608, outside the valid range \[0, 196608\)"),
        (torch.tensor([-1, 3]), r"-1, outside the valid range \[0, 196608\)"),
        (torch.tensor([1.0]), "must be an integer tensor"),
    ],
)
def test_out_of_range_flat_ids_name_the_range(ids, message):
    with pytest.raises(TokenIdError, match=message):
        split_ids(ids, 16384, 12)


def test_merge_rejects_pixel_id_outside_sub_codebook():
    with pytest.raises(
        TokenIdError, match=r"pix_ids contains 12, outside the valid range \[0, 12\)"
    ):
        merge_ids(torch.tensor([5]), torch.tensor([12]), 16384, 12)
