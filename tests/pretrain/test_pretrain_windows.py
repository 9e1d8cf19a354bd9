"""make-shards turns a long text into consecutive windows (each a sample) instead of its first 98 pieces."""
from __future__ import annotations

from openmusk.data.shards import iter_tar_samples, list_shards
from openmusk.pretrain.data import make_shards
from openmusk.text import get_tokenizer

ARTICLE = " ".join(
    f"Section {i}: the tumour shows {w} glands with nuclear atypia, mitoses and desmoplastic stroma."
    for i, w in enumerate(["cribriform", "solid", "papillary", "micropapillary", "acinar", "lepidic",
                           "mucinous", "signet-ring", "tubular", "trabecular", "clear-cell", "squamous"]))


def test_long_text_becomes_consecutive_windows_covering_all_of_it(tmp_path):
    src = tmp_path / "texts.txt"
    src.write_text(f"{ARTICLE}\nA short caption of lung adenocarcinoma.\n")
    res = make_shards(src, str(tmp_path / "out" / "t-%04d.tar"), "texts", maxcount=100)
    samples = [s for shard in list_shards(str(tmp_path / "out")) for s in iter_tar_samples(shard)]
    texts = {s["__key__"]: s["txt"].decode() for s in samples}
    tok = get_tokenizer()
    n_pieces = len(tok.encode(ARTICLE, add_special_tokens=False))
    assert n_pieces > 2 * 98
    windows = [texts[k] for k in sorted(texts) if k.startswith("000000000_")]
    assert -(-n_pieces // 98) <= len(windows) <= -(-n_pieces // 98) + 1 and res["written"] == len(windows) + 1
    # every window fits the 100-id budget, and together they are the whole article, in order
    assert all(len(tok.encode(w, add_special_tokens=False)) <= 98 for w in windows)
    assert " ".join(windows).split() == ARTICLE.split()
    assert texts["000000001"] == "A short caption of lung adenocarcinoma."


def test_text_window_zero_keeps_texts_whole(tmp_path):
    src = tmp_path / "texts.txt"
    src.write_text(ARTICLE + "\n")
    res = make_shards(src, str(tmp_path / "out" / "t-%04d.tar"), "texts", text_window=0)
    assert res["written"] == 1
