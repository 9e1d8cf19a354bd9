"""Pieces every CLI command shares: the weights option and turning a missing checkpoint into advice."""
from __future__ import annotations

import argparse
from typing import Optional

from . import CliError

DTYPES = ("float32", "bfloat16", "float16")


def add_model_args(p: argparse.ArgumentParser, weights_default: Optional[str] = "hf_hub:xiangjx/musk") -> None:
    """``--weights``, ``--device`` and ``--dtype``, the way every command spells them."""
    p.add_argument("--weights", default=weights_default,
                   help="checkpoint: a .safetensors/.pth path or hf_hub:owner/name (default: %(default)s); "
                        "the architecture is read from the checkpoint")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="compute precision; bfloat16 runs on recent CPUs and GPUs (default: %(default)s)")


def load_model(args: argparse.Namespace):
    """The model named by ``--weights`` on ``--device`` in ``--dtype``; a missing checkpoint -> CliError."""
    import torch

    import openmusk

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return openmusk.create_model(pretrained=args.weights, device=device, dtype=getattr(torch, args.dtype))
    except openmusk.WeightsNotFoundError as e:
        raise CliError(str(e)) from None
    except (openmusk.CheckpointMismatchError, ValueError) as e:
        raise CliError(f"cannot load {args.weights}: {e}") from None
