"""Text-level perturbations for robustness evaluation: typos, case changes, entity swaps and a black-box word attack.

Embedding-space robustness does not reliably carry over to attacks on real text (AdvGLUE), so these perturb the
words themselves. Everything is offline and deterministic for a seed: each function takes a `random.Random` (or an
int seed, from which one is made) and draws from it in a fixed order.

Words are lists of strings (pre-split text). NER tags are IOB2 tag *strings* ("O", "B-PER", "I-PER"); convert label
ids to names before calling (e.g. with `dataset.features["ner_tags"].feature.names`) and back afterwards.

References:
    Belinkov & Bisk (2018), "Synthetic and Natural Noise Both Break Neural Machine Translation": swap, delete,
        insert and keyboard typos.
    Gao et al. (2018), "Black-box Generation of Adversarial Text Sequences to Evade Deep Learning Classifiers"
        (DeepWordBug): rank words by a leave-one-out score, then perturb their characters.
    Li et al. (2019), "TextBugger": keep the character edit that lowers the true-class probability most.
    Lin et al. (2021), "RockNER: A Simple Method to Create Adversarial Examples for Evaluating the Robustness of
        Named Entity Recognition Models": entity-level swaps and context-level perturbations.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from .adversarial import eval_mode, model_logits
from .checks import TOKEN_CLASSIFICATION, _base, _max_length, task_of

logger = logging.getLogger(__name__)

TYPO_KINDS = ("swap", "delete", "insert", "keyboard")
CASE_STYLES = ("upper", "lower", "title")

_QWERTY_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _keyboard_neighbours() -> dict[str, str]:
    """Keys next to each letter on a QWERTY keyboard: left and right on its row, and the two keys touching it on the
    rows above and below (each row is shifted about half a key to the right of the one above)."""
    neighbours: dict[str, str] = {}
    for row_index, row in enumerate(_QWERTY_ROWS):
        for column, key in enumerate(row):
            near = [(row_index, column - 1), (row_index, column + 1)]
            near += [(row_index - 1, column), (row_index - 1, column + 1)]
            near += [(row_index + 1, column - 1), (row_index + 1, column)]
            neighbours[key] = "".join(
                _QWERTY_ROWS[r][c] for r, c in near if 0 <= r < len(_QWERTY_ROWS) and 0 <= c < len(_QWERTY_ROWS[r])
            )
    return neighbours


KEYBOARD_NEIGHBOURS: dict[str, str] = _keyboard_neighbours()
"""Lower-case letter -> the letters around it on a QWERTY keyboard, e.g. "s" -> "adwezx"."""


def as_rng(rng: random.Random | int) -> random.Random:
    """`rng` itself if it is a `random.Random`, else a new `random.Random(rng)` seeded with the int."""
    if isinstance(rng, random.Random):
        return rng
    if isinstance(rng, int) and not isinstance(rng, bool):
        return random.Random(rng)
    raise TypeError(
        f"Expected a random.Random or an int seed, got {type(rng).__name__}. Pass e.g. `random.Random(0)` or `0` "
        "so that the perturbation is reproducible."
    )


def _check_words(name: str, words: Any) -> None:
    """A text is a list of words: a `str` would be read as a list of characters, without an error."""
    if isinstance(words, str):
        raise TypeError(f"`{name}` must be a list of words, not a string; pass `text.split()`.")


def _check_rate(name: str, rate: float) -> None:
    if not 0 <= rate <= 1:
        raise ValueError(f"`{name}` must be in [0, 1], got {rate}.")


def _check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    kinds = tuple(kinds)
    unknown = [kind for kind in kinds if kind not in TYPO_KINDS]
    if unknown or not kinds:
        raise ValueError(f"`kinds` must be a non-empty subset of {list(TYPO_KINDS)}, got {list(kinds)}.")
    return kinds


def _with_case_of(source: str, letter: str) -> str:
    return letter.upper() if source.isupper() else letter


def _applicable_kinds(word: str, kinds: Sequence[str]) -> list[str]:
    """The typo kinds that change `word`: swap needs two different adjacent characters, delete two characters,
    keyboard a letter; insert always applies to a non-empty word."""
    applicable = []
    for kind in kinds:
        if kind == "swap" and any(a != b for a, b in zip(word, word[1:], strict=False)):
            applicable.append(kind)
        elif kind == "delete" and len(word) >= 2:
            applicable.append(kind)
        elif kind == "insert" and word:
            applicable.append(kind)
        elif kind == "keyboard" and any(c.lower() in KEYBOARD_NEIGHBOURS for c in word):
            applicable.append(kind)
    return applicable


def typo(word: str, rng: random.Random | int, kinds: Sequence[str] = TYPO_KINDS) -> str:
    """One random typo in `word`, of a kind drawn from those in `kinds` that change it.

    - "swap": two different adjacent characters change places ("house" -> "hosue").
    - "delete": one character is dropped; only for words of two characters or more ("house" -> "hose").
    - "insert": a character is inserted, a keyboard neighbour of the character before it (of the first character
      when inserted at the start), or a random letter where that character is not a letter ("house" -> "hjouse").
    - "keyboard": one letter becomes a QWERTY neighbour, keeping its case ("House" -> "Jouse").

    An empty word, or a word that no requested kind can change (e.g. "!" with kinds=("keyboard",)), is returned as is.

    Returns:
        The new word; it differs from `word` whenever some kind applies.
    """
    rng = as_rng(rng)
    applicable = _applicable_kinds(word, _check_kinds(kinds))
    if not applicable:
        return word
    kind = rng.choice(applicable)
    if kind == "swap":
        positions = [i for i in range(len(word) - 1) if word[i] != word[i + 1]]
        i = rng.choice(positions)
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == "delete":
        i = rng.randrange(len(word))
        return word[:i] + word[i + 1 :]
    if kind == "insert":
        i = rng.randrange(len(word) + 1)
        anchor = word[i - 1] if i > 0 else word[0]
        pool = KEYBOARD_NEIGHBOURS.get(anchor.lower(), "abcdefghijklmnopqrstuvwxyz")
        return word[:i] + _with_case_of(anchor, rng.choice(pool)) + word[i:]
    positions = [i for i, c in enumerate(word) if c.lower() in KEYBOARD_NEIGHBOURS]
    i = rng.choice(positions)
    return word[:i] + _with_case_of(word[i], rng.choice(KEYBOARD_NEIGHBOURS[word[i].lower()])) + word[i + 1 :]


def is_typo_eligible(word: str) -> bool:
    """Whether `perturb_characters` may touch `word`: two characters or more, at least one a letter.

    Single characters and punctuation are left alone: a typo there changes the tokenisation rather than the spelling.
    """
    return len(word) >= 2 and any(c.isalpha() for c in word)


def _how_many(rate: float, eligible: int) -> int:
    """round(rate · eligible), half up, and at least 1 when rate > 0 and something is eligible."""
    if rate == 0 or eligible == 0:
        return 0
    # In decimal, as the rate was written: 0.29 · 50 is 14.5 (rounded up to 15), not 14.4999... (rounded to 14).
    return min(eligible, max(1, math.floor(Fraction(str(rate)) * eligible + Fraction(1, 2))))


def _typo_at(
    words: Sequence[str], candidates: Sequence[int], rate: float, rng: random.Random, kinds: Sequence[str]
) -> list[str]:
    eligible = [i for i in candidates if is_typo_eligible(words[i])]
    chosen = sorted(rng.sample(eligible, _how_many(rate, len(eligible))))
    new_words = list(words)
    for i in chosen:
        new_words[i] = typo(words[i], rng, kinds)
    return new_words


def perturb_characters(
    words: Sequence[str], rate: float, rng: random.Random | int, kinds: Sequence[str] = TYPO_KINDS
) -> list[str]:
    """Apply one [`typo`] to each of a random fraction `rate` of the eligible words (see [`is_typo_eligible`]).

    Args:
        words: The words of one text.
        rate: Fraction in [0, 1] of the eligible words to perturb, rounded half up; at least one word when
            `rate > 0` and some word is eligible.
        rng: A `random.Random` or an int seed.
        kinds: The typo kinds to draw from.

    Returns:
        A new list with as many words as `words`.
    """
    _check_words("words", words)
    _check_rate("rate", rate)
    _check_kinds(kinds)
    return _typo_at(words, range(len(words)), rate, as_rng(rng), kinds)


def change_case(
    words: Sequence[str], rng: random.Random | int, *, rate: float = 1.0, styles: Sequence[str] = CASE_STYLES
) -> list[str]:
    """Re-case a random fraction `rate` of the words that contain a letter, each to a style drawn from `styles`.

    Styles are "upper" ("PARIS"), "lower" ("paris") and "title" ("Paris"); a word gets a style that changes it, and
    is left as is if none does (e.g. "a" with styles=("lower",)). Cased models read capitals as a strong entity cue,
    so this probes how much a model relies on them.

    Args:
        words: The words of one text.
        rng: A `random.Random` or an int seed.
        rate: Fraction in [0, 1] of the words with a letter to re-case (rounded half up, at least one if > 0).
        styles: A non-empty subset of `CASE_STYLES`.

    Returns:
        A new list with as many words as `words`.
    """
    _check_words("words", words)
    _check_rate("rate", rate)
    styles = tuple(styles)
    if not styles or any(style not in CASE_STYLES for style in styles):
        raise ValueError(f"`styles` must be a non-empty subset of {list(CASE_STYLES)}, got {list(styles)}.")
    rng = as_rng(rng)
    eligible = [i for i, word in enumerate(words) if any(c.isalpha() for c in word)]
    new_words = list(words)
    for i in sorted(rng.sample(eligible, _how_many(rate, len(eligible)))):
        options = [cased for cased in (getattr(words[i], style)() for style in styles) if cased != words[i]]
        if options:
            new_words[i] = rng.choice(options)
    return new_words


# ---- NER: entity and context perturbations -------------------------------------------------------------------------


def _split_tag(tag: str) -> tuple[str, str | None]:
    """("B", "PER") for "B-PER", ("O", None) for "O"; ValueError for anything that is not an IOB2 tag string."""
    if tag == "O":
        return "O", None
    if isinstance(tag, str):
        prefix, sep, entity = tag.partition("-")
        if sep and prefix in ("B", "I") and entity:
            return prefix, entity
    raise ValueError(
        f"Tag {tag!r} is not an IOB2 tag string ('O', 'B-<type>' or 'I-<type>'). Convert label ids to names first, "
        "e.g. `[label_names[i] for i in ner_tags]`."
    )


def entity_mentions(tokens: Sequence[str], tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """The entity mentions of an IOB2-tagged sentence, as `(start, end, type)` with `end` exclusive.

    "B-X" opens a mention and "I-X" continues a mention of type X. An "I-X" that does not continue one (after "O" or
    a mention of another type) opens a new mention, as conlleval reads it.

    Example:
        `entity_mentions(["John", "Smith", "lives", "in", "Paris"], ["B-PER", "I-PER", "O", "O", "B-LOC"])` is
        `[(0, 2, "PER"), (4, 5, "LOC")]`.
    """
    if len(tokens) != len(tags):
        raise ValueError(f"Got {len(tokens)} tokens but {len(tags)} tags; each token needs exactly one tag.")
    mentions: list[tuple[int, int, str]] = []
    start, current = 0, None
    for i, tag in enumerate(tags):
        prefix, entity = _split_tag(tag)
        if current is not None and (prefix != "I" or entity != current):
            mentions.append((start, i, current))
            current = None
        if entity is not None and current is None:
            start, current = i, entity
    if current is not None:
        mentions.append((start, len(tags), current))
    return mentions


def _tag_names(dataset: Any, tags_column: str, label_names: Sequence[str] | None) -> Sequence[str] | None:
    if label_names is not None:
        return list(label_names)
    features = getattr(dataset, "features", None)
    feature = features.get(tags_column) if features is not None else None
    inner = getattr(feature, "feature", None)
    return getattr(inner, "names", None)


def _as_tag_strings(tags: Sequence[Any], names: Sequence[str] | None, tags_column: str) -> list[str]:
    if all(isinstance(tag, str) for tag in tags):
        return list(tags)
    if names is None:
        raise ValueError(
            f"Column {tags_column!r} holds label ids, and their names are unknown: pass `label_names` (the tag names "
            "in id order), or a datasets.Dataset whose column is a Sequence(ClassLabel)."
        )
    return [names[int(tag)] for tag in tags]


def collect_entity_pool(
    rows: Iterable[Mapping[str, Any]],
    *,
    tokens_column: str = "tokens",
    tags_column: str = "ner_tags",
    label_names: Sequence[str] | None = None,
) -> dict[str, list[tuple[str, ...]]]:
    """Every distinct entity mention of each type in some (training) data, to draw replacements from.

    Args:
        rows: A `datasets.Dataset` (e.g. from `read_conll`) or any iterable of dicts with `tokens_column` (words) and
            `tags_column` (IOB2 tag strings, or label ids).
        tokens_column, tags_column: The columns to read.
        label_names: Tag names in id order, when the tags are ids. Read from the dataset's ClassLabel feature if
            not given.

    Returns:
        `{type: [mention, ...]}` with each mention a tuple of words, in order of first occurrence, without repeats.
    """
    names = _tag_names(rows, tags_column, label_names)
    pool: dict[str, list[tuple[str, ...]]] = {}
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for index, row in enumerate(rows):
        if tokens_column not in row or tags_column not in row:
            raise ValueError(
                f"Row {index} has columns {sorted(row)}, but `{tokens_column}` and `{tags_column}` are needed; pass "
                "`tokens_column=`/`tags_column=` naming the words and tags columns."
            )
        tokens = list(row[tokens_column])
        tags = _as_tag_strings(row[tags_column], names, tags_column)
        for start, end, entity in entity_mentions(tokens, tags):
            mention = tuple(tokens[start:end])
            if (entity, mention) not in seen:
                seen.add((entity, mention))
                pool.setdefault(entity, []).append(mention)
    logger.info("Entity pool: %s", {entity: len(mentions) for entity, mentions in pool.items()})
    return pool


def swap_entities(
    tokens: Sequence[str],
    tags: Sequence[str],
    pool: Mapping[str, Sequence[Sequence[str]]],
    rng: random.Random | int,
) -> tuple[list[str], list[str]]:
    """Replace every entity mention by a different mention of the same type drawn from `pool` (RockNER-style).

    The tags of a replacement are rebuilt as "B-<type>" followed by "I-<type>" for its other words, so the sentence
    stays valid IOB2 whatever the lengths. A mention whose type has no other mention in the pool is kept.

    Args:
        tokens: The words of one sentence.
        tags: One IOB2 tag string per word.
        pool: From [`collect_entity_pool`], usually over the training data.
        rng: A `random.Random` or an int seed.

    Returns:
        `(new_tokens, new_tags)`, of equal length (which may differ from `len(tokens)`).
    """
    _check_words("tokens", tokens)
    for entity, mentions in pool.items():
        for mention in mentions:
            _check_words(f"pool[{entity!r}]'s mention {mention!r}", mention)
    rng = as_rng(rng)
    new_tokens: list[str] = []
    new_tags: list[str] = []
    position = 0
    for start, end, entity in entity_mentions(tokens, tags):
        new_tokens.extend(tokens[position:start])
        new_tags.extend(tags[position:start])
        original = tuple(tokens[start:end])
        choices = [tuple(mention) for mention in pool.get(entity, ()) if tuple(mention) != original and mention]
        replacement = rng.choice(choices) if choices else original
        new_tokens.extend(replacement)
        new_tags.extend([f"B-{entity}"] + [f"I-{entity}"] * (len(replacement) - 1))
        position = end
    new_tokens.extend(tokens[position:])
    new_tags.extend(tags[position:])
    return new_tokens, new_tags


def perturb_context(
    tokens: Sequence[str],
    tags: Sequence[str],
    rate: float,
    rng: random.Random | int,
    kinds: Sequence[str] = TYPO_KINDS,
) -> tuple[list[str], list[str]]:
    """Typos in the context only: like [`perturb_characters`] restricted to the words tagged "O".

    Entity words are never changed, so the gold tags stay correct.

    Returns:
        `(new_tokens, tags)`, the tags unchanged (as a new list).
    """
    _check_words("tokens", tokens)
    if len(tokens) != len(tags):
        raise ValueError(f"Got {len(tokens)} tokens but {len(tags)} tags; each token needs exactly one tag.")
    _check_rate("rate", rate)
    _check_kinds(kinds)
    context = [i for i, tag in enumerate(tags) if _split_tag(tag)[1] is None]
    return _typo_at(tokens, context, rate, as_rng(rng), kinds), list(tags)


# ---- sequence classification: a black-box greedy word attack --------------------------------------------------------


def _query(predict_proba: Callable[[list[Any]], np.ndarray], texts: list[Any]) -> np.ndarray:
    probabilities = np.asarray(predict_proba(texts), dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[0] != len(texts):
        raise ValueError(
            f"`predict_proba` returned shape {probabilities.shape} for {len(texts)} texts; it must return class "
            "probabilities of shape (number of texts, number of classes)."
        )
    return probabilities


def word_budget(budget: float, n_words: int) -> int:
    """Most words the attack may perturb: floor(budget · n_words), and at least 1 if budget > 0 and n_words >= 1."""
    _check_rate("budget", budget)
    if budget == 0 or n_words == 0:
        return 0
    return max(1, math.floor(Fraction(str(budget)) * n_words))  # 0.7 · 90 is 63, not 62.99...


SEGMENTS = ("both", "first", "second")
"""Which side of a sentence pair the word attack may perturb."""


def is_text_pair(text: Any) -> bool:
    """Whether `text` is a sentence pair `(first_words, second_words)` rather than one list of words: a sequence of two
    sequences that are not strings themselves (`(["a", "man"], ["a", "person"])`)."""
    return (
        isinstance(text, (tuple, list))
        and len(text) == 2
        and all(isinstance(part, Sequence) and not isinstance(part, str) for part in text)
    )


def _segments_of(name: str, text: Any) -> list[list[str]]:
    """A text as a list of its segments' words: one for a single text, two for a pair. Checks the words."""
    segments = [list(part) for part in text] if is_text_pair(text) else [text]
    for segment in segments:
        _check_words(name, segment)
        strays = [word for word in segment if not isinstance(word, str)]
        if strays:
            raise TypeError(
                f"`{name}` must be a list of words (strings) or a pair of them `(first_words, second_words)`, but it "
                f"holds {strays[0]!r} ({type(strays[0]).__name__})."
            )
    return [list(segment) for segment in segments]


def _attackable(segments: list[list[str]], attack_segments: str) -> list[tuple[int, int]]:
    """(segment, word) positions the attack may perturb, in reading order."""
    if attack_segments not in SEGMENTS:
        raise ValueError(f"`attack_segments` must be one of {list(SEGMENTS)}, got {attack_segments!r}.")
    if len(segments) == 1:
        if attack_segments != "both":
            raise ValueError(
                f"`attack_segments={attack_segments!r}` chooses a side of a sentence pair, but the text is a single "
                "list of words. Pass `(first_words, second_words)` pairs, or leave `attack_segments` at 'both'."
            )
        chosen = [0]
    else:
        chosen = {"both": [0, 1], "first": [0], "second": [1]}[attack_segments]
    return [(s, i) for s in chosen for i in range(len(segments[s]))]


def _as_text(segments: list[list[str]]) -> Any:
    """What `predict_proba` reads: the list of words, or the pair as a tuple of two lists."""
    return segments[0] if len(segments) == 1 else (segments[0], segments[1])


def _replaced(segments: list[list[str]], position: tuple[int, int], word: str | None) -> list[list[str]]:
    """A copy of `segments` with the word at `position` replaced by `word`, or deleted if `word` is None."""
    s, i = position
    segment = segments[s][:i] + ([] if word is None else [word]) + segments[s][i + 1 :]
    return [segment if k == s else part for k, part in enumerate(segments)]


def greedy_word_attack(
    predict_proba: Callable[[list[Any]], np.ndarray],
    words: Sequence[str] | tuple[Sequence[str], Sequence[str]],
    label: int,
    *,
    budget: float = 0.3,
    rng: random.Random | int = 0,
    max_tries_per_word: int = 3,
    attack_segments: str = "both",
) -> dict[str, Any]:
    """Flip a classifier's prediction with character typos in as few important words as possible (black box).

    1. Importance: each word is deleted in turn; words are ranked by how much that lowers the true-class
       probability (ties keep the word order). A deletion that would leave a text (or one side of a pair) empty is
       not scored, and the word ranks as if deleting it changed nothing: no empty text is ever scored.
    2. In that order, skipping the words [`is_typo_eligible`] refuses (punctuation, single characters), up to
       `max_tries_per_word` distinct [`typo`]s of the word are scored, and the one that lowers
       the true-class probability most is kept if it lowers it at all (a word whose typos do not help is skipped and
       does not count against the budget).
    3. The attack stops as soon as the prediction is no longer `label`, or when `word_budget(budget, n)` words are
       perturbed, `n` being the number of words it may perturb.

    Sentence pairs (MNLI, QQP, MRPC): pass `words` as `(first_words, second_words)`; `predict_proba` then receives
    pairs in the same form. By default words of both sides compete in one ranking under one budget;
    `attack_segments="second"` perturbs the second side only, the usual protocol for NLI (the hypothesis is
    attacked, the premise kept, as in TextFooler and AdvGLUE), and its budget counts that side's words.

    Args:
        predict_proba: Maps a list of texts (each a list of words, or a pair of them) to class probabilities (N, C).
        words: The words of the text to attack, or a pair `(first_words, second_words)`.
        label: Its true class.
        budget: Fraction in [0, 1] of the attackable words that may be perturbed.
        rng: A `random.Random` or an int seed, for the typos.
        max_tries_per_word: Typos tried per word (>= 1).
        attack_segments: For a pair, the side(s) that may be perturbed: "both", "first" or "second". A single text
            takes only "both".

    Returns:
        `{"words": the (possibly) perturbed words, in the form given (a pair comes back as a tuple of two lists),
        "success": whether the prediction flipped, "perturbed": words changed, "queries": texts sent to
        predict_proba, "clean_correct": whether the clean prediction was right}`.
        If the clean prediction is already wrong, nothing is attacked and `success` is False.
    """
    segments = _segments_of("words", words)
    if max_tries_per_word < 1:
        raise ValueError(f"`max_tries_per_word` must be >= 1, got {max_tries_per_word}.")
    positions = _attackable(segments, attack_segments)
    limit = word_budget(budget, len(positions))
    rng = as_rng(rng)
    probabilities = _query(predict_proba, [_as_text(segments)])[0]
    queries = 1
    if not 0 <= label < probabilities.shape[0]:
        raise ValueError(f"`label` is {label}, but `predict_proba` gives {probabilities.shape[0]} classes.")
    clean_correct = int(probabilities.argmax()) == label
    result = {"words": _as_text(segments), "success": False, "perturbed": 0, "queries": queries,
              "clean_correct": clean_correct}
    if not clean_correct or limit == 0:
        return result

    true_probability = probabilities[label]
    scored_positions = [p for p in positions if len(segments[p[0]]) > 1]  # deleting a lone word empties its side
    drops = dict.fromkeys(positions, 0.0)
    if scored_positions and len(positions) > 1:  # a single attackable word needs no ranking
        deletions = [_as_text(_replaced(segments, p, None)) for p in scored_positions]
        lowered = true_probability - _query(predict_proba, deletions)[:, label]
        queries += len(deletions)
        drops.update(zip(scored_positions, lowered.tolist(), strict=True))
    order = sorted(positions, key=lambda p: -drops[p])

    perturbed = 0
    for position in order:
        if perturbed >= limit:
            break
        word = segments[position[0]][position[1]]
        if not is_typo_eligible(word):  # as in perturb_characters: a typo in "." or "a" is no misspelling
            continue
        candidates: list[str] = []
        for _ in range(max_tries_per_word):
            candidate = typo(word, rng)
            if candidate != word and candidate not in candidates:
                candidates.append(candidate)
        if not candidates:
            continue
        variants = [_replaced(segments, position, candidate) for candidate in candidates]
        scored = _query(predict_proba, [_as_text(variant) for variant in variants])
        queries += len(variants)
        best = int(scored[:, label].argmin())
        if scored[best, label] >= true_probability:
            continue
        segments = variants[best]
        true_probability = scored[best, label]
        perturbed += 1
        if int(scored[best].argmax()) != label:
            result["success"] = True
            break
    result.update(words=_as_text(segments), perturbed=perturbed, queries=queries)
    return result


def attack_accuracy(
    predict_proba: Callable[[list[Any]], np.ndarray],
    examples: Sequence[Sequence[str] | tuple[Sequence[str], Sequence[str]]],
    labels: Sequence[int],
    budget: float = 0.3,
    seed: int = 0,
    *,
    max_tries_per_word: int = 3,
    attack_segments: str = "both",
) -> dict[str, float]:
    """Accuracy before and after [`greedy_word_attack`] on every example.

    Args:
        predict_proba: As for `greedy_word_attack`.
        examples: The texts, each a list of words or a pair `(first_words, second_words)`.
        labels: Their true classes.
        budget: Fraction of each text's attackable words that may be perturbed.
        seed: Seeds one `random.Random` used for all examples in order.
        max_tries_per_word: As for `greedy_word_attack`.
        attack_segments: As for `greedy_word_attack`: which side of each pair may be perturbed.

    Returns:
        `{"clean_accuracy", "attacked_accuracy", "attack_success_rate"}`, where the success rate is the number of
        flipped predictions over the number of examples that were predicted correctly (0 if none was).
    """
    if len(examples) != len(labels):
        raise ValueError(f"Got {len(examples)} examples but {len(labels)} labels; pass one label per example.")
    if not examples:
        raise ValueError("`examples` is empty; pass at least one text to attack.")
    rng = random.Random(seed)
    correct = flipped = 0
    for words, label in zip(examples, labels, strict=True):
        outcome = greedy_word_attack(
            predict_proba, words, int(label), budget=budget, rng=rng, max_tries_per_word=max_tries_per_word,
            attack_segments=attack_segments,
        )
        correct += outcome["clean_correct"]
        flipped += outcome["success"]
    total = len(examples)
    results = {
        "clean_accuracy": correct / total,
        "attacked_accuracy": (correct - flipped) / total,
        "attack_success_rate": flipped / correct if correct else 0.0,
    }
    logger.info("Greedy word attack (budget %.2f): %s", budget, results)
    return results


def model_predict_proba(
    model: torch.nn.Module, tokenizer: Any, *, batch_size: int = 32, max_length: int | None = None
) -> Callable[[list[Any]], np.ndarray]:
    """A `predict_proba` for the attacks above from a sequence-classification model and its tokenizer.

    Each text's words are joined with spaces and tokenized as running text, as a classifier reads it in training
    (pre-split words would lose the word-start marks of byte-level BPE tokenizers such as RoBERTa's), padded and
    truncated to `max_length`, and run in eval mode without gradient on the model's device; the model's train/eval
    mode is restored after each call. A sentence pair `(first_words, second_words)` is tokenized as a pair
    (`tokenizer(first, second)`: separator and `token_type_ids` as in fine-tuning on MNLI or MRPC).

    Returns:
        A function from a list of N texts (lists of words, or all pairs of them) to softmax probabilities, an (N, C)
        float64 array. It raises `ValueError` for a text that encodes to no tokens at all (an empty text, with a
        tokenizer that adds no special tokens), which a model could only score from padding, and for a call that
        mixes single texts and pairs.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    if task_of(model) == TOKEN_CLASSIFICATION:  # (a model of one's own, named otherwise, is taken to classify texts)
        raise ValueError(
            f"The model is a token classifier ({type(_base(model)).__name__}); the text-level attacks that score a "
            "whole text (`attack_accuracy`, `model_predict_proba`) need a sequence classifier. For a token "
            "classifier, perturb the dataset (`perturb_characters`, `swap_entities`, ...) and score it with "
            "`Trainer.evaluate`."
        )
    positions = _max_length(model) if hasattr(_base(model), "config") else None
    if max_length is None and positions is not None and not 0 < (tokenizer.model_max_length or 0) <= positions:
        # A tokenizer that does not know the model's limit would not truncate at all, and a long text would fail
        # inside the model's position embeddings.
        max_length = positions

    def all_pairs(texts: list[Any]) -> bool:
        pairs = [is_text_pair(text) for text in texts]
        if any(pairs) and not all(pairs):
            single = pairs.index(False)
            raise ValueError(
                f"Text {single} of this call ({texts[single]!r}) is a single list of words while text "
                f"{pairs.index(True)} is a sentence pair: a classifier reads one or the other. Pass every text as a "
                "pair `(first_words, second_words)`, or none."
            )
        return bool(pairs) and pairs[0]

    def encode(texts: list[Any], pairs: bool) -> Any:
        options = {"padding": True, "truncation": True, "max_length": max_length, "return_tensors": "pt"}
        if pairs:
            return tokenizer([" ".join(first) for first, _ in texts], [" ".join(second) for _, second in texts],
                             **options)
        return tokenizer([" ".join(words) for words in texts], **options)

    def predict_proba(texts: list[Any]) -> np.ndarray:
        device = next(model.parameters()).device
        pairs = all_pairs(texts)
        chunks = []
        with eval_mode(model), torch.no_grad():
            for start in range(0, len(texts), batch_size):
                encoding = encode(texts[start : start + batch_size], pairs).to(device)
                empty = (encoding["attention_mask"].sum(-1) == 0).nonzero().flatten().tolist()
                if empty:
                    raise ValueError(
                        f"The text {start + empty[0]} of this call ({texts[start + empty[0]]!r}) has no tokens: this "
                        "tokenizer adds no special tokens (GPT-2 and Llama-style ones do not), so an empty text leaves "
                        "the model nothing to read. Leave empty texts out of the examples."
                    )
                logits = model_logits(model(**encoding))
                chunks.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
        return np.concatenate(chunks, axis=0).astype(np.float64)

    return predict_proba
