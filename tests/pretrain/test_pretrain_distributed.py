"""2-process torchrun (gloo, CPU) follows the 1-process loss curve; a killed run resumes exactly."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from openmusk.core.config import load_config
from openmusk.pretrain.config import ContrastiveStageConfig, MaskedStageConfig
from openmusk.pretrain.stages import train_contrastive, train_masked
from openmusk.pretrain.vqkd import VQKD, VQKDConfig, save_tokenizer

from pretrain_corpus import TINY

AUG = {"img_size": 64, "crop_scale": [0.5, 1.0]}


def _yaml(path: Path, d: dict) -> Path:
    path.write_text(yaml.safe_dump(d))
    return path


def _contrastive(out, pairs, steps=4, drop_path=0.0, workers=0, save_every=1000) -> dict:
    return {"output_dir": str(out), "model": "musk_tiny_patch16_32", "model_config": TINY,
            "pretrained": None, "drop_path_rate": drop_path, "decoder_depth": 1,
            "data": {"pairs": pairs, "global_batch": 8, "shuffle_buffer": 32, "num_workers": workers,
                     "max_text_len": 16, "augment": AUG},
            "train": {"total_steps": steps, "warmup_steps": 1, "lr": 1e-3, "log_every": 1,
                      "save_every": save_every, "device": "cpu"}}


def _masked(out, corpus, tokenizer, steps=4) -> dict:
    return {"output_dir": str(out), "model": "musk_tiny_patch16_32", "model_config": TINY,
            "drop_path_rate": 0.0, "tokenizer": str(tokenizer), "min_mask_block": 2,
            "data": {"images": corpus["images"], "texts": corpus["texts"], "global_batch": 8,
                     "shuffle_buffer": 32, "num_workers": 0, "max_text_len": 16, "augment": AUG},
            "train": {"total_steps": steps, "warmup_steps": 1, "lr": 1e-3, "log_every": 1,
                      "save_every": 1000, "device": "cpu"}}


def _log(out: Path) -> list[dict]:
    with open(out / "log.csv") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _torchrun(stage: str, cfg: Path, strategy_env: dict | None = None) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(strategy_env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "openmusk", "pretrain", stage, str(cfg)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0 and "exitcode: -6" in r.stderr:
        # a rank aborted inside torch's gloo transport (seen once in ~10 full runs, never reproduced
        # alone): say so, and rerun once, resuming from the run's own checkpoint
        rank0 = [line for line in r.stderr.splitlines() if "[rank0]" in line][-20:]
        print("torchrun: a rank aborted (SIGABRT); rerunning once\n" + "\n".join(rank0), file=sys.stderr)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def _constant_lr(d: dict, strategy: str, steps: int) -> dict:
    d["train"].update(warmup_steps=0, min_lr_ratio=1.0, strategy=strategy, total_steps=steps, save_every=2)
    return d


@pytest.mark.slow
@pytest.mark.parametrize("stage,strategy", [("contrastive", "ddp"), ("masked", "ddp"), ("contrastive", "fsdp")])
def test_two_processes_match_one_process(stage, strategy, corpus, tmp_path):
    """Same global batch, same curve; the FSDP run also stops at step 2 and resumes from its checkpoint."""
    if stage == "contrastive" and strategy == "fsdp":
        make = lambda out, steps=4: _constant_lr(_contrastive(out, corpus["pairs"]), strategy, steps)  # noqa: E731
        cls, run = ContrastiveStageConfig, train_contrastive
    elif stage == "contrastive":
        make = lambda out: _contrastive(out, corpus["pairs"])  # noqa: E731
        cls, run = ContrastiveStageConfig, train_contrastive
    else:
        torch.manual_seed(0)
        tok = save_tokenizer(VQKD(VQKDConfig(img_size=64, embed_dim=32, depth=1, num_heads=2,
                                             codebook_size=32, codebook_dim=8, teacher_dim=8)),
                             tmp_path / "tok.safetensors")
        make = lambda out: _masked(out, corpus, tok)  # noqa: E731
        cls, run = MaskedStageConfig, train_masked
    one = run(load_config(cls, _yaml(tmp_path / "one.yaml", make(tmp_path / "one"))))["history"]
    if strategy == "fsdp":
        _torchrun(stage, _yaml(tmp_path / "two.yaml", make(tmp_path / "two", steps=2)))
        assert torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)["step"] == 2
    _torchrun(stage, _yaml(tmp_path / "two.yaml", make(tmp_path / "two")))
    two = _log(tmp_path / "two")
    keys = [k for k in one[0] if k.endswith(("loss", "acc"))]
    assert len(two) == len(one) == 4 and len(keys) >= 3
    for a, b in zip(one, two):
        for k in keys:
            assert b[k] == pytest.approx(a[k], rel=2e-4, abs=2e-5), (k, a, b)
    # the losses moved: equality is not that of two constant curves
    assert one[-1]["loss"] != pytest.approx(one[0]["loss"], rel=1e-3)
    from safetensors.torch import load_file
    w1, w2 = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert w1.keys() == w2.keys()
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4


class _Kill(RuntimeError):
    pass


def test_killed_run_resumes_to_the_same_state(corpus, tmp_path):
    """Checkpoint every 2 steps, die at step 5, resume (with 2 loader workers): same as uninterrupted."""
    ref = train_contrastive(load_config(ContrastiveStageConfig, _yaml(
        tmp_path / "ref.yaml", _contrastive(tmp_path / "ref", corpus["pairs"], steps=6, drop_path=0.2))))

    def die(step, row, trainer):
        if step == 5:
            raise _Kill("killed at step 5")

    cfg = load_config(ContrastiveStageConfig, _yaml(tmp_path / "run.yaml", _contrastive(
        tmp_path / "run", corpus["pairs"], steps=6, drop_path=0.2, workers=2, save_every=2)))
    with pytest.raises(_Kill):
        train_contrastive(cfg, hooks=[die])
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4 and state["data"]["pairs"]["total"] == 4
    resumed = train_contrastive(cfg)
    assert [r["step"] for r in resumed["history"]] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(ref["history"], resumed["history"]):
        for k in ("loss", "clip_loss", "mlm_loss", "logit_scale", "lr"):
            assert a[k] == b[k], (k, a, b)
    p_ref = dict(ref["trainer"].objective.named_parameters())
    for name, p in resumed["trainer"].objective.named_parameters():
        assert torch.equal(p, p_ref[name]), name
    s_ref, s_res = ref["trainer"].optimizer.state_dict()["state"], resumed["trainer"].optimizer.state_dict()["state"]
    assert all(torch.equal(s_ref[i]["exp_avg_sq"], s_res[i]["exp_avg_sq"]) for i in s_ref)
