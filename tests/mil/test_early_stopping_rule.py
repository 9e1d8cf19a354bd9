"""Early stopping: a validation split that is perfect from the first epoch keeps the LATER tied
epoch (not epoch 0), patience still stops the run, and min_epochs is honoured."""
from __future__ import annotations

import torch

from openmusk.mil.models import MeanPool, MilModel
from openmusk.mil.tasks import ClassificationTask
from openmusk.mil.trainer import FitConfig, fit


def test_ties_keep_the_later_epoch_and_min_epochs_holds(make_bags):
    bags = make_bags(24, dim=8, strength=40.0, n_planted=30)   # trivially separable: val AUC 1 at once
    train, val = bags[:16], bags[16:]
    task = ClassificationTask(["neg", "pos"])
    torch.manual_seed(0)
    model = MilModel(MeanPool(8, 8), 2, "image")
    res = fit(model, train, val, task, FitConfig(epochs=6, patience=3, lr=1e-2, batch_size=4, device="cpu"))
    scores = [h["val_score"] for h in res["history"]]
    assert scores[0] == 1.0 and res["epochs_run"] == 4          # 3 tied epochs after the first: stop
    assert res["best_epoch"] == 3 and res["best_score"] == 1.0  # the last of the tied epochs is kept
    torch.manual_seed(0)
    res = fit(MilModel(MeanPool(8, 8), 2, "image"), train, val, task,
              FitConfig(epochs=8, patience=1, lr=1e-2, batch_size=4, device="cpu", min_epochs=6))
    assert res["epochs_run"] == 6 and res["best_epoch"] == 5
