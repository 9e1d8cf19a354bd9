"""bf16 inference cast once: close to float32 (cosine stated), LayerNorms in float32, the encoder
registry uses it for bf16, and a given model is never changed behind the user's back."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import openmusk
from openmusk.model.inference import Float32LayerNorm, cast_for_inference, inference_dtype

COSINE = 0.999   # bf16 cast once vs float32, min over images/texts (measured 0.99993 on the tiny model)


@pytest.fixture(scope="module")
def pair():
    """A tiny random model in float32 and its bf16 inference copy."""
    torch.manual_seed(0)
    ref = openmusk.create_model("musk_tiny_patch16_32").eval()
    return ref, cast_for_inference(copy.deepcopy(ref), "bf16")


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.float().flatten(1), b.float().flatten(1)).min().item()


def test_bf16_cast_once_matches_fp32(pair) -> None:
    ref, fast = pair
    x = torch.randn(6, 3, 32, 32)
    ids, mask = openmusk.get_tokenizer()(["lung adenocarcinoma, papillary", "normal skin", "necrosis"], max_len=100)
    with torch.no_grad():
        for kwargs in ({"head": False, "normalize": False, "multiscale": True}, {}):
            assert _cos(fast.encode_image(x, **kwargs), ref.encode_image(x, **kwargs)) > COSINE
        assert _cos(fast.encode_text(ids, mask), ref.encode_text(ids, mask)) > COSINE
        out = fast.encode_image(x, head=False, normalize=False)
    assert out.dtype == torch.bfloat16 != ref.encode_image(x, head=False, normalize=False).dtype  # really bf16


def test_sensitive_parts_stay_float32(pair) -> None:
    _, fast = pair
    norms = [m for m in fast.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(type(m) is Float32LayerNorm and m.weight.dtype == torch.float32 for m in norms)
    linears = [m for m in fast.modules() if isinstance(m, torch.nn.Linear)]
    assert all(m.weight.dtype == torch.bfloat16 for m in linears)
    assert inference_dtype(fast) == torch.bfloat16 and not fast.training
    with torch.no_grad():   # a float32 feature given to a head is cast on the way in
        assert fast.vision_head(torch.randn(2, fast.config.embed_dim)).dtype == torch.bfloat16


def test_encoder_registry_casts_only_what_it_builds() -> None:
    from openmusk.encoders import load_encoder

    enc = load_encoder("musk", weights="random:musk_tiny_patch16_32", device="cpu", precision="bf16")
    assert inference_dtype(enc.model) == torch.bfloat16
    assert enc.encode_image(torch.randn(2, 3, 32, 32), kind="probe").dtype == torch.float32
    mine = openmusk.create_model("musk_tiny_patch16_32")
    load_encoder("musk", model=mine, device="cpu", precision="bf16")
    assert next(mine.parameters()).dtype == torch.float32
    assert cast_for_inference(mine, "fp32") is mine and inference_dtype(mine) == torch.float32
