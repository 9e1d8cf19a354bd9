"""The encoder adapters: MUSK's two feature kinds, open_clip- and timm-style modules, and the
split worker/batch transform giving exactly the plain transform's features."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from openmusk.data.transforms import get_transform
from openmusk.encoders import MuskEncoder, ModuleEncoder, OpenClipEncoder, encode_dataset
from openmusk.model import create_model


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("musk_tiny_patch16_384")


def test_musk_encoder_gives_the_papers_two_feature_kinds(tiny):
    enc = MuskEncoder(tiny, name="tiny")
    x = torch.randn(2, 3, 384, 384)
    emb, probe = enc.encode_image(x, "embed"), enc.encode_image(x, "probe")
    assert torch.allclose(emb, tiny.encode_image(x, head=True, normalize=True), atol=1e-6)
    ref = tiny.encode_image(x, head=False, normalize=True, multiscale=True)
    assert probe.shape == (2, 2 * tiny.config.embed_dim) and torch.allclose(probe, ref, atol=1e-6)
    ids, pad = enc.tokenizer(["tumour", "stroma"], max_len=100)
    assert torch.allclose(enc.encode_text(["tumour", "stroma"]), tiny.encode_text(ids, pad), atol=1e-6)
    # CPU bfloat16 autocast (the GPU path's precision) stays close to float32
    bf = MuskEncoder(tiny, name="tiny", precision="bf16").encode_image(x, "embed")
    assert bf.dtype == torch.float32 and torch.nn.functional.cosine_similarity(bf, emb).min() > 0.98
    assert (enc.dim("embed"), enc.dim("probe")) == (emb.shape[1], probe.shape[1])
    single = MuskEncoder(tiny, name="tiny", multiscale=False)
    assert single.dim("probe") == single.encode_image(x, "probe").shape[1] == tiny.config.embed_dim
    with pytest.raises(ValueError, match="feature kind"):
        enc.encode_image(x, "logits")

def test_adapters_for_open_clip_and_timm_style_models():
    class ClipLike(torch.nn.Module):
        """The open_clip interface: encode_image(tensor), encode_text(token tensor)."""

        def __init__(self):
            super().__init__()
            self.visual, self.text = torch.nn.Linear(12, 4), torch.nn.Embedding(10, 4)

        def encode_image(self, x):
            return self.visual(x.flatten(1))

        def encode_text(self, tokens):
            return self.text(tokens).mean(1)

    m = ClipLike()
    enc = OpenClipEncoder(m, preprocess=None, tokenizer=lambda t: torch.tensor([[len(s) % 10] for s in t]))
    x = torch.randn(3, 3, 2, 2)
    assert torch.allclose(enc.encode_image(x), torch.nn.functional.normalize(m.encode_image(x), dim=-1))
    assert enc.has_text and enc.encode_text(["ab", "abc"]).shape == (2, 4)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    t = ModuleEncoder(net, transform=None)
    assert not t.has_text and torch.allclose(t.encode_image(x, "probe").norm(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match="num_classes=0"):
        ModuleEncoder(torch.nn.Conv2d(3, 5, 1), transform=None).encode_image(x)
    assert ModuleEncoder(net, transform=get_transform(8)).dim() == 5     # measured through the transform

def test_split_transform_pipeline_gives_exactly_the_plain_transform_features(tiny, tmp_path, real_dir):
    from openmusk.data.datasets import ImageFolderDataset

    img = Image.open(real_dir / "he_tumor_1000px.png").convert("RGB")
    (tmp_path / "t").mkdir()
    for i in range(3):  # odd sizes: resize and crop both matter
        img.crop((i * 90, 0, i * 90 + 200 + 17 * i, 230)).save(tmp_path / "t" / f"{i}.png")
    enc = MuskEncoder(tiny, name="tiny")
    ds = ImageFolderDataset(tmp_path)
    fs = encode_dataset(enc, ds, batch_size=2, num_workers=2, progress=False)
    plain = torch.stack([enc.transform(ds.load_image(i)) for i in range(3)])
    staged = enc.batch_transform(torch.stack([enc.worker_transform(ds.load_image(i)) for i in range(3)]))
    assert torch.equal(plain, staged)
    every_value = torch.arange(256, dtype=torch.uint8).view(1, 16, 16, 1).expand(1, 16, 16, 3)
    from openmusk.data.transforms import normalize
    assert torch.equal(enc.batch_transform(every_value),
                       normalize(every_value.permute(0, 3, 1, 2).float().div(255)))
    assert np.allclose(fs.features, enc.encode_image(plain).numpy(), atol=1e-6)

