"""Training mechanics: YAML config (paths, renamed keys), gradient accumulation equivalence,
resume after interruption."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openmusk.core.config import ConfigError, load_config
from openmusk.eval.vqa import VQATrainConfig, train_vqa
from openmusk.eval.vqa import train as train_module


@pytest.fixture(scope="module")
def small_table(vqa_table: Path) -> Path:
    """32 training questions (8 per answer of two types) of the known-structure set."""
    rows = [json.loads(line) for line in open(vqa_table)]
    keep, per = [], {}
    for r in rows:
        if r["split"] == "train" and r["answer"] in ("yes", "no", "tumour", "stroma"):
            if per.get(r["answer"], 0) < 8:
                per[r["answer"]] = per.get(r["answer"], 0) + 1
                keep.append(r)
    out = vqa_table.parent / "small.jsonl"    # beside the images it names
    out.write_text("".join(json.dumps(r) + "\n" for r in keep))
    return out


def _config(table: Path, out: Path, **kw) -> VQATrainConfig:
    base = dict(data=str(table), output_dir=str(out),
                model="musk_tiny_patch16_384", weights=None, img_size=32, drop_path_rate=0.0,
                question_only=True, max_len=12, epochs=2, batch_size=8, accum_steps=1, lr=1e-3,
                val_split=None, num_workers=0, progress=False, freeze="last_k", last_k=2)
    base.update(kw)
    return VQATrainConfig(**base)


def test_yaml_config_maps_onto_the_dataclass(tmp_path: Path) -> None:
    good = tmp_path / "ok.yaml"
    good.write_text("data: set.jsonl\nepochs: 3\nfreeze: last_k\nlast_k: 2\nweights: null\n")
    cfg = load_config(VQATrainConfig, good)
    assert (cfg.epochs, cfg.freeze, cfg.last_k, cfg.weights, cfg.lr) == (3, "last_k", 2, None, 2e-5)
    assert (cfg.device, cfg.precision) == ("auto", "auto")   # the shared defaults
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: set.jsonl\nepoch: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'epoch'.*did you mean 'epochs'"):
        load_config(VQATrainConfig, bad)
    bad.write_text("epochs: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: missing required key\(s\) \['data'\]"):
        load_config(VQATrainConfig, bad)
    bad.write_text("data: x\nepochs: ten\n")
    with pytest.raises(ConfigError, match=r"key 'epochs' expects int, got 'ten'"):
        load_config(VQATrainConfig, bad)
    with pytest.raises(ValueError, match="freeze must be one of"):
        VQATrainConfig(data="x", freeze="backbone")


def test_relative_paths_resolve_against_the_yaml_and_old_keys_still_work(tmp_path: Path, capsys) -> None:
    (tmp_path / "cfgs").mkdir()
    path = tmp_path / "cfgs" / "run.yaml"
    path.write_text("data: ../sets/vqa.jsonl\nimage_root: images\nout_dir: runs/a\nbf16: true\n"
                    "weights: ckpt/musk.safetensors\n")
    cfg = load_config(VQATrainConfig, path)
    assert Path(cfg.data) == tmp_path / "cfgs" / ".." / "sets" / "vqa.jsonl"
    assert Path(cfg.image_root) == tmp_path / "cfgs" / "images"
    assert Path(cfg.output_dir) == tmp_path / "cfgs" / "runs" / "a"
    assert Path(cfg.weights) == tmp_path / "cfgs" / "ckpt" / "musk.safetensors"
    assert cfg.precision == "bf16"
    err = capsys.readouterr().err
    assert "'out_dir' is now spelled 'output_dir'" in err and "'bf16' is now spelled 'precision'" in err
    path.write_text("data: vqa.jsonl\nbf16: false\nweights: hf_hub:xiangjx/musk\n")
    cfg = load_config(VQATrainConfig, path)
    assert cfg.precision == "fp32" and cfg.weights == "hf_hub:xiangjx/musk"  # hub ids are not paths
    over = load_config(VQATrainConfig, path, {"output_dir": "elsewhere", "precision": "bfloat16"})
    assert over.output_dir == "elsewhere" and over.precision == "bf16"   # overrides: cwd-relative


def _heads(out: Path) -> dict:
    return load_file(str(out / "vqa_head.safetensors"))


def test_gradient_accumulation_equals_the_large_batch(small_table: Path, tmp_path: Path) -> None:
    big = train_vqa(_config(small_table, tmp_path / "big", batch_size=8, accum_steps=1))
    acc = train_vqa(_config(small_table, tmp_path / "acc", batch_size=4, accum_steps=2))
    small = train_vqa(_config(small_table, tmp_path / "small", batch_size=4, accum_steps=1))
    a, b, c = _heads(tmp_path / "big"), _heads(tmp_path / "acc"), _heads(tmp_path / "small")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)
    assert any(not torch.allclose(a[k], c[k], atol=1e-3) for k in a)  # the check can tell
    assert big["train_questions"] == acc["train_questions"] == 32


def test_resume_after_interruption_gives_the_same_model(small_table: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    train_vqa(_config(small_table, tmp_path / "straight"))
    real_save = train_module._save_resume

    def save_then_die(folder, model, opt, sched, epoch, history):
        real_save(folder, model, opt, sched, epoch, history)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_save_resume", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_vqa(_config(small_table, tmp_path / "resumed"))
    assert not (tmp_path / "resumed" / "vqa_head.safetensors").exists()   # nothing looks finished
    monkeypatch.setattr(train_module, "_save_resume", real_save)
    summary = train_vqa(_config(small_table, tmp_path / "resumed"))
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    a, b = _heads(tmp_path / "straight"), _heads(tmp_path / "resumed")
    for k in a:
        torch.testing.assert_close(a[k], b[k])
