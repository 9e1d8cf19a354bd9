"""``openmusk embed``, ``openmusk zeroshot`` and ``openmusk info``: the model on files.

Each command is one library call: :func:`openmusk.encoders.files.embed_images`,
:func:`~openmusk.encoders.files.embed_texts`, :func:`~openmusk.encoders.files.zero_shot_image`
and :func:`openmusk.model.check_checkpoint`.
"""
from __future__ import annotations

import argparse
import sys

from . import CliError
from .common import positive_int, RenamedFlag, add_model_args, add_output_arg, add_progress_arg, add_workers_arg
from .common import warn_random_weights


def _encoder_args(p: argparse.ArgumentParser) -> None:
    """``--encoder`` (a registry name or module:function) with the model flags."""
    p.add_argument("--encoder", default="musk",
                   help="encoder registry name or module:function (default: %(default)s; "
                        "see openmusk.encoders.list_encoders()); --weights are its weights "
                        "(default: its own, for MUSK hf_hub:xiangjx/musk)")
    add_model_args(p, weights_default=None)


def register(sub: argparse._SubParsersAction) -> None:
    embed = sub.add_parser("embed", help="encode images or texts into an HDF5 file of embeddings",
                           description="Encode images or texts into an HDF5 file (datasets: features "
                                       "(N, D) with the encoder's attributes, and names or texts).")
    esub = embed.add_subparsers(dest="what", metavar="WHAT", required=True)
    im = esub.add_parser("images", help="image files or folders (searched recursively)",
                         description="Embed image files. Unreadable images are skipped and listed "
                                     "in OUT.errors.csv; the output is written atomically.")
    im.add_argument("inputs", nargs="+", help="image files and/or folders")
    add_output_arg(im, "output HDF5 file", required=True, kind="file")
    im.add_argument("--batch-size", type=positive_int, default=32)
    add_workers_arg(im, default=2)
    im.add_argument("--kind", choices=("embed", "probe"), default="embed",
                    help="embed: the cross-modal embedding (default); probe: features for linear probes "
                         "and MIL (MUSK: 2D multiscale CLS)")
    im.add_argument("--multiscale", action=RenamedFlag, new="--kind probe", dest="kind", const="probe",
                    help=argparse.SUPPRESS)
    im.add_argument("--raw", action="store_true",
                    help="no head and no L2 normalisation (MUSK: the single-scale CLS, or the multiscale "
                         "one with --kind probe)")
    _encoder_args(im)
    add_progress_arg(im)
    im.set_defaults(func=_embed_images)

    tx = esub.add_parser("texts", help="a .txt (one text per line) or .csv file",
                         description="Embed texts (reports, captions). Texts over the model's 100 tokens "
                                     "are embedded window by window and combined, never cut.")
    tx.add_argument("file", help=".txt with one text per line, or .csv/.tsv with a text column")
    tx.add_argument("--column", default="text", help="CSV column holding the text (default: %(default)s)")
    add_output_arg(tx, "output HDF5 file", required=True, kind="file")
    tx.add_argument("--batch-size", type=positive_int, default=64)
    tx.add_argument("--raw", action="store_true", help="MUSK's CLS before the head, unnormalised")
    _encoder_args(tx)
    add_progress_arg(tx)
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
    _encoder_args(zs)
    zs.set_defaults(func=_zeroshot)

    info = sub.add_parser("info", help="describe a checkpoint: configuration, parameters, key check",
                          description="Reads a checkpoint's names and shapes (no weights loaded), infers "
                                      "its configuration and checks it against the model it describes.")
    info.add_argument("checkpoint", nargs="?", default="hf_hub:xiangjx/musk", help="path or hf_hub:owner/name")
    info.set_defaults(func=_info)


def _encoder_kwargs(args: argparse.Namespace, encoder: str | None = None) -> dict:
    """Arguments of the library call that build the encoder (weights only when given)."""
    kwargs = {"encoder": encoder or args.encoder, "device": args.device, "precision": args.precision}
    warn_random_weights(args.weights)
    if args.weights is not None:
        kwargs["weights"] = args.weights
    return kwargs


def _call(fn, *args, **kwargs):
    """Run a library call; errors meant for the user become CliErrors (no traceback)."""
    from openmusk.model import CheckpointMismatchError, WeightsNotFoundError

    try:
        return fn(*args, **kwargs)
    except WeightsNotFoundError as e:
        raise CliError(str(e)) from None
    except (CheckpointMismatchError, FileNotFoundError, ValueError, KeyError, TypeError, ImportError) as e:
        raise CliError(str(e.args[0] if isinstance(e, KeyError) and e.args else e)) from None


def _embed_images(args: argparse.Namespace) -> int:
    from openmusk.encoders.files import embed_images

    kind, encoder = args.kind, args.encoder
    if args.raw and kind == "embed":  # no head: MUSK's single-scale CLS is the probe of musk_singlescale
        kind, encoder = "probe", ("musk_singlescale" if encoder == "musk" else encoder)
    res = _call(embed_images, args.inputs, args.out, kind=kind, normalize=not args.raw,
                batch_size=args.batch_size, num_workers=args.num_workers, progress=not args.quiet,
                **_encoder_kwargs(args, encoder))
    print(f"wrote {len(res.names)} x {res.features.shape[1]} {kind} features to {res.path}")
    if res.failed:
        print(f"skipped {len(res.failed)} unreadable image(s), listed in {res.path}.errors.csv", file=sys.stderr)
    return 0


def _embed_texts(args: argparse.Namespace) -> int:
    from openmusk.encoders.files import embed_texts

    res = _call(embed_texts, args.file, args.out, column=args.column, batch_size=args.batch_size,
                raw=args.raw, progress=not args.quiet, **_encoder_kwargs(args))
    print(f"wrote {len(res.names)} x {res.features.shape[1]} text embeddings to {res.path}")
    return 0


def _zeroshot(args: argparse.Namespace) -> int:
    from openmusk.encoders.files import ZERO_SHOT_TEMPLATES, zero_shot_image

    labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    if len(labels) < 2:
        raise CliError("--labels needs at least two comma-separated labels")
    templates = args.template or list(ZERO_SHOT_TEMPLATES)
    if any("{c}" not in t for t in templates):
        raise CliError("every --template must contain {c}")
    ranked = _call(zero_shot_image, args.image, labels, templates=templates, **_encoder_kwargs(args))
    print(f"{args.image} (templates: {len(templates)})")
    for label, p in ranked:
        print(f"  {p:7.2%}  {label}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from openmusk.model import check_checkpoint

    r = _call(check_checkpoint, args.checkpoint)
    print(f"checkpoint: {r.path}")
    print(f"config:     {r.config.to_dict()}")
    print(f"tensors:    {len(r.shapes)}   parameters: {r.n_parameters:,}")
    if r.metadata:
        print(f"metadata:   {sorted(r.metadata)}")
    for label, names in (("missing", r.missing), ("unexpected", r.unexpected),
                         ("mis-shaped", [k for k, _, _ in r.mismatched])):
        for n in names:
            print(f"  {label}: {n}")
    print("key check:  OK, matches the released layout" if r.ok else "key check:  FAILED")
    return 0 if r.ok else 1
