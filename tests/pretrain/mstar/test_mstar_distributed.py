"""mSTAR stages 1 and 2 under torchrun (2 gloo processes on CPU, one launch for both stages) follow the
1-process loss curves with the same global batch; killed stages resume to the uninterrupted state; a slide
whose tiles cannot be read is dropped on every rank at the same step."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from openmusk.core.config import config_to_dict
from openmusk.core.io import read_json
from openmusk.pretrain.mstar.config import AggregatorPretrainConfig, SelfTaughtConfig
from openmusk.pretrain.mstar.model import STAGE1_WEIGHTS
from openmusk.pretrain.mstar.stage1 import pretrain_aggregator
from openmusk.pretrain.mstar.stage2 import PATCH_ENCODER_WEIGHTS, self_taught
from openmusk.pretrain.mstar.synthetic import make_trimodal_cohort, write_h5_features

pytestmark = pytest.mark.slow

TILE = 32  # tiles of musk_tiny_patch16_32: 32-d single-scale features, 32 px input
LAUNCH = """import sys
from openmusk.core.config import load_config
from openmusk.pretrain.mstar.config import AggregatorPretrainConfig, SelfTaughtConfig
from openmusk.pretrain.mstar.stage1 import pretrain_aggregator
from openmusk.pretrain.mstar.stage2 import self_taught
pretrain_aggregator(load_config(AggregatorPretrainConfig, sys.argv[1]), progress=False)
self_taught(load_config(SelfTaughtConfig, sys.argv[2]), progress=False)
"""


def _stage1_config(cohort, out) -> AggregatorPretrainConfig:
    return AggregatorPretrainConfig(table=str(cohort.table), rna_table=str(cohort.rna_table), output_dir=str(out),
                                    aggregator="abmil", dropout=0.0, hidden_dim=32, embed_dim=16,
                                    arch="musk_tiny_patch16_384", weights="random", n_genes=30, rna_hidden=[32],
                                    max_patches=0, batch_size=7, epochs=3, lr=2e-3, warmup_epochs=0,
                                    val_fraction=0.25, device="cpu", precision="fp32")


def _slides(root) -> str:
    """Five 96 px noise 'slides' (PNG) with 3 x 3 tile grids and 32-d features; the last one is corrupt."""
    rng = np.random.default_rng(0)
    rows = ["case_id,slide,features"]
    coords = np.array([(x * TILE, y * TILE) for y in range(3) for x in range(3)])
    for i in range(5):
        png = root / f"s{i}.png"
        if i < 4:
            Image.fromarray(rng.integers(0, 256, (3 * TILE, 3 * TILE, 3), dtype=np.uint8)).save(png)
        else:
            png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not a png")
        write_h5_features(root / f"s{i}.h5", rng.normal(size=(9, 32)).astype(np.float32), coords, patch_size=TILE)
        rows.append(f"s{i},{png.name},s{i}.h5")
    (root / "slides.csv").write_text("\n".join(rows) + "\n")
    return str(root / "slides.csv")


def _stage2_config(stage1_dir, table, out) -> SelfTaughtConfig:
    # 3 slides a step over 2 ranks: shares of 2 and 1
    return SelfTaughtConfig(stage1_dir=str(stage1_dir), table=table, output_dir=str(out), arch="musk_tiny_patch16_32",
                            weights="random", multiscale=False, img_size=TILE, patches_per_slide=3, context_patches=4,
                            slides_per_step=3, steps=4, lr=1e-3, warmup_steps=0, ema_momentum=0.5, log_every=1,
                            save_every=2, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """Both stages in this process: the reference runs."""
    root = tmp_path_factory.mktemp("mstar_ddp")
    cohort = make_trimodal_cohort(root / "cohort", n_patients=28, n_patches=8, dim=32, n_genes=60, seed=1)
    cfg1 = _stage1_config(cohort, root / "one1")
    (root / "slides").mkdir()
    cfg2 = _stage2_config(root / "one1", _slides(root / "slides"), root / "one2")
    return root, cfg1, pretrain_aggregator(cfg1, progress=False), cfg2, self_taught(cfg2, progress=False)


def test_two_processes_follow_the_one_process_loss_curves(one_process):
    root, cfg1, one1, cfg2, one2 = one_process
    two = root / "two"
    two.mkdir()
    (two / "stage1.yaml").write_text(yaml.safe_dump({**config_to_dict(cfg1), "output_dir": str(two / "s1")}))
    # stage 2 of both runs starts from the same (1-process) stage 1, so its comparison is stage 2's alone
    (two / "stage2.yaml").write_text(yaml.safe_dump({**config_to_dict(cfg2), "output_dir": str(two / "s2")}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--no-python",
           sys.executable, "-c", LAUNCH, str(two / "stage1.yaml"), str(two / "stage2.yaml")]
    r = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # stage 1: batch 7 over 2 ranks, shares of 4 and 3 (+ a padded row), embeddings gathered with their gradient
    m1 = read_json(two / "s1" / "metrics.json")
    assert m1["world_size"] == 2
    np.testing.assert_allclose([h["loss"] for h in m1["history"]], [h["loss"] for h in one1["history"]], rtol=1e-5)
    _same_weights(root / "one1" / STAGE1_WEIGHTS, two / "s1" / STAGE1_WEIGHTS, free=_SHIFT_BIAS)
    # stage 2: the corrupt slide is dropped once, at the same step, whichever rank read it
    m2 = read_json(two / "s2" / "metrics.json")
    assert m2["world_size"] == 2 and m2["n_slides"] == one2["n_slides"] == 4
    assert len(m2["problems"]) == len(one2["problems"]) == 1 and "s4: tile read failed" in m2["problems"][0]
    assert m2["problems"] == one2["problems"]
    np.testing.assert_allclose([h["loss"] for h in m2["history"]], [h["loss"] for h in one2["history"]], rtol=1e-4)
    assert len(m2["history"]) == 4
    _same_weights(root / "one2" / PATCH_ENCODER_WEIGHTS, two / "s2" / PATCH_ENCODER_WEIGHTS)


def test_killed_stages_resume_to_the_same_state(one_process, monkeypatch):
    import openmusk.mil.trainer as trainer

    root, cfg1, one1, cfg2, one2 = one_process
    save = trainer.save_resume

    def save_then_die(path, state):
        save(path, state)
        if state.get("epoch") == 2 or state.get("step") == 2:
            raise KeyboardInterrupt("killed after a checkpoint")

    killed1 = dataclasses.replace(cfg1, output_dir=str(root / "killed1"))
    killed2 = dataclasses.replace(cfg2, output_dir=str(root / "killed2"))
    monkeypatch.setattr(trainer, "save_resume", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain_aggregator(killed1, progress=False)
    with pytest.raises(KeyboardInterrupt):
        self_taught(killed2, progress=False)
    monkeypatch.setattr(trainer, "save_resume", save)
    resumed1 = pretrain_aggregator(killed1, progress=False)
    resumed2 = self_taught(killed2, progress=False)
    assert [h["loss"] for h in resumed1["history"]] == [h["loss"] for h in one1["history"]]
    _same_weights(root / "one1" / STAGE1_WEIGHTS, root / "killed1" / STAGE1_WEIGHTS, exact=True)
    assert [h["loss"] for h in resumed2["history"]] == [h["loss"] for h in one2["history"]]
    assert resumed2["problems"] == one2["problems"] and resumed2["n_slides"] == one2["n_slides"]
    _same_weights(root / "one2" / PATCH_ENCODER_WEIGHTS, root / "killed2" / PATCH_ENCODER_WEIGHTS, exact=True)


# ABMIL's attention-score bias shifts every score of a bag equally, which the softmax ignores: its true gradient
# is 0, so across process counts (other summation order) Adam turns float noise into steps of up to lr each
_SHIFT_BIAS = {"aggregator.attention_c.bias": 2e-3 * 9}  # lr x 9 steps (3 epochs x 3 batches)


def _same_weights(a_file, b_file, exact=False, free=None):
    a, b = load_file(str(a_file)), load_file(str(b_file))
    assert a.keys() == b.keys()
    for k in a:
        atol = (free or {}).get(k, 0 if exact else 1e-5)
        torch.testing.assert_close(b[k], a[k], rtol=0 if exact else 1e-4, atol=atol)
