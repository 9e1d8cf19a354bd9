"""``openmusk embed texts`` embeds a long report whole: the same vector as
:func:`openmusk.text.report.embed_report`, and a report's ending (its diagnosis) counts."""
from __future__ import annotations

import h5py
import numpy as np
import torch

from openmusk.cli import main
from openmusk.model import create_model
from openmusk.text import get_tokenizer
from openmusk.text.report import embed_report

FINDINGS = (
    "Sections of the right ovary show a solid and papillary proliferation of atypical epithelial cells "
    "with slit-like spaces. The nuclei are enlarged, pleomorphic and hyperchromatic with prominent "
    "nucleoli; mitoses are frequent and include atypical forms. Psammoma bodies are scattered through "
    "the tumour and the stroma is desmoplastic. Lymphovascular invasion is identified. The left "
    "fallopian tube shows a serous tubal intraepithelial lesion. The omentum contains multiple tumour "
    "deposits, the largest measuring 2.3 cm. Peritoneal washings are positive for malignant cells. "
    "Immunohistochemistry: WT1 positive, PAX8 positive, p53 aberrant (null pattern), p16 block positive. ")
MALIGNANT = FINDINGS + "DIAGNOSIS: high-grade serous carcinoma of the ovary, FIGO stage IIIC."
BENIGN = FINDINGS + "DIAGNOSIS: reactive changes only; no evidence of malignancy in the examined tissue."
WEIGHTS = "random:musk_tiny_patch16_32"


def test_embed_texts_keeps_the_end_of_a_long_report(tmp_path):
    tok = get_tokenizer()
    assert len(tok.encode(MALIGNANT)) > 100
    # cut to the model's 100 tokens, the two reports are the same text: truncation would hide the diagnosis
    assert torch.equal(tok([MALIGNANT], max_len=100)[0], tok([BENIGN], max_len=100)[0])
    (tmp_path / "reports.txt").write_text(f"{MALIGNANT}\n{BENIGN}\n")
    torch.manual_seed(0)  # random:CONFIG draws its weights from the global generator
    assert main(["embed", "texts", str(tmp_path / "reports.txt"), "--out", str(tmp_path / "r.h5"),
                 "--weights", WEIGHTS, "--quiet"]) == 0
    with h5py.File(tmp_path / "r.h5") as f:
        feats = f["features"][:]
    torch.manual_seed(0)
    model = create_model("musk_tiny_patch16_32")
    ref = np.stack([embed_report(model, tok, MALIGNANT), embed_report(model, tok, BENIGN)])
    assert np.abs(feats - ref).max() < 1e-6
    assert np.allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-5)
    assert float(feats[0] @ feats[1]) < 1 - 1e-4, "a different ending must change the embedding"
