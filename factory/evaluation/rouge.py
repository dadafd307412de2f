"""ROUGE-L, and an index that finds near-copies without comparing against everything.

Self-Instruct drops a new instruction whose ROUGE-L F1 with any seed or accepted
instruction exceeds 0.7; the original scans the whole pool for every candidate,
which is quadratic over a run. `RougeIndex` makes the same decisions in
near-linear time: the LCS of two token lists is at most their multiset overlap,
so an inverted index (token -> instructions holding it, with counts) bounds every
pool member's score at once with numpy, and exact ROUGE-L is computed only where
the bound could exceed the threshold. Tokens and scores follow the
`rouge_score` package (lowercase, runs of [a-z0-9], no stemming; F1 as it computes
it, candidate as target), which is what the original used.
"""

from __future__ import annotations

import re
from array import array
from collections import Counter
from dataclasses import dataclass

import numpy as np

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """rouge_score's default tokens: lowercase ASCII letters and digits."""
    return _NON_ALNUM.sub(" ", text.lower()).split()


def lcs_length(a: list[int], b: list[int]) -> int:
    """Length of the longest common subsequence (bit-parallel, one big-int step per token of b)."""
    if not a or not b:
        return 0
    masks: dict[int, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def f1(target: list[int], prediction: list[int]) -> float:
    """ROUGE-L F1 exactly as rouge_score computes it (same float operations)."""
    if not target or not prediction:
        return 0.0
    lcs = lcs_length(target, prediction)
    precision, recall = lcs / len(prediction), lcs / len(target)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


@dataclass
class Match:
    score: float  # highest ROUGE-L F1 found above the bound (0.0 when none could pass)
    index: int  # which pool member scored it (-1 when none)


class RougeIndex:
    """A growing pool of texts, asked "is anything here more similar than threshold?"."""

    def __init__(self, threshold: float = 0.7) -> None:
        self.threshold = threshold
        self._vocab: dict[str, int] = {}
        self._sequences: list[list[int]] = []
        self._lengths = array("i")
        self._postings: dict[int, tuple[array, array]] = {}  # token -> (pool ids, counts)

    def __len__(self) -> int:
        return len(self._sequences)

    def _ids(self, tokens: list[str], grow: bool) -> list[int]:
        if grow:
            return [self._vocab.setdefault(t, len(self._vocab)) for t in tokens]
        return [self._vocab.get(t, -1) for t in tokens]

    def add(self, text: str) -> int:
        """Put a text in the pool; returns its index."""
        ids = self._ids(tokenize(text), grow=True)
        index = len(self._sequences)
        self._sequences.append(ids)
        self._lengths.append(len(ids))
        for token, count in Counter(ids).items():
            members, counts = self._postings.setdefault(token, (array("i"), array("i")))
            members.append(index)
            counts.append(count)
        return index

    def best(self, text: str) -> Match:
        """The most similar pool member among those that could exceed the threshold."""
        ids = self._ids(tokenize(text), grow=False)
        size = len(self._sequences)
        if not ids or size == 0:
            return Match(0.0, -1)
        overlap = np.zeros(size, dtype=np.int32)
        for token, count in Counter(t for t in ids if t >= 0).items():
            members, counts = self._postings[token]
            np.add.at(
                overlap,
                np.frombuffer(members, dtype=np.int32),
                np.minimum(np.frombuffer(counts, dtype=np.int32), count),
            )
        lengths = np.frombuffer(self._lengths, dtype=np.int32)
        # F1 = 2 * lcs / (m + n) <= 2 * overlap / (m + n); a small margin covers float rounding.
        bound = 2.0 * overlap / np.maximum(len(ids) + lengths, 1)
        candidates = np.flatnonzero(bound > self.threshold - 1e-9)
        match = Match(0.0, -1)
        for index in candidates.tolist():
            score = f1(ids, self._sequences[index])
            if score > match.score:
                match = Match(score, index)
        return match

    def too_similar(self, text: str) -> Match | None:
        """The match that makes `text` a near-copy (score > threshold), or None."""
        match = self.best(text)
        return match if match.score > self.threshold else None
