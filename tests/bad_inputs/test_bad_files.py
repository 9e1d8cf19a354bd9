"""Files: hostile checkpoints, the writer's permissions, hostile shard names, unsafe result names,
bad tables and text, an unreachable hub. Each is refused in one line naming the file (and row)."""
from __future__ import annotations

import io
import os
import pickle
import stat
import tarfile
import time

import pytest
import torch

from bad_files import TINY


class _Evil:
    """Unpickling this would run a shell command."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.fixture
def evil_checkpoints(tmp_path):
    """A pickle that runs code (torch zip format and plain pickle), random bytes named .safetensors
    and .pth, and an empty .pth."""
    torch.save({"w": _Evil()}, tmp_path / "evil.pth")
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump({"w": _Evil()}, f)
    (tmp_path / "noise.safetensors").write_bytes(os.urandom(256))
    (tmp_path / "noise.pth").write_bytes(os.urandom(256))
    (tmp_path / "empty.pth").write_bytes(b"")
    return tmp_path


def test_checkpoint_refusals_name_the_file(evil_checkpoints, cli):
    for name in ("evil.pth", "evil.bin"):
        line = cli("info", evil_checkpoints / name).clear_error(name, "refused for safety")
        assert "weights_only" not in line and "not tensors" in line
    for name in ("noise.safetensors", "noise.pth", "empty.pth"):
        cli("info", evil_checkpoints / name).clear_error(name)


def test_resume_aggregator_and_vqa_head_files_are_named(evil_checkpoints, tmp_path):
    from openmusk.core.io import CheckpointFileError
    from openmusk.eval.vqa.predictor import load_vqa
    from openmusk.mil.models import build_aggregator, load_aggregator
    from openmusk.mil.trainer import load_resume

    with pytest.raises(CheckpointFileError, match="evil.pth.*refused for safety"):
        load_resume(evil_checkpoints / "evil.pth")
    agg = build_aggregator("abmil", 8, hidden_dim=8, attention_dim=8)
    for name in ("evil.pth", "noise.safetensors"):
        with pytest.raises(CheckpointFileError, match=f"{name}: not a valid safetensors"):
            load_aggregator(agg, evil_checkpoints / name)
    folder = tmp_path / "vqa"
    folder.mkdir()
    for name in ("model.safetensors", "vqa_head.safetensors"):
        (folder / name).write_bytes(os.urandom(64))
    (folder / "answers.json").write_text("{}")
    with pytest.raises(CheckpointFileError, match="vqa_head.safetensors: not a valid safetensors"):
        load_vqa(folder, device="cpu")


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_atomic_writes_respect_the_umask(tmp_path, umask):
    from openmusk.core.io import atomic_path, write_json

    old = os.umask(umask)
    try:
        path = write_json(tmp_path / f"m{umask:o}.json", {"a": 1})
        with atomic_path(tmp_path / f"b{umask:o}.bin") as tmp:
            tmp.write_bytes(b"x")
        # what open() would give a new file: 0644 / 0640 / 0600
        for p in (path, tmp_path / f"b{umask:o}.bin"):
            assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"b{umask:o}.bin", f"m{umask:o}.json"]


def _hostile_shard(path):
    """A shard with a normal sample, a '..' member and an absolute member."""
    with tarfile.open(path, "w") as tf:
        for name in ("0001.txt", "../../x.txt", "/etc/evil.txt", "0002.txt"):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = 2, time.time()
            tf.addfile(info, io.BytesIO(b"hi"))
    return path


def test_hostile_shard_member_names_are_skipped_and_refused(tmp_path, capsys):
    from openmusk.data.shards import ShardWriter, iter_tar_samples

    shard = _hostile_shard(tmp_path / "s.tar")
    assert [s["__key__"] for s in iter_tar_samples(shard)] == ["0001", "0002"]
    err = capsys.readouterr().err
    assert "s.tar: skipped member '../../x.txt'" in err and "'/etc/evil.txt'" in err
    for key in ("../../x", "/abs/y"):
        with ShardWriter(str(tmp_path / "out" / "o-%06d.tar")) as writer, \
                pytest.raises(ValueError, match="outside a folder"):
            writer.write({"__key__": key, "txt": "hi"})
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("name", ["../escaped_model", "a/b", "..", ".hidden", "/abs/x"])
def test_eval_names_stay_one_component_inside_the_output(tmp_path, name):
    from openmusk.core.io import safe_filename
    from openmusk.eval.features import cache_path
    from openmusk.eval.runner import cell_path

    out = tmp_path / "results"
    for p in (cell_path(out, name, name, "linear_probe"), cache_path(out, name, name, "test", "image")):
        rel = p.relative_to(out)          # never outside
        assert len(rel.parts) == 3 and not any(part.startswith(".") for part in rel.parts)
    assert safe_filename("a/b") != safe_filename("a_b") and safe_filename("musk") == "musk"


def test_tables_and_texts_name_file_and_row(tmp_path, cli):
    from openmusk.eval.vqa.evaluate import read_predictions

    (tmp_path / "bad.txt").write_bytes(b"fine\nbad \xff\xfe here\n")
    cli("embed", "texts", tmp_path / "bad.txt", "--out", tmp_path / "t.h5", "--weights", TINY
        ).clear_error("bad.txt", "line 2", "UTF-8")
    assert not (tmp_path / "t.h5").exists()
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "run.yaml").write_text(f"cohort: {tmp_path / 'empty.csv'}\nfeatures_dir: {tmp_path}\n"
                                       f"output_dir: {tmp_path / 'out'}\n")
    cli("mil", "train", tmp_path / "run.yaml").clear_error("empty.csv", "empty")
    (tmp_path / "pred.csv").write_text("question_id,answer\n1,yes\n")
    cli("vqa", "compare", tmp_path / "pred.csv", tmp_path / "pred.csv").clear_error("pred.csv", "row 1", "correct")
    (tmp_path / "pred.jsonl").write_text('{"question_id": 1}\nnot json\n')
    with pytest.raises(ValueError, match="pred.jsonl: line 2 is not valid JSON"):
        read_predictions(tmp_path / "pred.jsonl")


def test_make_shards_skips_an_undecodable_row_and_reports_it(tmp_path, capsys):
    from PIL import Image

    from openmusk.pretrain.data import make_shards

    Image.new("RGB", (32, 32), (200, 100, 150)).save(tmp_path / "a.png")
    (tmp_path / "pairs.csv").write_bytes(b"image,text\na.png,good caption\na.png,bad \xff caption\n"
                                         b"a.png,another good one\n")
    res = make_shards(tmp_path / "pairs.csv", str(tmp_path / "out" / "p-%06d.tar"), kind="pairs")
    assert res["written"] == 2 and len(res["skipped"]) == 1
    assert "pairs.csv data row 2: text is not valid UTF-8" in capsys.readouterr().err


def test_unreachable_hub_fails_at_once(monkeypatch):
    from huggingface_hub import constants

    from openmusk.model.hub import WeightsNotFoundError, resolve_weights

    for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError, match="cannot be reached"):
        resolve_weights("hf_hub:nobody/nothing", cache_dir=os.devnull + "_none")
    assert time.perf_counter() - start < 5
