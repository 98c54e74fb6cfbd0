"""Plugin hooks: presets and teacher backends come from pluggy hook implementations.

Our own presets and backends are registered like anyone else's. Another package adds its own by
exposing a module (or object) with ``@hookimpl`` functions under the entry-point group
``semhitok``, e.g. in its ``pyproject.toml``::

    [project.entry-points.semhitok]
    my_presets = "my_package.semhitok_presets"

and in that module::

    from semhitok_plugin.plugins import hookimpl

    @hookimpl
    def semhitok_presets():
        return {"my-preset": SemHiTokConfig(...)}
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pluggy

from .config import ConfigError, SemHiTokConfig

PROJECT = "semhitok"
ENTRY_POINT_GROUP = "semhitok"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class HookSpecs:
    @hookspec
    def semhitok_presets(self) -> dict[str, SemHiTokConfig]:
        """Named tokenizer configurations, e.g. ``{"siglip-l16-256": SemHiTokConfig(...)}``."""

    @hookspec
    def semhitok_teacher_backends(self) -> dict[str, Callable]:
        """Teacher backends: name -> ``TeacherBackbone`` subclass (``cls(config, canvas_size)``)."""

    @hookspec
    def semhitok_integrations(self) -> dict[str, Callable[[], None]]:
        """Framework integrations: name -> a function that installs it into that framework
        (idempotent), e.g. ``{"llava": semhitok_llava.register}``. Run by :func:`activate`."""


def build_plugin_manager() -> pluggy.PluginManager:
    """A fresh manager with the built-in plugins and every installed entry-point plugin."""
    from . import presets, teacher

    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(HookSpecs)
    pm.register(presets, name="semhitok.presets")
    pm.register(teacher, name="semhitok.teacher")
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm


@functools.cache
def plugin_manager() -> pluggy.PluginManager:
    return build_plugin_manager()


def _collect(results: list[dict], kind: str) -> dict:
    merged: dict = {}
    # pluggy returns the last-registered plugin's result first; apply in registration order so a
    # name defined twice is caught regardless.
    for result in reversed(results):
        clash = set(merged) & set(result)
        if clash:
            raise ConfigError(f"{kind} {sorted(clash)} registered by more than one plugin")
        merged.update(result)
    return merged


def available_presets(pm: pluggy.PluginManager | None = None) -> dict[str, SemHiTokConfig]:
    pm = pm or plugin_manager()
    return _collect(pm.hook.semhitok_presets(), "presets")


def get_preset(name: str, pm: pluggy.PluginManager | None = None) -> SemHiTokConfig:
    known = available_presets(pm)
    if name not in known:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(sorted(known))}")
    return known[name]


def available_integrations(pm: pluggy.PluginManager | None = None) -> dict[str, Callable]:
    return _collect((pm or plugin_manager()).hook.semhitok_integrations(), "integrations")


def activate(name: str, pm: pluggy.PluginManager | None = None) -> None:
    """Install the integration ``name`` (found through the ``semhitok`` entry points) into its
    framework, e.g. ``activate("llava")`` before LLaVA builds or loads a model."""
    known = available_integrations(pm)
    if name not in known:
        raise ConfigError(
            f"no integration {name!r} is installed (known: {', '.join(sorted(known)) or 'none'}); "
            f"install semhitok-plugin[{name}]"
        )
    known[name]()


def teacher_backend(name: str, pm: pluggy.PluginManager | None = None) -> Callable:
    backends = _collect((pm or plugin_manager()).hook.semhitok_teacher_backends(), "backends")
    if name not in backends:
        raise ConfigError(f"unknown teacher backend {name!r}; known: {', '.join(sorted(backends))}")
    return backends[name]
