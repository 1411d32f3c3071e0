"""Find a commune-level unit by the name a citizen types.

The search ignores diacritics, case and punctuation ("long xuyen" finds "Phường Long Xuyên"),
accepts a leading division word or its abbreviation ("p. long xuyen", "xã an phú") and
tolerates small typos ("long xuyn").  Results are ranked in tiers:

1. exact match of the normalized name                              score 100
2. the name starts with the query ("long xu")                       score 90-99
3. the query starts a later word of the name ("xuyen")              score 85-90
4. the whole name appears inside a longer query ("long xuyen an giang")  score 80-85
5. fuzzy similarity (rapidfuzz) of at least ``FUZZY_CUTOFF``        score 50-80

Within a tier a closer match (larger share of the name covered, higher similarity) ranks
first.  ``PlaceMatch.score`` encodes the tier, so results are sorted by score alone.

Fuzzy matches are suggestions for the citizen to pick from, not a basis for routing on
their own: a place name that is not a unit (an old ward, a landmark) can sit one letter
away from an unrelated unit.

This module must not import ``telegram``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from rapidfuzz import fuzz, process

from config.catalogue import UnitEntry

MAX_QUERY_LENGTH = 100
FUZZY_CUTOFF = 80.0

# Leading words naming a division level (current or pre-2025), already folded to ASCII.
# Longest first, so "thi tran" wins over a shorter word.  Only one is stripped.
_DIVISION_WORDS: tuple[str, ...] = (
    "thanh pho",
    "dac khu",
    "thi tran",
    "thi xa",
    "phuong",
    "xa",
    "tp",
    "tx",
    "tt",
    "dk",
    "p",
    "x",
)

_NON_WORD = re.compile(r"[\W_]+")

_TIER_EXACT = 100.0

_Offer = Callable[[int, float], None]


@dataclass(frozen=True, slots=True)
class PlaceMatch:
    """One search result: the unit's code and official name, and a 0-100 rank score."""

    code: str
    name: str
    score: float


def fold(text: str) -> str:
    """Case-, diacritic- and punctuation-insensitive form of ``text``, no word stripping."""
    text = unicodedata.normalize("NFKC", text).lower().replace("đ", "d")
    text = "".join(
        ch for ch in unicodedata.normalize("NFD", text) if not unicodedata.combining(ch)
    )
    return " ".join(_NON_WORD.sub(" ", text).split())


def _strip_division_word(folded: str, words: Iterable[str] = _DIVISION_WORDS) -> str:
    for word in words:
        if folded.startswith(word + " "):
            return folded[len(word) + 1 :]
    return folded


def normalize(text: str) -> str:
    """Fold ``text`` (see :func:`fold`) and drop one leading division word.

    >>> normalize("Phường  Long Xuyên")
    'long xuyen'
    >>> normalize("P. Long-Xuyên")
    'long xuyen'
    """
    return _strip_division_word(fold(text))


class PlaceIndex:
    """An in-memory search index over the units of the catalogue."""

    __slots__ = ("_keys", "_units")

    def __init__(self, units: Iterable[UnitEntry]) -> None:
        self._units: tuple[UnitEntry, ...] = tuple(units)
        # A unit's key drops only its own division word, so a name that happens to begin
        # with a word like "Xã" or "P" stays intact.
        self._keys: tuple[str, ...] = tuple(_unit_key(unit) for unit in self._units)

    def __len__(self) -> int:
        return len(self._units)

    def search(self, query: str, limit: int = 5) -> list[PlaceMatch]:
        """Up to ``limit`` units matching ``query``, best first; [] when nothing fits."""
        if limit <= 0 or len(query) > MAX_QUERY_LENGTH:
            return []
        folded = fold(query)
        if not folded:
            return []
        # Read the query both with and without a leading division word: "xa an phu" means
        # "an phu", but a name could itself begin with such a word.  On equal scores the
        # literal reading wins.
        stripped = _strip_division_word(folded)
        readings = [(folded, 1)] if stripped == folded else [(folded, 1), (stripped, 0)]

        best: dict[int, tuple[float, int]] = {}
        for reading, literal in readings:

            def offer(index: int, score: float, literal: int = literal) -> None:
                if (score, literal) > best.get(index, (-1.0, 0)):
                    best[index] = (score, literal)

            self._match_words(reading, offer)
            self._match_fuzzy(reading, offer)

        ranked = sorted(
            best.items(),
            key=lambda item: (-item[1][0], -item[1][1], self._keys[item[0]], item[0]),
        )
        return [
            PlaceMatch(
                code=self._units[index].code,
                name=self._units[index].name,
                score=round(score, 2),
            )
            for index, (score, _literal) in ranked[:limit]
        ]

    def _match_words(self, q: str, offer: _Offer) -> None:
        padded_q = f" {q} "
        for index, key in enumerate(self._keys):
            if not key:
                continue
            if q == key:
                offer(index, _TIER_EXACT)
            elif key.startswith(q):
                offer(index, 90.0 + 9.0 * len(q) / len(key))
            elif f" {q}" in f" {key}":
                offer(index, 85.0 + 4.9 * len(q) / len(key))
            elif f" {key} " in padded_q:
                offer(index, 80.0 + 4.9 * len(key) / len(q))

    def _match_fuzzy(self, q: str, offer: _Offer) -> None:
        # Plain similarity catches typos; token-sort also catches swapped words.
        for scorer in (fuzz.ratio, fuzz.token_sort_ratio):
            for _key, similarity, index in process.extract(
                q,
                self._keys,
                scorer=scorer,
                processor=None,
                score_cutoff=FUZZY_CUTOFF,
                limit=None,
            ):
                offer(index, 50.0 + 29.9 * (similarity - FUZZY_CUTOFF) / (100.0 - FUZZY_CUTOFF))


def _unit_key(unit: UnitEntry) -> str:
    folded = fold(unit.name)
    own_word = fold(unit.division_type)
    if own_word and folded.startswith(own_word + " "):
        return folded[len(own_word) + 1 :]
    return normalize(unit.name)


def pick_label(query: str, labels: list[str]) -> int | None:
    """The index of the one label ``query`` names, ignoring accents, case and small typos.

    The same folding as the commune search: an exact folded match wins; else the label that
    starts with the query (four letters at least), or that the query holds as whole words;
    else the closest fuzzy match of at least ``FUZZY_CUTOFF``. Two equally good labels are
    no answer (``None``): the citizen is asked again rather than guessed for.
    """
    q = fold(query)[:MAX_QUERY_LENGTH]
    if not q:
        return None
    keys = [fold(label) for label in labels]
    scores: list[float] = []
    for key in keys:
        if not key:
            scores.append(0.0)
        elif q == key:
            scores.append(100.0)
        elif len(q) >= 4 and key.startswith(q):
            scores.append(90.0 + 9.0 * len(q) / len(key))
        elif len(key) >= 4 and f" {key} " in f" {q} ":
            scores.append(85.0 + 4.9 * len(key) / len(q))
        else:
            similarity = max(fuzz.ratio(q, key), fuzz.token_sort_ratio(q, key))
            scores.append(similarity * 0.8 if similarity >= FUZZY_CUTOFF else 0.0)
    best = max(scores, default=0.0)
    if best <= 0.0 or scores.count(best) > 1:
        return None
    return scores.index(best)
