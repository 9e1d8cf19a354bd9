"""Loading by the released names: wrappers, prefixes, errors, image-size interpolation, hub cache."""
import math
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import openmusk
from openmusk.model.checkpoint import CheckpointMismatchError


@pytest.fixture(scope="module")
def tiny_sd(parity_dir):
    return load_file(str(parity_dir / "tiny_musk.safetensors"))


def _tiny():
    return openmusk.Musk(openmusk.get_config("musk_tiny_patch16_32"))


def test_one_error_names_missing_extra_and_misshaped(tmp_path, tiny_sd):
    sd = dict(tiny_sd)
    del sd["beit3.encoder.layers.1.ffn.B.fc2.bias"]
    sd["beit3.extra.weight"] = torch.zeros(3)
    sd["vision_head.weight"] = torch.zeros(32, 31)
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointMismatchError) as err:
        openmusk.load_checkpoint(_tiny(), str(path))
    msg = str(err.value)
    assert "missing:     beit3.encoder.layers.1.ffn.B.fc2.bias" in msg
    assert "unexpected:  beit3.extra.weight" in msg
    assert "mis-shaped:  vision_head.weight: checkpoint [32, 31] vs model [32, 32]" in msg
    assert str(path) in msg
    # the same findings as a report, without loading any weight (what `openmusk info` prints)
    report = openmusk.model.check_checkpoint(path)
    assert not report.ok and report.config == openmusk.get_config("musk_tiny_patch16_32")
    assert report.missing == ["beit3.encoder.layers.1.ffn.B.fc2.bias"]
    assert report.unexpected == ["beit3.extra.weight"]
    assert report.mismatched == [("vision_head.weight", (32, 31), (32, 32))]
    good = openmusk.model.check_checkpoint(openmusk.save_checkpoint(_tiny(), tmp_path / "good.safetensors"))
    assert good.ok and good.n_parameters == sum(p.numel() for p in _tiny().parameters())


@pytest.mark.parametrize("wrap", ["model", "module", None])
def test_wrapped_and_prefixed_torch_checkpoints_load(tmp_path, tiny_sd, wrap):
    sd = {f"module.{k}": v for k, v in tiny_sd.items()} if wrap is None else {wrap: dict(tiny_sd)}
    path = tmp_path / "ckpt.pth"
    torch.save(sd, path)
    model = openmusk.load_checkpoint(_tiny(), str(path))
    for k, v in model.state_dict().items():
        assert torch.equal(v, tiny_sd[k]), k


def test_meta_model_receives_checkpoint_tensors_and_dtype(parity_dir, tiny_sd):
    model = openmusk.create_model(pretrained=str(parity_dir / "tiny_musk.safetensors"), dtype=torch.bfloat16)
    assert not any(p.is_meta for p in model.parameters())
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert torch.equal(model.vision_head.weight, tiny_sd["vision_head.weight"].bfloat16())


def test_save_round_trip_keeps_names_and_config(tmp_path):
    model = openmusk.create_model("musk_tiny_patch16_384")
    path = openmusk.save_checkpoint(model, tmp_path / "out.safetensors")
    loaded = openmusk.create_model(pretrained=str(path))
    assert loaded.config == model.config  # read from metadata: heads are not in the shapes
    assert set(load_file(str(path))) == set(model.state_dict())
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        assert torch.allclose(loaded.encode_image(x), model.encode_image(x), atol=1e-6)


def _cubic(t: float, a: float = -0.75) -> float:
    t = abs(t)
    if t <= 1:
        return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
    if t < 2:
        return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
    return 0.0


def _bicubic_brute_force(grid: np.ndarray, out: int) -> np.ndarray:
    """Bicubic resize, align_corners=False, edge-clamped, written out point by point."""
    n = grid.shape[0]
    scale = n / out
    res = np.zeros((out, out) + grid.shape[2:])
    for i in range(out):
        for j in range(out):
            y, x = (i + 0.5) * scale - 0.5, (j + 0.5) * scale - 0.5
            y0, x0 = math.floor(y), math.floor(x)
            acc = 0.0
            for m in range(-1, 3):
                for k in range(-1, 3):
                    w = _cubic(y - (y0 + m)) * _cubic(x - (x0 + k))
                    acc = acc + w * grid[min(max(y0 + m, 0), n - 1), min(max(x0 + k, 0), n - 1)]
            res[i, j] = acc
    return res


def test_loading_at_another_image_size_interpolates_positions(parity_dir, tiny_sd):
    cfg = openmusk.get_config("musk_tiny_patch16_32")
    cfg.img_size = 64  # 2x2 -> 4x4 patches
    model = openmusk.create_model(cfg, pretrained=str(parity_dir / "tiny_musk.safetensors"))
    table = model.beit3.encoder.embed_positions.A.weight.detach()
    old = tiny_sd["beit3.encoder.embed_positions.A.weight"]
    assert table.shape == (3 + 16, 32)
    assert torch.equal(table[:3], old[:3])
    expected = _bicubic_brute_force(old[3:].double().numpy().reshape(2, 2, 32), 4).reshape(16, 32)
    assert np.abs(table[3:].numpy() - expected).max() < 1e-5
    # the model runs at the new size and differs from a model left at random positions
    with torch.no_grad():
        assert model.encode_image(torch.randn(2, 3, 64, 64)).shape == (2, 32)


def _populate_hub_cache(cache: str, repo: str, src: str) -> str:
    """Lay out a huggingface_hub cache entry the way hf_hub_download leaves one."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = os.path.join(cache, "models--" + repo.replace("/", "--"))
    snap = os.path.join(root, "snapshots", commit)
    os.makedirs(snap)
    os.makedirs(os.path.join(root, "refs"))
    with open(os.path.join(root, "refs", "main"), "w") as f:
        f.write(commit)
    dst = os.path.join(snap, "model.safetensors")
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        fo.write(fi.read())
    return dst


def test_hub_source_resolves_offline_from_populated_cache(tmp_path, parity_dir, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cache = str(tmp_path / "hub")
    dst = _populate_hub_cache(cache, "xiangjx/musk", str(parity_dir / "tiny_musk.safetensors"))
    assert openmusk.resolve_weights("hf_hub:xiangjx/musk", cache_dir=cache) == dst
    assert openmusk.weights_available("hf_hub:xiangjx/musk", cache_dir=cache)
    # hf_hub_download's own offline resolution finds the same file
    from huggingface_hub import hf_hub_download
    assert os.path.samefile(hf_hub_download("xiangjx/musk", "model.safetensors", cache_dir=cache), dst)
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    model = openmusk.create_model(openmusk.get_config("musk_tiny_patch16_32"))
    openmusk.load_checkpoint(model, "hf_hub:xiangjx/musk", cache_dir=cache)
    assert torch.equal(model.logit_scale, load_file(dst)["logit_scale"])


def test_missing_hub_weights_explain_how_to_get_them(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HOME", str(tmp_path))   # no authors' cache (~/.cache/model.safetensors) either
    with pytest.raises(openmusk.WeightsNotFoundError) as err:
        openmusk.resolve_weights("hf_hub:xiangjx/musk", cache_dir=str(tmp_path))
    assert "hf auth login" in str(err.value) and "accept the licence" in str(err.value)
    assert not openmusk.weights_available("hf_hub:xiangjx/musk", cache_dir=str(tmp_path))
    with pytest.raises(openmusk.WeightsNotFoundError, match="nope.safetensors"):
        openmusk.resolve_weights(str(tmp_path / "nope.safetensors"))
