"""An exponential moving average of the weights a stage trains (exported instead of the raw ones).

Only the trainable parameters are shadowed: copying the whole tokenizer, as generic model-EMA
helpers do, would duplicate the frozen 316 M-parameter teacher for nothing. Buffers (the EMA
semantic codebook) are already averages and are exported as they are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class WeightEMA:
    def __init__(self, params: list[nn.Parameter], decay: float) -> None:
        self.params, self.decay = list(params), decay
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, weight: torch.Tensor | float = 1.0) -> None:
        """Move each shadow ``(1 - decay) * weight`` of the way to its weight.

        ``weight`` may be a 0-d tensor on the weights' device, so a training step can pass 0 for
        a step it skipped (the shadow stays exactly as it was) without reading that flag on the
        host."""
        params = [p.detach() for p in self.params]
        step = (1 - self.decay) * weight
        if isinstance(step, torch.Tensor):
            torch._foreach_lerp_(self.shadow, params, [step] * len(params))
        else:
            torch._foreach_lerp_(self.shadow, params, step)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        for mine, saved in zip(self.shadow, state["shadow"], strict=True):
            mine.copy_(saved)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily swap the averaged weights into the model (e.g. to export or evaluate)."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow, strict=True):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup, strict=True):
                    p.copy_(b)
