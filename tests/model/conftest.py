"""Fixtures shared by the model tests."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import openmusk

TINY = "musk_tiny_patch16_32"


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> str:
    """A tiny MUSK checkpoint in the released layout (random weights, seed 0)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in openmusk.create_model(TINY).state_dict().items()}, str(path))
    return str(path)
