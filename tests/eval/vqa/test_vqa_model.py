"""The VQA model: fused forward, pooler and classifier by hand, freezing, optimiser groups, bf16."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import openmusk
from openmusk.eval.vqa import MuskVQA, VQATrainConfig, set_trainable
from openmusk.eval.vqa.train import build_vqa_optimizer


@pytest.fixture()
def vqa_model() -> MuskVQA:
    torch.manual_seed(0)
    cfg = dataclasses.replace(openmusk.get_config("musk_tiny_patch16_384"), img_size=32)
    return MuskVQA(openmusk.create_model(cfg), num_answers=5).eval()


def _inputs(batch: int = 3):
    torch.manual_seed(1)
    ids, mask = openmusk.get_tokenizer()(["is there tissue?", "what colour is the stain?",
                                          "is this tumour or stroma?"][:batch], max_len=12)
    return torch.randn(batch, 3, 32, 32), ids, mask


def test_forward_is_pooler_and_mlp_over_the_fused_first_token(vqa_model: MuskVQA) -> None:
    images, ids, mask = _inputs()
    with torch.no_grad():
        logits = vqa_model(images, ids, mask)
        fused = vqa_model.backbone.forward_tokens(images=images, input_ids=ids, padding_mask=mask)
        assert fused.shape[1] == 1 + 4 + 12                     # CLS + 2x2 patches + question
        p = vqa_model.pooler
        pooled = torch.tanh(F.linear(F.layer_norm(fused[:, 0], (64,), p.norm.weight, p.norm.bias),
                                     p.dense.weight, p.dense.bias))
        fc1, ln, _, fc2 = vqa_model.classifier
        hidden = F.gelu(F.layer_norm(F.linear(pooled, fc1.weight, fc1.bias), (128,), ln.weight, ln.bias))
        expected = F.linear(hidden, fc2.weight, fc2.bias)
    torch.testing.assert_close(logits, expected)
    # the answer depends on the image and on the question
    with torch.no_grad():
        assert not torch.allclose(vqa_model(images.flip(0), ids, mask), logits)
        assert not torch.allclose(vqa_model(images, ids.flip(0), mask.flip(0)), logits)


def test_question_only_control_ignores_images(vqa_model: MuskVQA) -> None:
    images, ids, mask = _inputs()
    control = MuskVQA(vqa_model.backbone, 5, question_only=True).eval()
    with torch.no_grad():
        a = control(None, ids, mask)
        b = control(images, ids, mask)
        text_cls = vqa_model.backbone.forward_tokens(input_ids=ids, padding_mask=mask)[:, 0]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(control.pooler(text_cls[:, None]), control.pooler.activation(
        control.pooler.dense(control.pooler.norm(text_cls))))
    with pytest.raises(ValueError, match="images are required"):
        vqa_model(None, ids, mask)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_freezing_modes(vqa_model: MuskVQA) -> None:
    enc = vqa_model.backbone.beit3.encoder
    heads = _count(vqa_model.heads())
    unused = _count(vqa_model.backbone.vision_head) + _count(vqa_model.backbone.language_head) + 1
    assert set_trainable(vqa_model, "heads") == heads
    assert set_trainable(vqa_model, "last_k", last_k=1) == heads + _count(enc.layers[1]) + \
        _count(enc.layer_norm)
    assert set_trainable(vqa_model, "full") == _count(vqa_model) - unused
    assert not vqa_model.backbone.logit_scale.requires_grad
    with pytest.raises(ValueError, match="last_k must be in 1..2"):
        set_trainable(vqa_model, "last_k", last_k=3)
    with pytest.raises(ValueError, match="freeze mode 'some'"):
        set_trainable(vqa_model, "some")


def test_heads_only_training_leaves_backbone_unchanged(vqa_model: MuskVQA) -> None:
    set_trainable(vqa_model, "heads")
    before = {k: v.clone() for k, v in vqa_model.backbone.state_dict().items()}
    head_before = vqa_model.classifier[-1].weight.clone()
    cfg = VQATrainConfig(data="unused", lr=1e-2, head_lr_scale=1.0)
    opt = build_vqa_optimizer(vqa_model, cfg)
    images, ids, mask = _inputs()
    F.cross_entropy(vqa_model.train()(images, ids, mask), torch.tensor([0, 1, 2])).backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in vqa_model.backbone.state_dict().items())
    assert not torch.equal(head_before, vqa_model.classifier[-1].weight)


def test_layer_decay_and_head_learning_rates(vqa_model: MuskVQA) -> None:
    set_trainable(vqa_model, "full")
    cfg = VQATrainConfig(data="unused", lr=1e-3, layer_decay=0.5, head_lr_scale=10.0)
    opt = build_vqa_optimizer(vqa_model, cfg)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    enc = vqa_model.backbone.beit3.encoder
    depth = 2
    # embeddings: decay^(depth+1); layer i: decay^(depth-i); final norm: 1; heads: head_lr_scale
    assert lr_of[id(vqa_model.backbone.beit3.text_embed.weight)] == pytest.approx(1e-3 * 0.5 ** 3)
    assert lr_of[id(enc.layers[0].ffn.A.fc1.weight)] == pytest.approx(1e-3 * 0.5 ** depth)
    assert lr_of[id(enc.layers[1].ffn.A.fc1.weight)] == pytest.approx(1e-3 * 0.5)
    assert lr_of[id(enc.layer_norm.A.weight)] == pytest.approx(1e-3)
    assert lr_of[id(vqa_model.classifier[0].weight)] == pytest.approx(1e-2)
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay_of[id(vqa_model.classifier[0].weight)] == 0.01
    assert decay_of[id(vqa_model.classifier[0].bias)] == 0.0
    assert id(vqa_model.backbone.vision_head.weight) not in lr_of


def test_bf16_autocast_on_cpu_matches_float32(vqa_model: MuskVQA) -> None:
    from openmusk.core.runtime import autocast

    images, ids, mask = _inputs()
    with torch.no_grad():
        ref = vqa_model(images, ids, mask)
        with autocast("cpu", "bf16"):
            low = vqa_model(images, ids, mask)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, atol=0.05, rtol=0.05)
    vqa_model.train()
    with autocast("cpu", "bf16"):
        loss = F.cross_entropy(vqa_model(images, ids, mask).float(), torch.tensor([0, 1, 2]))
    loss.backward()
    assert torch.isfinite(vqa_model.classifier[0].weight.grad).all()
