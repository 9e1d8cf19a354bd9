"""Answer normalisation as the official VQA evaluation does it, closed/open typing, answer vocabulary.

The normalisation reproduces the VQA challenge's ``vqaEval.py`` (punctuation, periods, number words
to digits, articles, contractions) after lower-casing, so exact-match accuracy here means what it
means in PathVQA papers.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

__all__ = ["normalize_answer", "is_closed", "AnswerVocab", "CLOSED_ANSWERS"]

CLOSED_ANSWERS = ("yes", "no")

_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@",
          "`", ",", "?", "!")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # the official pattern, quirks included
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                 "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "id've": "i'd've", "i'dve": "i'd've", "im": "i'm",
    "ive": "i've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}


def _strip_punctuation(text: str) -> str:
    """VQA punctuation rule: drop a mark next to a space (or in '1,000'), else turn it into a space."""
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def normalize_answer(answer: str) -> str:
    """Normalise an answer the VQA way: lower case, punctuation, number words, articles, contractions."""
    text = str(answer).replace("\n", " ").replace("\t", " ").strip().lower()
    text = _strip_punctuation(text)
    words = [_NUMBER_WORDS.get(w, w) for w in text.split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def is_closed(answer: str) -> bool:
    """True for a closed (yes/no) question, judged by its normalised reference answer as PathVQA does."""
    return normalize_answer(answer) in CLOSED_ANSWERS


@dataclass
class AnswerVocab:
    """Normalised answers the classifier chooses from, most frequent first, with training counts."""

    answers: list[str]
    counts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(set(self.answers)) != len(self.answers):
            raise ValueError("answer vocabulary has duplicate entries")
        if not self.answers:
            raise ValueError("answer vocabulary is empty (is the frequency threshold too high?)")
        self._index = {a: i for i, a in enumerate(self.answers)}

    @classmethod
    def build(cls, answers: Iterable[str], min_count: int = 1,
              max_size: int | None = None) -> "AnswerVocab":
        """Vocabulary of normalised answers seen at least ``min_count`` times (ties by name)."""
        counter = Counter(normalize_answer(a) for a in answers)
        counter.pop("", None)
        kept = sorted(((a, c) for a, c in counter.items() if c >= min_count),
                      key=lambda ac: (-ac[1], ac[0]))
        if max_size is not None:
            kept = kept[:max_size]
        return cls([a for a, _ in kept], [c for _, c in kept])

    def __len__(self) -> int:
        return len(self.answers)

    def __contains__(self, answer: str) -> bool:
        return normalize_answer(answer) in self._index

    def index(self, answer: str) -> int:
        """Class index of an answer (normalised first); -1 when it is not in the vocabulary."""
        return self._index.get(normalize_answer(answer), -1)

    def lookup(self, indices: Sequence[int]) -> list[str]:
        """Answers for class indices."""
        return [self.answers[int(i)] for i in indices]

    def to_dict(self) -> dict:
        return {"answers": self.answers, "counts": self.counts}

    @classmethod
    def from_dict(cls, d: dict) -> "AnswerVocab":
        if "answers" not in d:
            raise ValueError("answer vocabulary JSON needs an 'answers' list")
        return cls(list(d["answers"]), list(d.get("counts", [])))
