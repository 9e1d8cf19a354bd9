"""Per-shard split mode: each rank reads only its shards, disjoint, covering the corpus once per
epoch; resumable per rank."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from openmusk.data.shards import ShardWriter
from openmusk.pretrain.stream import JointLoader, ShardStream


def _decode(sample: dict, rng: np.random.Generator) -> dict:
    return {"id": torch.tensor(int(sample["txt"])), "draw": torch.tensor(rng.random())}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    with ShardWriter(str(root / "s-%03d.tar"), maxcount=6) as w:   # 7 shards: 6 x 6 + 1 x 4 samples
        for i in range(40):
            w.write({"__key__": f"k{i:03d}", "txt": str(i)})
    return str(root)


def _stream(shards: str, rank: int, world: int = 2, seed: int = 5) -> ShardStream:
    return ShardStream(shards, _decode, global_batch=4, seed=seed, shuffle_buffer=5, rank=rank, world=world,
                       split="shards")


def _epoch_ids(stream: ShardStream, epoch: int) -> list[int]:
    return [int(s["txt"]) for s in stream.rank_samples(epoch)]


def test_two_ranks_read_disjoint_shards_covering_the_corpus_once_per_epoch(shards):
    a, b = _stream(shards, 0), _stream(shards, 1)
    for epoch in range(3):
        sa, sb = set(a.rank_shards(epoch)), set(b.rank_shards(epoch))
        assert not sa & sb and len(sa | sb) == 7 and abs(len(sa) - len(sb)) <= 1
        ids = _epoch_ids(a, epoch) + _epoch_ids(b, epoch)
        assert sorted(ids) == list(range(40))
    # the split changes from epoch to epoch (shards permuted by the seed)
    assert a.rank_shards(0) != a.rank_shards(1) or a.rank_shards(1) != a.rank_shards(2)


def test_rank_batches_are_its_epoch_sequence_and_run_on_across_epochs(shards):
    a = _stream(shards, 0)
    it = iter(a)
    want = _epoch_ids(a, 0) + _epoch_ids(a, 1)
    got: list[int] = []
    while len(got) < len(want):
        got += next(it)["id"].tolist()                    # local batch = 4 / 2 = 2 samples
    assert got[:len(want)] == want


def test_per_shard_resume_continues_each_rank_exactly(shards):
    for r in range(2):
        ref = JointLoader({"a": _stream(shards, r)})
        seq = [ref.next()["a"] for _ in range(14)]         # past the rank's first epoch
        first = JointLoader({"a": _stream(shards, r)})
        for _ in range(6):
            first.next()
        state = first.state_dict()
        resumed = JointLoader({"a": _stream(shards, r)}, num_workers=2 * r)   # rank 1 through 2 workers
        resumed.load_state_dict(state)
        for j in range(6, 14):
            nxt = resumed.next()["a"]
            assert torch.equal(nxt["id"], seq[j]["id"]) and torch.equal(nxt["draw"], seq[j]["draw"])


def test_per_shard_mode_needs_a_shard_per_rank(shards):
    with pytest.raises(ValueError, match="at least one shard per rank"):
        ShardStream(shards, _decode, global_batch=8, rank=0, world=8, split="shards")


def test_per_shard_checkpoint_refuses_another_world_size(tmp_path):
    """Per-rank positions of a per-shard run cannot be mapped onto another number of processes."""
    import types

    from openmusk.pretrain.trainer import Trainer

    path = tmp_path / "checkpoint.pt"
    pos = [{"pairs": {"epoch": 0, "index": i}} for i in (3, 5)]
    torch.save({"world_size": 2, "data_ranks": pos, "data": pos[0]}, path)
    with pytest.raises(ValueError, match=r"checkpoint.pt: a per-shard .* resumes only on 2 processes, not 1"):
        Trainer.load(types.SimpleNamespace(), path)
