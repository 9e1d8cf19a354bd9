"""What the parity fixture does not cover, checked against the literal reference implementation."""
import pytest
import torch
import torch.nn.functional as F

import openmusk
from openmusk.model.reference import reference_tokens

TOL = 1e-5


@pytest.fixture(scope="module")
def model(parity_dir):
    return openmusk.create_model(pretrained=str(parity_dir / "tiny_musk.safetensors"))


@pytest.fixture(scope="module")
def sd(model):
    return {k: v.detach() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 32, 32, generator=g)
    ids = torch.randint(4, 64000, (3, 12), generator=g)
    ids[:, 0] = 0
    lengths = torch.tensor([12, 7, 3])
    pad = (torch.arange(12)[None] >= lengths[:, None]).long()
    ids[torch.arange(3), lengths - 1] = 2
    ids = ids.masked_fill(pad.bool(), 1)
    return images, ids, pad


def test_fusion_sequence_matches_reference(model, sd, batch):
    images, ids, pad = batch
    with torch.no_grad():
        ours = model.forward_tokens(images=images, input_ids=ids, padding_mask=pad)
    ref = reference_tokens(sd, model.config, images=images, input_ids=ids, padding_mask=pad)
    assert ours.shape == (3, 5 + 12, 32)
    assert (ours - ref).abs().max() < TOL
    # image and text really attend to each other: fused image tokens differ from image-only ones
    with torch.no_grad():
        alone = model.forward_tokens(images=images)
    assert (ours[:, :5] - alone).abs().max() > 1e-3


def test_masked_patches_use_mask_token(model, sd, batch):
    images = batch[0]
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[0, 1] = mask[1, [0, 3]] = True
    with torch.no_grad():
        ours = model.forward_tokens(images=images, vision_mask=mask)
        plain = model.forward_tokens(images=images)
    ref = reference_tokens(sd, model.config, images=images, vision_mask=mask)
    assert (ours - ref).abs().max() < TOL
    assert (ours[2] - plain[2]).abs().max() < TOL  # no patch masked in sample 2
    assert (ours[0] - plain[0]).abs().max() > 1e-3
    # a masked patch's input no longer matters
    changed = images.clone()
    changed[0, :, :16, 16:] = 5.0  # patch 1 of sample 0
    with torch.no_grad():
        assert torch.allclose(model.forward_tokens(images=changed, vision_mask=mask), ours, atol=1e-6)


def test_packed_text_equals_full_length_computation(model, sd, batch):
    _, ids, pad = batch
    ref = reference_tokens(sd, model.config, input_ids=ids, padding_mask=pad)
    with torch.no_grad():
        cls = model.encode_text(ids, pad, head=False, normalize=False)
        emb = model.encode_text(ids, pad)
    assert (cls - ref[:, 0]).abs().max() < TOL
    expected = F.normalize(ref[:, 0] @ sd["language_head.weight"].t(), dim=-1)
    assert (emb - expected).abs().max() < TOL
    with pytest.raises(ValueError, match="must start with a real token"):
        model.encode_text(ids, torch.ones_like(pad))


def test_bf16_agrees_with_fp32():
    torch.manual_seed(0)
    model = openmusk.create_model("musk_tiny_patch16_384")
    images = torch.randn(2, 3, 384, 384)
    tok = openmusk.get_tokenizer()
    ids, pad = tok(["squamous epithelium over dermis", "lymphocytes in tumour stroma"])
    with torch.no_grad():
        f32 = model.encode_image(images), model.encode_text(ids, pad), model.encode_image(images, head=False, multiscale=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model.encode_image(images), model.encode_text(ids, pad), model.encode_image(images, head=False, multiscale=True)
        bf = model.to(torch.bfloat16)
        cast = bf.encode_image(images), bf.encode_text(ids, pad), bf.encode_image(images, head=False, multiscale=True)
    for a, b, c in zip(f32, auto, cast):
        assert F.cosine_similarity(a, b.float(), dim=-1).min() > 0.99
        assert F.cosine_similarity(a, c.float(), dim=-1).min() > 0.99


def test_grad_checkpointing_gives_identical_gradients():
    torch.manual_seed(0)
    model = openmusk.create_model("musk_tiny_patch16_32").train()
    images = torch.randn(2, 3, 32, 32)

    def grads():
        model.zero_grad()
        model.encode_image(images).sum().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = grads()
    model.set_grad_checkpointing(True)
    ckpt = grads()
    assert len(plain) == len(ckpt) > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, ckpt))


def test_drop_path_acts_in_training_only():
    cfg = openmusk.get_config("musk_tiny_patch16_32")
    cfg.drop_path_rate = 0.5
    torch.manual_seed(0)
    model = openmusk.create_model(cfg)
    images = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        a, b = model.encode_image(images), model.encode_image(images)
        assert torch.equal(a, b)
        model.train()
        assert not torch.allclose(model.encode_image(images), a)


def test_bad_inputs_are_named():
    model = openmusk.create_model("musk_tiny_patch16_32")
    with pytest.raises(ValueError, match="vision_mask has shape"):
        model.forward_tokens(images=torch.randn(1, 3, 32, 32), vision_mask=torch.zeros(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="square"):
        model.encode_image(torch.randn(1, 3, 32, 48), head=False, multiscale=True)
    with pytest.raises(ValueError, match="needs images, input_ids or both"):
        model.forward_tokens()
    with pytest.raises(KeyError, match="musk_tiny_patch16_384"):
        openmusk.create_model("musk_huge")
