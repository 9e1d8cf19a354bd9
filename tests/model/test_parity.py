"""The released computation: outputs of the authors' implementation reproduced to < 1e-5 (float32)."""
import json

import pytest
import torch
from safetensors.torch import load_file

import openmusk

TOL = 1e-5


@pytest.fixture(scope="module")
def io(parity_dir):
    return load_file(str(parity_dir / "tiny_musk_io.safetensors"))


@pytest.fixture(scope="module")
def model(parity_dir):
    cfg = openmusk.MuskConfig(**json.loads((parity_dir / "tiny_musk_config.json").read_text()))
    return openmusk.create_model(cfg, pretrained=str(parity_dir / "tiny_musk.safetensors"))


def _maxdiff(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


CALLS = {  # fixture output -> the authors' forward() arguments that made it (fixture README)
    "img_cls_raw": ("image", dict(with_head=False, out_norm=False)),
    "img_cls_head": ("image", dict(with_head=True, out_norm=False)),
    "img_cls_norm": ("image", dict(with_head=False, out_norm=True)),
    "img_emb": ("image", dict(with_head=True, out_norm=True)),
    "img_ms_raw": ("image", dict(ms_aug=True, with_head=False, out_norm=False)),
    "img_ms_norm": ("image", dict(ms_aug=True, with_head=False, out_norm=True)),
    "txt_cls_raw": ("txt", dict(with_head=False, out_norm=False)),
    "txt_emb": ("txt", dict()),
    "txt_edge_cls_raw": ("txt_edge", dict(with_head=False, out_norm=False)),
    "txt_edge_emb": ("txt_edge", dict()),
    "txt_edge_tokens_raw": ("txt_edge", dict(with_head=False, out_norm=False, return_global=False)),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_reference_forward_reproduces_fixture(model, io, name):
    kind, kwargs = CALLS[name]
    with torch.no_grad():
        if kind == "image":
            out = model(image=io["in.img"], **kwargs)[0]
        else:
            ids, pad = io[f"in.{kind}_ids"], io[f"in.{kind}_padding_mask"]
            out = model(text_description=ids, padding_mask=pad, **kwargs)[1]
    assert _maxdiff(out, io[f"out.{name}"]) < TOL


def test_open_clip_style_api_matches_fixture(model, io):
    img, ids, pad = io["in.img"], io["in.txt_ids"], io["in.txt_padding_mask"]
    with torch.no_grad():
        assert _maxdiff(model.encode_image(io["in.img"]), io["out.img_emb"]) < TOL
        assert _maxdiff(model.encode_image(img, head=False, normalize=False), io["out.img_cls_raw"]) < TOL
        assert _maxdiff(model.encode_image(img, head=False, normalize=False, multiscale=True), io["out.img_ms_raw"]) < TOL
        assert _maxdiff(model.encode_image(img, head=False, multiscale=True), io["out.img_ms_norm"]) < TOL
        assert _maxdiff(model.encode_image_tokens(img)[:, 0], io["out.img_cls_raw"]) < TOL
        assert _maxdiff(model.encode_text(ids, pad), io["out.txt_emb"]) < TOL
        assert _maxdiff(model.encode_text(ids, pad, head=False, normalize=False), io["out.txt_cls_raw"]) < TOL
        eids, epad = io["in.txt_edge_ids"], io["in.txt_edge_padding_mask"]
        assert _maxdiff(model.encode_text_tokens(eids, epad), io["out.txt_edge_tokens_raw"]) < TOL
        assert _maxdiff(model.forward_tokens(input_ids=eids, padding_mask=epad), io["out.txt_edge_tokens_raw"]) < TOL


def test_multiscale_with_head_is_single_scale_head(model, io):
    """The reference applies the head to the first D values (the scale-1 CLS) only."""
    with torch.no_grad():
        ms = model(image=io["in.img"], ms_aug=True, with_head=True, out_norm=True)[0]
        assert _maxdiff(ms, io["out.img_emb"]) < TOL
        assert _maxdiff(model.encode_image(io["in.img"], multiscale=True), io["out.img_emb"]) < TOL


def test_similarity_uses_exp_logit_scale(model, io):
    logits = model.similarity(io["out.img_emb"], io["out.txt_emb"])
    cos = io["out.img_emb"] @ io["out.txt_emb"].t()
    expected = torch.exp(model.logit_scale.detach()) * cos
    assert torch.allclose(logits, expected, atol=1e-6)
    assert not torch.allclose(logits, model.logit_scale.detach() * cos)


def test_fixture_config_accepted_and_inferred_from_checkpoint(parity_dir):
    raw = json.loads((parity_dir / "tiny_musk_config.json").read_text())
    cfg = openmusk.MuskConfig(**raw)
    assert cfg == openmusk.get_config("musk_tiny_patch16_32")
    inferred = openmusk.config_from_checkpoint(str(parity_dir / "tiny_musk.safetensors"))
    assert inferred == cfg
    with pytest.raises(ValueError, match="unknown key 'embed_dimm' for MuskConfig.*did you mean 'embed_dim'"):
        openmusk.MuskConfig.from_dict({"embed_dimm": 3})
    with pytest.raises(ValueError, match="key 'depth' expects int, got 'two'"):
        openmusk.MuskConfig.from_dict({"depth": "two"})
