"""``openmusk embed``, ``openmusk zeroshot`` and ``openmusk info``: the model on files."""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from . import CliError
from .common import add_model_args, load_model

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
ZERO_SHOT_TEMPLATES = ("{c}.", "an H&E image of {c}.", "a histopathology image of {c}.",
                       "an image of {c} tissue.", "a pathology slide showing {c}.")


def register(sub: argparse._SubParsersAction) -> None:
    embed = sub.add_parser("embed", help="encode images or texts into an HDF5 file of embeddings",
                           description="Encode images or texts with MUSK into features.h5 "
                                       "(datasets: features (N, D), names or texts).")
    esub = embed.add_subparsers(dest="what", metavar="WHAT", required=True)
    im = esub.add_parser("images", help="image files or folders (searched recursively)",
                         description="Embed image files. Unreadable images are skipped and listed "
                                     "in OUT.errors.csv; the output is written atomically.")
    im.add_argument("inputs", nargs="+", help="image files and/or folders")
    im.add_argument("--out", required=True, help="output HDF5 file")
    im.add_argument("--batch-size", type=int, default=32)
    im.add_argument("--workers", type=int, default=2, help="DataLoader workers reading images")
    im.add_argument("--multiscale", action="store_true",
                    help="2D multiscale features (linear probes, MIL) instead of the D-dim retrieval embedding")
    im.add_argument("--raw", action="store_true", help="no head and no L2 normalisation")
    add_model_args(im)
    im.set_defaults(func=_embed_images)

    tx = esub.add_parser("texts", help="a .txt (one text per line) or .csv file",
                         description="Embed texts (reports, captions) with the language side of MUSK.")
    tx.add_argument("file", help=".txt with one text per line, or .csv/.tsv with a text column")
    tx.add_argument("--column", default="text", help="CSV column holding the text (default: %(default)s)")
    tx.add_argument("--out", required=True, help="output HDF5 file")
    tx.add_argument("--batch-size", type=int, default=64)
    tx.add_argument("--raw", action="store_true", help="raw CLS instead of the normalised head embedding")
    add_model_args(tx)
    tx.set_defaults(func=_embed_texts)

    zs = sub.add_parser("zeroshot", help="rank text labels for an image",
                        description="Zero-shot classification: compares the image embedding with the "
                                    "mean embedding of each label under several prompt templates and "
                                    "prints labels ranked by probability (CLIP convention: softmax of "
                                    "exp(logit_scale) * cosine).")
    zs.add_argument("image", help="an image file (it is resized and centre-cropped to the model size)")
    zs.add_argument("--labels", required=True, help='comma-separated labels, e.g. "tumour,stroma,necrosis"')
    zs.add_argument("--template", action="append", default=None,
                    help="prompt template with {c} for the label (repeatable; default: a pathology ensemble)")
    add_model_args(zs)
    zs.set_defaults(func=_zeroshot)

    info = sub.add_parser("info", help="describe a checkpoint: configuration, parameters, key check",
                          description="Reads a checkpoint's names and shapes (no weights loaded), infers "
                                      "its configuration and checks it against the model it describes.")
    info.add_argument("checkpoint", nargs="?", default="hf_hub:xiangjx/musk", help="path or hf_hub:owner/name")
    info.set_defaults(func=_info)


def _image_files(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            files.append(p)
        else:
            raise CliError(f"no such file or folder: {p}")
    if not files:
        raise CliError(f"no images found in {', '.join(inputs)}")
    return files


class _ImageFiles:
    """Map-style dataset over image paths: (tensor, index), or (None, index, error) when unreadable."""

    def __init__(self, files: list[Path], transform):
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        try:
            with Image.open(self.files[i]) as im:
                return self.transform(im), i, ""
        except Exception as e:  # any decoder failure is reported, not fatal
            return None, i, f"{type(e).__name__}: {e}"


def _collate(items):
    import torch

    good = [(t, i) for t, i, err in items if t is not None]
    bad = [(i, err) for t, i, err in items if t is None]
    images = torch.stack([t for t, _ in good]) if good else None
    return images, [i for _, i in good], bad


def _write_h5(path: str, features, attrs: dict, **string_sets) -> None:
    import h5py
    import numpy as np

    from ..core.io import atomic_path

    with atomic_path(path, suffix=".h5.tmp") as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=np.asarray(features, dtype=np.float32))
            for name, values in string_sets.items():
                f.create_dataset(name, data=np.array(values, dtype=object), dtype=h5py.string_dtype())
            f["features"].attrs.update(attrs)


def _embed_images(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    import openmusk

    files = _image_files(args.inputs)
    model = load_model(args)
    loader = DataLoader(_ImageFiles(files, openmusk.get_transform(model.config.img_size)),
                        batch_size=args.batch_size, num_workers=args.workers, collate_fn=_collate)
    device = next(model.parameters()).device
    feats, names, errors = [], [], []
    with torch.no_grad():
        for images, idx, bad in tqdm(loader, desc="embedding images", unit="batch"):
            errors += [(str(files[i]), e) for i, e in bad]
            if images is None:
                continue
            images = images.to(device, model.beit3.vision_embed.proj.weight.dtype)
            out = model.encode_image(images, head=not args.raw and not args.multiscale,
                                     normalize=not args.raw, multiscale=args.multiscale)
            feats.append(out.float().cpu())
            names += [str(files[i]) for i in idx]
    if not feats:
        raise CliError(f"none of the {len(files)} images could be read")
    kind = "multiscale" if args.multiscale else "embedding"
    _write_h5(args.out, torch.cat(feats).numpy(), {"encoder": "musk", "weights": str(args.weights),
              "kind": kind, "normalized": not args.raw, "config": str(model.config.to_dict())}, names=names)
    print(f"wrote {len(names)} x {feats[0].shape[1]} {kind} features to {args.out}")
    if errors:
        err_path = f"{args.out}.errors.csv"
        with open(err_path, "w", newline="") as f:
            csv.writer(f).writerows([("file", "error"), *errors])
        print(f"skipped {len(errors)} unreadable image(s), listed in {err_path}", file=sys.stderr)
    return 0


def _read_texts(path: Path, column: str) -> list[str]:
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    if path.suffix.lower() in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            if column not in (reader.fieldnames or []):
                raise CliError(f"{path}: no column {column!r}; columns are {reader.fieldnames}")
            return [row[column] or "" for row in reader]
    return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _embed_texts(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    import openmusk

    texts = _read_texts(Path(args.file), args.column)
    if not texts:
        raise CliError(f"{args.file}: no texts")
    model = load_model(args)
    tok = openmusk.get_tokenizer()
    device = next(model.parameters()).device
    feats = []
    with torch.no_grad():
        for s in tqdm(range(0, len(texts), args.batch_size), desc="embedding texts", unit="batch"):
            ids, pad = tok(texts[s: s + args.batch_size])
            out = model.encode_text(ids.to(device), pad.to(device), head=not args.raw, normalize=not args.raw)
            feats.append(out.float().cpu())
    _write_h5(args.out, torch.cat(feats).numpy(), {"encoder": "musk", "weights": str(args.weights),
              "kind": "text", "normalized": not args.raw}, texts=texts)
    print(f"wrote {len(texts)} x {feats[0].shape[1]} text embeddings to {args.out}")
    return 0


def _zeroshot(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image, UnidentifiedImageError

    from ..encoders import MuskEncoder
    from ..encoders import zero_shot_weights

    labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    if len(labels) < 2:
        raise CliError("--labels needs at least two comma-separated labels")
    templates = args.template or list(ZERO_SHOT_TEMPLATES)
    if any("{c}" not in t for t in templates):
        raise CliError("every --template must contain {c}")
    model = load_model(args)
    encoder = MuskEncoder(model)
    try:
        with Image.open(args.image) as im:
            image = encoder.transform(im).unsqueeze(0)
    except (OSError, UnidentifiedImageError) as e:
        raise CliError(f"cannot read image {args.image}: {e}") from None
    weights = torch.from_numpy(zero_shot_weights(encoder, labels, templates))
    emb = encoder.encode_image(image, kind="embed")
    probs = (model.similarity(emb, weights.to(emb)).float().softmax(-1))[0].detach()
    print(f"{args.image} (templates: {len(templates)})")
    for p, i in sorted(((float(p), i) for i, p in enumerate(probs)), reverse=True):
        print(f"  {p:7.2%}  {labels[i]}")
    return 0


def _info(args: argparse.Namespace) -> int:
    import math

    import torch

    import openmusk
    from ..model.checkpoint import CheckpointReader

    try:
        path = openmusk.resolve_weights(args.checkpoint)
    except openmusk.WeightsNotFoundError as e:
        raise CliError(str(e)) from None
    reader = CheckpointReader(path)
    shapes = reader.shapes()
    try:
        config = openmusk.config_from_checkpoint(path)
    except ValueError as e:
        raise CliError(str(e)) from None
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in openmusk.Musk(config).state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    bad = sorted(k for k in set(shapes) & set(expected) if shapes[k] != expected[k])
    print(f"checkpoint: {path}")
    print(f"config:     {config.to_dict()}")
    print(f"tensors:    {len(shapes)}   parameters: {sum(math.prod(s) for s in shapes.values()):,}")
    if reader.metadata:
        print(f"metadata:   {sorted(reader.metadata)}")
    for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", bad)):
        for n in names:
            print(f"  {label}: {n}")
    ok = not (missing or unexpected or bad)
    print("key check:  OK, matches the released layout" if ok else "key check:  FAILED")
    return 0 if ok else 1
