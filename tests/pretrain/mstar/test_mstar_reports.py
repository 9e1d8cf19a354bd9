"""mSTAR embeds a report exactly as openmusk.mil does (one long-text embedding), and trains through it."""
from __future__ import annotations

import numpy as np
import torch

from openmusk.model import create_model
from openmusk.pretrain.mstar.model import ReportEncoder
from openmusk.text import embed_reports, get_tokenizer

BODY = ("Gross description: the specimen consists of a right hemicolectomy measuring 24 cm in length with "
        "attached mesentery. Microscopic description: sections show an invasive glandular neoplasm infiltrating "
        "through the muscularis propria into pericolonic adipose tissue, with areas of necrosis and a desmoplastic "
        "stromal reaction. Lymphovascular invasion is identified. Twenty-three lymph nodes are examined, two of "
        "which contain metastatic deposits. The proximal, distal and radial margins are free of tumour. ")
ENDING = "Final diagnosis: moderately differentiated adenocarcinoma, pT3 N1b."
OTHER_ENDING = "Final diagnosis: tubular adenoma with low-grade dysplasia, no carcinoma."


def test_mil_and_mstar_give_the_same_vector_for_a_long_report_whose_ending_matters():
    torch.manual_seed(0)
    musk = create_model("musk_tiny_patch16_384").eval()
    tok = get_tokenizer()
    report = BODY + ENDING
    assert len(tok.encode(BODY, add_special_tokens=False)) > 100  # the diagnosis lies wholly past the first window
    mil_vec = embed_reports([report], musk, tok)[0]
    encoder = ReportEncoder(musk, tok)
    with torch.no_grad():
        mstar_vec = encoder([report])[0].numpy()
    np.testing.assert_allclose(mstar_vec, mil_vec, atol=1e-6, rtol=0)
    assert abs(np.linalg.norm(mstar_vec) - 1) < 1e-5
    # the diagnosis sits past the first 100 tokens, yet changes the vector in both
    with torch.no_grad():
        other = encoder([BODY + OTHER_ENDING])[0].numpy()
    assert float(other @ mstar_vec) < 1 - 1e-4
    np.testing.assert_allclose(embed_reports([BODY + OTHER_ENDING], musk, tok)[0], other, atol=1e-6, rtol=0)


def test_tuned_report_encoder_passes_gradients_to_the_language_side():
    torch.manual_seed(0)
    musk = create_model("musk_tiny_patch16_384").train()
    out = ReportEncoder(musk, get_tokenizer())([BODY + ENDING, "Fibrous stroma."])
    out[:, 0].sum().backward()
    lang, vis = "beit3.encoder.layers.0.self_attn.q_proj.B.weight", "beit3.encoder.layers.0.self_attn.q_proj.A.weight"
    params = dict(musk.named_parameters())
    assert params[lang].grad is not None and params[lang].grad.abs().sum() > 0
    assert params[vis].grad is None or params[vis].grad.abs().sum() == 0
