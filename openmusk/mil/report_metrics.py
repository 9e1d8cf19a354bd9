"""Report-generation metrics as mSTAR and HistGen report them: BLEU-1..4, METEOR, ROUGE-L.

The scorers are pycocoevalcap's (the COCO caption evaluation code that R2Gen, HistGen and mSTAR
use): corpus-level BLEU with the closest-reference brevity penalty, METEOR 1.5 (Java), ROUGE-L
(LCS F-measure, beta 1.2, averaged over reports). Texts are normalised first by
:func:`clean_report`, the word-level cleaning the generator's vocabulary also uses.
"""
from __future__ import annotations

import re
import shutil
from typing import Sequence

__all__ = ["clean_report", "report_metrics"]


def clean_report(text: str) -> str:
    """Lower case, punctuation as separate ``.``-tokens dropped except sentence ends, single spaces."""
    text = str(text).lower().replace("\n", " ")
    text = re.sub(r"[^a-z0-9.\s-]", " ", text)
    text = re.sub(r"\.(\s|$)", r" . ", text)
    return " ".join(text.split())


def report_metrics(references: Sequence[str], generated: Sequence[str], meteor: bool = True) -> dict[str, float]:
    """BLEU_1..BLEU_4 (corpus), METEOR and ROUGE_L (mean) of generated reports against one reference each."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.rouge.rouge import Rouge

    if len(references) != len(generated) or not references:
        raise ValueError(f"{len(references)} references for {len(generated)} generated reports (need the same, > 0)")
    gts = {i: [clean_report(r) or "."] for i, r in enumerate(references)}
    res = {i: [clean_report(g) or "."] for i, g in enumerate(generated)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"BLEU_{n + 1}": float(b) for n, b in enumerate(bleu)}
    out["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    if meteor:
        if shutil.which("java") is None:
            raise RuntimeError("METEOR (pycocoevalcap) needs Java on the PATH; install a JRE or pass meteor=False")
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        try:
            out["METEOR"] = float(scorer.compute_score(gts, res)[0])
        finally:
            del scorer  # its __del__ ends the Java process
    return out
