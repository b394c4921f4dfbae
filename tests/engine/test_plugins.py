"""The engine's plug-in points: installed packages above it add commands and the default model's assembly."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from reaudio.engine import plugins
from reaudio.engine.cli import build_parser


def _fake_registry(monkeypatch, points: list[EntryPoint]) -> None:
    monkeypatch.setattr(plugins, "entry_points", lambda group, **kw: [p for p in points if p.group == group])


def _register_first(sub, common, tables):
    tables["first"] = sub.add_parser("first")


def _register_second(sub, common, tables):
    tables["first"].add_argument("--added-by-second")


_register_second.after = ("zz-first",)


def test_a_plug_in_runs_after_those_it_extends_whatever_its_name(monkeypatch):
    group = plugins.COMMANDS
    _fake_registry(
        monkeypatch,
        [
            EntryPoint("aa-second", f"{__name__}:_register_second", group),
            EntryPoint("zz-first", f"{__name__}:_register_first", group),
        ],
    )
    assert [name for name, _ in plugins.command_plugins()] == ["zz-first", "aa-second"]
    args = build_parser().parse_args(["first", "--added-by-second", "x"])
    assert args.added_by_second == "x"


def test_a_plug_in_that_cannot_be_imported_is_skipped(monkeypatch):
    _fake_registry(monkeypatch, [EntryPoint("broken", "reaudio.no_such_module:register", plugins.COMMANDS)])
    assert plugins.command_plugins() == []
    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args(["train", "vae"])  # only the engine's commands remain
    assert refused.value.code == 2


def test_without_an_assembler_the_default_model_says_what_to_install(monkeypatch, tmp_path):
    from reaudio.engine.bundle import default_model

    _fake_registry(monkeypatch, [])
    monkeypatch.setenv("REAUDIO_CACHE", str(tmp_path))
    monkeypatch.setattr(default_model, "_torch_installed", lambda: True)
    with pytest.raises(default_model.DefaultModelMissing, match=r"reaudio\[default\]"):
        default_model.resolve_bundle()


def test_the_installed_project_registers_the_export_training_and_serving_sides():
    names = [name for name, _ in plugins.command_plugins()]
    assert names == ["export", "serve", "training"]
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"generate", "export", "default-model", "train", "eval", "data", "configs", "serve"} <= set(commands)
