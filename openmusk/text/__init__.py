"""Text side of MUSK: the tokenizer (XLM-R convention over SentencePiece)."""
from openmusk.text.tokenizer import MuskTokenizer, get_tokenizer

__all__ = ["MuskTokenizer", "get_tokenizer"]
