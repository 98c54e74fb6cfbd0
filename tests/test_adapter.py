import pytest
import torch

from semhitok_plugin import DualMLPAdapter


def test_each_half_sees_only_its_feature_group():
    torch.manual_seed(0)
    adapter = DualMLPAdapter(semantic_dim=8, pixel_dim=4, out_dim=20, semantic_fraction=0.75)
    sem, pix = torch.randn(2, 5, 8), torch.randn(2, 5, 4)
    out = adapter(sem, pix)
    assert out.shape == (2, 5, 20)
    moved_pix = adapter(sem, torch.randn(2, 5, 4))
    moved_sem = adapter(torch.randn(2, 5, 8), pix)
    assert torch.equal(out[..., :15], moved_pix[..., :15])  # semantic slice ignores pixels
    assert not torch.equal(out[..., 15:], moved_pix[..., 15:])
    assert torch.equal(out[..., 15:], moved_sem[..., 15:])  # pixel slice ignores semantics
    assert not torch.equal(out[..., :15], moved_sem[..., :15])


def test_default_split_is_equal_halves():
    adapter = DualMLPAdapter(48, 8, 4096)
    assert adapter.semantic.fc2.out_features == adapter.pixel.fc2.out_features == 2048


def test_degenerate_split_is_rejected():
    with pytest.raises(ValueError, match="leaves no width"):
        DualMLPAdapter(48, 8, 16, semantic_fraction=1.0)
