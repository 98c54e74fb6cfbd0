"""The pluggy plugin behind the ``semhitok`` entry point ``llamagen``: ``activate("llamagen")``
registers SemHiTok in LlamaGen's ``VQ_models``. Light on purpose (loaded by every command)."""

from __future__ import annotations

from semhitok_plugin.plugins import hookimpl


def register() -> None:
    from .register import register as install

    install()


@hookimpl
def semhitok_integrations() -> dict:
    return {"llamagen": register}
