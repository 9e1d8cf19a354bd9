"""Parity with the authors' released pretraining code (MUSK v1.0.0): losses and gradients of stage 1
(MIM + MLM) and stage 2 (CLIP + 0.1 x decoder MLM), and their block masks, from the vectors that
``tools/make_pretrain_vectors.py`` made by running their code (tests/pretrain/vectors/)."""
from __future__ import annotations

import json
import sys
import math
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from make_pretrain_vectors import fill  # noqa: E402  (the one weights rule, shared with the vectors)

from openmusk.model import Musk, MuskConfig
from openmusk.pretrain.contrastive import ContrastiveAlignment
from openmusk.pretrain.masked import MaskedModelling
from openmusk.pretrain.masking import block_mask, mlm_labels
from openmusk.pretrain.vqkd import VQKD, VQKDConfig

VECTORS = Path(__file__).parent / "vectors"
RTOL = 1e-5
STAGE2_RENAME = {"beit3.": "model.beit3.", "vl_decoder.": "decoder.blocks.", "vision_head": "model.vision_head",
                 "language_head": "model.language_head", "logit_scale": "model.logit_scale"}
STAGE2_UNUSED = ("mim_head.weight", "mim_head.bias")   # modeling_finetune.py:80, never used


def load(name: str) -> tuple[dict[str, torch.Tensor], dict]:
    path = VECTORS / f"{name}.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    return load_file(str(path)), meta


def fill_as_authors(module: torch.nn.Module, vec: dict[str, torch.Tensor], rename: dict[str, str],
                    unused: tuple[str, ...] = ()) -> dict:
    """Fill ``module`` by the authors' tensor names; every tensor their model had must be found,
    except ``unused`` ones (in their model, never in their loss)."""
    ours = dict(module.named_parameters())
    with torch.no_grad():
        for key in (k for k in vec if k.startswith("sum.")):
            theirs = key[4:]
            if theirs in unused:
                continue
            name = theirs
            for a, b in rename.items():
                name = name.replace(a, b)
            assert name in ours, f"the authors' {theirs} has no counterpart {name}"
            ours[name].copy_(fill(theirs, tuple(ours[name].shape)))
            assert math.isclose(ours[name].double().sum().item(), vec[key].item(), rel_tol=1e-9, abs_tol=1e-9)
    return ours


def tiny_musk(meta: dict) -> Musk:
    c = meta["config"]
    return Musk(MuskConfig(embed_dim=c["dim"], num_heads=c["heads"], ffn_dim=c["ffn"], depth=c["layers"],
                           img_size=c["img_size"], patch_size=c["patch_size"], vocab_size=c["vocab"])).eval()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


def check_grads(params: dict, vec: dict, names: list[str], rename: dict[str, str]) -> None:
    for theirs in names:
        name = theirs
        for a, b in rename.items():
            name = name.replace(a, b)
        g = params[name].grad
        if f"rows.{theirs}" in vec:
            g = g[vec[f"rows.{theirs}"]]
        want = vec[f"grad.{theirs}"]
        assert g.shape == want.shape, theirs
        assert rel(g, want) < RTOL, f"gradient of {theirs}: relative error {rel(g, want):.2e}"


def test_stage1_losses_and_gradients_equal_the_authors():
    vec, meta = load("stage1")
    model = tiny_musk(meta)
    tok = VQKD(VQKDConfig(img_size=model.config.img_size, patch_size=16, embed_dim=16, depth=1,
                          num_heads=2, decoder_depth=1, codebook_size=meta["config"]["codes"], codebook_dim=8))
    obj = MaskedModelling(model, tok)
    params = fill_as_authors(obj, vec, {"beit3.": "model.beit3."})
    labels = mlm_labels(vec["in.input_ids"], vec["in.masked_ids"])
    # the vectors exercise the rule: some selected positions were kept or replaced, and are not scored
    changed = vec["in.masked_ids"] != vec["in.input_ids"]
    assert bool((changed & (vec["in.masked_ids"] != 64001)).any())
    out = obj(image=vec["in.image"], vision_mask=vec["in.image_mask"], masked_ids=vec["in.masked_ids"],
              padding_mask=vec["in.padding_mask"], mlm_labels=labels, mim_ids=vec["in.image_ids"])
    out["loss"].backward()
    assert math.isclose(out["mim_loss"].item(), vec["out.loss_mim"].item(), rel_tol=RTOL)
    # their MIM vector comes from their forward's lines without its bf16 cast; their forward as it
    # is (bf16 model, bf16 image) gives the same loss up to bf16 rounding
    assert math.isclose(out["mim_loss"].item(), vec["out.loss_mim_bf16_forward"].item(), rel_tol=0.03)
    assert math.isclose(out["mlm_loss"].item(), vec["out.loss_mlm"].item(), rel_tol=RTOL)
    assert math.isclose(out["loss"].item(), vec["out.loss"].item(), rel_tol=RTOL)
    check_grads(params, vec, meta["grad_names"], {"beit3.": "model.beit3."})


def test_stage2_losses_and_gradients_equal_the_authors():
    vec, meta = load("stage2")
    model = tiny_musk(meta)
    obj = ContrastiveAlignment(model)          # defaults: 4 blocks x 16 heads, weight 0.1, masked CLIP text
    params = fill_as_authors(obj, vec, STAGE2_RENAME, STAGE2_UNUSED)
    out = obj(image=vec["in.image"], input_ids=vec["in.input_ids"], padding_mask=vec["in.padding_mask"],
              masked_ids=vec["in.masked_ids"], mlm_labels=mlm_labels(vec["in.input_ids"], vec["in.masked_ids"]))
    out["loss"].backward()
    assert math.isclose(out["clip_loss"].item(), vec["out.ct_loss"].item(), rel_tol=RTOL)
    assert math.isclose(0.1 * out["mlm_loss"].item(), vec["out.mlm_loss_weighted"].item(), rel_tol=RTOL)
    assert math.isclose(out["loss"].item(), vec["out.loss"].item(), rel_tol=RTOL)
    check_grads(params, vec, meta["grad_names"], STAGE2_RENAME)
    # the authors never clamp the logit scale: a step past ln 100 stays there
    with torch.no_grad():
        model.logit_scale.fill_(5.0)
    obj.after_step()
    assert model.logit_scale.item() == 5.0
    model.logit_scale.data.fill_(math.log(1 / 0.07))
    # the option clip_text="clean" scores the clean caption instead: equal to CLIP computed here
    clean = ContrastiveAlignment(model, clip_text="clean", mlm_weight=0.0)
    with torch.no_grad():
        got = clean(image=vec["in.image"], input_ids=vec["in.input_ids"], padding_mask=vec["in.padding_mask"],
                    masked_ids=vec["in.masked_ids"])["loss"]
        img = torch.nn.functional.normalize(model.vision_head(model.encode_image_tokens(vec["in.image"])[:, 0]), dim=-1)
        txt = model.encode_text_tokens(vec["in.input_ids"], vec["in.padding_mask"])[:, 0]
        txt = torch.nn.functional.normalize(model.language_head(txt), dim=-1)
        logits = img @ txt.T / 0.07
        want = (torch.nn.functional.cross_entropy(logits, torch.arange(3))
                + torch.nn.functional.cross_entropy(logits.T, torch.arange(3))) / 2
    assert math.isclose(got.item(), want.item(), rel_tol=1e-5)
    assert not math.isclose(got.item(), vec["out.ct_loss"].item(), rel_tol=1e-3)


def test_block_masks_equal_the_authors_for_the_same_python_random_draws():
    vec, meta = load("block_masks")
    seeds = range(meta["seeds"])
    theirs = np.unpackbits(vec["masks"].numpy(), axis=1)[:, :576].astype(bool)
    ours = np.stack([block_mask(24, 230, random.Random(s), min_num=16, max_num=100).flatten() for s in seeds])
    assert np.array_equal(ours, theirs)
    # and the statistics of numpy-drawn masks match theirs (count, never above 230, 230 almost always)
    rng = np.random.default_rng(0)
    counts = np.array([block_mask(24, 230, rng).sum() for _ in range(200)])
    assert counts.max() <= 230 and abs(counts.mean() - theirs.sum(1).mean()) < 3
    assert abs((counts == 230).mean() - (theirs.sum(1) == 230).mean()) < 0.1
