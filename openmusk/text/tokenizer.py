"""MUSK text tokenizer: the XLM-R id convention over the released SentencePiece model.

Reproduces the reference (transformers' slow ``XLMRobertaTokenizer``, transformers < 5) without
depending on transformers: ids ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, SentencePiece piece
``p >= 3`` -> ``p + 1``, SentencePiece unknown -> 3, ``<mask>``=64001. Literal special-token strings
inside a text become their ids; the text between them is encoded chunk by chunk (SentencePiece adds
its word-start marker to each chunk), and ``<mask>`` strips the whitespace before it.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import sentencepiece as spm
import torch

BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
FAIRSEQ_OFFSET = 1
MODEL_VOCAB_SIZE = 64010  # embedding rows of the released model; ids 64002..64009 are unused
DEFAULT_MAX_LEN = 100

_SPECIAL_STRINGS = ("<s>", "<pad>", "</s>", "<unk>")
_MASK_STRING = "<mask>"
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(s) for s in (*_SPECIAL_STRINGS, _MASK_STRING)) + ")")
_SPM_WORD_START = "\u2581"

Ids = Sequence[int] | torch.Tensor


class TokenBatch(NamedTuple):
    """What the tokenizer returns: unpacks as ``ids, pad = tok(texts)`` and passes as it is to
    ``model.encode_text(tok(texts))`` (open_clip's habit); ``.to(device)`` moves both tensors."""

    input_ids: torch.Tensor
    padding_mask: torch.Tensor

    def to(self, *args, **kwargs) -> "TokenBatch":
        """Both tensors moved (``.to(device)``); a dtype applies to neither, ids stay integers."""
        args = tuple(a for a in args if not isinstance(a, torch.dtype))
        kwargs.pop("dtype", None)
        return TokenBatch(self.input_ids.to(*args, **kwargs), self.padding_mask.to(*args, **kwargs))


def default_model_path() -> Path:
    """Path of the SentencePiece model shipped in the package."""
    return Path(__file__).resolve().parents[1] / "assets" / "musk_tokenizer.spm"


class MuskTokenizer:
    """Tokenizer for MUSK texts: ``tok(texts, max_len=100) -> TokenBatch(input_ids, padding_mask)``."""

    def __init__(self, path: str | Path | None = None) -> None:
        """Load the SentencePiece model at ``path`` (default: the one shipped in the package)."""
        self.path = Path(path) if path is not None else default_model_path()
        self.sp = spm.SentencePieceProcessor(model_proto=self.path.read_bytes())
        self.num_pieces = self.sp.get_piece_size()
        self.mask_id = self.num_pieces + FAIRSEQ_OFFSET
        self._special_ids = dict(zip(_SPECIAL_STRINGS, (BOS_ID, PAD_ID, EOS_ID, UNK_ID)))
        self._special_ids[_MASK_STRING] = self.mask_id
        self._id_to_special = {i: s for s, i in self._special_ids.items()}

    @property
    def bos_id(self) -> int:
        """Id of ``<s>`` (start of text; its position is the text CLS)."""
        return BOS_ID

    @property
    def pad_id(self) -> int:
        """Id of ``<pad>``."""
        return PAD_ID

    @property
    def eos_id(self) -> int:
        """Id of ``</s>`` (end of text)."""
        return EOS_ID

    @property
    def unk_id(self) -> int:
        """Id of ``<unk>``."""
        return UNK_ID

    @property
    def vocab_size(self) -> int:
        """Text embedding rows of the released model (64010; ids 64002..64009 are never produced)."""
        return MODEL_VOCAB_SIZE

    def __len__(self) -> int:
        """Number of ids the tokenizer can produce (64002: pieces, four specials, ``<mask>``)."""
        return self.mask_id + 1

    def __repr__(self) -> str:
        """Short description with the model path."""
        return f"MuskTokenizer(path={str(self.path)!r}, num_pieces={self.num_pieces})"

    def _pieces_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of each text without ``<s>``/``</s>``, literal special strings resolved."""
        splits = [_SPECIAL_RE.split(text) for text in texts]
        chunks: list[str] = []
        for parts in splits:
            for i in range(0, len(parts), 2):
                lstrip = i + 1 < len(parts) and parts[i + 1] == _MASK_STRING
                chunks.append(parts[i].rstrip() if lstrip else parts[i])
        encoded = iter(self.sp.encode(chunks, add_bos=False, add_eos=False))
        out = []
        for parts in splits:
            ids: list[int] = []
            for i, part in enumerate(parts):
                if i % 2:
                    ids.append(self._special_ids[part])
                else:
                    ids.extend(p + FAIRSEQ_OFFSET if p else UNK_ID for p in next(encoded))
            out.append(ids)
        return out

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Ids of one text, untruncated, with ``<s>``/``</s>`` unless ``add_special_tokens`` is False."""
        ids = self._pieces_batch([text])[0]
        return [BOS_ID, *ids, EOS_ID] if add_special_tokens else ids

    def _pack(self, windows: list[list[int]], max_len: int) -> TokenBatch:
        """Wrap each piece window with ``<s>``/``</s>`` and right-pad to ``max_len``."""
        input_ids = torch.full((len(windows), max_len), PAD_ID, dtype=torch.long)
        padding_mask = torch.ones((len(windows), max_len), dtype=torch.long)
        for row, pieces in enumerate(windows):
            ids = [BOS_ID, *pieces[: max_len - 2], EOS_ID]
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            padding_mask[row, : len(ids)] = 0
        return TokenBatch(input_ids, padding_mask)

    def __call__(
        self, texts: str | Sequence[str], max_len: int = DEFAULT_MAX_LEN
    ) -> TokenBatch:
        """Tokenise, truncate to ``max_len - 2`` pieces, wrap and pad: ``(input_ids, padding_mask)``."""
        if max_len < 2:
            raise ValueError(f"max_len must be at least 2 (for <s> and </s>), got {max_len}")
        batch = [texts] if isinstance(texts, str) else list(texts)
        return self._pack(self._pieces_batch(batch), max_len)

    def encode_chunks(
        self, text: str, max_len: int = DEFAULT_MAX_LEN, stride: int | None = None
    ) -> TokenBatch:
        """Windows of ``max_len - 2`` pieces of a long text, one every ``stride`` pieces, each wrapped."""
        width = max_len - 2
        if width < 1:
            raise ValueError(f"max_len must be at least 3 to hold a piece, got {max_len}")
        stride = width if stride is None else stride
        if not 1 <= stride <= width:
            raise ValueError(f"stride must be in [1, {width}], got {stride}")
        pieces = self.encode(text, add_special_tokens=False)
        starts = [0]
        while starts[-1] + width < len(pieces):
            starts.append(starts[-1] + stride)
        return self._pack([pieces[s : s + width] for s in starts], max_len)

    def special_tokens_mask(self, input_ids: Ids) -> torch.Tensor:
        """Bool mask of ``<s>``, ``</s>`` and ``<pad>`` positions (never to be masked in MLM)."""
        ids = torch.as_tensor(input_ids)
        return (ids == BOS_ID) | (ids == EOS_ID) | (ids == PAD_ID)

    def decode(self, ids: Ids, skip_special_tokens: bool = True) -> str:
        """Text of one id sequence, as the reference decodes it (specials dropped by default)."""
        tokens = []
        for i in torch.as_tensor(ids).reshape(-1).tolist():
            if i in self._id_to_special:
                if not skip_special_tokens:
                    tokens.append(self._id_to_special[i])
            elif FAIRSEQ_OFFSET + 2 < i < self.mask_id:
                tokens.append(self.sp.id_to_piece(i - FAIRSEQ_OFFSET))
            else:
                raise ValueError(f"id {i} is not produced by this tokenizer (valid: 0..{self.mask_id})")
        return "".join(tokens).replace(_SPM_WORD_START, " ").strip()


@functools.lru_cache(maxsize=4)
def _cached(path: str | None) -> MuskTokenizer:
    """One tokenizer per model path."""
    return MuskTokenizer(path)


def get_tokenizer(name_or_path: str | Path | None = None) -> MuskTokenizer:
    """The MUSK tokenizer (cached), as open_clip's ``get_tokenizer(model_name)``.

    ``name_or_path``: None, a model name (``musk_large_patch16_384``, any ``list_models()`` name,
    ``musk``) or a hub source (``hf-hub:xiangjx/musk``): the SentencePiece model shipped in the
    package, which every MUSK model uses; else the path of a SentencePiece model file.
    """
    from openmusk.model.config import CONFIGS
    from openmusk.model.hub import is_hub_source

    if name_or_path is None or str(name_or_path) in CONFIGS or str(name_or_path) == "musk" \
            or is_hub_source(str(name_or_path)):
        return _cached(None)
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"get_tokenizer({str(name_or_path)!r}): neither a MUSK model name "
                                f"({', '.join(sorted(CONFIGS))}, musk, hf_hub:...) nor a SentencePiece "
                                "model file")
    return _cached(str(path.resolve()))
