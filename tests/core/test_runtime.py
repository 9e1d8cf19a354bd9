"""Device and precision: one resolver, LOCAL_RANK under torchrun, the same defaults everywhere."""
from __future__ import annotations

import pytest
import torch

from openmusk.core import runtime


@pytest.fixture
def fake_gpus(monkeypatch):
    """Pretend 4 CUDA GPUs are present (resolution only; nothing is allocated)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def test_auto_is_this_ranks_gpu(fake_gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert runtime.resolve_device(None) == torch.device("cuda", 3)
    assert runtime.resolve_device("auto") == torch.device("cuda", 3)
    assert runtime.resolve_device("cuda") == torch.device("cuda", 3)
    assert runtime.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.delenv("LOCAL_RANK")
    assert runtime.resolve_device("auto") == torch.device("cuda", 0)
    assert runtime.resolve_precision("auto", "auto") == "bf16"
    monkeypatch.setenv("LOCAL_RANK", "x")
    with pytest.raises(ValueError, match="LOCAL_RANK must be an integer"):
        runtime.resolve_device("auto")


def test_cpu_defaults_and_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device("auto") == torch.device("cpu")
    assert runtime.resolve_precision("auto", "cpu") == "fp32"
    assert runtime.resolve_precision("bfloat16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="no CUDA GPU"):
        runtime.resolve_device("cuda")
    with pytest.raises(ValueError, match="fp16 autocast needs a CUDA device"):
        runtime.resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        runtime.normalize_precision("fp8")
    with pytest.raises(ValueError, match="not a device"):
        runtime.resolve_device("tpu:9")


def test_autocast_runs_bf16_on_cpu_and_is_a_no_op_for_fp32():
    a = torch.randn(8, 8)
    with runtime.autocast("cpu", "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with runtime.autocast("cpu", "fp32"):
        assert (a @ a).dtype == torch.float32
