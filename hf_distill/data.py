"""Reading task data: CoNLL column files for NER, csv/tsv/json files for text classification.

Token classification follows the recipe of Transformers' ``run_ner.py`` example: words are tokenised
with ``is_split_into_words=True`` and only the first sub-word of each word keeps the word's label;
every other position gets ``-100`` so that losses and metrics ignore it.

Malformed input fails early with a ``ValueError`` (or ``FileNotFoundError``) that names the file, the line or row,
and the fix, rather than as a parser traceback from deep inside ``datasets`` or as a silently wrong dataset.

References:
    - CoNLL-2003 shared task format: Tjong Kim Sang & De Meulder (2003), "Introduction to the
      CoNLL-2003 Shared Task: Language-Independent Named Entity Recognition".
    - IOB2 tagging: Ramshaw & Marcus (1995); ``B-<type>`` opens an entity, ``I-<type>`` continues it.
    - IOB1 vs IOB2: Tjong Kim Sang & Veenstra (1999), "Representing Text Chunks". In IOB1 an entity opens with
      ``I-<type>``; ``B-<type>`` only separates two adjacent entities of the same type.
"""

from __future__ import annotations

import csv
import difflib
import json
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import datasets
import pyarrow as pa
import pyarrow.compute as pc
from datasets.exceptions import DatasetGenerationError
from tokenizers import pre_tokenizers
from transformers.utils import logging

from .checks import is_placeholder_label
from .views import TEACHER_VIEW_KEYS, TEACHER_VIEW_PREFIX

logger = logging.get_logger(__name__)

IGNORE_INDEX = -100
"""Label id that losses (``CrossEntropyLoss(ignore_index=-100)``) and metrics skip."""

_DOCSTART = "-DOCSTART-"
_COLUMN_SEPARATOR = re.compile(r"[ \t\f\v]+")  # ASCII blanks: a CoNLL token may hold a no-break space
_TEXT_FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}
_TAG_SCHEMES = ("iob2", "iob1")
_IOBES_PREFIXES = ("S", "E", "L", "U")
_UNBOUNDED_LENGTH = 10**12
"""A ``model_max_length`` above this means the tokenizer does not know the model's limit (transformers uses 1e30)."""
_JSON_EXAMPLE = '{"sentence": "a great movie", "label": 1}'


# ---- files -------------------------------------------------------------------------------------------------------


def _require_file(path: str, description: str, extensions: Iterable[str] | None = None) -> None:
    """Raise unless ``path`` is an existing file; a directory or a near-miss name gets a suggestion."""
    if os.path.isdir(path):
        wanted = None if extensions is None else set(extensions)
        names = sorted(
            name
            for name in os.listdir(path)
            if os.path.isfile(os.path.join(path, name))
            and (wanted is None or os.path.splitext(name)[1].lower() in wanted)
        )
        if names:
            shown = ", ".join(repr(os.path.join(path, name)) for name in names[:5])
            hint = f"Pass one of the files in it: {shown}{', ...' if len(names) > 5 else ''}."
        else:
            hint = "It holds no data file; pass the path of the file itself."
        raise ValueError(f"{description} {path!r} is a directory, not a file. {hint}")
    if os.path.isfile(path):
        return
    parent = os.path.dirname(path) or "."
    if os.path.isdir(parent):
        close = difflib.get_close_matches(os.path.basename(path), os.listdir(parent), n=3)
        hint = f" Did you mean {' or '.join(repr(os.path.join(parent, name)) for name in close)}?" if close else ""
    else:
        hint = f" Its directory {parent!r} does not exist either."
    raise FileNotFoundError(
        f"{description} {path!r} does not exist. Check the path (relative paths start from {os.getcwd()!r}).{hint}"
    )


def _first_lines(path: str, limit: int) -> list[bytes]:
    """The first ``limit`` non-blank lines of a file, stripped; fewer if the file has fewer."""
    lines: list[bytes] = []
    with open(path, "rb") as handle:
        for line in handle:
            if line.strip():
                lines.append(line.strip())
                if len(lines) == limit:
                    break
    return lines


def _not_utf8_error(path: str) -> ValueError:
    """A ValueError naming the line of the first byte that is not UTF-8."""
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        where = f"line {line} has the byte {raw[error.start]:#04x}, which is not valid UTF-8"
    else:
        where = "it has bytes that are not valid UTF-8"
    name = os.path.basename(path)
    return ValueError(
        f"{path} is not UTF-8 text: {where}. Re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 {name} > "
        f"utf8-{name}` for a Latin-1 file."
    )


# ---- CoNLL -------------------------------------------------------------------------------------------------------


def _entity_type(tag: str) -> str | None:
    """Return the entity type of an IOB tag (``"B-PER"`` -> ``"PER"``), ``None`` for ``"O"``.

    Raises ``ValueError`` for anything else, so that callers can add a file name and line number.
    """
    if tag == "O":
        return None
    prefix, sep, entity = tag.partition("-")
    if sep and prefix in ("B", "I") and entity:
        return entity
    if not sep:
        hint = (
            f"A bare type such as {tag!r} (IO tagging) must become 'B-{tag}' on an entity's first word and "
            f"'I-{tag}' on the words after it, or pass `label_names` listing every tag the file uses to keep the "
            "tags as they are."
        )
    elif prefix in _IOBES_PREFIXES:
        hint = (
            "It looks like IOBES/BILOU tagging: convert the file to IOB2 by mapping 'S-'/'U-' to 'B-' and "
            "'E-'/'L-' to 'I-', or pass `label_names` listing every tag the file uses."
        )
    else:
        hint = "Fix the tag, or pass `label_names` listing every tag the file uses."
    raise ValueError(f"tag {tag!r} is not an IOB2 tag: expected 'O', 'B-<type>' or 'I-<type>'. {hint}")


def conll_label_names(tags: Iterable[str]) -> list[str]:
    """Build an IOB2 label list from the tags seen in a corpus.

    The list is ``"O"`` first, then for each entity type in sorted order ``"B-<type>"`` and ``"I-<type>"``. Both
    tags of a type are always listed, even if the corpus only uses one of them, so that the label ids do not depend
    on which tags happen to occur in a split.

    Args:
        tags: Every tag of a corpus (repeats are fine), e.g. ``["O", "B-PER", "I-PER", "B-LOC"]``.

    Returns:
        For the example: ``["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]``.

    Raises:
        ValueError: A tag is neither ``"O"`` nor ``"B-<type>"``/``"I-<type>"``.
    """
    entity_types = {entity for entity in map(_entity_type, set(tags)) if entity is not None}
    names = ["O"]
    for entity in sorted(entity_types):
        names.extend((f"B-{entity}", f"I-{entity}"))
    return names


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
    """Convert the tags of one sentence from IOB1 to IOB2.

    IOB1 opens an entity with ``I-<type>`` and uses ``B-<type>`` only where an entity directly follows another of
    the same type; IOB2 opens every entity with ``B-<type>``. So an ``I-<type>`` at the start of the sentence, after
    ``"O"`` or after a tag of another type becomes ``B-<type>``, and every other tag is kept. IOB2 input is returned
    unchanged.

    Args:
        tags: One sentence's tags, e.g. ``["I-PER", "I-PER", "O", "I-LOC", "B-LOC"]``.

    Returns:
        For the example: ``["B-PER", "I-PER", "O", "B-LOC", "B-LOC"]``.

    Raises:
        ValueError: A tag is neither ``"O"`` nor ``"B-<type>"``/``"I-<type>"``.
    """
    converted = []
    previous_entity = None
    for tag in tags:
        entity = _entity_type(tag)
        if entity is not None and tag.startswith("I-") and entity != previous_entity:
            tag = f"B-{entity}"
        converted.append(tag)
        previous_entity = entity
    return converted


def _split_conll_lines(path: str) -> tuple[list[list[str]], list[list[str]], list[int]]:
    """Parse a CoNLL file into sentences of tokens and tags, plus the line number of each tag (for errors)."""
    all_tokens: list[list[str]] = []
    all_tags: list[list[str]] = []
    tag_lines: list[int] = []
    tokens: list[str] = []
    tags: list[str] = []
    n_columns = None
    seen_content = False

    try:
        with open(path, encoding="utf-8-sig") as handle:  # -sig: a byte-order mark is not part of the first token
            for line_number, line in enumerate(handle, start=1):
                # Columns are split on ASCII spaces and tabs only: a token may be or hold another space character
                # (a no-break space, which spaCy exports as a token), which str.split() would cut.
                columns = _COLUMN_SEPARATOR.split(line.strip(" \t\r\n\f\v"))
                columns = [] if columns == [""] else columns
                if not columns or columns[0] == _DOCSTART:  # a document start also ends the sentence before it
                    seen_content = seen_content or bool(columns)
                    if tokens:
                        all_tokens.append(tokens)
                        all_tags.append(tags)
                        tokens, tags = [], []
                    continue
                seen_content = True
                if len(columns) == 1:
                    raise ValueError(
                        f"{path}, line {line_number}: found a single column ({columns[0]!r}), but a CoNLL token line "
                        "needs the token in the first column and its tag in the last, separated by whitespace. Add "
                        "the tag, or check that the file is not tokenised text without labels."
                    )
                if n_columns is None:
                    n_columns = len(columns)
                elif len(columns) != n_columns:
                    raise ValueError(
                        f"{path}, line {line_number}: ragged columns, found {len(columns)} columns but the first "
                        f"token line has {n_columns}. Every token line must have the same number of "
                        "whitespace-separated columns; check for a token containing a space or a missing column on "
                        "this line."
                    )
                tokens.append(columns[0])
                tags.append(columns[-1])
                tag_lines.append(line_number)
    except UnicodeDecodeError:
        raise _not_utf8_error(path) from None

    if tokens:
        all_tokens.append(tokens)
        all_tags.append(tags)
    if not seen_content:
        blank = " (it holds only whitespace)" if os.path.getsize(path) else ""
        raise ValueError(
            f"{path} is empty{blank}: expected CoNLL lines `token ... tag` with blank lines between sentences. "
            "Check that the file was written completely and that this is the file you meant."
        )
    if not all_tokens:
        raise ValueError(
            f"{path} has no sentences (only {_DOCSTART} lines and blank lines). Check that this is the right file."
        )
    return all_tokens, all_tags, tag_lines


def _check_tag_shapes(path: str, all_tags: list[list[str]], tag_lines: list[int]) -> None:
    """Raise, naming the line, on the first tag that is not ``O``/``B-<type>``/``I-<type>``."""
    line_index = 0
    for sentence_tags in all_tags:
        for tag in sentence_tags:
            try:
                _entity_type(tag)
            except ValueError as error:
                raise ValueError(f"{path}, line {tag_lines[line_index]}: {error}") from None
            line_index += 1


def _check_iob2(path: str, all_tags: list[list[str]], tag_lines: list[int]) -> None:
    """Raise if an ``I-<type>`` opens an entity, which IOB2 forbids and IOB1 does; count how often it happens."""
    first = None
    n_entities = n_opened_by_i = 0
    line_index = 0
    for sentence_tags in all_tags:
        previous_tag, previous_entity = None, None
        for tag in sentence_tags:
            entity = _entity_type(tag)
            if entity is not None and (tag.startswith("B-") or entity != previous_entity):
                n_entities += 1
                if tag.startswith("I-"):
                    n_opened_by_i += 1
                    if first is None:
                        where = "at the start of a sentence" if previous_tag is None else f"after {previous_tag!r}"
                        first = (tag_lines[line_index], tag, where)
            previous_tag, previous_entity = tag, entity
            line_index += 1
    if first is not None:
        line, tag, where = first
        raise ValueError(
            f"{path}, line {line}: tag {tag!r} opens an entity ({where}), but in IOB2 every entity opens with "
            f"'B-<type>' and 'I-<type>' only continues one. {n_opened_by_i} of {n_entities} entities in the file open "
            "with 'I-', so the file looks like IOB1 tagging (as in the original CoNLL-2003 release). Pass "
            "`tag_scheme='iob1'` to convert it to IOB2 while reading (each sentence goes through "
            "`hf_distill.data.iob1_to_iob2`); if only a few entities are affected, they are annotation errors: fix "
            "those tags in the file."
        )


def read_conll(
    path: str | os.PathLike,
    label_names: Sequence[str] | None = None,
    *,
    tag_scheme: Literal["iob2", "iob1"] = "iob2",
) -> datasets.Dataset:
    """Read a CoNLL column file (e.g. CoNLL-2003 ``token POS chunk NER``) into a ``datasets.Dataset``.

    Each non-blank line holds whitespace-separated columns: the token comes first and its tag last, any columns in
    between (POS, chunk) are ignored. Blank lines separate sentences, and ``-DOCSTART-`` lines are skipped.

    Args:
        path: The file to read (UTF-8).
        label_names: The label list that fixes the ``ner_tags`` ids, e.g. the teacher's ``id2label`` values in id
            order. If ``None``, it is derived from the file with [`conll_label_names`]. Pass the same list for the
            train, validation and test files so that their ids agree.
        tag_scheme: ``"iob2"`` (the default): the tags must be IOB2, where every entity opens with ``B-<type>``;
            an ``I-<type>`` that opens an entity is an error. ``"iob1"``: the file is IOB1 and each sentence is
            converted to IOB2 with [`iob1_to_iob2`] while reading.

    Returns:
        A dataset with one row per sentence and features ``id`` (string, ``"0"``, ``"1"``, ...), ``tokens``
        (list of strings) and ``ner_tags`` (list of ``ClassLabel(names=label_names)`` ids), one IOB2 tag per token.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is a directory or not UTF-8; the file is empty or has no sentences; a line has a single
            column, or a different number of columns from the first token line; a tag is not in ``label_names``;
            (when deriving the labels) a tag is not an IOB2 tag; or (with IOB tags) an ``I-<type>`` opens an entity.
    """
    if tag_scheme not in _TAG_SCHEMES:
        raise ValueError(f"`tag_scheme` must be one of {list(_TAG_SCHEMES)}, got {tag_scheme!r}.")
    path = os.fspath(path)
    _require_file(path, "CoNLL file")
    all_tokens, all_tags, tag_lines = _split_conll_lines(path)
    written = all_tags  # as in the file, for messages

    if tag_scheme == "iob1":
        _check_tag_shapes(path, all_tags, tag_lines)
        all_tags = [iob1_to_iob2(sentence_tags) for sentence_tags in all_tags]

    if label_names is None:
        _check_tag_shapes(path, all_tags, tag_lines)
        label_names = conll_label_names(tag for sentence_tags in all_tags for tag in sentence_tags)
        logger.info("Derived %d labels from %s: %s", len(label_names), path, label_names)
    else:
        label_names = list(label_names)
        if len(set(label_names)) != len(label_names):
            duplicates = sorted({name for name in label_names if label_names.count(name) > 1})
            raise ValueError(f"`label_names` lists {duplicates} more than once; each label must appear exactly once.")

    label_to_id = {name: index for index, name in enumerate(label_names)}
    all_ids: list[list[int]] = []
    line_index = 0
    for sentence_tags in all_tags:
        ids = []
        for tag in sentence_tags:
            tag_id = label_to_id.get(tag)
            if tag_id is None:
                as_written = written[len(all_ids)][len(ids)]
                if as_written != tag:
                    tag = f"{as_written!r} ({tag} once converted from IOB1)"
                else:
                    tag = repr(tag)
                raise ValueError(
                    f"{path}, line {tag_lines[line_index]}: tag {tag} is not one of the known labels {label_names}. "
                    "Pass `label_names` that include it (for a fine-tuned teacher, its `config.id2label` values), or "
                    "leave `label_names=None` to derive the labels from the file."
                )
            ids.append(tag_id)
            line_index += 1
        all_ids.append(ids)
    if all(_is_iob_tag(name) for name in label_names):  # always true for derived labels
        _check_iob2(path, all_tags, tag_lines)

    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=label_names)),
        }
    )
    data = {"id": [str(index) for index in range(len(all_tokens))], "tokens": all_tokens, "ner_tags": all_ids}
    logger.info("Read %d sentences (%d tokens) from %s", len(all_tokens), len(tag_lines), path)
    return datasets.Dataset.from_dict(data, features=features)


def _is_iob_tag(tag: str) -> bool:
    try:
        _entity_type(tag)
    except ValueError:
        return False
    return True


# ---- token classification: sub-word alignment -------------------------------------------------------------------


def _check_token_batch(examples: dict[str, list[Any]], tokens_column: str, tags_column: str) -> None:
    """Raise on words that are not pre-split, tags that are strings, or a tag count that differs from the words."""
    for batch_index, words in enumerate(examples[tokens_column]):
        if isinstance(words, str):
            raise ValueError(
                f"Column {tokens_column!r} holds whole strings (e.g. {words[:40]!r}), but label alignment needs each "
                "sentence as a list of words. Split the text into words first (the words the tags belong to), or, "
                "for one label per text, tokenise it as sequence classification instead."
            )
        if tags_column not in examples:
            continue
        word_tags = examples[tags_column][batch_index]
        if word_tags and isinstance(word_tags[0], str):
            raise ValueError(
                f"Column {tags_column!r} holds tag strings (e.g. {word_tags[0]!r}), but label ids are needed. Read "
                "the data with `read_conll` (a ClassLabel feature), or map the tags to ids first with the teacher's "
                "`config.label2id`: `[label2id[tag] for tag in tags]`."
            )
        if len(word_tags) != len(words):
            raise ValueError(
                f"Example {batch_index} of the batch has {len(words)} words but {len(word_tags)} tags "
                f"(words: {list(words[:8])}{' ...' if len(words) > 8 else ''}). Each word needs exactly one tag: "
                f"check that {tokens_column!r} and {tags_column!r} were built from the same split of the sentence."
            )


def _vanished_words(tokenizer: Any, encoding: Any, batch_words: list[list[str]],
                    limit: int | None) -> dict[int, list[int]]:
    """`{example: [word indices]}` of the words that became no sub-word at all (a zero-width space, a soft hyphen,
    an empty string: the tokenizer's normaliser strips them), truncation aside. Such a word has no position for its
    tag, which would vanish from training and from the entity references."""
    vanished = {}
    for batch_index, words in enumerate(batch_words):
        seen = {word for word in encoding.word_ids(batch_index=batch_index) if word is not None}
        # An example that fills the limit exactly may or may not have been cut: only its untruncated length says.
        truncated = limit is not None and len(encoding["input_ids"][batch_index]) >= limit and len(
            tokenizer(list(words), is_split_into_words=True, truncation=False, verbose=False)["input_ids"]) > limit
        start, end = 0, len(words)
        if truncated and getattr(tokenizer, "truncation_side", "right") == "left":  # the opening words were cut
            start = min(seen) if seen else len(words)
        elif truncated:
            end = max(seen) + 1 if seen else 0
        missing = [index for index in range(start, end) if index not in seen]
        if missing:
            vanished[batch_index] = missing
    return vanished


def _stand_in_unknown(tokenizer: Any, batch_words: list[list[str]], vanished: dict[int, list[int]]) -> list[list[str]]:
    """The batch with each vanished word replaced by the unknown token, so that it keeps a position and its tag."""
    first = next(iter(vanished))
    example = [batch_words[first][i] for i in vanished[first]][:3]
    if tokenizer.unk_token is None:
        raise ValueError(
            f"Some words tokenize to no sub-word at all (e.g. {example!r}), so their tags would be lost, and "
            f"{type(tokenizer).__name__} has no unknown token to stand in for them. Remove or replace those words "
            "before tokenizing."
        )
    count = sum(len(indices) for indices in vanished.values())
    logger.warning("%d word(s) in this batch tokenize to no sub-word at all (e.g. %r) and are encoded as %s, so "
                   "that they keep their tags.", count, example, tokenizer.unk_token)
    return [[tokenizer.unk_token if i in vanished.get(b, ()) else word for i, word in enumerate(words)]
            for b, words in enumerate(batch_words)]


def _opening_word_cut(tokenizer: Any, encoding: Any, batch_words: list[list[str]], limit: int) -> set[int]:
    """The examples of a left-truncating tokenizer whose first kept word lost its opening sub-words to the cut: what
    is left of it starts with a continuation piece (``##s``), which is no word start and must carry no label."""
    cut = set()
    for batch_index, words in enumerate(batch_words):
        word_ids = encoding.word_ids(batch_index=batch_index)
        first = next((word for word in word_ids if word is not None), None)
        if first is None or len(encoding["input_ids"][batch_index]) < limit:
            continue
        whole = tokenizer([words[first]], is_split_into_words=True, add_special_tokens=False, verbose=False)
        if sum(word == first for word in word_ids) < len(whole["input_ids"]):
            cut.add(batch_index)
    return cut


def _warn_truncated(encoding: Any, batch_words: list[list[str]], limit: int, from_tokenizer: bool,
                    left: bool = False, opening_cut: set[int] = frozenset()) -> None:
    """Warn if truncation to ``limit`` sub-words dropped whole words (which then get no label); `left` for a
    tokenizer that cuts the opening words (`truncation_side="left"`), `opening_cut` the examples whose first kept
    word lost its start (see `_opening_word_cut`)."""
    truncated = []
    for batch_index, words in enumerate(batch_words):
        if len(encoding["input_ids"][batch_index]) < limit:
            continue
        word_ids = [word for word in encoding.word_ids(batch_index=batch_index) if word is not None]
        if left:
            kept = len(words) - word_ids[0] - (batch_index in opening_cut) if word_ids else 0
        else:
            kept = word_ids[-1] + 1 if word_ids else 0
        if kept < len(words):
            truncated.append((batch_index, kept, len(words)))
    if not truncated:
        return
    batch_index, kept, n_words = truncated[0]
    opening = " ".join(batch_words[batch_index][:6]) + (" ..." if n_words > 6 else "")
    where = f"the tokenizer's model_max_length={limit}" if from_tokenizer else f"max_length={limit}"
    message = (  # the sentence is the user's text: it goes in as text, never into a %-format string
        f"{len(truncated)} of {len(batch_words)} sentences in this batch are longer than {where} sub-words and were "
        f"truncated (e.g. the sentence {opening!r} keeps {kept} of its {n_words} words): the words "
        f"{'before' if left else 'past'} the limit get no label, so they are neither trained on nor evaluated. Split long sentences before tokenising, or raise "
        "`max_length` if the model's position embeddings allow it."
    )
    if from_tokenizer:  # the limit came from the tokenizer, unasked: warn where the caller will see it
        warnings.warn(message, UserWarning, stacklevel=3)
    else:
        logger.warning("%s", message)


def word_free_special_ids(tokenizer: Any) -> list[int] | None:
    """The ids of the special tokens that stand for no word of the text ([CLS], [SEP], [PAD], ...): the tokenizer's
    `all_special_ids` and the other tokens its vocabulary marks special, without its unknown token, which stands for a word the vocabulary lacks, and its mask token,
    which augmentation writes in place of words. These positions are neither distilled (`all_subwords`) nor
    perturbed. `None` when the tokenizer does not list its special tokens."""
    ids = getattr(tokenizer, "all_special_ids", None)
    if ids is None:
        return None
    # Special tokens that the tokenizer's file marks but no `*_token` attribute names (a `tokenizers` file whose
    # post-processor adds `<s> ... </s>`, loaded with only `pad_token`): Transformers skips them too
    # (`special_tokens_mask`, `decode(skip_special_tokens=True)`).
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    unnamed = [i for i, token in added.items() if getattr(token, "special", False) and i not in ids]
    words = {getattr(tokenizer, "unk_token_id", None), getattr(tokenizer, "mask_token_id", None)}
    return [i for i in [*ids, *sorted(unnamed)] if i not in words]


def keeps_word_starts(tokenizer: Any) -> bool:
    """Whether `tokenizer` encodes pre-split words (`is_split_into_words=True`) as it encodes the running text.

    A byte-level BPE tokenizer (RoBERTa, GPT-2, BART, DeBERTa-v1) marks a word that follows a space with `Ġ`. Given
    words without `add_prefix_space=True`, it encodes each one as if it opened the text: "went" becomes `wen t`
    instead of `Ġwent`, pieces the model rarely saw in pre-training. WordPiece and SentencePiece tokenizers are
    unaffected. The test compares the second word of a two-word probe in both modes.
    """
    if not getattr(tokenizer, "is_fast", False):  # no word_ids() to compare; label alignment refuses it anyway
        return True
    probe = ["hello", "world"]
    split = tokenizer(probe, is_split_into_words=True, add_special_tokens=False)
    running = tokenizer(" ".join(probe), add_special_tokens=False)

    def second_word(encoding: Any) -> list[int]:
        return [t for t, w in zip(encoding["input_ids"], encoding.word_ids(), strict=True) if w == 1]

    return second_word(split) == second_word(running)


def add_prefix_space(tokenizer: Any) -> Any:
    """Make a byte-level BPE `tokenizer` read pre-split words as running text (see [`keeps_word_starts`]), in place.

    `AutoTokenizer.from_pretrained(name, add_prefix_space=True)` does this for RoBERTa, GPT-2 and BART, but a
    tokenizer that loads as the generic `TokenizersBackend` (ModernBERT's, and others that ship only a
    `tokenizer.json`) ignores that argument. This switches `add_prefix_space` on in the backend's `ByteLevel`
    pre-tokenizer (alone or inside a `Sequence`), which `save_pretrained` then writes into `tokenizer.json`.

    Returns:
        `tokenizer`, changed in place (unchanged if it already keeps word starts, or is a slow tokenizer, which
        label alignment refuses anyway).

    Raises:
        ValueError: it drops word starts and has no `ByteLevel` pre-tokenizer to switch, or still drops them after
            the switch.
    """
    if keeps_word_starts(tokenizer):
        return tokenizer
    pre_tokenizer = tokenizer.backend_tokenizer.pre_tokenizer
    parts = [pre_tokenizer]
    if isinstance(pre_tokenizer, pre_tokenizers.Sequence):  # its parts, by index (it has no len())
        parts = [pre_tokenizer[i] for i in range(len(json.loads(pre_tokenizer.__getstate__())["pretokenizers"]))]
    switched = [part for part in parts if isinstance(part, pre_tokenizers.ByteLevel)]
    for part in switched:
        part.add_prefix_space = True
    if switched:
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizer
        if hasattr(tokenizer, "add_prefix_space"):
            tokenizer.add_prefix_space = True
        tokenizer.init_kwargs["add_prefix_space"] = True  # as from_pretrained(..., add_prefix_space=True) records it
    if not switched or not keeps_word_starts(tokenizer):
        raise ValueError(
            f"{type(tokenizer).__name__} drops the space that starts each pre-split word, and its pre-tokenizer "
            f"({pre_tokenizer}) has no byte-level part whose `add_prefix_space` could be switched on. Tokenize running "
            "text instead of word lists, or use a WordPiece or SentencePiece tokenizer for token classification."
        )
    return tokenizer


def tokenize_and_align_labels(
    examples: dict[str, list[Any]],
    tokenizer: Any,
    *,
    max_length: int | None = None,
    tokens_column: str = "tokens",
    tags_column: str = "ner_tags",
) -> dict[str, list[Any]]:
    """Tokenise pre-split words and align word labels to sub-words, for ``Dataset.map(..., batched=True)``.

    A word's label goes to its first sub-word; its other sub-words and the special tokens get ``-100``. For the words
    ``["john", "londons"]`` tagged ``[B-PER, B-LOC]`` that split into ``[CLS] john london ##s [SEP]``, the labels
    are ``[-100, B-PER, B-LOC, -100, -100]``; a word that left truncation (``truncation_side="left"``) cut through
    has lost its first sub-word and gets no label. Nothing is padded: ``DataCollatorForTokenClassification`` pads each
    batch (and pads ``labels`` with ``-100``).

    Sentences longer than the limit are truncated, never passed on at a length the model cannot embed. When words
    (and so labels) are lost, a ``UserWarning`` says how many if the limit is the tokenizer's ``model_max_length``,
    and a logged warning if it is ``max_length``. If the tokenizer does not know the model's limit
    (``model_max_length`` unset) and ``max_length`` is ``None``, nothing is truncated and a warning is logged.

    Example:
        ``dataset.map(tokenize_and_align_labels, batched=True, fn_kwargs={"tokenizer": tokenizer},
        remove_columns=dataset.column_names)``

    Args:
        examples: A batch, ``{tokens_column: list[list[str]], tags_column: list[list[int]], ...}``. Without
            ``tags_column`` (unlabeled text) the encoding is returned without ``labels``.
        tokenizer: A fast tokenizer (``tokenizer.is_fast``), which provides ``word_ids()``.
        max_length: Truncate each encoding to this many sub-words (special tokens included); ``None`` uses the
            tokenizer's ``model_max_length``.
        tokens_column: Column holding the words of each sentence.
        tags_column: Column holding one integer label id per word.

    Returns:
        The tokenizer's encoding (``input_ids``, ``attention_mask``, ...; lists of length ``L_i <= max_length``) plus
        ``labels`` (list of ``L_i`` ints per example) when ``tags_column`` is present.

    Raises:
        ValueError: The tokenizer is not fast, or drops word starts on pre-split words (see
            [`keeps_word_starts`]); ``max_length`` leaves no room beside the special tokens; ``tokens_column`` is
            missing or holds strings instead of word lists; tags are strings instead of ids; or a sentence has more
            or fewer tags than words.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{type(tokenizer).__name__} is not a fast tokenizer, so it cannot map sub-words back to words "
            "(`word_ids()`), which label alignment needs. Load it with `AutoTokenizer.from_pretrained(name)`, which "
            "returns the fast tokenizer in transformers 5 (`use_fast=True` in older versions); if the model has no "
            "fast tokenizer, convert it with the `tokenizers` library."
        )
    if not keeps_word_starts(tokenizer):
        raise ValueError(
            f"{type(tokenizer).__name__} encodes pre-split words without the space that starts each word (a byte-level "
            "BPE tokenizer loaded with `add_prefix_space=False`, the default for RoBERTa, GPT-2 and BART), so every "
            "word would be tokenized as if it opened the sentence, unlike anything the model read in pre-training. "
            "Load it with `AutoTokenizer.from_pretrained(name, add_prefix_space=True)`, as Transformers' run_ner.py "
            "does; a tokenizer that ignores that argument (one loaded as `TokenizersBackend`, such as ModernBERT's) "
            "is switched in place by `hf_distill.add_prefix_space(tokenizer)`."
        )
    special = tokenizer.num_special_tokens_to_add() if max_length is not None else 0
    if max_length is not None and max_length <= special:  # below that the tokenizer would not truncate at all
        raise ValueError(
            f"`max_length` must be at least {special + 1} sub-words (the tokenizer's {special} special tokens and one "
            f"more), got {max_length}. Pass a larger number, or None for the tokenizer's `model_max_length`."
        )
    if isinstance(examples, datasets.Dataset | datasets.IterableDataset | datasets.DatasetDict):
        raise ValueError(
            f"`examples` is a whole {type(examples).__name__}; tokenize_and_align_labels takes a batch of rows. Map it "
            "over the dataset: `dataset.map(tokenize_and_align_labels, batched=True, fn_kwargs={'tokenizer': "
            "tokenizer}, remove_columns=dataset.column_names)`."
        )
    if tokens_column not in examples:
        raise ValueError(
            f"Column {tokens_column!r} is missing; found columns {sorted(examples)}. Pass "
            "`tokens_column=` naming the column that holds each sentence's words."
        )
    _check_token_batch(examples, tokens_column, tags_column)

    limit = tokenizer.model_max_length if max_length is None else max_length
    if limit is None or limit > _UNBOUNDED_LENGTH:
        logger.warning_once(
            f"{type(tokenizer).__name__} has no `model_max_length`, so sentences are not truncated, and one longer "
            "than the model's `max_position_embeddings` will fail in the forward pass. Pass `max_length=` (or load "
            "the tokenizer from the model's checkpoint, which sets `model_max_length`)."
        )
        limit = None
    batch_words = examples[tokens_column]
    encoding = tokenizer(batch_words, is_split_into_words=True, truncation=limit is not None, max_length=limit)
    vanished = _vanished_words(tokenizer, encoding, batch_words, limit)
    if vanished:
        batch_words = _stand_in_unknown(tokenizer, batch_words, vanished)
        encoding = tokenizer(batch_words, is_split_into_words=True, truncation=limit is not None, max_length=limit)
    left = getattr(tokenizer, "truncation_side", "right") == "left"
    opening_cut = _opening_word_cut(tokenizer, encoding, batch_words, limit) if left and limit is not None else set()
    if limit is not None:
        _warn_truncated(encoding, batch_words, limit, from_tokenizer=max_length is None, left=left,
                        opening_cut=opening_cut)
    if tags_column not in examples:
        return encoding

    labels = []
    for batch_index, word_tags in enumerate(examples[tags_column]):
        example_labels = []
        word_ids = encoding.word_ids(batch_index=batch_index)
        # a first word cut through keeps only continuation pieces: none of them is its first sub-word
        cut_word = next(word for word in word_ids if word is not None) if batch_index in opening_cut else None
        previous_word = None
        for word_index in word_ids:
            if word_index is None or word_index == previous_word or word_index == cut_word:
                example_labels.append(IGNORE_INDEX)
            else:
                example_labels.append(word_tags[word_index])
            previous_word = word_index
        labels.append(example_labels)
    encoding["labels"] = labels
    return encoding


# ---- text classification files ----------------------------------------------------------------------------------


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions it was raised from, outermost first."""
    chain = [error]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    return chain


def _json_problem(path: str) -> str:
    """Describe why a json/jsonl file is not a table of records: a syntax error with its line, or its shape."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        document = json.loads(text)
    except json.JSONDecodeError as whole_error:
        if text.lstrip().startswith("["):
            return f"invalid JSON at line {whole_error.lineno}, column {whole_error.colno}: {whole_error.msg}"
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as line_error:
                return f"invalid JSON at line {line_number}, column {line_error.colno}: {line_error.msg}"
            if not isinstance(record, dict):
                return f"line {line_number} holds a JSON {type(record).__name__}, not an object"
        return f"invalid JSON at line {whole_error.lineno}, column {whole_error.colno}: {whole_error.msg}"
    if isinstance(document, list):
        if not document:
            return "it is an empty list, with no rows"
        odd = next((item for item in document if not isinstance(item, dict)), None)
        if odd is not None:
            return f"the list holds a JSON {type(odd).__name__} ({odd!r:.40}), not an object"
        return "its objects could not be combined into one table"
    if isinstance(document, dict):
        return "it is a single object; the rows must be objects, one per line or in a list"
    return f"it holds a single JSON {type(document).__name__}, not rows"


def _unreadable_file_error(path: str, extension: str, error: Exception) -> ValueError:
    """Turn a parser error from ``datasets.load_dataset`` into one that names the problem and the fix."""
    chain = _chain(error)
    if any(isinstance(link, UnicodeDecodeError) for link in chain):
        return _not_utf8_error(path)
    if _TEXT_FILE_BUILDERS[extension] == "json":
        return ValueError(
            f"{path} is not a JSON table of rows: {_json_problem(path)}. Expected JSON Lines, one object per line "
            f"such as {_JSON_EXAMPLE} (or one list of such objects); fix the file, or write it with "
            "`Dataset.to_json(path)` or `DataFrame.to_json(path, orient='records', lines=True)`."
        )
    detail = str(chain[-1]).strip()
    if extension == ".tsv":
        fix = "a .tsv is split on tabs with no quoting, so a text containing a tab must have it replaced"
    else:
        fix = 'quote a text that contains the delimiter, e.g. `"good, not great",1`'
    return ValueError(
        f"{path} could not be parsed as {extension[1:]}: {detail}. Every row needs the header's number of fields; "
        f"{fix}."
    )


def _check_first_row_width(path: str, first_lines: list[bytes], delimiter: str, quoting: int) -> None:
    """Refuse a first data row with more fields than the header: pandas would take its first field for an index
    column, silently shifting every text (or blame a later, correct row)."""
    header, row = (next(csv.reader([line.decode("utf-8", errors="replace")], delimiter=delimiter, quoting=quoting))
                   for line in first_lines)
    if len(row) > len(header):
        raise ValueError(
            f"{path}: row 0 (line 2) has {len(row)} fields, but the header has {len(header)} ({header}): "
            + ("a .tsv is split on tabs with no quoting, so a text containing a tab must have it replaced."
               if delimiter == "\t" else 'quote a text that contains the delimiter, e.g. `"good, not great",1`.')
        )


def _column_typed_apart_error(path: str, options: dict[str, Any], label_column: str | None,
                              text_columns: Sequence[str | None]) -> ValueError | None:
    """The error for a csv column whose type, inferred from its first rows, a later row does not fit (a blank or a
    name among integer labels): found by reading every column as text, with the row that breaks it."""
    import pandas as pd

    frame = pd.read_csv(path, dtype=str, keep_default_na=False, sep=options.get("delimiter", ","),
                        quoting=options.get("quoting", csv.QUOTE_MINIMAL))
    for column in frame.columns:
        if column in text_columns:
            continue
        values = frame[column].tolist()
        fits = _fits_int if _fits_int(values[0]) else _fits_float if _fits_float(values[0]) else None
        row = next((i for i, value in enumerate(values) if not fits(value)), None) if fits else None
        if row is not None:
            value = values[row]
            shown = value if _fits_float(value) else repr(value)
            kind = "integer" if fits is _fits_int else "number"
            return ValueError(
                f"{path}: the {'label ' if column == label_column else ''}column {column!r} holds {shown} in row {row} "
                f"(`dataset[{row}]`), where the rows before it hold {kind}s (a csv column is typed from its first "
                "rows). Write every value of the column alike: labels as integer class ids 0..num_labels-1, or all "
                "as label names with `label_names=[...]`; fill in or drop a row without a label."
            )
    return None


def _fits_int(value: str) -> bool:
    return re.fullmatch(r"\s*[-+]?\d+\s*", value) is not None


def _fits_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _header_hint(found: list[str], extension: str, delimiter: str | None) -> str:
    """A hint when the columns found suggest a wrong delimiter or a file without a header row."""
    if len(found) == 1 and delimiter is None:
        if extension == ".tsv" and "," in found[0]:
            return (
                " The header looks comma-separated, but a .tsv is split on tabs: rename the file to .csv, or pass "
                "`delimiter=','`."
            )
        if extension == ".csv" and "\t" in found[0]:
            return (
                " The header looks tab-separated, but a .csv is split on commas: rename the file to .tsv, or pass "
                "`delimiter='\\t'`."
            )
    if extension in (".csv", ".tsv") and any(_is_digits(name) for name in found):
        return " The first row looks like data, not a header: add a header row naming the columns."
    return ""


def _first_null(dataset: datasets.Dataset, column: str) -> int | None:
    if dataset.data.column(column).null_count == 0:
        return None
    return next(row for row, value in enumerate(dataset[column]) if value is None)


def _first_blank(dataset: datasets.Dataset, column: str) -> int | None:
    """The first row whose text in `column` is empty or only whitespace (a blank csv cell reads as "")."""
    blank = pc.equal(pc.utf8_trim_whitespace(dataset.data.column(column)), "")
    if not pc.any(blank).as_py():
        return None
    return pc.index(blank, True).as_py()


def _is_class_id(value: Any) -> bool:
    """An int, or a float with a whole value (``1.0``); not a bool."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def label_name_lookup(names: Sequence[str]) -> Callable[[str], int | None]:
    """`id_of(value)`: the id of a label name as written or, where no two names differ only in case, in any case (a
    teacher's `NEGATIVE` is the data's `negative`); None for a value that names no label."""
    exact = {str(name): i for i, name in enumerate(names)}
    lowered = {str(name).lower(): i for i, name in enumerate(names)}
    if len(lowered) < len(exact):
        return exact.get
    return lambda value: exact.get(value, lowered.get(str(value).lower()))


def cast_label_names(dataset: datasets.Dataset, column: str, names: Sequence[str]) -> datasets.Dataset:
    """A column of label names (checked with [`label_name_lookup`]; nulls kept) as a `ClassLabel` of `names`,
    a name written in another case first spelled as `names` has it."""
    names = list(names)
    id_of = label_name_lookup(names)
    if any(value is not None and value not in names for value in dataset.unique(column)):
        dataset = dataset.map(lambda batch: {column: [None if v is None else names[id_of(v)] for v in batch[column]]},
                              batched=True)
    return dataset.cast_column(column, datasets.ClassLabel(names=names))


def _is_digits(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lstrip("-").isdigit()


def _is_unlabelled(value: Any) -> bool:
    """-100, the id of a row without a label, written as a number or as text."""
    return (_is_class_id(value) and value == IGNORE_INDEX) or (_is_digits(value) and int(value) == IGNORE_INDEX)


def _digit_names_as_ids(values: Sequence[int], names: Sequence[str], path: str) -> dict[int, int] | None:
    """Integer labels that are the teacher's label names ("1", "2", "3" for star ratings) rather than ids: `{value:
    id}` when every value (but -100) is one of `names` and some are not their own id, else None. A value that can only
    be an id (one that names no class) keeps the column ids; where both readings are possible the names are taken,
    as a JSON file's `"1"` is, with a warning."""
    if not names or not all(_is_digits(name) for name in names):
        return None
    index = {int(name): i for i, name in enumerate(names)}
    used = {int(v) for v in values if v != IGNORE_INDEX}
    if not used <= index.keys() or all(index[v] == v for v in used):
        return None
    if all(0 <= v < len(names) for v in used):
        logger.warning(
            "%s: the labels %s are read as the label names %s (in id order), not as the ids 0..%d, as a JSON file's "
            "\"1\" would be. If they are ids, load the file without `label_names`.",
            path, sorted(used), list(names), len(names) - 1,
        )
    return index


def _integer_labels(
    dataset: datasets.Dataset, path: str, label_column: str, label_names: Sequence[str] | None
) -> datasets.Dataset:
    """Check that every row has an integer label id, mapping label names to ids first when ``label_names`` is given."""
    row = _first_null(dataset, label_column)
    if row is not None:
        raise ValueError(
            f"{path}: row {row} (`dataset[{row}]`) has no value in the label column {label_column!r}. Every labelled "
            "row needs a class id: fill it in or drop the row, or load unlabeled text with `label_column=None`."
        )
    feature = dataset.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return dataset
    if isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
        return _digit_names_mapped(dataset, path, label_column, label_names)
    values = list(dataset[label_column])
    blank = next((row for row, value in enumerate(values) if isinstance(value, str) and not value.strip()), None)
    if blank is not None:  # (one blank cell makes a column of ids text: it must not be blamed on an id)
        raise ValueError(
            f"{path}: row {blank} (`dataset[{blank}]`) has an empty label in {label_column!r}. Fill it in, drop the "
            "row, or write -100 for a row without a label (which `pseudo_label_threshold` can label from the "
            "teacher)."
        )
    names = list(label_names) if label_names is not None else []
    id_of = label_name_lookup(names)
    ids_as_text = all(_is_digits(value) for value in values) and not all(
        id_of(value) is not None or _is_unlabelled(value) for value in values)
    named = all(isinstance(value, str) for value in values) or any(
        isinstance(value, str) and id_of(value) is not None for value in values)  # (a number among names: named)
    if label_names is not None and named and not ids_as_text:
        for row, value in enumerate(values):
            if id_of(value) is None and not _is_unlabelled(value):
                advice = (
                    "These are placeholders (`LABEL_<i>`, the id2label of a model saved without label names): write "
                    "the labels as ids 0..num_labels-1, or name the classes (a teacher's `id2label` in its "
                    "config.json, which the recipes read)." if all(is_placeholder_label(n) for n in names) else
                    "Add it to `label_names` (in id order; the recipes take them from the teacher's `id2label`), or "
                    "fix the row."
                )
                raise ValueError(
                    f"{path}: row {row} (`dataset[{row}]`) has the label {value!r}, which is not one of `label_names` "
                    f"{names}. {advice}"
                )
        if any(_is_unlabelled(value) for value in values):  # a ClassLabel holds no -100: ids, as a file of ids gives
            return dataset.map(
                lambda batch: {label_column: [IGNORE_INDEX if _is_unlabelled(v) else id_of(v) for v in batch[label_column]]},
                batched=True, features=datasets.Features({**dataset.features, label_column: datasets.Value("int64")}),
            )
        return cast_label_names(dataset, label_column, names)
    # Report a value that is no number at all before a quoted number ("1"), which a mixed column also holds.
    bad = [(row, value) for row, value in enumerate(values) if not _is_class_id(value)]
    if bad:
        row, value = next(((row, value) for row, value in bad if not _is_digits(value)), bad[0])
        quoted = f" (a quoted number: write {value.strip()}, not {value!r})" if _is_digits(value) else ""
        raise ValueError(
            f"{path}: the label column {label_column!r} holds {value!r} in row {row} (`dataset[{row}]`), which is "
            f"not an integer class id{quoted}. Labels must be ids 0..num_labels-1: write the ids, or pass "
            "`label_names=[...]` (in id order, e.g. the teacher's `config.id2label` values) to map label names "
            "to ids."
        )
    logger.info("Casting the labels of %s (all whole numbers) to int64", path)
    return _digit_names_mapped(dataset.cast_column(label_column, datasets.Value("int64")), path, label_column,
                               label_names)


def _digit_names_mapped(
    dataset: datasets.Dataset, path: str, label_column: str, label_names: Sequence[str] | None
) -> datasets.Dataset:
    """An int64 label column, its values mapped to ids by name where they are the teacher's digit label names
    ([`_digit_names_as_ids`]), however the file wrote them (`3`, `3.0`, or a JSON number among quoted ones)."""
    by_name = _digit_names_as_ids(dataset.unique(label_column), label_names or [], path)
    if by_name is None:
        return dataset
    by_name[IGNORE_INDEX] = IGNORE_INDEX
    return dataset.map(lambda batch: {label_column: [by_name[v] for v in batch[label_column]]}, batched=True)


def load_text_classification_file(
    path: str | os.PathLike,
    *,
    text_column: str = "sentence",
    label_column: str | None = "label",
    delimiter: str | None = None,
    label_names: Sequence[str] | None = None,
    text_pair_column: str | None = None,
) -> datasets.Dataset:
    """Load a csv, tsv or json(-lines) file of texts (and labels) into a ``datasets.Dataset``.

    The format comes from the extension: ``.csv`` and ``.tsv`` (tab-separated, no quote processing) use the
    ``csv`` builder, ``.json``/``.jsonl`` the ``json`` builder (one object per line, or a list of records).
    Cells are read as written: a text such as ``"NA"`` stays a string.

    Args:
        path: The file to read, e.g. ``data/sst2/train.tsv`` with header ``label<TAB>sentence``.
        text_column: Column holding the text.
        label_column: Column holding the labels, integer class ids (or names, with ``label_names``); ``None`` for
            unlabeled text (the column is then not required).
        delimiter: Field separator for csv/tsv files; ``None`` means ``","`` for csv and ``"\\t"`` for tsv.
        label_names: The class names in id order (e.g. the teacher's ``config.id2label`` values) when the label
            column holds names such as ``"positive"``: they are mapped to ids (in any case, ``"POSITIVE"``, unless
            two names differ only in case) and the column becomes a ``ClassLabel`` of these names (or ids, where
            some rows are ``-100``, unlabelled). Ignored when the column already holds ids, unless the names are
            numbers (``"1"``, ``"2"``, ``"3"``) and every label is one of them: the labels are then read as names.
        text_pair_column: The second text of a sentence-pair task (GLUE's MRPC: ``sentence2``), read and checked
            as the first one is.

    Returns:
        The file's rows, with every column of the file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is a directory; the extension is not supported; the file is empty, has a header but
            no rows, is not UTF-8 or cannot be parsed; ``text_column``/``label_column`` is not in the file; a row
            has no text or no label; or a label is not an integer id (nor one of ``label_names``).
    """
    path = os.fspath(path)
    _require_file(path, "Text classification file", _TEXT_FILE_BUILDERS)
    extension = os.path.splitext(path)[1].lower()
    builder = _TEXT_FILE_BUILDERS.get(extension)
    if builder is None:
        raise ValueError(
            f"Cannot read {path!r}: unsupported extension {extension!r}. Use one of "
            f"{sorted(_TEXT_FILE_BUILDERS)}, or rename the file to match its format."
            + (" Export a spreadsheet as csv first." if extension in (".xls", ".xlsx", ".ods") else "")
        )

    first_lines = _first_lines(path, 2)
    if not first_lines:
        blank = " (it holds only whitespace)" if os.path.getsize(path) else ""
        if builder == "json":
            expected = f"one JSON object per line, such as {_JSON_EXAMPLE}"
        else:
            header = "label<TAB>sentence" if extension == ".tsv" else "sentence,label"
            expected = f"a header row naming the columns (e.g. `{header}`), then one row per example"
        raise ValueError(f"{path} is empty{blank}: expected {expected}. Check that the file was written completely.")
    if builder == "csv" and len(first_lines) == 1:
        header = first_lines[0].decode("utf-8", errors="replace")
        raise ValueError(
            f"{path} has a header row ({header!r}) but no data rows. Check that the file was written completely and "
            "that this is the split you meant."
        )

    options: dict[str, Any] = {}
    if builder == "csv":
        options["keep_default_na"] = False
        # A text of digits ("007") stays text, not the integer 7.
        options["converters"] = {column: str for column in (text_column, text_pair_column) if column}
        if extension == ".tsv":
            options["delimiter"] = "\t" if delimiter is None else delimiter
            options["quoting"] = 3  # csv.QUOTE_NONE: TSV corpora such as GLUE contain bare quote characters.
        elif delimiter is not None:
            options["delimiter"] = delimiter
    elif delimiter is not None:
        raise ValueError(f"`delimiter` applies to csv/tsv files only, but {path!r} is read as json; drop it.")

    if builder == "csv":
        _check_first_row_width(path, first_lines, options.get("delimiter", ","), options.get("quoting", csv.QUOTE_MINIMAL))
    try:
        dataset = datasets.load_dataset(builder, data_files=path, split="train", **options)
    except (DatasetGenerationError, ValueError) as error:  # parser errors arrive wrapped, without the file's name
        typed_apart = None
        if builder == "csv" and any(isinstance(link, pa.ArrowInvalid) for link in _chain(error)):  # a failed cast
            typed_apart = _column_typed_apart_error(path, options, label_column, (text_column, text_pair_column))
        raise (typed_apart or _unreadable_file_error(path, extension, error)) from error
    found = dataset.column_names
    for column, flag in ((text_column, "text_column"), (text_pair_column, "text_pair_column")):
        if column is not None and column not in found:
            raise ValueError(
                f"{path} has no text column {column!r}; found columns {found}. Pick the text column with "
                f"--{flag}_name (`{flag}=`)." + _header_hint(found, extension, delimiter)
            )
    if label_column is not None and label_column not in found:
        raise ValueError(
            f"{path} has no label column {label_column!r}; found columns {found}. Pick the label column with "
            "--label_column_name (`label_column=`), or pass `label_column=None` for unlabeled text."
            + _header_hint(found, extension, delimiter)
        )
    for column in (text_column, text_pair_column):
        if column is not None:
            dataset = _texts_checked(dataset, path, column)
    if label_column is not None:
        dataset = _integer_labels(dataset, path, label_column, label_names)
    logger.info("Read %d rows from %s (columns %s)", len(dataset), path, found)
    return dataset


def _texts_checked(dataset: datasets.Dataset, path: Any, column: str) -> datasets.Dataset:
    """`dataset` with `column` as strings, or an error naming the first row without a text."""
    row = _first_null(dataset, column)
    if row is None:
        feature = dataset.features[column]
        if not isinstance(feature, datasets.Value):
            raise ValueError(
                f"{path}: the text column {column!r} holds {feature} values, not texts (e.g. row 0: "
                f"{dataset[0][column]!r}). Write every text as a string (in JSON, in quotes)."
            )
        if feature.dtype not in ("string", "large_string"):
            dataset = dataset.cast_column(column, datasets.Value("string"))  # JSON numbers, as text
        row = _first_blank(dataset, column)
    if row is not None:
        raise ValueError(
            f"{path}: row {row} (`dataset[{row}]`) has no text in the text column {column!r} (no value, or a "
            "blank one). Fill in the text or drop the row."
        )
    return dataset


def _with_teacher_view_of(split: datasets.Dataset, other: datasets.Dataset) -> datasets.Dataset:
    """`split` with the teacher-view columns that only `other` has, each a copy of `split`'s own input column: where
    no noise was drawn, the teacher reads what the student reads."""
    copies = {key: key[len(TEACHER_VIEW_PREFIX):] for key in TEACHER_VIEW_KEYS
              if key in other.column_names and key not in split.column_names}
    copies = {key: base for key, base in copies.items() if base in split.column_names}
    if not copies:
        return split
    return split.map(lambda batch: {key: batch[base] for key, base in copies.items()}, batched=True)


def mix_unlabeled(labeled: datasets.Dataset, unlabeled: datasets.Dataset, seed: int | None = None) -> datasets.Dataset:
    """One training set from a labelled and an unlabelled tokenized dataset (semi-supervised distillation).

    Unlabelled rows get `labels` of -100 (one per token for token classification, one per row otherwise), so the
    hard-label loss skips them while the distillation term covers them; with `pseudo_label_threshold` the teacher
    labels them. Only the columns both datasets share are kept (plus `labels`), except a teacher view
    (`teacher_input_ids`, ..., from `add_noisy_view`) on one side only: the other side's rows get their own inputs as
    their teacher view, so the teacher goes on reading clean text. For token classification, distil
    the unlabelled rows with `distill_positions="all_subwords"`: `"first_subword"` distils labelled positions only.

    Args:
        labeled: tokenized rows with `input_ids` and `labels` (or `label`, as GLUE names it: the mixed set calls it
            `labels`), a `datasets.Dataset` (not a stream).
        unlabeled: tokenized rows with `input_ids` (any `labels` column is ignored and replaced by -100), a
            `datasets.Dataset` too.
        seed: shuffle the mixed rows with this seed (the Trainer shuffles anyway; this is for `select` users).
    """
    for name, split in (("labeled", labeled), ("unlabeled", unlabeled)):
        if isinstance(split, datasets.DatasetDict):
            raise ValueError(f"`{name}` is a DatasetDict with splits {list(split)}; pass one split, e.g. "
                             f"`{name}['train']`.")
        if isinstance(split, datasets.IterableDataset):
            raise ValueError(
                f"`{name}` is a streamed IterableDataset, but mixing needs both sets' lengths and columns. Take the "
                f"rows to mix in as a Dataset first, e.g. `datasets.Dataset.from_list(list({name}.take(50_000)))`."
            )
        if not isinstance(split, datasets.Dataset):
            raise ValueError(
                f"`{name}` is a {type(split).__name__}; mixing needs a `datasets.Dataset` (its columns and features). "
                f"Make one first, e.g. `datasets.Dataset.from_list(list({name}))` (a list of rows, a torch Subset)."
            )
        if "input_ids" not in split.column_names:
            raise ValueError(f"`{name}` has no `input_ids` column (columns: {split.column_names}); tokenize it first.")
    if "labels" not in labeled.column_names and "label" in labeled.column_names:
        labeled = labeled.rename_column("label", "labels")  # the `datasets` habit, which Trainer's collators take too
    if "labels" not in labeled.column_names:
        raise ValueError(f"`labeled` has no `labels` (or `label`) column (columns: {labeled.column_names}).")
    if len(unlabeled) == 0:
        raise ValueError("`unlabeled` is empty (after filtering?): there is nothing to mix in. Pass the labeled set "
                         "alone, or check the filter that built the unlabeled one.")
    sequences = tuple(getattr(datasets, n) for n in ("Sequence", "List", "LargeList") if hasattr(datasets, n))
    per_token = isinstance(labeled.features["labels"], sequences + (list,))  # (list: the `[Value]` shorthand)
    labeled, unlabeled = _with_teacher_view_of(labeled, unlabeled), _with_teacher_view_of(unlabeled, labeled)
    shared = [c for c in labeled.column_names if c in unlabeled.column_names and c != "labels"]
    unlabeled = unlabeled.remove_columns([c for c in unlabeled.column_names if c not in shared])
    unlabeled = unlabeled.map(
        lambda batch: {"labels": [[-100] * len(ids) if per_token else -100 for ids in batch["input_ids"]]},
        batched=True,
    )
    labeled = labeled.remove_columns([c for c in labeled.column_names if c not in shared and c != "labels"])
    unlabeled = unlabeled.cast(labeled.features)
    mixed = datasets.concatenate_datasets([labeled, unlabeled])
    return mixed.shuffle(seed=seed) if seed is not None else mixed
