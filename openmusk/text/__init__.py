"""Text side of MUSK: the tokenizer (XLM-R convention over SentencePiece) and report embeddings."""
from openmusk.text.report import embed_report, embed_reports, report_embeddings
from openmusk.text.tokenizer import MuskTokenizer, get_tokenizer

__all__ = ["MuskTokenizer", "get_tokenizer", "report_embeddings", "embed_report", "embed_reports"]
