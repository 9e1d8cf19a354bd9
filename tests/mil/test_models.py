"""Aggregators: padding invariance, attention normalisation, aggregator weights by name."""
from __future__ import annotations

import pytest
import torch

from openmusk.mil.models import ABMIL, MeanPool, MilModel, TransMIL, build_aggregator, load_aggregator, save_aggregator


@pytest.mark.parametrize("cls", [ABMIL, MeanPool, TransMIL])
@torch.no_grad()
def test_padded_batch_equals_single_bags(cls):
    torch.manual_seed(0)
    agg = cls(16, 32).eval()
    a, b = torch.randn(7, 16), torch.randn(12, 16)
    batch = torch.zeros(2, 12, 16)
    batch[0, :7], batch[1] = a, b
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, :7], mask[1] = True, True
    emb, att = agg(batch, mask)
    ea, aa = agg(a)
    eb, ab = agg(b)
    torch.testing.assert_close(emb[0], ea[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(emb[1], eb[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(att[0, :7], aa[0], atol=1e-6, rtol=1e-5)
    assert float(att[0, 7:].abs().sum()) == 0.0
    torch.testing.assert_close(att.sum(1), torch.ones(2))


def test_abmil_structure_is_the_papers():
    agg = ABMIL(2048)
    assert agg.fc[0].out_features == 512 and agg.attention_a[0].out_features == 384
    assert agg.fc[2].p == 0.25 and agg.attention_c.out_features == 1
    model = MilModel(agg, 2)
    assert isinstance(model.head, torch.nn.Linear) and model.head.in_features == 512


def test_transmil_runs_on_large_bag_linear_memory():
    agg = TransMIL(32, 64).eval()
    with torch.no_grad():
        emb, att = agg(torch.randn(5000, 32))  # full attention would need 5001^2 x heads floats
    assert emb.shape == (1, 64) and torch.isfinite(att).all()
    assert float(att.sum()) == pytest.approx(1.0, abs=1e-5) and float(att.min()) >= 0


def test_aggregator_roundtrip_and_report(tmp_path):
    torch.manual_seed(0)
    src = build_aggregator("abmil", 16, 32, 8)
    save_aggregator(src, tmp_path / "agg.safetensors")
    dst = build_aggregator("abmil", 16, 32, 8)
    rep = load_aggregator(dst, tmp_path / "agg.safetensors", strict=True)
    assert not rep["missing"] and not rep["mismatched"] and len(rep["matched"]) == len(src.state_dict())
    for k, v in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[k], v)
    # a wider model: fc mismatches by shape and is reported, the attention layers still load
    other = build_aggregator("abmil", 24, 32, 8)
    rep = load_aggregator(other, tmp_path / "agg.safetensors")
    assert rep["mismatched"] == ["fc.0.weight: file (32, 16) vs model (32, 24)"]
    with pytest.raises(ValueError, match="do not match exactly"):
        load_aggregator(build_aggregator("abmil", 24, 32, 8), tmp_path / "agg.safetensors", strict=True)
    with pytest.raises(ValueError, match="no tensor matches"):
        load_aggregator(build_aggregator("transmil", 7, 16), tmp_path / "agg.safetensors")
    # a whole MilModel file: the aggregator.* keys are picked out
    from openmusk.mil.cv import save_model
    save_model(MilModel(src, 3), tmp_path / "model.safetensors")
    assert len(load_aggregator(dst, tmp_path / "model.safetensors", strict=True)["matched"]) == len(src.state_dict())


def test_milmodel_modalities_and_errors():
    batch = {"features": torch.randn(2, 5, 16), "mask": torch.ones(2, 5, dtype=torch.bool),
             "report": torch.randn(2, 8)}
    for modality in ("image", "text", "both"):
        out = MilModel(ABMIL(16, 32, 8), 3, modality, report_dim=8)(batch)
        assert out["logits"].shape == (2, 3)
        assert (out["attention"] is None) == (modality == "text")
    with pytest.raises(ValueError, match="report_dim"):
        MilModel(ABMIL(16), 2, "both")
    with pytest.raises(ValueError, match="needs report embeddings"):
        MilModel(ABMIL(16, 32, 8), 2, "both", report_dim=8)({"features": batch["features"]})
    with pytest.raises(ValueError, match=r"features must be \(N, D\)"):
        ABMIL(16)(torch.randn(16))


def test_tokens_are_what_each_aggregator_pools_or_its_final_tokens():
    torch.manual_seed(0)
    agg = TransMIL(16, 32).eval()
    x = torch.randn(23, 16)
    captured = {}
    handle = agg.norm.register_forward_hook(lambda module, inputs, output: captured.update(out=output.clone()))
    with torch.no_grad():
        agg(x)
    handle.remove()
    with torch.no_grad():
        tokens = agg.tokens(x)
    torch.testing.assert_close(tokens, captured["out"][0, 1:24])  # the module's own normed tokens, CLS dropped
    x2 = x.clone()
    x2[5] += 3.0  # TransMIL tokens carry slide context: another patch changes patch 0's token
    with torch.no_grad():
        assert not torch.allclose(agg.tokens(x2)[0], tokens[0])
    for cls in (ABMIL, MeanPool):
        pool = cls(16, 32).eval()
        with torch.no_grad():
            torch.testing.assert_close(pool.tokens(x), pool.fc(x))
            torch.testing.assert_close(pool.tokens(x2)[0], pool.tokens(x)[0])  # no context: patch 0 unchanged
    with pytest.raises(ValueError, match="one bag"):
        agg.tokens(torch.randn(2, 5, 16))
