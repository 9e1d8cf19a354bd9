"""Presets: the authors' and the paper's recipes, each value with its source; full sizes on the meta device."""
from __future__ import annotations

import pytest
import torch

from openmusk.cli import main
from openmusk.core.config import config_to_dict, load_config
from openmusk.pretrain.config import ContrastiveStageConfig, MaskedStageConfig, TokenizerStageConfig
from openmusk.pretrain.presets import PRESETS, preset_config
from openmusk.pretrain.vqkd import VQKD, vqkd_config

CLASSES = {"tokenizer": TokenizerStageConfig, "masked": MaskedStageConfig, "contrastive": ContrastiveStageConfig}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_names_a_source_for_each_value(name, tmp_path, capsys):
    preset = PRESETS[name]
    cls = CLASSES[preset.stage]
    cfg = preset_config(cls, name)
    assert all(src.startswith(("code", "paper")) for _, src in preset.values.values())
    # --example prints a loadable config equal to the preset
    assert main(["pretrain", preset.stage, "--preset", name, "--example"]) == 0
    (tmp_path / "p.yaml").write_text(capsys.readouterr().out)
    loaded = config_to_dict(load_config(cls, tmp_path / "p.yaml"))   # relative paths: against the file
    assert _unroot(loaded, f"{tmp_path}/") == config_to_dict(cfg)


def _unroot(d, root: str):
    if isinstance(d, dict):
        return {k: _unroot(v, root) for k, v in d.items()}
    return d.removeprefix(root) if isinstance(d, str) else d


def test_preset_then_file_then_set(tmp_path):
    (tmp_path / "s.yaml").write_text("train:\n  lr: 3.0e-4\ndata:\n  images: shards/img\n")
    cfg = preset_config(MaskedStageConfig, "musk-large-stage1", tmp_path / "s.yaml", {"train.warmup_steps": 7})
    assert (cfg.train.lr, cfg.train.warmup_steps, cfg.train.betas) == (3e-4, 7, (0.9, 0.999))
    assert cfg.data.images == str(tmp_path / "shards" / "img") and cfg.max_mask_block == 100
    with pytest.raises(ValueError, match="configures `pretrain masked`"):
        preset_config(ContrastiveStageConfig, "musk-large-stage1", stage="contrastive")


def test_code_and_paper_presets_differ_where_the_sources_do():
    code, paper = (preset_config(ContrastiveStageConfig, n) for n in ("musk-large-stage2", "musk-large-stage2-paper"))
    assert (code.text_mask_ratio, paper.text_mask_ratio) == (0.15, 0.3)
    s1, s1p = (preset_config(MaskedStageConfig, n) for n in ("musk-large-stage1", "musk-large-stage1-paper"))
    assert (s1.train.lr, s1p.train.lr, s1.train.betas, s1p.train.betas) == (1e-4, 1.5e-3, (0.9, 0.999), (0.9, 0.95))


def test_full_size_parameter_counts_on_the_meta_device():
    from openmusk.model import Musk, get_config
    from openmusk.pretrain.contrastive import CrossAttentionDecoder
    cfg = preset_config(MaskedStageConfig, "musk-large-stage1")
    tcfg = preset_config(TokenizerStageConfig, "musk-large-tokenizer").tokenizer
    scfg = preset_config(ContrastiveStageConfig, "musk-large-stage2")
    with torch.device("meta"):
        model = Musk(get_config(cfg.model))
        tok = VQKD(tcfg)
        dec = CrossAttentionDecoder(model.config.embed_dim, scfg.decoder_heads, scfg.decoder_depth)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # the released MUSK checkpoint: 675,188,737 parameters (the paper's 675M)
    assert count(model) == 675_188_737
    # the authors' tokenizer: ViT-B/16 encoder (12 x 7,087,872) and a 3 x 768 decoder
    d = 768
    block = (3 * d * d + 3 * d) + (d * d + d) + (2 * d * 4 * d + 4 * d + d) + 4 * d
    assert count(tok.encoder) == 12 * block and count(tok.decoder) == 3 * block
    assert tok.codebook.embed.shape == (8192, 32) and tcfg == vqkd_config("vqkd_base_decoder_3x768x12",
                                                                          teacher_dim=tcfg.teacher_dim)
    # the stage-2 decoder at 1024 wide: 4 x AttnBlock(1024, 16) of mask_decoder.py
    w = 1024
    attn_block = 3 * 2 * w + (w * 2 * w) + w * w + (w * w + w) + (w * 4 * w + 4 * w) + (4 * w * w + w)
    assert count(dec) == 4 * attn_block == 50_380_800
