"""Presets and teacher backends come from pluggy hooks found through entry points."""

import os
import textwrap

import pytest

from semhitok_plugin import ConfigError, SemHiTok
from semhitok_plugin.plugins import available_presets, build_plugin_manager, get_preset

PLUGIN = '''
from semhitok_plugin.plugins import hookimpl
from semhitok_plugin.presets import tiny
from semhitok_plugin.teacher import TimmTeacher


class EchoTeacher(TimmTeacher):
    """A third-party backend: timm, registered under another name."""


@hookimpl
def semhitok_presets():
    config = tiny()
    config.semantic.codebook_size = 32
    config.teacher.backend = "echo-timm"
    return {"throwaway-tiny": config}


@hookimpl
def semhitok_teacher_backends():
    return {"echo-timm": EchoTeacher}
'''


def install_throwaway_plugin(root, name="throwaway_semhitok", body=PLUGIN):
    """A minimal installed distribution: a module plus a dist-info with an entry point."""
    (root / f"{name}.py").write_text(body)
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[semhitok]\n{name} = {name}\n")


def test_builtin_presets_match_the_paper():
    presets = available_presets()
    l16, so400m = presets["siglip-l16-256"], presets["siglip-so400m14-384"]
    assert l16.grid_size == (16, 16) and l16.vocab_size == 196_608
    assert so400m.grid_size == (27, 27) and so400m.vocab_size == 196_608
    assert presets["siglip-l16-256-enhance"].pixel.decoder.width == 1024
    assert l16.semantic.code_dim == 48 and l16.pixel.sub_codebook_size == 12


def test_a_third_party_plugin_adds_a_preset_and_a_backend(tmp_path, monkeypatch):
    install_throwaway_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = build_plugin_manager()
    assert "throwaway-tiny" in available_presets(pm)
    assert "throwaway-tiny" not in available_presets()  # the cached default manager predates it
    config = get_preset("throwaway-tiny", pm)
    monkeypatch.setattr("semhitok_plugin.plugins.plugin_manager", lambda: pm)
    model = SemHiTok(config)
    assert type(model.teacher.backbone).__name__ == "EchoTeacher"
    assert model.vocab_size == 32 * 4


@pytest.mark.slow
def test_the_cli_sees_installed_plugins(tmp_path, run_cli):
    install_throwaway_plugin(tmp_path)
    pythonpath = f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    run = run_cli("info", "throwaway-tiny", PYTHONPATH=pythonpath)
    assert "128 = K 32 x m 4" in run.stdout


def test_a_preset_name_defined_twice_is_an_error(tmp_path, monkeypatch):
    clash = textwrap.dedent("""
        from semhitok_plugin.plugins import hookimpl
        from semhitok_plugin.presets import tiny

        @hookimpl
        def semhitok_presets():
            return {"tiny": tiny()}
    """)
    install_throwaway_plugin(tmp_path, "clashing_semhitok", clash)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"presets \['tiny'\] registered by more than one plugin"):
        available_presets(build_plugin_manager())
