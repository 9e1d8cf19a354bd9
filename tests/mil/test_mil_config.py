"""MilConfig through the shared loader, and the `mil` commands' shared flags."""
from __future__ import annotations

import pytest
import yaml

from openmusk.cli import main
from openmusk.core.config import ConfigError, load_config
from openmusk.mil import MilConfig


def test_types_are_converted_or_rejected_with_the_key_named(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("folds: '5'\nlr: 1e-4\nmax_instances: '64'\n")
    c = load_config(MilConfig, cfg)
    assert (c.folds, c.lr, c.max_instances) == (5, 1e-4, 64)
    cfg.write_text("epochs: ten\n")
    with pytest.raises(ConfigError, match=r"run.yaml: key 'epochs' expects int, got 'ten'"):
        load_config(MilConfig, cfg)
    cfg.write_text("model: transmill\n")
    with pytest.raises(ConfigError, match=r"key 'model' must be one of \['abmil', 'transmil', 'meanpool', 'mcat'"):
        load_config(MilConfig, cfg)
    cfg.write_text("folds: 1\n")
    with pytest.raises(ConfigError, match=r"run.yaml: folds must be >= 2"):
        load_config(MilConfig, cfg)


def test_paths_resolve_against_the_file_and_runtime_defaults_are_shared(tmp_path):
    (tmp_path / "cfg").mkdir()
    cfg = tmp_path / "cfg" / "run.yaml"
    keys = ("cohort", "features_dir", "output_dir", "init_aggregator", "report_cache", "slides_dir")
    cfg.write_text("".join(f"{k}: rel/{k}\n" for k in keys) + "report_weights: hf_hub:xiangjx/musk\n")
    c = load_config(MilConfig, cfg, {"output_dir": "cwd_out"})
    for k in keys[:2] + keys[3:]:
        assert getattr(c, k) == str(tmp_path / "cfg" / "rel" / k), k
    assert c.output_dir == "cwd_out"  # an override stays relative to the working directory
    assert c.report_weights == "hf_hub:xiangjx/musk"
    assert (c.device, c.precision) == ("auto", "auto")
    assert MilConfig(precision="bfloat16").precision == "bf16"


def test_mil_cli_example_set_and_renamed_flags(tmp_path, capsys):
    assert main(["mil", "train", "--example"]) == 0
    example = yaml.safe_load(capsys.readouterr().out)
    assert example["model"] == "abmil" and example["precision"] == "auto"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({**example, "cohort": "missing.csv"}))
    assert main(["mil", "train", str(cfg), "--set", "epochs=ten"]) == 2
    assert "key 'epochs' expects int, got 'ten'" in capsys.readouterr().err
    assert main(["mil", "train", str(cfg), "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--output-dir is now spelled --out" in err and "--no-progress is now spelled --quiet" in err
    assert "missing.csv" in err  # the run got as far as reading the cohort
    assert (tmp_path / "out" / "config.json").is_file()  # --out (by its old spelling) was honoured

