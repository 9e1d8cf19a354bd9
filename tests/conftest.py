"""Shared test fixtures: where the shared fixtures (parity vectors, tokenizer, real H&E) live."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("OPENMUSK_SHARED", REPO.parent / "shared"))

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared/ folder (fixtures and spec), beside the checkout."""
    if not SHARED.is_dir():
        pytest.fail(f"shared fixtures not found at {SHARED}; set OPENMUSK_SHARED")
    return SHARED


@pytest.fixture(scope="session")
def real_dir(shared_dir: Path) -> Path:
    """Real H&E data: an SVS slide region and tumour / stroma crops."""
    return shared_dir / "fixtures" / "real"


@pytest.fixture(scope="session")
def parity_dir(shared_dir: Path) -> Path:
    """Test vectors made with the authors' MUSK implementation."""
    return shared_dir / "fixtures" / "musk_parity"
