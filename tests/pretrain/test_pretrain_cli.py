"""`openmusk pretrain ...`: example configs, clear config errors, and the whole recipe end to end."""
from __future__ import annotations

import csv
import io
import json

import pytest
import torch
import yaml
from PIL import Image

import openmusk
from openmusk.cli import main
from openmusk.data.shards import iter_tar_samples, list_shards
from openmusk.pretrain.config import MaskedStageConfig, TokenizerStageConfig, load_config

from pretrain_corpus import TINY

AUG = {"img_size": 64, "crop_scale": [0.5, 1.0]}


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
    assert load_config(cls, tmp_path / "c.yaml") == cls()


def test_help_describes_the_stages(capsys):
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(s in out for s in ("make-shards", "tokenizer", "masked", "contrastive", "filter", "torchrun"))


def test_config_errors_name_the_key_and_file(tmp_path, capsys):
    bad = _write(tmp_path / "bad.yaml", {"train": {"total_step": 3}})
    with pytest.raises(ValueError, match=r"bad.yaml.*unknown key\(s\) \['total_step'\] in train"):
        load_config(MaskedStageConfig, bad)
    assert main(["pretrain", "masked", bad]) == 2
    assert "total_step" in capsys.readouterr().err
    wrong = _write(tmp_path / "wrong.yaml", {"train": {"precision": "fp8"}})
    with pytest.raises(ValueError, match="train.precision must be fp32 or bf16"):
        load_config(TokenizerStageConfig, wrong)
    assert main(["pretrain", "masked"]) == 2
    assert "--example" in capsys.readouterr().err


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


@pytest.mark.slow
def test_recipe_end_to_end_through_the_cli(corpus, tmp_path):
    """tokenizer (teacher by name) -> stage 1 -> stage 2 from stage 1 -> filter, 3 steps each."""
    train = {"total_steps": 3, "warmup_steps": 1, "log_every": 1, "save_every": 1000, "device": "cpu"}
    data = {"global_batch": 8, "shuffle_buffer": 16, "num_workers": 0, "max_text_len": 16, "augment": AUG}
    tok = _write(tmp_path / "tok.yaml", {
        "output_dir": str(tmp_path / "vqkd"), "teacher": "musk:musk_tiny_patch16_32", "teacher_pretrained": None,
        "tokenizer": {"img_size": 64, "embed_dim": 32, "depth": 1, "num_heads": 2, "codebook_size": 32,
                      "codebook_dim": 8},
        "data": {**data, "images": corpus["images"]}, "train": train})
    assert main(["pretrain", "tokenizer", tok]) == 0
    s1 = _write(tmp_path / "s1.yaml", {
        "output_dir": str(tmp_path / "s1"), "model": "musk_tiny_patch16_32", "model_config": TINY,
        "tokenizer": str(tmp_path / "vqkd" / "tokenizer.safetensors"), "min_mask_block": 2,
        "data": {**data, "images": corpus["images"], "texts": corpus["texts"]},
        "train": {**train, "precision": "bf16", "grad_checkpointing": True, "grad_accum": 2}})
    assert main(["pretrain", "masked", s1]) == 0
    s2 = _write(tmp_path / "s2.yaml", {
        "output_dir": str(tmp_path / "s2"), "model": None, "pretrained": str(tmp_path / "s1" / "model.safetensors"),
        "decoder_depth": 1, "data": {**data, "pairs": corpus["pairs"]}, "train": train})
    assert main(["pretrain", "contrastive", s2]) == 0
    flt = _write(tmp_path / "f.yaml", {
        "pairs": corpus["pairs_test"], "output": str(tmp_path / "kept" / "p-%04d.tar"),
        "pretrained": str(tmp_path / "s2" / "model.safetensors"), "drop_fraction": 0.5,
        "max_text_len": 16, "device": "cpu"})
    assert main(["pretrain", "filter", flt]) == 0
    summary = json.loads((tmp_path / "kept" / "filter_summary.json").read_text())
    assert summary["kept"] == summary["scored"] - summary["dropped"] and summary["dropped"] > 0
    # stage 1 ran in bf16 with checkpointing and accumulation; the logs hold 3 finite steps
    for run in ("s1", "s2"):
        rows = list(csv.DictReader(open(tmp_path / run / "log.csv")))
        assert [float(r["step"]) for r in rows] == [1, 2, 3]
        assert all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)
    m1 = openmusk.create_model(pretrained=str(tmp_path / "s1" / "model.safetensors"))
    m2 = openmusk.create_model(pretrained=str(tmp_path / "s2" / "model.safetensors"))
    assert m2.config == m1.config
    assert not torch.equal(m1.vision_head.weight, m2.vision_head.weight)
    assert (tmp_path / "s2" / "tb").is_dir() and any((tmp_path / "s2" / "tb").iterdir())
