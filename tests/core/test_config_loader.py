"""The one config loader: strict keys, typed values, paths against the file, overrides, renames."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional

import pytest
import yaml

from openmusk.core.config import (ConfigError, config_from_dict, config_to_dict, example_yaml, load_config,
                                  parse_overrides, path_field, replace_config)


@dataclass
class Inner:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Outer:
    name: str
    output_dir: str = path_field("out")
    weights: Optional[str] = path_field(None)
    spec: str = path_field("pcam", when=lambda v: v.endswith(".yaml"))
    epochs: int = 10
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    shots: list[int] = field(default_factory=lambda: [1, 2])
    extra: dict[str, int] = field(default_factory=dict)
    train: Inner = field(default_factory=Inner)
    renamed_keys: ClassVar[dict] = {"out_dir": "output_dir", "amp": ("mode", lambda v: "b" if v else "a")}

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")


def write(tmp_path, data, name="run.yaml"):
    p = tmp_path / "cfgs" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(data))
    return p


def test_values_are_typed_nested_and_paths_resolve_against_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = write(tmp_path, {"name": "x", "output_dir": "res", "weights": "hf_hub:xiangjx/musk", "spec": "my.yaml",
                         "epochs": "12", "flag": "yes", "shots": [1, 4], "train": {"lr": "1e-4", "betas": [0.8, 0.9]}})
    cfg = load_config(Outer, p)
    assert cfg.output_dir == str(p.parent.resolve() / "res")
    assert cfg.weights == "hf_hub:xiangjx/musk"          # hub ids are not paths
    assert cfg.spec == str(p.parent.resolve() / "my.yaml")
    assert cfg.epochs == 12 and cfg.flag is True and cfg.train.lr == 1e-4 and cfg.train.betas == (0.8, 0.9)
    # a built-in spec name stays a name
    assert load_config(Outer, write(tmp_path, {"name": "x", "spec": "pcam"})).spec == "pcam"


def test_unknown_key_names_file_key_and_closest(tmp_path):
    p = write(tmp_path, {"name": "x", "epoch": 3})
    with pytest.raises(ConfigError) as e:
        load_config(Outer, p)
    msg = str(e.value)
    assert str(p) in msg and "'epoch'" in msg and "did you mean 'epochs'" in msg
    with pytest.raises(ConfigError, match=r"train.*unknown key 'lrr'.*did you mean 'lr'"):
        load_config(Outer, write(tmp_path, {"name": "x", "train": {"lrr": 1}}))


@pytest.mark.parametrize("key,value,expected", [("epochs", "ten", "int"), ("flag", "maybe", "bool"),
                                                ("shots", {"a": 1}, "list"), ("extra", [1], "dict")])
def test_wrong_type_names_key_type_and_value(tmp_path, key, value, expected):
    p = write(tmp_path, {"name": "x", key: value})
    with pytest.raises(ConfigError) as e:
        load_config(Outer, p)
    msg = str(e.value)
    assert str(p) in msg and repr(key) in msg and expected in msg and repr(value) in msg


def test_literal_required_and_post_init_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"'mode' must be one of \['a', 'b'\], got 'c'"):
        load_config(Outer, write(tmp_path, {"name": "x", "mode": "c"}))
    with pytest.raises(ConfigError, match=r"missing required key\(s\) \['name'\]"):
        load_config(Outer, write(tmp_path, {}))
    p = write(tmp_path, {"name": "x", "epochs": 0})
    with pytest.raises(ConfigError, match=f"{p}: epochs must be >= 1"):
        load_config(Outer, p)


def test_overrides_are_validated_and_stay_cwd_relative(tmp_path):
    p = write(tmp_path, {"name": "x", "output_dir": "res"})
    cfg = load_config(Outer, p, {"output_dir": "mine", "train.lr": "0.5", "epochs": None})
    assert cfg.output_dir == "mine" and cfg.train.lr == 0.5 and cfg.epochs == 10
    with pytest.raises(ConfigError, match="'epochs' expects int, got 'many'"):
        load_config(Outer, p, {"epochs": "many"})
    assert load_config(Outer, p, {"extra.a": "3"}).extra == {"a": 3}      # a key inside a dict field
    with pytest.raises(ConfigError, match="'epochs' is not a section"):
        load_config(Outer, p, {"epochs.x": 1})
    with pytest.raises(ConfigError, match="unknown key 'lrate'"):
        load_config(Outer, p, {"train.lrate": 1})
    assert parse_overrides(["epochs=3", "shots=[1, 8]", "flag=true", "weights=null"]) == {
        "epochs": 3, "shots": [1, 8], "flag": True, "weights": None}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["epochs"])


def test_renamed_keys_work_with_a_one_line_notice(tmp_path, capsys):
    p = write(tmp_path, {"name": "x", "out_dir": "o", "amp": True})
    cfg = load_config(Outer, p)
    assert cfg.output_dir.endswith("/o") and cfg.mode == "b"
    err = capsys.readouterr().err.strip().splitlines()
    assert any("'out_dir' is now spelled 'output_dir'" in line for line in err)
    assert any("'amp' is now spelled 'mode'" in line for line in err)
    with pytest.raises(ConfigError, match="both 'out_dir' and its new spelling 'output_dir'"):
        load_config(Outer, write(tmp_path, {"name": "x", "out_dir": "o", "output_dir": "p"}))


def test_json_files_dicts_replace_and_example(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"name": "j", "epochs": 2}')
    assert load_config(Outer, p).epochs == 2
    cfg = config_from_dict(Outer, {"name": "d", "output_dir": "r"}, base_dir=tmp_path)
    assert cfg.output_dir == str(tmp_path / "r")
    new = replace_config(cfg, {"epochs": "7", "train.lr": 2})
    assert new.epochs == 7 and new.train.lr == 2.0 and cfg.epochs == 10
    assert config_to_dict(new)["train"]["betas"] == [0.9, 0.999]
    text = example_yaml(Outer)
    assert text.startswith("name: null  # required")
    loaded = yaml.safe_load(text)
    assert loaded["train"]["lr"] == 1e-3 and loaded["epochs"] == 10
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{bad}: not valid YAML"):
        load_config(Outer, bad)
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(Outer, tmp_path / "missing.yaml")


def test_dataclass_round_trip_through_yaml(tmp_path):
    cfg = Outer(name="r", epochs=3, shots=[5], extra={"a": 1})
    p = write(tmp_path, config_to_dict(cfg))
    again = load_config(Outer, p)
    assert dataclasses.replace(again, output_dir=cfg.output_dir) == cfg
