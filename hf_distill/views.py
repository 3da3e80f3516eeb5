"""A teacher view: the teacher reads the clean text while the student reads a noisy copy of it.

Distillation that should make the student robust to noisy text (typos, say) needs two inputs per example: the
student trains on the perturbed text, and the teacher, which was never trained on noise, labels the clean text it
understands. A row with a teacher view carries the student's `input_ids` (and mask) as usual plus the teacher's own
`teacher_input_ids` (and `teacher_attention_mask`, `teacher_token_type_ids`). `DistillationTrainer` feeds the
teacher view to the teacher whenever a batch has one, and pads it with `TeacherViewCollator`.

The two texts tokenize to different lengths, so the views only line up per example: a teacher view is for sequence
classification. (Token-level noise that keeps the length, `augment_*_prob`, works for token classification.)

The noise is drawn once, when the dataset is built, seeded per row: a run, its resume and a rerun see the same
noisy rows, with no extra RNG state in checkpoints.

References:
    Goldblum et al. (2020), "Adversarially Robust Distillation": the student on perturbed inputs is matched to the
        teacher on clean ones.
    Xie et al. (2020), "Self-training with Noisy Student": noise on the student's inputs only.
    Belinkov & Bisk (2018), "Synthetic and Natural Noise Both Break Neural Machine Translation": training on noise
        is what makes a model robust to it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import datasets

from .checks import _reject_dataset_dict, dataset_columns
from .text_attacks import TYPO_KINDS, perturb_characters

TEACHER_VIEW_PREFIX = "teacher_"
TEACHER_VIEW_KEYS = ("teacher_input_ids", "teacher_attention_mask", "teacher_token_type_ids")
"""Batch entries that hold the teacher's view of each example; never given to the student."""

TextNoise = Callable[[str, random.Random], str]
"""A text perturbation: `(text, rng) -> noisy text`, drawing only from `rng`."""


def has_teacher_view(dataset: Any) -> bool:
    """Whether the rows of `dataset` (a `datasets.Dataset`, or a `Subset`/`random_split` part of one, a list of
    dicts) carry `teacher_input_ids`."""
    return TEACHER_VIEW_KEYS[0] in dataset_columns(dataset)


def teacher_view_inputs(inputs: Mapping[str, Any]) -> Mapping[str, Any]:
    """The inputs the teacher reads: the teacher view under the model's usual names when the batch has one (with
    whatever else the batch holds), else `inputs` itself."""
    if TEACHER_VIEW_KEYS[0] not in inputs:
        return inputs
    view = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "token_type_ids")}
    view.update({k[len(TEACHER_VIEW_PREFIX):]: inputs[k] for k in TEACHER_VIEW_KEYS if k in inputs})
    return view


def typo_noise(rate: float = 0.2, kinds: Sequence[str] = TYPO_KINDS) -> TextNoise:
    """A `TextNoise` that puts one character typo (swap, delete, insert, keyboard neighbour) into each of a fraction
    `rate` of the whitespace-separated words (`text_attacks.perturb_characters`)."""
    perturb_characters([], rate, 0, kinds)  # validate rate and kinds now, not on the first row

    def noise(text: str, rng: random.Random) -> str:
        return " ".join(perturb_characters(text.split(), rate, rng, kinds))

    return noise


def add_noisy_view(
    dataset: Any,
    tokenizer: Any,
    *,
    text_column: str,
    noise: TextNoise,
    probability: float = 0.5,
    seed: int = 0,
    max_length: int | None = None,
    text_pair_column: str | None = None,
) -> Any:
    """Tokenize a text-classification `dataset` into a student view and a clean teacher view.

    Row i gets noise with probability `probability`, drawn from `random.Random(f"{seed}:{i}")`: its `input_ids`
    (and mask, type ids) come from `noise(text, rng)`, its `teacher_*` columns from the clean text. Other rows get the
    clean text in both views. The text columns are removed; the rest (the labels) is kept. A stream's rows are
    seeded by their text instead of their position (which a stream's DataLoader workers each count from 0), so the
    views do not depend on `dataloader_num_workers`; rows with the same text get the same view.

    Args:
        dataset: a `datasets.Dataset` with the raw text in `text_column` (and `text_pair_column`, for pairs), or a
            streaming `datasets.IterableDataset`, whose rows are then built (and checked) lazily as training reads
            them.
        tokenizer: the student's tokenizer, which is also the teacher's (`DistillationTrainer` checks this).
        text_column: the column holding the text.
        noise: the perturbation, e.g. `typo_noise(0.2)`; it must draw only from the `rng` it is given.
        probability: the fraction of rows in [0, 1] whose student view is noisy.
        seed: seeds every row's draws.
        max_length: truncation length of both views (default: the tokenizer's).
        text_pair_column: the second text of a pair task; it gets its own noise from the same row generator.

    Returns:
        The tokenized dataset, ready for `DistillationTrainer` (which pads the teacher view itself).
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"`probability` must be in [0, 1], got {probability}.")
    _reject_dataset_dict(dataset, "dataset")
    text_columns = [c for c in (text_column, text_pair_column) if c is not None]
    # A stream without declared features (`IterableDataset.from_generator`) names no columns until it is read: its
    # rows are checked as they are built below, never by reading the stream through first.
    columns = getattr(dataset, "column_names", None)
    if columns is not None:
        _check_raw_text_columns(columns, text_columns, text_column)
    streamed = isinstance(dataset, datasets.IterableDataset)

    def encode(texts: list[list[str]]) -> dict[str, list]:
        return dict(tokenizer(*texts, truncation=True, max_length=max_length))

    def build(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        if columns is None:
            _check_raw_text_columns(list(batch), text_columns, text_column)
        for name in text_columns:
            bad = next(((j, v) for j, v in enumerate(batch[name]) if not isinstance(v, str)), None)
            if bad is not None:
                raise ValueError(f"Row {indices[bad[0]]} of `{name}` is {bad[1]!r}, not a text: `add_noisy_view` "
                                 "perturbs and tokenizes raw text. Fill in or drop such rows (`dataset.filter`), or "
                                 "join word lists into strings first.")
        clean = [batch[c] for c in text_columns]
        noisy = [list(column) for column in clean]
        for j, i in enumerate(indices):
            # A stream's `map` numbers rows per DataLoader worker: its rows are seeded by their text instead
            key = "\x1f".join(column[j] for column in clean) if streamed else i
            rng = random.Random(f"{seed}:{key}")
            if rng.random() < probability:
                for column in noisy:
                    column[j] = noise(column[j], rng)
        student, teacher = encode(noisy), encode(clean)
        return {**student, **{TEACHER_VIEW_PREFIX + k: v for k, v in teacher.items()}}

    return dataset.map(build, batched=True, with_indices=True, remove_columns=text_columns)


def _check_raw_text_columns(columns: Sequence[str], text_columns: Sequence[str], text_column: str) -> None:
    for name in text_columns:
        if name not in columns:
            raise ValueError(f"`{name}` is not a column of the dataset (columns: {list(columns)}). Pass the column "
                             "that holds the raw text, before tokenization.")
    if TEACHER_VIEW_KEYS[0] in columns or "input_ids" in columns:
        raise ValueError(f"The dataset is already tokenized (columns: {list(columns)}); `add_noisy_view` tokenizes "
                         f"the raw text of `{text_column}` itself.")


class TeacherViewCollator:
    """Wraps a data collator: the student's entries go through it, and the teacher view (`teacher_input_ids`, ...) is
    padded on its own with the tokenizer, as the teacher's batch. Batches without a teacher view pass through.
    `DistillationTrainer` installs it when the training set has a teacher view."""

    def __init__(self, collator: Callable[[list[dict[str, Any]]], dict[str, Any]], tokenizer: Any):
        self.collator = collator
        # (the wrapped collator's, if none is given: Trainer saves `data_collator.tokenizer` with the model)
        self.tokenizer = tokenizer if tokenizer is not None else getattr(collator, "tokenizer", None)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features or not any(TEACHER_VIEW_KEYS[0] in f for f in features):
            return self.collator(features)
        student = [{k: v for k, v in f.items() if k not in TEACHER_VIEW_KEYS} for f in features]
        if all(f.get(TEACHER_VIEW_KEYS[0]) is None for f in features):
            return self.collator(student)  # (rows of a plain set interleaved with a noisy-view one: None columns)
        if self.tokenizer is None or not hasattr(self.tokenizer, "pad"):
            raise ValueError("The training set has a teacher view (`teacher_input_ids`), which the trainer pads with the "
                             "tokenizer: pass `processing_class=tokenizer`.")
        teacher = [_teacher_view(f) for f in features]
        batch = self.collator(student)
        padded = self.tokenizer.pad(teacher, return_tensors="pt")
        for key, value in padded.items():
            batch[TEACHER_VIEW_PREFIX + key] = value
        return batch


def _teacher_view(row: dict[str, Any]) -> dict[str, Any]:
    """A row's teacher view without the prefix; a row without one (a plain set's row mixed into a noisy-view one, as
    `interleave_datasets` fills it with None) is read by the teacher as its student does, its own clean text."""
    prefix = "" if row.get(TEACHER_VIEW_KEYS[0]) is None else TEACHER_VIEW_PREFIX
    names = (key[len(TEACHER_VIEW_PREFIX):] for key in TEACHER_VIEW_KEYS)
    return {name: row[prefix + name] for name in names if row.get(prefix + name) is not None}
