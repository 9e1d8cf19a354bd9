"""mSTAR tests (tests/pretrain/mstar) run tiny models whose ops are too small to gain from threads:
one thread each, so that parallel test runs on a shared 2-core machine do not oversubscribe it."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread for the module's tests; the setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
