"""Reading task data: CoNLL column files for NER, csv/tsv/json files for text classification.

Token classification follows the recipe of Transformers' ``run_ner.py`` example: words are tokenised
with ``is_split_into_words=True`` and only the first sub-word of each word keeps the word's label;
every other position gets ``-100`` so that losses and metrics ignore it.

References:
    - CoNLL-2003 shared task format: Tjong Kim Sang & De Meulder (2003), "Introduction to the
      CoNLL-2003 Shared Task: Language-Independent Named Entity Recognition".
    - IOB2 tagging: Ramshaw & Marcus (1995); ``B-<type>`` opens an entity, ``I-<type>`` continues it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import datasets
from transformers.utils import logging

logger = logging.get_logger(__name__)

IGNORE_INDEX = -100
"""Label id that losses (``CrossEntropyLoss(ignore_index=-100)``) and metrics skip."""

_DOCSTART = "-DOCSTART-"
_TEXT_FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}


def _entity_type(tag: str) -> str | None:
    """Return the entity type of an IOB2 tag (``"B-PER"`` -> ``"PER"``), ``None`` for ``"O"``.

    Raises ``ValueError`` for anything else, so that callers can add a file name and line number.
    """
    if tag == "O":
        return None
    prefix, sep, entity = tag.partition("-")
    if sep and prefix in ("B", "I") and entity:
        return entity
    raise ValueError(
        f"tag {tag!r} is not an IOB2 tag: expected 'O', 'B-<type>' or 'I-<type>'. Convert IOB1/IOBES files to IOB2 "
        "first, or pass `label_names` listing every tag the file uses."
    )


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


def _split_conll_lines(path: str) -> tuple[list[list[str]], list[list[str]], list[int]]:
    """Parse a CoNLL file into sentences of tokens and tags, plus the line number of each tag (for errors)."""
    all_tokens: list[list[str]] = []
    all_tags: list[list[str]] = []
    tag_lines: list[int] = []
    tokens: list[str] = []
    tags: list[str] = []
    n_columns = None
    seen_content = False

    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            columns = line.split()
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
                    f"{path}, line {line_number}: found a single column ({columns[0]!r}), but a CoNLL token line needs "
                    "the token in the first column and its tag in the last, separated by whitespace. Add the tag, or "
                    "check that the file is not tokenised text without labels."
                )
            if n_columns is None:
                n_columns = len(columns)
            elif len(columns) != n_columns:
                raise ValueError(
                    f"{path}, line {line_number}: ragged columns, found {len(columns)} columns but the first token line "
                    f"has {n_columns}. Every token line must have the same number of whitespace-separated columns; "
                    "check for a token containing a space or a missing column on this line."
                )
            tokens.append(columns[0])
            tags.append(columns[-1])
            tag_lines.append(line_number)

    if tokens:
        all_tokens.append(tokens)
        all_tags.append(tags)
    if not seen_content:
        raise ValueError(f"{path} is empty: expected CoNLL lines `token ... tag` with blank lines between sentences.")
    if not all_tokens:
        raise ValueError(
            f"{path} has no sentences (only {_DOCSTART} lines and blank lines). Check that this is the right file."
        )
    return all_tokens, all_tags, tag_lines


def read_conll(path: str | os.PathLike, label_names: Sequence[str] | None = None) -> datasets.Dataset:
    """Read a CoNLL column file (e.g. CoNLL-2003 ``token POS chunk NER``) into a ``datasets.Dataset``.

    Each non-blank line holds whitespace-separated columns: the token comes first and its tag last, any columns in
    between (POS, chunk) are ignored. Blank lines separate sentences, and ``-DOCSTART-`` lines are skipped.

    Args:
        path: The file to read (UTF-8).
        label_names: The label list that fixes the ``ner_tags`` ids, e.g. the teacher's ``id2label`` values in id
            order. If ``None``, it is derived from the file with [`conll_label_names`]. Pass the same list for the
            train, validation and test files so that their ids agree.

    Returns:
        A dataset with one row per sentence and features ``id`` (string, ``"0"``, ``"1"``, ...), ``tokens``
        (list of strings) and ``ner_tags`` (list of ``ClassLabel(names=label_names)`` ids), one tag per token.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file is empty or has no sentences, a line has a single column, a line has a different number
            of columns from the first token line, a tag is not in ``label_names``, or (when deriving the labels) a
            tag is not an IOB2 tag.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"CoNLL file {path!r} does not exist. Check the path (relative paths start from {os.getcwd()!r})."
        )
    all_tokens, all_tags, tag_lines = _split_conll_lines(path)

    if label_names is None:
        line_index = 0
        for sentence_tags in all_tags:
            for tag in sentence_tags:
                try:
                    _entity_type(tag)
                except ValueError as error:
                    raise ValueError(f"{path}, line {tag_lines[line_index]}: {error}") from None
                line_index += 1
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
                raise ValueError(
                    f"{path}, line {tag_lines[line_index]}: tag {tag!r} is not one of the known labels {label_names}. "
                    "Pass `label_names` that include it (for a fine-tuned teacher, its `config.id2label` values), or "
                    "leave `label_names=None` to derive the labels from the file."
                )
            ids.append(tag_id)
            line_index += 1
        all_ids.append(ids)

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
    are ``[-100, B-PER, B-LOC, -100, -100]``. Nothing is padded: ``DataCollatorForTokenClassification`` pads each
    batch (and pads ``labels`` with ``-100``).

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
        ValueError: The tokenizer is not fast, ``tokens_column`` is missing, or tags are strings instead of ids.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{type(tokenizer).__name__} is not a fast tokenizer, so it cannot map sub-words back to words "
            "(`word_ids()`), which label alignment needs. Load it with `AutoTokenizer.from_pretrained(name, "
            "use_fast=True)`; if the model has no fast tokenizer, convert it with the `tokenizers` library."
        )
    if tokens_column not in examples:
        raise ValueError(
            f"Column {tokens_column!r} is missing; found columns {sorted(examples)}. Pass "
            "`tokens_column=` naming the column that holds each sentence's words."
        )
    encoding = tokenizer(examples[tokens_column], is_split_into_words=True, truncation=True, max_length=max_length)
    if tags_column not in examples:
        return encoding

    labels = []
    for batch_index, word_tags in enumerate(examples[tags_column]):
        if word_tags and isinstance(word_tags[0], str):
            raise ValueError(
                f"Column {tags_column!r} holds tag strings (e.g. {word_tags[0]!r}), but label ids are needed. Read the "
                "data with `read_conll` (a ClassLabel feature) or map the tags to ids first."
            )
        example_labels = []
        previous_word = None
        for word_index in encoding.word_ids(batch_index=batch_index):
            if word_index is None or word_index == previous_word:
                example_labels.append(IGNORE_INDEX)
            else:
                example_labels.append(word_tags[word_index])
            previous_word = word_index
        labels.append(example_labels)
    encoding["labels"] = labels
    return encoding


def load_text_classification_file(
    path: str | os.PathLike,
    *,
    text_column: str = "sentence",
    label_column: str | None = "label",
    delimiter: str | None = None,
) -> datasets.Dataset:
    """Load a csv, tsv or json(-lines) file of texts (and labels) into a ``datasets.Dataset``.

    The format comes from the extension: ``.csv`` and ``.tsv`` (tab-separated, no quote processing) use the
    ``csv`` builder, ``.json``/``.jsonl`` the ``json`` builder (one object per line, or a list of records).
    Cells are read as written: a text such as ``"NA"`` stays a string.

    Args:
        path: The file to read, e.g. ``data/sst2/train.tsv`` with header ``label<TAB>sentence``.
        text_column: Column holding the text.
        label_column: Column holding the labels; ``None`` for unlabeled text (the column is then not required).
        delimiter: Field separator for csv/tsv files; ``None`` means ``","`` for csv and ``"\\t"`` for tsv.

    Returns:
        The file's rows, with every column of the file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The extension is not supported, or ``text_column``/``label_column`` is not in the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Text classification file {path!r} does not exist. Check the path (relative paths "
            f"start from {os.getcwd()!r})."
        )
    extension = os.path.splitext(path)[1].lower()
    builder = _TEXT_FILE_BUILDERS.get(extension)
    if builder is None:
        raise ValueError(
            f"Cannot read {path!r}: unsupported extension {extension!r}. Use one of "
            f"{sorted(_TEXT_FILE_BUILDERS)}, or rename the file to match its format."
        )

    options: dict[str, Any] = {}
    if builder == "csv":
        options["keep_default_na"] = False
        if extension == ".tsv":
            options["delimiter"] = "\t" if delimiter is None else delimiter
            options["quoting"] = 3  # csv.QUOTE_NONE: TSV corpora such as GLUE contain bare quote characters.
        elif delimiter is not None:
            options["delimiter"] = delimiter
    elif delimiter is not None:
        raise ValueError(f"`delimiter` applies to csv/tsv files only, but {path!r} is read as json; drop it.")

    dataset = datasets.load_dataset(builder, data_files=path, split="train", **options)
    found = dataset.column_names
    if text_column not in found:
        raise ValueError(
            f"{path} has no text column {text_column!r}; found columns {found}. Pick the text column with "
            "--text_column_name (`text_column=`)."
        )
    if label_column is not None and label_column not in found:
        raise ValueError(
            f"{path} has no label column {label_column!r}; found columns {found}. Pick the label column with "
            "--label_column_name (`label_column=`), or pass `label_column=None` for unlabeled text."
        )
    logger.info("Read %d rows from %s (columns %s)", len(dataset), path, found)
    return dataset
