"""The pluggy plugin behind the ``semhitok`` entry point ``llava``.

Kept free of heavy imports: every ``semhitok`` command loads the entry points, and LLaVA and
transformers are only needed once someone activates the integration.
"""

from __future__ import annotations

from semhitok_plugin.plugins import hookimpl


def register() -> None:
    """Install SemHiTok into LLaVA (see :mod:`semhitok_llava.install`)."""
    from .install import register as install

    install()


@hookimpl
def semhitok_integrations() -> dict:
    return {"llava": register}
