import torch
from torch import nn

from semhitok_plugin.weight_ema import WeightEMA


def make(decay=0.9):
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    ema = WeightEMA(list(net.parameters()), decay)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)  # the weights move away from the shadow
    return net, ema


def test_update_moves_the_shadow_by_one_minus_decay():
    net, ema = make(0.9)
    before = [s.clone() for s in ema.shadow]
    ema.update()
    for s, b, p in zip(ema.shadow, before, net.parameters(), strict=True):
        torch.testing.assert_close(s, b + 0.1 * (p.detach() - b))


def test_a_tensor_weight_scales_the_step_exactly():
    """weight 0 (a skipped step) leaves the shadow bit for bit; weight 1 is the plain update."""
    _, ema = make()
    before = [s.clone() for s in ema.shadow]
    ema.update(torch.tensor(0.0))
    assert all(torch.equal(s, b) for s, b in zip(ema.shadow, before, strict=True))
    _, plain = make()
    plain.update()
    ema.update(torch.tensor(1.0))
    assert all(torch.equal(s, p) for s, p in zip(ema.shadow, plain.shadow, strict=True))


def test_applied_swaps_the_shadow_in_and_back():
    net, ema = make()
    weights = [p.detach().clone() for p in net.parameters()]
    with ema.applied():
        assert all(torch.equal(p, s) for p, s in zip(net.parameters(), ema.shadow, strict=True))
    assert all(torch.equal(p, w) for p, w in zip(net.parameters(), weights, strict=True))
