"""`openmusk pretrain ...`: example configs, overrides, clear config errors, shards from files and
slides. (The whole recipe through the CLI runs in tests/pretrain, beside its corpus.)"""
from __future__ import annotations

import csv
import io
import json

import pytest
import yaml
from PIL import Image

from openmusk.cli import main
from openmusk.core.config import ConfigError, config_from_dict, config_to_dict, load_config
from openmusk.data.shards import iter_tar_samples, list_shards
from openmusk.pretrain.config import MaskedStageConfig, TokenizerStageConfig


def _write(path, d):
    path.write_text(yaml.safe_dump(d))
    return str(path)


@pytest.mark.parametrize("stage", ["make-shards", "tokenizer", "masked", "contrastive", "filter"])
def test_example_config_loads_back(stage, tmp_path, capsys):
    assert main(["pretrain", stage, "--example"]) == 0
    text = capsys.readouterr().out
    (tmp_path / "c.yaml").write_text(text)
    from openmusk.cli.pretrain import _STAGES
    from openmusk.pretrain import config as config_mod
    cls = getattr(config_mod, _STAGES[stage][0])
    loaded = load_config(cls, tmp_path / "c.yaml")
    # the defaults, with the file's relative paths taken relative to its folder
    assert loaded == config_from_dict(cls, config_to_dict(cls()), base_dir=tmp_path)
    out = "source" if stage == "make-shards" else "output_dir" if stage != "filter" else "output"
    assert getattr(loaded, out) == str(tmp_path / getattr(cls(), out))


def test_help_describes_the_stages(capsys):
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(s in out for s in ("make-shards", "tokenizer", "masked", "contrastive", "filter", "torchrun"))


def test_config_errors_name_the_key_and_file(tmp_path, capsys):
    bad = _write(tmp_path / "bad.yaml", {"train": {"total_step": 3}})
    with pytest.raises(ConfigError, match=r"bad.yaml: train: unknown key 'total_step'.*did you mean 'total_steps'"):
        load_config(MaskedStageConfig, bad)
    assert main(["pretrain", "masked", bad]) == 2
    assert "total_step" in capsys.readouterr().err
    wrong = _write(tmp_path / "wrong.yaml", {"train": {"precision": "fp8"}})
    with pytest.raises(ConfigError, match="wrong.yaml: train: precision must be one of"):
        load_config(TokenizerStageConfig, wrong)
    typed = _write(tmp_path / "typed.yaml", {"train": {"total_steps": "ten"}})
    assert main(["pretrain", "masked", typed]) == 2
    assert "'total_steps' expects int, got 'ten'" in capsys.readouterr().err
    assert main(["pretrain", "masked"]) == 2
    assert "--example" in capsys.readouterr().err


def test_flags_and_set_override_the_file(tmp_path, monkeypatch, capsys):
    from openmusk.pretrain import stages

    seen = {}
    monkeypatch.setattr(stages, "train_masked", lambda cfg: seen.setdefault("cfg", cfg) and {})
    monkeypatch.setattr(stages, "filter_pairs", lambda cfg: seen.setdefault("filter", cfg) and {})
    cfg = _write(tmp_path / "m.yaml", {"output_dir": "run", "train": {"device": "cuda", "lr": 0.1}})
    assert main(["pretrain", "masked", cfg, "--device", "cpu", "--precision", "bf16",
                 "--set", "train.lr=1e-4", "--set", "mask_ratio=0.5"]) == 0
    c = seen["cfg"]
    assert (c.train.device, c.train.precision, c.train.lr, c.mask_ratio) == ("cpu", "bf16", 1e-4, 0.5)
    assert c.output_dir == str(tmp_path / "run")   # from the file: relative to the file
    flt = _write(tmp_path / "f.yaml", {"pretrained": "w.safetensors"})
    assert main(["pretrain", "filter", flt, "--dtype", "fp32", "--device", "cpu"]) == 0
    assert (seen["filter"].precision, seen["filter"].device) == ("fp32", "cpu")
    assert "--dtype is now spelled --precision" in capsys.readouterr().err
    assert main(["pretrain", "masked", cfg, "--set", "train.lrr=1"]) == 2
    assert "did you mean 'lr'" in capsys.readouterr().err


def test_make_shards_skips_and_reports_unreadable_images(tmp_path, real_dir, capsys):
    rows = [{"image": str(real_dir / "hgsc_nest.jpg"), "text": "tumour nest"},
            {"image": str(tmp_path / "missing.png"), "text": "gone"},
            {"image": str(real_dir / "hgsc_stromal_he.jpg"), "text": ""}]
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "text"])
        w.writeheader()
        w.writerows(rows)
    cfg = _write(tmp_path / "s.yaml", {"source": str(tmp_path / "pairs.csv"), "kind": "pairs",
                                       "output": str(tmp_path / "out" / "p-%04d.tar"), "max_side": 256})
    assert main(["pretrain", "make-shards", cfg]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out[out.index("{"):])
    assert summary["written"] == 1 and len(summary["skipped"]) == 2
    assert "missing.png" in err and "empty text" in err
    (sample,) = list(iter_tar_samples(summary["shards"][0]))
    assert sample["txt"] == b"tumour nest" and sample["jpg"][:2] == b"\xff\xd8"


def test_make_shards_from_a_slide_samples_fields_of_view(tmp_path, real_dir, capsys):
    cfg = _write(tmp_path / "s.yaml", {"source": str(real_dir / "cmu_small_region.svs"), "kind": "slides",
                                       "output": str(tmp_path / "fov" / "f-%04d.tar"), "fields_per_slide": 6,
                                       "fov_size": 64, "min_tissue": 0.3})
    assert main(["pretrain", "make-shards", cfg]) == 0
    samples = [s for p in list_shards(tmp_path / "fov") for s in iter_tar_samples(p)]
    assert len(samples) == 6
    for s in samples:
        meta = json.loads(s["json"])
        assert meta["mpp"] in (1.0, 0.5, 0.25) and meta["slide"].endswith("cmu_small_region.svs")
        img = Image.open(io.BytesIO(s["jpg"]))
        assert img.size == (64, 64)
    bad = _write(tmp_path / "b.yaml", {"source": str(tmp_path / "none"), "kind": "slides",
                                       "output": str(tmp_path / "x" / "f-%04d.tar")})
    (tmp_path / "none").mkdir()
    assert main(["pretrain", "make-shards", bad]) == 2
    assert "no slides" in capsys.readouterr().err
