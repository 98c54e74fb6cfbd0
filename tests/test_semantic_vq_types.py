"""The semantic codebook's update rules of Tab. 9 ("VQ type"): ema, vanilla, norm."""

import pytest
import torch
import torch.nn.functional as F

from semhitok_plugin.config import ConfigError, SemanticConfig
from semhitok_plugin.model import SemHiTok
from semhitok_plugin.presets import tiny
from semhitok_plugin.semantic_codebook import SemanticCodebook


def make(quantizer: str, **kw) -> SemanticCodebook:
    torch.manual_seed(0)
    kw = {"kmeans_init": False, "dead_code_patience": 0, **kw}
    return SemanticCodebook(8, 4, quantizer=quantizer, decay=0.5, **kw)


def test_vanilla_searches_euclidean_and_learns_by_gradient():
    cb = make("vanilla")
    assert isinstance(cb.codebook, torch.nn.Parameter)
    z = 3 * torch.randn(50, 4, requires_grad=True)
    out = cb(z, update=True)
    assert torch.equal(out.ids, torch.cdist(z.detach(), cb.codebook.detach()).argmin(1))
    torch.testing.assert_close(out.quantized, cb.codebook[out.ids])  # not normalised
    sum(out.losses.values()).backward()
    assert set(out.losses) == {"commitment", "codebook"} and cb.codebook.grad.abs().sum() > 0


def test_norm_normalises_inputs_and_codes_and_survives_restarts_before_backward():
    cb = make("norm", dead_code_patience=1)
    z = torch.randn(40, 4, requires_grad=True)
    out = cb(z, update=True)  # restarts edit the parameter after the lookup
    sum(out.losses.values()).backward()
    torch.testing.assert_close(out.quantized.norm(dim=-1), torch.ones(40))
    sims = F.normalize(z.detach(), dim=-1) @ F.normalize(cb.codebook.detach(), dim=-1).T
    assert cb.codebook.grad is not None and sims.shape == (40, 8)


def test_ema_without_l2_norm_moves_codes_towards_the_plain_mean():
    cb = make("ema", l2_norm=False)
    assert not isinstance(cb.codebook, torch.nn.Parameter)
    before = cb.codebook.clone()
    z = 5 * torch.randn(30, 4)
    ids = cb(z, update=True).ids
    k = int(ids[0])
    expected = 0.5 * before[k] + 0.5 * z[ids == k].mean(0)
    torch.testing.assert_close(cb.codebook[k], expected)
    assert cb.codebook[k].norm() > 1.5  # nothing was normalised


def test_gradient_codebooks_train_in_stage_1_and_freeze_after():
    config = tiny()
    config.semantic.quantizer = "vanilla"
    model = SemHiTok(config)
    params = {id(p) for p in model.freeze_for("semantic")}
    assert id(model.semantic_codebook.codebook) in params
    model.freeze_for("pixel")
    assert not model.semantic_codebook.codebook.requires_grad


def test_quantizer_is_a_checked_config_choice():
    assert SemanticConfig().quantizer == "ema" and SemanticConfig().l2_norm  # VQ-KD's codebook
    with pytest.raises(ConfigError, match="quantizer"):
        SemanticConfig(quantizer="rvq")
