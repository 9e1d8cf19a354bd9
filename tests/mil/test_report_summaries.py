"""Report modes end to end through `mil train`: a label carried by words buried after MUSK's 100-token
window is invisible to `raw-windows` truncated to one window, found by `summary` (a summariser that
keeps them) and `summary+windows`; a shuffled-report control stays at chance. Also the clinical
report template."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from openmusk.mil import MilConfig, train
from openmusk.text.summarize import SummaryConfig, summarize_reports

FILLER = ["The specimen was received in formalin.", "Sections were submitted in cassettes.",
          "Gross description follows.", "The margins were inked.", "Multiple levels were examined.",
          "Immunostains were reviewed with controls.", "The tissue measures several centimetres.",
          "Clinical history was provided by the surgeon."]
BURIED = {"high": "The tumour shows lymphovascular invasion and nodal metastases.",
          "low": "The tumour shows no invasion and nodes are free."}


class KeepTumourSentences:
    """An extractive 'summariser': keeps the report's sentences about the tumour."""

    name = "keyword-extractor"

    def __call__(self, prompt: str) -> str:
        report = prompt.split("Report:")[1].split("Summary:")[0]
        return " ".join(s.strip() + "." for s in report.split(".") if "tumour" in s.lower())


@pytest.fixture(scope="module")
def buried(tmp_path_factory):
    """48 patients; 18 boilerplate sentences (>100 tokens) then the one sentence that carries the label."""
    from openmusk.text import get_tokenizer

    root = tmp_path_factory.mktemp("buried")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(48):
        label = ("low", "high")[i % 2]
        rows.append({"patient_id": f"P{i:02d}", "slide_id": f"S{i:02d}", "label": label,
                     "report": " ".join(rng.choice(FILLER, 18)) + " " + BURIED[label],
                     "site": ("breast", "lung")[int(rng.random() < 0.5)]})
    tok = get_tokenizer()
    tumour = set(tok.encode("tumour")[1:-1])
    for r in rows:  # the label sentence really lies beyond the first window of 98 pieces
        ids, _ = tok.encode_chunks(r["report"], max_len=100)
        assert len(ids) >= 2 and not tumour & set(ids[0].tolist()) and tumour <= set(ids[1].tolist())
    pd.DataFrame(rows).to_csv(root / "cohort.csv", index=False)
    shuffled = pd.DataFrame(rows)
    shuffled["report"] = shuffled["report"].to_numpy()[rng.permutation(len(rows))]
    shuffled.to_csv(root / "shuffled.csv", index=False)
    summarize_reports([r["report"] for r in rows], KeepTumourSentences(), "prognosis", root / "cohort.summaries.csv")
    return root


def _run(root, name, cohort="cohort.csv", **kw) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the random report encoder is drawn from the global generator
    cfg = MilConfig(cohort=str(root / cohort), output_dir=str(root / name), modality="text",
                    report_model="musk_tiny_patch16_32", report_weights=None, report_cache=str(root / "emb.h5"),
                    summary=SummaryConfig(model="keyword-extractor", cache=str(root / "cohort.summaries.csv")),
                    epochs=8, patience=50, folds=3, bootstrap=20, fusion_hidden=32, batch_size=8, lr=1e-2,
                    device="cpu", **kw)
    return train(cfg, log=lambda s: None, progress=False)


def test_summaries_find_the_buried_words_truncation_cannot(buried):
    def auc(m):
        return m["pooled"]["auc"]["value"]

    truncated = auc(_run(buried, "truncated", report_mode="raw-windows", report_max_windows=1))
    run = _run(buried, "summary", report_mode="summary", subgroups=["site"], baselines=["site"])
    summary = auc(run)
    both = auc(_run(buried, "summary_windows", report_mode="summary+windows", report_max_windows=1))
    shuffled = auc(_run(buried, "shuffled", cohort="shuffled.csv", report_mode="summary"))
    print(f"AUC truncated {truncated:.3f} summary {summary:.3f} summary+windows {both:.3f} shuffled {shuffled:.3f}")
    assert abs(truncated - 0.5) < 0.15, truncated
    assert summary > 0.9 and both > 0.9, (summary, both)
    assert abs(shuffled - 0.5) < 0.2, shuffled
    html = (buried / "summary" / "report.html").read_text()
    assert "data:image/png;base64," in html and "report mode summary" in html and "Subgroups" in html
    assert [g["group"] for g in run["subgroups"]] == ["breast", "lung"] and all(g["auc"] > 0.9 for g in run["subgroups"])
    base = run["baselines"][0]  # site is noise: the clinical-only model is near chance, the report model wins
    assert abs(base["auc"] - 0.5) < 0.25 and base["model_vs_baseline"]["pvalue"] < 0.01


def test_truncated_windows_equal_the_plain_first_window_embedding():
    from openmusk.model import create_model
    from openmusk.text import get_tokenizer
    from openmusk.text.report import embed_report_mode, report_embeddings

    torch.manual_seed(0)
    model, tok = create_model("musk_tiny_patch16_32"), get_tokenizer()
    text = " ".join(FILLER * 3) + " " + BURIED["high"]
    ids, pad = tok.encode_chunks(text, max_len=100)
    assert len(ids) >= 2
    with torch.no_grad():
        first = model.encode_text(ids[:1], pad[:1], head=True, normalize=True)[0]
        got = report_embeddings(model, tok, [text], max_windows=1)[0]
        full = report_embeddings(model, tok, [text])[0]
    assert torch.allclose(got, first, atol=1e-5) and not torch.allclose(full, first, atol=1e-3)
    both = embed_report_mode("summary+windows", [text], ["short summary."], model, tok, max_windows=1)
    assert both.shape == (1, 2 * first.numel()) and np.allclose(both[0, first.numel():], first.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="one summary per report"):
        embed_report_mode("summary", [text], None, model, tok)


def test_clinical_template_renders_columns_and_names_what_is_missing(tmp_path):
    from openmusk.mil.clinical_text import MISSING, load_template, render_reports

    df = pd.DataFrame({"patient_id": ["a", "b", "a"], "body_site": ["trunk", "arm", "trunk"],
                       "breslow": ["[1 : 2[", None, "[1 : 2["], "ulceration": ["YES", "NO", "YES"],
                       "age": ["[60:62[", "[40:42[", "[60:62["], "sex": [1, 2, 1], "melanoma_history": ["NO", None, "NO"]})
    texts = render_reports(df, "clinical_melanoma")
    assert set(texts) == {"a", "b"} and "trunk" in texts["a"] and "[1 : 2[" in texts["a"]
    assert f"Breslow thickness {MISSING}" in texts["b"]
    own = tmp_path / "t.txt"
    own.write_text("Stage {stage}, site {body_site}.")
    with pytest.raises(KeyError, match=r"row 2: report template needs column\(s\) \['stage'\]"):
        render_reports(df, own)
    assert "{body_site}" in load_template("clinical_melanoma")
