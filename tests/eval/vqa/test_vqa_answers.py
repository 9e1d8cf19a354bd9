"""Answer normalisation, closed/open typing and the answer vocabulary, against hand-worked cases."""
from __future__ import annotations

import pytest

from openmusk.eval.vqa import AnswerVocab, is_closed, normalize_answer


@pytest.mark.parametrize("raw, expected", [
    ("Yes", "yes"),
    ("No.", "no"),                      # a final period is stripped
    ("  The Liver\n", "liver"),         # whitespace, case, article
    ("an adenoma", "adenoma"),
    ("Two", "2"),                       # number words become digits
    ("none", "0"),
    ("three cells", "3 cells"),
    ("1,000", "1000"),                  # a comma between digits goes away entirely
    ("3.5", "3.5"),                     # a period followed by a digit stays
    ("hello, world", "hello world"),    # a mark next to a space is dropped
    ("left-sided", "left sided"),       # a mark between letters becomes a space
    ("(a) cells", "cells"),             # '(' becomes a space, ') ' is dropped, article goes
    ("dont know", "don't know"),        # contractions get their apostrophe
    ("isnt it", "isn't it"),
    ("it's", "it's"),                   # the apostrophe is not punctuation
    ("", ""),
])
def test_normalize_answer_hand_worked(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_closed_questions_are_yes_no_after_normalisation() -> None:
    assert is_closed("Yes") and is_closed("no.") and is_closed(" YES ")
    assert not is_closed("yes, in the liver") and not is_closed("nodule") and not is_closed("2")


def test_vocabulary_frequency_threshold_and_order() -> None:
    answers = ["Yes", "yes", "no", "The liver", "liver", "liver.", "kidney", "Two", "2", "lung"]
    # normalised counts: liver 3, yes 2, 2 2, no 1, kidney 1, lung 1
    vocab = AnswerVocab.build(answers, min_count=2)
    assert vocab.answers == ["liver", "2", "yes"]           # by count, ties by name
    assert vocab.counts == [3, 2, 2]
    assert vocab.index("LIVER") == 0 and vocab.index("two") == 1 and vocab.index("no") == -1
    assert "The Liver" in vocab and "kidney" not in vocab
    assert len(AnswerVocab.build(answers, min_count=1)) == 6
    assert AnswerVocab.build(answers, max_size=2).answers == ["liver", "2"]
    assert AnswerVocab.from_dict(vocab.to_dict()).answers == vocab.answers


def test_vocabulary_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="empty"):
        AnswerVocab.build(["a", "b"], min_count=5)
    with pytest.raises(ValueError, match="duplicate"):
        AnswerVocab(["yes", "yes"])
