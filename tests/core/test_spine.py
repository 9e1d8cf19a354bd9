"""One spine: every config class goes through the one loader, every command through one runtime,
one flag vocabulary, and no public name is defined twice."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import re
import typing
from pathlib import Path

import pytest
import yaml

from openmusk.core.config import ConfigError, load_config

PACKAGE = Path(__file__).resolve().parents[2] / "openmusk"

# every config a user writes as YAML, with the keys it cannot do without
CONFIGS = {
    "openmusk.slide.config:ExtractConfig": {},
    "openmusk.eval.config:EvalConfig": {"models": [{"name": "m", "kind": "color_stats"}],
                                        "datasets": [{"spec": "pcam", "root": "data"}]},
    "openmusk.eval.specs:DatasetSpec": {"name": "d"},
    "openmusk.eval.vqa.train:VQATrainConfig": {"data": "vqa.jsonl"},
    "openmusk.mil.config:MilConfig": {},
    "openmusk.pretrain.config:TokenizerStageConfig": {},
    "openmusk.pretrain.config:MaskedStageConfig": {},
    "openmusk.pretrain.config:ContrastiveStageConfig": {},
    "openmusk.pretrain.config:FilterConfig": {},
    "openmusk.pretrain.config:ShardsConfig": {},
    "openmusk.pretrain.mstar.config:AggregatorPretrainConfig": {"table": "t.csv"},
    "openmusk.pretrain.mstar.config:SelfTaughtConfig": {"stage1_dir": "s1", "table": "t.csv"},
}
OLD_SPELLINGS = {"out_dir", "amp", "bf16", "dtype", "workers"}


def _cls(spec: str) -> type:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _first_field(cls: type, test) -> str | None:
    hints = typing.get_type_hints(cls)
    return next((f.name for f in dataclasses.fields(cls) if test(f, hints[f.name])), None)


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "cfg" / "run.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("spec", sorted(CONFIGS))
def test_every_config_is_strict_typed_and_resolves_paths_against_its_file(spec, tmp_path):
    cls, base = _cls(spec), CONFIGS[spec]
    load_config(cls, _write(tmp_path, base))                          # the minimal file is valid
    path = _write(tmp_path, {**base, "epochz": 1})
    with pytest.raises(ConfigError) as e:
        load_config(cls, path)
    assert str(path) in str(e.value) and "'epochz'" in str(e.value)
    key = _first_field(cls, lambda f, h: h is int)
    if key is not None:
        with pytest.raises(ConfigError) as e:
            load_config(cls, _write(tmp_path, {**base, key: "ten"}))
        assert f"'{key}' expects int, got 'ten'" in str(e.value), str(e.value)
    key = _first_field(cls, lambda f, h: f.metadata.get("path") is True)
    assert key is not None, f"{spec} declares no path field"
    cfg = load_config(cls, _write(tmp_path, {**base, key: "sub/thing.yaml"}))
    assert getattr(cfg, key) == str((tmp_path / "cfg").resolve() / "sub/thing.yaml")


@pytest.mark.parametrize("spec", sorted(CONFIGS))
def test_shared_fields_have_one_spelling_and_one_default(spec):
    fields = {f.name: f for f in dataclasses.fields(_cls(spec))}
    assert not OLD_SPELLINGS & set(fields), f"{spec} still spells {OLD_SPELLINGS & set(fields)}"
    for name in ("device", "precision"):
        if name in fields:
            assert fields[name].default == "auto", f"{spec}.{name} defaults to {fields[name].default!r}"


def _sources():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def test_one_device_resolver_one_config_reader_and_no_root_imports_in_stages():
    offenders = {"device": [], "yaml": [], "root": []}
    for path in _sources():
        rel = path.relative_to(PACKAGE).as_posix()
        text = path.read_text()
        if rel != "core/runtime.py" and re.search(r"cuda\.is_available\(\)", text):
            offenders["device"].append(rel)
        if rel != "core/config.py" and "yaml.safe_load" in text:
            offenders["yaml"].append(rel)
        if not rel.startswith(("cli/", "__init__")) and re.search(r"^\s*(import openmusk\s*$|from openmusk import )",
                                                                   text, re.M):
            offenders["root"].append(rel)
    assert offenders == {"device": [], "yaml": [], "root": []}


def test_no_public_name_is_defined_twice():
    seen: dict[str, list[str]] = {}
    for path in _sources():
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("cli/"):  # each CLI module's `register` is the plug-in protocol
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                seen.setdefault(node.name, []).append(rel)
    assert {k: v for k, v in seen.items() if len(v) > 1} == {}


def _leaf_parsers(parser: argparse.ArgumentParser, prefix: str = ""):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix.strip(), parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from _leaf_parsers(sub, f"{prefix} {name}")


def test_one_flag_vocabulary_and_every_config_command_has_example():
    from openmusk.cli import build_parser

    leaves = dict(_leaf_parsers(build_parser()))
    assert len(leaves) >= 20
    for name, p in leaves.items():
        visible = {s for a in p._actions if a.help != argparse.SUPPRESS for s in a.option_strings}
        old = visible & {"--out-dir", "--output-dir", "--workers", "--dtype", "--bf16", "--no-progress"}
        assert not old, f"`openmusk {name}` shows old flag spellings {old}"
        takes_config = any(a.dest == "config" for a in p._actions)
        if takes_config:
            assert "--example" in visible, f"`openmusk {name}` reads a config but has no --example"
        for a in p._actions:
            if "--device" in a.option_strings:
                assert a.default is None, f"`openmusk {name}` --device default {a.default!r} bypasses the runtime"


def test_every_config_command_prints_its_defaults_as_yaml(tmp_path, capsys):
    """``--example`` works for every command that reads a config and prints a YAML mapping."""
    from openmusk.cli import build_parser, main

    commands = [name for name, p in _leaf_parsers(build_parser())
                if any(a.dest == "config" for a in p._actions)]
    assert {"mil train", "eval run", "vqa train", "mstar pretrain-aggregator", "mstar self-taught",
            "slide extract", "pretrain masked"} <= set(commands)
    for name in commands:
        assert main([*name.split(), "--example"]) == 0, name
        text = capsys.readouterr().out
        data = yaml.safe_load(text)
        assert isinstance(data, dict) and data, f"`openmusk {name} --example` printed no mapping"
