"""The tokenizer parity texts and their reference from transformers' XLMRobertaTokenizer, stored.

transformers >= 5 builds a different vocabulary from the SentencePiece file, so a live comparison
with today's transformers is meaningless; the reference ids (and decoded strings) made once with
transformers 4.57.6 are stored as short SHA-256 digests in ``transformers_reference.json`` and
the check runs everywhere, CI included, without transformers. Regenerate in an environment with
``transformers<5`` and ``sentencepiece`` (no torch needed):

    python tests/text/tokenizer_reference.py PUBMED_XML_GZ openmusk/assets/musk_tokenizer.spm
"""
from __future__ import annotations

import gzip
import hashlib
import json
import random
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REFERENCE = Path(__file__).with_name("transformers_reference.json")
SPECIALS = ("<s>", "</s>", "<pad>", "<unk>", "<mask>")
GAPS = ["", " ", "  ", "\t", "\n", "\u3000", "\xa0", "\x85"]


def pubmed_abstracts(path: str | Path, n: int = 2000) -> list[str]:
    """The first ``n`` non-empty MEDLINE abstracts of a PubMed XML (.gz) file."""
    texts: list[str] = []
    with gzip.open(path) as fh:
        for _, el in ET.iterparse(fh):
            if el.tag == "AbstractText" and "".join(el.itertext()).strip():
                texts.append("".join(el.itertext()).strip())
                if len(texts) == n:
                    break
    return texts


def reference_texts(abstracts: list[str]) -> list[str]:
    """1,000 abstracts, 300 with special tokens spliced in between odd whitespace, 3 edge cases."""
    rng = random.Random(0)
    with_specials = []
    for text in abstracts[:300]:
        words = text.split(" ")
        for _ in range(3):
            special = rng.choice(GAPS) + rng.choice(SPECIALS) + rng.choice(GAPS)
            words.insert(rng.randrange(len(words) + 1), special)
        with_specials.append(" ".join(words))
    return [*abstracts[:1000], *with_specials, "<<s>>", "</s<s>>", "a \u2603\u2603 b\x85 <mask>\x85"]


def digest(value: list[int] | str) -> str:
    """A short SHA-256 of token ids or of a string."""
    text = value if isinstance(value, str) else ",".join(map(str, value))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def main(pubmed: str, spm: str) -> None:
    """Write the reference made by transformers' XLMRobertaTokenizer."""
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        raise SystemExit("needs transformers<5 (>=5 builds a different vocabulary from the file)")
    ref = transformers.XLMRobertaTokenizer(spm)
    texts = reference_texts(pubmed_abstracts(pubmed))
    ids = [ref.encode(t) for t in texts]
    decoded = [ref.decode(i, skip_special_tokens=True, clean_up_tokenization_spaces=False) for i in ids]
    REFERENCE.write_text(json.dumps({
        "made_with": f"transformers {transformers.__version__} XLMRobertaTokenizer", "pubmed_file": Path(pubmed).name,
        "n_texts": len(texts), "n_tokens": sum(map(len, ids)),
        "ids": [digest(i) for i in ids], "decoded": [digest(d) for d in decoded]}, indent=0) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
