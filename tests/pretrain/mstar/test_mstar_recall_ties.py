"""mSTAR stage-1 held-out recall: ties count against the query, so a collapsed model scores 0."""
from __future__ import annotations

import numpy as np

from openmusk.pretrain.mstar.stage1 import retrieval_between_modalities


def test_collapsed_model_does_not_score_perfect_recall() -> None:
    emb = {m: np.ones((8, 4)) for m in ("slide", "report")}  # every patient embeds the same
    present = {m: np.ones(8, bool) for m in emb}
    res = retrieval_between_modalities(emb, present, ks=(1, 5))
    assert res["slide->report"]["R@1"] == 0.0 and res["slide->report"]["R@5"] == 0.0
    good = {"slide": np.eye(8), "report": np.eye(8)}
    assert retrieval_between_modalities(good, present, ks=(1,))["report->slide"]["R@1"] == 1.0
