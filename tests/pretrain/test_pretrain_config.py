"""Pretraining configs go through the one loader; the VQ-KD teacher comes from the encoder registry."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from openmusk.core.config import ConfigError, load_config
from openmusk.data.augment import AugmentConfig
from openmusk.pretrain.config import (ContrastiveStageConfig, DataConfig, FilterConfig, MaskedStageConfig,
                                      ShardsConfig, TokenizerStageConfig)
from openmusk.pretrain.trainer import TrainConfig, training_precision
from openmusk.pretrain.vqkd import VQKDConfig, resolve_teacher

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# class, a path key (None: it has none), a typed key and a value of the wrong type
CASES = [(DataConfig, "images", "global_batch", "many"),
         (TokenizerStageConfig, "output_dir", "teacher_args", "x"),
         (MaskedStageConfig, "tokenizer", "min_mask_block", "big"),
         (ContrastiveStageConfig, "pretrained", "decoder_depth", 1.5),
         (FilterConfig, "pairs", "batch_size", [1]),
         (ShardsConfig, "source", "maxcount", "lots"),
         (AugmentConfig, "stain_statistics", "p_vflip", "often"),
         (TrainConfig, None, "total_steps", "ten"),
         (VQKDConfig, None, "depth", "deep")]


def _yaml(tmp_path, data):
    p = tmp_path / "cfg" / "run.yaml"
    p.parent.mkdir(exist_ok=True)
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("cls, path_key, typed_key, bad", CASES, ids=[c[0].__name__ for c in CASES])
def test_config_is_strict_typed_and_resolves_paths(cls, path_key, typed_key, bad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=rf"run.yaml: unknown key '{typed_key}x'.*did you mean '{typed_key}'"):
        load_config(cls, _yaml(tmp_path, {f"{typed_key}x": 1}))
    with pytest.raises(ConfigError, match=rf"run.yaml: key .{typed_key}. expects .*, got {re.escape(repr(bad))}"):
        load_config(cls, _yaml(tmp_path, {typed_key: bad}))
    if path_key is not None:
        cfg = load_config(cls, _yaml(tmp_path, {path_key: "here/file"}))
        assert getattr(cfg, path_key) == str(tmp_path / "cfg" / "here" / "file")
        # on the command line a relative path stays relative to the working directory
        assert getattr(load_config(cls, None, {path_key: "here/file"}), path_key) == "here/file"


def test_hub_ids_and_nested_sections_resolve_as_they_should(tmp_path):
    cfg = load_config(TokenizerStageConfig, _yaml(tmp_path, {
        "teacher_pretrained": "hf_hub:xiangjx/musk",
        "data": {"images": "shards/img-{0000..0003}.tar", "augment": {"stain_statistics": "stain.json"}}}))
    assert cfg.teacher_pretrained == "hf_hub:xiangjx/musk"
    assert cfg.data.images == str(tmp_path / "cfg" / "shards" / "img-{0000..0003}.tar")
    assert cfg.data.augment.stain_statistics == str(tmp_path / "cfg" / "stain.json")


def test_training_precision_and_device_defaults_come_from_the_runtime(monkeypatch):
    cfg = TrainConfig()
    assert (cfg.device, cfg.precision) == ("auto", "auto")
    assert TrainConfig(precision="bfloat16").precision == "bf16"
    with pytest.raises(ValueError, match="fp16 is not supported"):
        TrainConfig(precision="fp16")
    assert training_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert training_precision("auto", torch.device("cuda", 0)) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert training_precision("auto", torch.device("cuda", 0)) == "fp32"   # never fp16 without loss scaling
    assert FilterConfig().precision == "auto" and FilterConfig().device == "auto"


class TinyViT(nn.Module):
    """A timm-like ViT: ``forward_features`` gives (B, 1 + P, D) with a CLS prefix token."""

    num_prefix_tokens = 1

    def __init__(self, dim: int = 12):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 8, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[:, 0]


def imagenet_transform(img):
    """PIL -> (3, 48, 48) with ImageNet's mean and std (a timm-style transform)."""
    from openmusk.data.transforms import center_crop, resize_shorter_side, to_tensor

    t = to_tensor(center_crop(resize_shorter_side(img.convert("RGB"), 48), 48))
    return (t - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def tiny_vit():
    """A user factory (``module:function``) returning ``(nn.Module, transform)``."""
    torch.manual_seed(7)
    return TinyViT(), imagenet_transform


def test_a_user_factory_teaches_in_its_own_input_convention():
    teacher = resolve_teacher(f"{__name__}:tiny_vit", grid=4)
    assert teacher.img_size == 48
    assert torch.allclose(teacher.mean.flatten(), torch.tensor(IMAGENET_MEAN), atol=1e-6)
    assert torch.allclose(teacher.std.flatten(), torch.tensor(IMAGENET_STD), atol=1e-6)
    x = torch.rand(2, 3, 64, 64) * 2 - 1                         # MUSK-normalised, the tokenizer's size
    module, _ = tiny_vit()
    y = F.interpolate(x, size=(48, 48), mode="bicubic", align_corners=False).clamp(-1, 1) * 0.5 + 0.5
    y = (y - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = module.forward_features(y)[:, 1:]                # 6 x 6 patches, CLS dropped
        expected = F.interpolate(tokens.transpose(1, 2).reshape(2, 12, 6, 6), size=(4, 4), mode="bilinear",
                                 align_corners=False).flatten(2).transpose(1, 2)
    assert torch.allclose(teacher(x), expected, atol=1e-5)
    assert not any(p.requires_grad for p in teacher.fn.__self__.model.parameters())


def test_musk_teacher_by_name_is_the_registry_musk_encoder():
    from openmusk.model import create_model

    torch.manual_seed(0)
    teacher = resolve_teacher("musk:musk_tiny_patch16_32", grid=2, pretrained=None, device="cpu")
    torch.manual_seed(0)
    model = create_model("musk_tiny_patch16_32")
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(teacher(x), model.encode_image_tokens(x)[:, 1:], atol=1e-6)
    assert teacher.img_size == 32 and teacher.same_normalization
    assert teacher.fn.__self__.spec == {"encoder": "musk", "weights": "random", "arch": "musk_tiny_patch16_32"}


def test_an_encoder_without_patch_tokens_is_refused():
    with pytest.raises(ValueError, match="'color_stats' gives no per-patch tokens"):
        resolve_teacher("color_stats", grid=4)


def test_module_encoder_patches_of_a_feature_map():
    from openmusk.encoders import ModuleEncoder

    class Cnn(nn.Module):
        def forward_features(self, x):
            return x[:, :, ::8, ::8]          # (B, 3, H/8, W/8)

    enc = ModuleEncoder(Cnn(), imagenet_transform, name="cnn")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(enc.encode_patches(x), x[:, :, ::8, ::8].flatten(2).transpose(1, 2))
