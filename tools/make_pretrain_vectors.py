"""Make the pretraining parity vectors by running the authors' released pretraining code (MUSK v1.0.0).

Runs OUTSIDE openmusk's environment, in one that can import the authors' checkout::

    python3 -m venv /tmp/authors_env
    /tmp/authors_env/bin/pip install /path/to/torch-2.13.0+cpu*.whl      # torch first (CPU)
    /tmp/authors_env/bin/pip install --no-deps timm==0.9.16 torchscale==0.2.0 torchvision==0.15.2
    /tmp/authors_env/bin/pip install einops fairscale safetensors numpy requests \
        torchmetrics==1.4.0 lightning-utilities tensorboardX nltk rouge pillow
    mkdir /tmp/musk_v1 && git --git-dir=<MUSK clone> archive v1.0.0 pretrain | tar -x -C /tmp/musk_v1
    /tmp/authors_env/bin/python -W ignore tools/make_pretrain_vectors.py --authors /tmp/musk_v1

(torchvision 0.15.2 is installed without its compiled ops, which only CUDA-linked wheels carry:
timm imports its Python transforms, and nothing here calls an op of it.) Each part runs in its own
process because both stages ship modules of the same names (utils, modeling_utils, torchscale).

Writes into ``tests/pretrain/vectors/``:
* ``stage1.safetensors`` / ``stage2.safetensors``: inputs (``in.*``), losses (``out.*``) and the
  gradients (``grad.<name>``; large matrices as the rows listed in ``rows.<name>``) of the authors'
  stage-1 and stage-2 losses on tiny models whose weights come from :func:`fill` (by tensor name, so
  the test rebuilds identical weights without storing them; ``sum.<name>`` checks that it did);
* ``block_masks.safetensors``: masks of the authors' ``MaskingGenerator`` at MUSK's size (24x24,
  230 patches, blocks 16..100) after ``random.seed(s)``, s = 0..N-1, bit-packed;
* ``README.json``: what was run, with versions.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parents[1] / "tests" / "pretrain" / "vectors"
TINY = dict(img_size=64, patch_size=16, dim=32, heads=2, ffn=64, layers=2, vocab=64010, codes=64)
MASK_ID, BATCH, TEXT_LEN = 64001, 3, 12
ROW_LIMIT = 4096        # gradients of larger tensors are stored as selected rows


def fill(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Deterministic weights by tensor name: LayerNorm-like weights near 1, biases near 0,
    matrices uniform with std 1/sqrt(fan_in); the test has the same rule."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    u = torch.rand(shape, generator=g, dtype=torch.float64) - 0.5
    if name == "logit_scale":
        return torch.full(shape, math.log(1 / 0.07), dtype=torch.float64).float()
    if len(shape) == 1 and name.endswith("weight"):
        return (1 + 0.2 * u).float()
    if len(shape) == 1:
        return (0.1 * u).float()
    fan_in = shape[-1] if len(shape) == 2 else int(np.prod(shape[1:]))
    return (u * math.sqrt(12.0 / fan_in)).float()


def fill_module(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Overwrite every parameter of ``model`` with :func:`fill`; per-tensor sums as a checksum."""
    sums = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(fill(name, tuple(p.shape)))
            sums[f"sum.{name}"] = p.double().sum().reshape(1)
    return sums


def text_batch(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Captions of different lengths: <s> ids </s> <pad>..., and the BERT-corrupted copy made by the
    authors' rule (Bernoulli 0.15 on non-special positions; 80% <mask>, 10% random in [0, 64001],
    10% kept); one <mask> per row and one random replacement are forced so that the batch
    exercises every case."""
    ids = torch.full((BATCH, TEXT_LEN), 1, dtype=torch.long)
    pad = torch.ones(BATCH, TEXT_LEN, dtype=torch.long)
    for i, n in enumerate((TEXT_LEN, 9, 6)):
        ids[i, 0], ids[i, n - 1] = 0, 2
        ids[i, 1:n - 1] = torch.randint(4, 64000, (n - 2,), generator=gen)
        pad[i, :n] = 0
    masked = ids.clone()
    special = (ids <= 3)
    pick = (torch.rand(ids.shape, generator=gen) < 0.3) & ~special
    action = torch.rand(ids.shape, generator=gen)
    masked[pick & (action < 0.8)] = MASK_ID
    rand = pick & (action >= 0.9)
    masked[rand] = torch.randint(0, 64002, (int(rand.sum()),), generator=gen)
    masked[:, 1] = MASK_ID
    masked[0, 2] = 777           # a random replacement: a changed position that is not scored
    return {"in.input_ids": ids, "in.masked_ids": masked, "in.padding_mask": pad}


def grads(model: torch.nn.Module, names: list[str], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of ``names``; tensors with more than ROW_LIMIT rows keep the rows ``idx``."""
    params = dict(model.named_parameters())
    out = {}
    for n in names:
        g = params[n].grad.detach().clone()
        if g.ndim >= 1 and g.shape[0] > ROW_LIMIT:
            out[f"rows.{n}"] = idx.clone()
            g = g[idx]
        out[f"grad.{n}"] = g.contiguous()
    return out


def _row_index(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Vocabulary rows whose gradients are stored: every id of the batch plus a few fixed ones."""
    ids = torch.cat([batch["in.input_ids"].flatten(), batch["in.masked_ids"].flatten(),
                     torch.tensor([5, 100, 1000, 30000, 64000, 64009])])
    return torch.unique(ids)


def stage1(authors: Path) -> None:
    """MIM + MLM of ``1_mask_pretrain/modeling_musk.py`` on a tiny MUSK."""
    root = authors / "pretrain" / "1_mask_pretrain"
    sys.path.insert(0, str(root))
    from modeling_musk import MUSK
    from torchscale.architecture.config import EncoderConfig
    from datasets.masking_generator import MaskingGenerator

    t = TINY
    args = EncoderConfig(img_size=t["img_size"], patch_size=t["patch_size"], vocab_size=t["vocab"], multiway=True,
                         layernorm_embedding=False, normalize_output=True, no_output_layer=True,
                         drop_path_rate=0.0, encoder_embed_dim=t["dim"], encoder_attention_heads=t["heads"],
                         encoder_ffn_embed_dim=t["ffn"], encoder_layers=t["layers"])
    model = MUSK(args, v_vocab_size=t["codes"], vocab_size=t["vocab"], mask_token=MASK_ID).float().eval()
    sums = fill_module(model)
    gen = torch.Generator().manual_seed(1)
    grid = t["img_size"] // t["patch_size"]
    random.seed(3)
    masking = MaskingGenerator((grid, grid), num_masking_patches=7, min_num_patches=2, max_num_patches=5)
    batch = {"in.image": torch.rand(BATCH, 3, t["img_size"], t["img_size"], generator=gen) * 2 - 1,
             "in.image_mask": torch.from_numpy(np.stack([masking() for _ in range(BATCH)])).flatten(1).long(),
             "in.image_ids": torch.randint(0, t["codes"], (BATCH, grid * grid), generator=gen),
             **text_batch(gen)}
    # MLM: the authors' forward itself (text keys only)
    ret = model({"text_input_ids": batch["in.input_ids"], "text_masked_ids": batch["in.masked_ids"],
                 "text_padding_mask": batch["in.padding_mask"]}, "cpu")
    # MIM: their forward hard-casts the image to bf16 (modeling_musk.py:131), which an fp32 model
    # cannot take; these lines are modeling_musk.py:132-142 with the image left in fp32.
    bool_masked_pos = batch["in.image_mask"].bool()
    outputs = model.beit3(visual_tokens=batch["in.image"], vision_masked_position=bool_masked_pos)
    vision_states = outputs["encoder_out"][:, 1:, :]
    logits_mim = model.mim_head(vision_states[bool_masked_pos])
    loss_mim = model.loss_fn(logits_mim, batch["in.image_ids"][bool_masked_pos])
    loss = loss_mim + ret["loss_mlm"]            # engine_for_pretraining.py:65-67: sum of the losses
    loss.backward()
    # their forward unchanged, on a bf16 copy of the model as run_pretraining.py:144 runs it: the same
    # computation as the lines above up to bf16 rounding (the test checks it within 3%)
    import copy
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    with torch.no_grad():
        ret16 = bf16({"image": batch["in.image"], "image_mask": batch["in.image_mask"],
                      "image_labels": batch["in.image_ids"][bool_masked_pos]}, "cpu")
    names = ["mim_head.weight", "mlm_head.weight", "beit3.vision_embed.mask_token",
             "beit3.vision_embed.proj.weight", "beit3.text_embed.weight",
             "beit3.encoder.layers.0.self_attn.q_proj.A.weight",
             "beit3.encoder.layers.1.ffn.B.fc2.weight", "beit3.encoder.layer_norm.B.weight"]
    out = {**batch, **sums, **grads(model, names, _row_index(batch)),
           "out.loss_mim": loss_mim.detach().reshape(1), "out.loss_mlm": ret["loss_mlm"].detach().reshape(1),
           "out.loss": loss.detach().reshape(1),
           "out.loss_mim_bf16_forward": ret16["loss_mim"].float().reshape(1),
           "out.acc_mlm": torch.tensor([ret["accuracy_mlm"]], dtype=torch.float64)}
    _save(out, "stage1", {"config": t, "mask_id": MASK_ID, "grad_names": names})


def stage2(authors: Path) -> None:
    """CLIP + 0.1 x decoder MLM of ``2_contrastive_pretrain`` (RetrievalMaskDecoderHandler)."""
    import types
    root = authors / "pretrain" / "2_contrastive_pretrain"
    sys.path.insert(0, str(root))
    # engine_for_finetuning imports the dataset module (torchvision datasets) only for a tokenizer
    # helper; the handler we run needs none of it.
    stub = types.ModuleType("dataset.datasets")
    stub.get_sentencepiece_model_for_beit3 = None
    sys.modules["dataset"], sys.modules["dataset.datasets"] = types.ModuleType("dataset"), stub
    from engine_for_finetuning import RetrievalMaskDecoderHandler
    from modeling_finetune import MUSK
    from torchscale.architecture.config import EncoderConfig

    t = TINY
    args = EncoderConfig(img_size=t["img_size"], patch_size=t["patch_size"], vocab_size=t["vocab"], multiway=True,
                         layernorm_embedding=False, normalize_output=True, no_output_layer=True,
                         drop_path_rate=0.0, encoder_embed_dim=t["dim"], encoder_attention_heads=t["heads"],
                         encoder_ffn_embed_dim=t["ffn"], encoder_layers=t["layers"])
    model = MUSK(args).float().eval()
    sums = fill_module(model)
    gen = torch.Generator().manual_seed(2)
    batch = {"in.image": torch.rand(BATCH, 3, t["img_size"], t["img_size"], generator=gen) * 2 - 1,
             **text_batch(gen)}
    res = RetrievalMaskDecoderHandler().train_batch(
        model, image=batch["in.image"], language_tokens=batch["in.masked_ids"],
        text_input_ids=batch["in.input_ids"].clone(), padding_mask=batch["in.padding_mask"], image_id=None)
    res["loss"].backward()
    names = ["logit_scale", "vision_head.weight", "language_head.weight", "mlm_head.weight", "mlm_head.bias",
             "vl_decoder.0.attn.to_q.weight", "vl_decoder.0.attn.to_kv.weight", "vl_decoder.3.mlp.fc2.weight",
             "vl_decoder.2.norm_context.weight", "beit3.encoder.layers.1.self_attn.k_proj.B.weight",
             "beit3.encoder.layers.0.ffn.A.fc1.weight", "beit3.text_embed.weight"]
    out = {**batch, **sums, **grads(model, names, _row_index(batch)),
           "out.loss": res["loss"].detach().reshape(1), "out.ct_loss": res["ct_loss"].detach().reshape(1),
           "out.mlm_loss_weighted": res["mlm_loss"].detach().reshape(1),
           "out.mlm_acc": res["mlm_acc"].detach().reshape(1)}
    _save(out, "stage2", {"config": t, "mask_id": MASK_ID, "decoder_blocks": 4, "decoder_heads": 16,
                          "grad_names": names})


def masks(authors: Path, n: int = 200) -> None:
    """The authors' block masks at MUSK's size for python random seeds 0..n-1."""
    sys.path.insert(0, str(authors / "pretrain" / "1_mask_pretrain"))
    from datasets.masking_generator import MaskingGenerator
    gen = MaskingGenerator((24, 24), num_masking_patches=230, min_num_patches=16, max_num_patches=100)
    rows = []
    for s in range(n):
        random.seed(s)
        rows.append(gen().astype(bool).flatten())
    packed = np.packbits(np.stack(rows), axis=1)
    _save({"masks": torch.from_numpy(packed)}, "block_masks",
          {"window": 24, "num_masking_patches": 230, "min_num_patches": 16, "max_num_patches": 100,
           "seeds": n, "rng": "random.seed(s) before each call; 1 = masked; np.packbits rows"})


def _save(tensors: dict[str, torch.Tensor], name: str, meta: dict) -> None:
    from safetensors.torch import save_file
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = OUT / f".{name}.tmp"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={"meta": json.dumps(meta), "torch": torch.__version__})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, OUT / f"{name}.safetensors")
    print(f"wrote {OUT / (name + '.safetensors')}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--authors", type=Path, required=True, help="folder holding the v1.0.0 pretrain/ tree")
    p.add_argument("--part", choices=["all", "stage1", "stage2", "masks"], default="all")
    a = p.parse_args()
    torch.manual_seed(0)
    if a.part != "all":
        {"stage1": stage1, "stage2": stage2, "masks": masks}[a.part](a.authors)
        return
    for part in ("stage1", "stage2", "masks"):
        subprocess.run([sys.executable, "-W", "ignore", __file__, "--authors", str(a.authors), "--part", part],
                       check=True)
    from importlib.metadata import version
    readme = {"source": "lilab-stanford/MUSK tag v1.0.0, pretrain/1_mask_pretrain and 2_contrastive_pretrain",
              "versions": {p: version(p) for p in ("torch", "timm", "torchscale", "torchvision")},
              "dtype": "float32", "made_by": "tools/make_pretrain_vectors.py",
              "stage1_note": "MLM through their MUSK.forward; MIM by their lines modeling_musk.py:132-142 "
                             "(their forward hard-casts the image to bf16, which an fp32 model cannot take)",
              "stage2_note": "RetrievalMaskDecoderHandler.train_batch on their MUSK (modeling_finetune.py)"}
    (OUT / "README.json").write_text(json.dumps(readme, indent=1) + "\n")


if __name__ == "__main__":
    main()
