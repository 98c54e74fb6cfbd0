"""``semhitok-llava-vqa``: LLaVA's ``llava.eval.model_vqa_loader`` with SemHiTok installed.

Takes exactly the flags of ``python -m llava.eval.model_vqa_loader`` (so LLaVA's POPE, MME,
SEED-Bench and GQA scripts run with it unchanged) plus ``--device``. LLaVA's script hard-codes
``cuda``; ``--device cpu`` runs it on the CPU by remapping those tensor moves (a CPU smoke path:
LLaVA still casts the language model to float16).

LLaVA's own ``if __name__ == "__main__":`` block is run inside the imported module, after
``load_pretrained_model`` and ``Image`` there have been wrapped: nothing of LLaVA's argument
parsing or evaluation loop is re-implemented here.
"""

from __future__ import annotations

import argparse
import ast
import functools
import inspect
import sys
from collections.abc import Sequence
from types import ModuleType

import torch
from torch.overrides import TorchFunctionMode

from .compat import name_image_errors
from .install import launcher_args


class CudaToDevice(TorchFunctionMode):
    """Redirects tensor moves that name ``cuda`` to another device."""

    def __init__(self, device: str) -> None:
        super().__init__()
        self.device = torch.device(device)

    def _map(self, value):
        is_cuda = isinstance(value, (str, torch.device)) and str(value).startswith("cuda")
        return self.device if is_cuda else value

    def __torch_function__(self, func, types, args=(), kwargs=None):
        args = tuple(self._map(a) for a in args)
        kwargs = {k: self._map(v) for k, v in (kwargs or {}).items()}
        return func(*args, **kwargs)


def _load_pretrained_model(original, device, model_path, model_base, model_name, **kwargs):
    if "llava" not in model_name.lower():
        raise ValueError(
            f"LLaVA builds the vision tower only for checkpoint folders whose name contains "
            f"'llava'; {model_path!r} does not (rename it, e.g. llava-v1.5-7b-semhitok)"
        )
    return original(model_path, model_base, model_name, device=device, **kwargs)


def run_main_block(module: ModuleType, argv: Sequence[str]) -> None:
    """Execute ``module``'s ``if __name__ == "__main__":`` body in its namespace with ``argv``."""
    tree = ast.parse(inspect.getsource(module))
    blocks = [
        node.body
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'"
    ]
    if len(blocks) != 1:
        raise RuntimeError(f"{module.__name__} has no single __main__ block to run")
    code = compile(ast.Module(body=blocks[0], type_ignores=[]), module.__file__, "exec")
    saved_argv, sys.argv = sys.argv, [module.__name__, *argv]
    try:
        exec(code, vars(module))
    finally:
        sys.argv = saved_argv


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="semhitok-llava-vqa",
        add_help=False,
        description="llava.eval.model_vqa_loader for LLaVA checkpoints with a SemHiTok tower; "
        "its flags are listed below.",
    )
    default = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default, help=f"cuda or cpu (default: {default})")
    ours, rest = launcher_args(parser, argv)
    import llava.eval.model_vqa_loader as vqa

    name_image_errors(vqa)
    original = getattr(vqa.load_pretrained_model, "__wrapped__", vqa.load_pretrained_model)
    wrapped = functools.partial(_load_pretrained_model, original, ours.device)
    vqa.load_pretrained_model = functools.update_wrapper(wrapped, original)
    if ours.device.startswith("cuda"):
        run_main_block(vqa, rest)
    else:
        with CudaToDevice(ours.device):
            run_main_block(vqa, rest)


if __name__ == "__main__":
    main()
