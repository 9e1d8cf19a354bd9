"""The shard stream: complete epochs, deterministic order, rank/worker splitting, exact resume."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from openmusk.data.shards import ShardWriter
from openmusk.pretrain.stream import JointLoader, ShardStream


def _decode(sample: dict, rng: np.random.Generator) -> dict:
    """Sample id plus one draw from the sample's generator (to check per-sample seeding)."""
    if sample["txt"] == b"corrupt":
        raise ValueError("corrupt payload")
    return {"id": torch.tensor(int(sample["txt"])), "draw": torch.tensor(rng.random())}


@pytest.fixture()
def shards(tmp_path):
    with ShardWriter(str(tmp_path / "s-%03d.tar"), maxcount=7) as w:
        for i in range(40):
            w.write({"__key__": f"k{i:03d}", "txt": str(i)})
    return str(tmp_path)


def _take(stream: ShardStream, n: int, workers: int = 0) -> list[dict]:
    it = iter(DataLoader(stream, batch_size=None, num_workers=workers))
    return [next(it) for _ in range(n)]


def test_epoch_covers_every_sample_once_and_order_depends_on_seed(shards):
    s = ShardStream(shards, _decode, global_batch=8, seed=3, shuffle_buffer=10)
    batches = _take(s, 5)  # 40 samples = 5 batches = one epoch
    ids = torch.cat([b["id"] for b in batches]).tolist()
    assert sorted(ids) == list(range(40))
    assert ids != list(range(40))  # shuffled
    assert tuple(batches[-1]["__pos__"]) == (0, 5, 5)
    again = torch.cat([b["id"] for b in _take(ShardStream(shards, _decode, 8, seed=3, shuffle_buffer=10), 5)])
    other = torch.cat([b["id"] for b in _take(ShardStream(shards, _decode, 8, seed=4, shuffle_buffer=10), 5)])
    assert again.tolist() == ids and other.tolist() != ids
    # the next epoch is a different permutation of the same samples
    nxt = torch.cat([b["id"] for b in _take(s, 10)[5:]]).tolist()
    assert sorted(nxt) == list(range(40)) and nxt != ids


def test_ranks_partition_each_global_batch_with_identical_decoding(shards):
    full = _take(ShardStream(shards, _decode, 8, seed=1, shuffle_buffer=10), 6)
    parts = [_take(ShardStream(shards, _decode, 8, seed=1, shuffle_buffer=10, rank=r, world=2), 6)
             for r in range(2)]
    for j in range(6):
        for key in ("id", "draw"):
            joined = torch.cat([parts[0][j][key], parts[1][j][key]])
            assert torch.equal(joined, full[j][key])


def test_dataloader_workers_give_the_same_sequence(shards):
    ref = _take(ShardStream(shards, _decode, 4, seed=0, shuffle_buffer=10), 12)
    got = _take(ShardStream(shards, _decode, 4, seed=0, shuffle_buffer=10), 12, workers=2)
    for a, b in zip(ref, got):
        assert torch.equal(a["id"], b["id"]) and torch.equal(a["draw"], b["draw"])
        assert tuple(a["__pos__"]) == tuple(b["__pos__"])


def test_resume_from_a_position_continues_exactly(shards):
    ref = JointLoader({"a": ShardStream(shards, _decode, 8, seed=2, shuffle_buffer=10)})
    seq = [ref.next()["a"]["id"] for _ in range(9)]       # crosses an epoch boundary
    first = JointLoader({"a": ShardStream(shards, _decode, 8, seed=2, shuffle_buffer=10)})
    for _ in range(4):
        first.next()
    state = first.state_dict()
    assert state == {"a": {"epoch": 0, "batch": 4, "total": 4}}
    resumed = JointLoader({"a": ShardStream(shards, _decode, 8, seed=2, shuffle_buffer=10)}, num_workers=2)
    resumed.load_state_dict(state)
    for j in range(4, 9):
        assert torch.equal(resumed.next()["a"]["id"], seq[j])
    assert resumed.state_dict()["a"] == {"epoch": 1, "batch": 4, "total": 9}


def test_corrupt_sample_is_reported_and_replaced(tmp_path, capsys):
    with ShardWriter(str(tmp_path / "s-%03d.tar"), maxcount=100) as w:
        for i in range(8):
            w.write({"__key__": f"k{i}", "txt": "corrupt" if i == 5 else str(i)})
    b = _take(ShardStream(str(tmp_path), _decode, 8, shuffle_buffer=1), 1)[0]
    assert len(b["id"]) == 8 and 5 not in b["id"].tolist()
    assert set(b["id"].tolist()) == {0, 1, 2, 3, 4, 6, 7}
    err = capsys.readouterr().err
    assert "'k5'" in err and "s-000.tar" in err and "corrupt payload" in err


def test_bad_configuration_errors_name_the_problem(tmp_path, shards):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no shards found"):
        ShardStream(str(tmp_path / "empty"), _decode, 8)
    with pytest.raises(FileNotFoundError, match="missing.tar"):
        ShardStream(str(tmp_path / "missing.tar"), _decode, 8)
    with pytest.raises(ValueError, match="not divisible by 3 ranks"):
        ShardStream(shards, _decode, 8, world=3)
    with pytest.raises(ValueError, match="fewer samples than one global batch"):
        _take(ShardStream(shards, _decode, 64), 1)
