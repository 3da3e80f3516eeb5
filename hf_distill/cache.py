"""A disk cache of the teacher's logits: run the teacher once over the training set, read its logits afterwards.

Online distillation runs the teacher forward on every step of every epoch. `build_teacher_cache` runs it once, in
dataset order, and stores the logits in numpy memory-mapped files; `TeacherLogitCache.logits` then serves any batch
of rows (in any order) without the teacher.

Layout of a cache directory:

    metadata.json         task, num_rows, num_labels, top_k, completed_rows, build_seconds, fingerprint (see below),
                          and the teacher's label names, name and parameter count (for checks and the model card)
    offsets.npy           (N + 1,) int64: example i owns the positions offsets[i]:offsets[i + 1] of the arrays below
    values.npy            full logits: (P, C) fp16                     (top_k is None)
                          or the top-k logits: (P, k) fp16, largest first (top_k = k)
    indices.npy           (P, k) int16, the class of each top-k logit     (top_k only)
    tail_logsumexp.npy    (P,) fp32, log Σ exp over the other C - k logits (top_k only)

P is the number of positions: the number of examples for sequence classification, the sum of the examples' token
counts for token classification (no padding is stored). Logits are clamped to the fp16 range and stored in fp16;
they are read back as fp32. A build refuses logits that fp16 cannot hold (infinite ones, or ones so large that
fp16 rounds away the differences their softmax depends on).

The top-k reconstruction puts the k stored logits at their classes and gives each of the other C - k classes the
same logit c = tail_logsumexp - log(C - k). The softmax at temperature 1 then has exactly the teacher's top-k
probabilities and the teacher's total tail mass (spread evenly over the tail). At another temperature T the softmax
of the reconstruction is an approximation of the teacher's (the tail is flattened before dividing by T); it is
exact when k >= C - 1 (a lone tail class's log-sum-exp is its logit). A `top_k` of C or more stores every logit
(k = C), so it is exact.

The build is resumable: after each `sort_window` of rows (4096 by default; the rows of a window are batched by
length) the arrays are flushed and `completed_rows` is updated in `metadata.json` (written atomically), and a later
`build_teacher_cache` with the same fingerprint continues from there, running the teacher again on the rows of the
window that was interrupted. The fingerprint ties the cache to the teacher's weights, the dataset's input ids, the tokenizer and the
tokenization `max_length`; `TeacherLogitCache.load` refuses a cache whose fingerprint differs from what it is given.

Reference: Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network" (the soft targets cached
here). The top-k storage keeps the teacher's total tail mass so that the cached targets stay a distribution.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import torch
from datasets import Dataset
from torch import nn
from tqdm.auto import tqdm

from .checks import (
    SEQUENCE_CLASSIFICATION,
    TOKEN_CLASSIFICATION,
    _reject_dataset_dict,
    check_inputs_fit,
    forward_inputs,
    label_names,
    missing_segments,
    model_name,
    separator_id,
)
from .files import atomic_write_json

logger = logging.getLogger(__name__)

CACHE_INDEX_COLUMN = "teacher_cache_index"
"""The column `TeacherLogitCache.attach` adds: the row number each example had when the cache was built."""

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
_ARRAY_FILES = ("offsets.npy", "values.npy", "indices.npy", "tail_logsumexp.npy", "row_hashes.npy")
_FP16_MAX = float(np.finfo(np.float16).max)
_INT16_LIMIT = int(np.iinfo(np.int16).max) + 1
_LABEL_COLUMNS = ("labels", "label", "label_ids")
# The fingerprint parts that the caller supplies and that `load` / `build_teacher_cache` compare, in report order.
_CHECKED_PARTS = ("teacher", "dataset", "tokenizer", "max_length")


# ---- fingerprints ------------------------------------------------------------------------------------------------


def teacher_fingerprint(teacher: nn.Module) -> str:
    """sha256 over the teacher's `state_dict`: each tensor's name, shape, dtype and bytes, in sorted key order. A
    `torch.compile`d or DDP-wrapped teacher has the fingerprint of the model it wraps."""
    hasher = hashlib.sha256()
    while isinstance(getattr(teacher, "_orig_mod", None) or getattr(teacher, "module", None), nn.Module):
        teacher = getattr(teacher, "_orig_mod", None) or teacher.module
    state = teacher.state_dict()
    for name in sorted(state):
        value = state[name]
        hasher.update(name.encode())
        if not torch.is_tensor(value):  # a module's extra state
            hasher.update(repr(value).encode())
            continue
        hasher.update(f"{tuple(value.shape)}|{value.dtype}".encode())
        hasher.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return hasher.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of a tokenizer: its serialized backend for fast tokenizers, else its sorted vocabulary.

    The backend's truncation and padding settings are left out: calling the tokenizer with `truncation=True` or
    `padding=...` changes them, and they say nothing about the ids the tokenizer produces for a given text
    (`max_length` is a fingerprint part of its own).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        serialized = json.loads(backend.to_str())
        serialized.pop("truncation", None)
        serialized.pop("padding", None)
        text = json.dumps(serialized, sort_keys=True)
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()


def _require_indexable(dataset: Any) -> None:
    """The cache stores one row per example and finds it by number: refuse a dataset without a length or indices."""
    _reject_dataset_dict(dataset, "dataset")
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise ValueError(
            f"The teacher-logit cache finds each example's logits by its row number, so it needs a map-style dataset "
            f"(a `datasets.Dataset`, or anything with `len()` and indexing); got a {type(dataset).__name__}. Load the "
            "data without `streaming=True` (or `.to_iterable_dataset()`), or train with an online `teacher_model`."
        )


def _input_ids(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """`(lengths, ids)`: each row's number of input ids, (N,) int64, and all the ids in row order, flat int64."""
    _require_indexable(dataset)
    columns = getattr(dataset, "column_names", None)
    if columns is not None and "input_ids" not in columns:
        raise ValueError(
            f"The dataset has no `input_ids` column (found columns: {columns}). The teacher cache is built from a "
            "tokenized dataset: map the tokenizer over it first (the same dataset the trainer gets)."
        )
    if isinstance(dataset, Dataset):
        column = dataset.select_columns(["input_ids"]).with_format("arrow")[:].column("input_ids")
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
        ids = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        rows = [np.asarray(dataset[i]["input_ids"], dtype=np.int64).reshape(-1) for i in range(len(dataset))]
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        ids = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    return lengths, ids


def _segments(dataset: Any) -> np.ndarray | None:
    """All the `token_type_ids` in row order, flat int64, where some are not 0 (sentence pairs); else None. The
    teacher reads them, so they are part of the data a cache was built from; all-zero segments (single sentences)
    are the same data as none, which keeps every single-sentence cache's fingerprint as it was."""
    columns = getattr(dataset, "column_names", None)
    if isinstance(dataset, Dataset):
        if "token_type_ids" not in columns:
            return None
        column = dataset.select_columns(["token_type_ids"]).with_format("arrow")[:].column("token_type_ids")
        segments = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        rows = [dataset[i].get("token_type_ids") for i in range(len(dataset))]
        if any(row is None for row in rows):
            return None
        segments = (np.concatenate([np.asarray(r, dtype=np.int64).reshape(-1) for r in rows]) if rows
                    else np.zeros(0, dtype=np.int64))
    return segments if segments.any() else None


def _content_digest(lengths: np.ndarray, ids: np.ndarray) -> str:
    """A sha256 of the lengths and all the ids in row order: the dataset's content part of the fingerprint."""
    hasher = hashlib.sha256()
    hasher.update(np.ascontiguousarray(lengths))
    hasher.update(np.ascontiguousarray(ids))
    return hasher.hexdigest()


def _segments_digest(dataset: Any) -> str | None:
    """A sha256 of a sentence pair's segment ids ([`_segments`]), None for single sentences: the fingerprint's
    `dataset_segments` (which caches built before it was recorded lack, and are compared without)."""
    segments = _segments(dataset)
    return None if segments is None else hashlib.sha256(np.ascontiguousarray(segments)).hexdigest()


def _row_hashes(lengths: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(N,) uint64: each row's ids as a polynomial hash mod 2**64 (sum of (id + 1) * P**position), mixed with its
    length. Vectorised over the whole column; it tells whether an index column still names the rows it was made for."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    positions = (np.arange(len(ids), dtype=np.int64) - np.repeat(starts, lengths)).astype(np.uint64)
    with np.errstate(over="ignore"):
        terms = (ids.astype(np.uint64) + np.uint64(1)) * np.power(np.uint64(1_000_003), positions)
        sums = np.concatenate([[np.uint64(0)], np.cumsum(terms, dtype=np.uint64)])
        ends = starts + lengths
        return (sums[ends] - sums[starts]) ^ (lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))


def _dataset_id(dataset: Any, content: str) -> str:
    """The dataset part of the fingerprint: the `datasets` fingerprint when there is one, else the ids' sha256."""
    return getattr(dataset, "_fingerprint", None) or content


def _dataset_matches(fingerprint: dict[str, Any], dataset: Any) -> bool:
    """Whether `dataset` holds the rows the cache was built from (same input ids, same order).

    The `datasets` fingerprint is compared first (no data read). It changes with any transform, including
    `attach`, and is random when a transform cannot be hashed, so when it differs the input ids (and a sentence
    pair's segment ids) are hashed and compared instead: the teacher's logits depend on nothing else.
    """
    _require_indexable(dataset)
    if len(dataset) != fingerprint["num_rows"]:
        return False
    if getattr(dataset, "_fingerprint", None) == fingerprint["dataset"]:
        return True
    if "dataset_segments" in fingerprint and fingerprint["dataset_segments"] != _segments_digest(dataset):
        return False
    return _content_digest(*_input_ids(dataset)) == fingerprint["dataset_content"]


def _changed_parts(
    stored: dict[str, Any], *, teacher: str | None, dataset: Any, tokenizer: str | None, max_length: int | None
) -> list[str]:
    """The names of the parts in `_CHECKED_PARTS` that differ. A part is compared only when it is given (not None)
    and was recorded at build time."""
    given = {"teacher": teacher, "tokenizer": tokenizer, "max_length": max_length}
    changed = []
    for part in _CHECKED_PARTS:
        if part == "dataset":
            if dataset is not None and not _dataset_matches(stored, dataset):
                changed.append(part)
        elif given[part] is not None:
            if stored.get(part) is None:
                logger.warning("The cache records no %s, so the %s given cannot be checked against it.", part, part)
            elif given[part] != stored[part]:
                changed.append(part)
    return changed


def _mismatch_message(path: Path, stored: dict[str, Any], changed: list[str], dataset: Any, max_length: Any) -> str:
    reasons = {
        "teacher": "for another teacher (its weights differ)",
        "dataset": (
            f"for another dataset ({stored['num_rows']} rows then, {len(dataset) if dataset is not None else '?'} "
            "rows now, or the same number of rows with other input ids, in another order, or with other "
            "token_type_ids: a sentence pair's segments)"
        ),
        "tokenizer": "with another tokenizer (its vocabulary or settings differ)",
        "max_length": f"with max_length={stored.get('max_length')}, not max_length={max_length}",
    }
    return "; ".join(f"The cache at {path} was built {reasons[part]}" for part in changed)


# ---- the cache ---------------------------------------------------------------------------------------------------


class TeacherLogitCache:
    """The teacher's logits for every row of a training set, read from memory-mapped files.

    Get one from `build_teacher_cache` or `TeacherLogitCache.load`; the constructor is internal.

    Attributes:
        path: the cache directory.
        fingerprint: dict of the parts the cache was built for: `dataset`, `dataset_content`, `dataset_segments`,
            `teacher`, `tokenizer`, `max_length`, `num_labels`, `top_k`, `task`, `num_rows`.
        num_rows, num_labels, task, top_k, build_seconds: see the properties.
    """

    def __init__(self, path: str | os.PathLike, metadata: dict[str, Any]):
        self.path = Path(path)
        self._metadata = metadata
        self._offsets = _open_array(self.path, "offsets.npy", (self.num_rows + 1,), np.int64)
        total = int(self._offsets[-1])
        width = self.num_labels if self.top_k is None else self.top_k
        self._values = _open_array(self.path, "values.npy", (total, width), np.float16)
        self._indices = self._tail = None
        if self.top_k is not None:
            self._indices = _open_array(self.path, "indices.npy", (total, self.top_k), np.int16)
            self._tail = _open_array(self.path, "tail_logsumexp.npy", (total,), np.float32)

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers started by spawn or forkserver get the collator, and this cache, by pickle: they map the
        # files again instead of each receiving a copy of every logit.
        return {"path": str(self.path), "metadata": self._metadata}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["metadata"])

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        teacher: nn.Module | None = None,
        dataset: Any = None,
        tokenizer: Any = None,
        max_length: int | None = None,
    ) -> TeacherLogitCache:
        """Open a complete cache, checking that it was built for each of the given parts.

        Args:
            path: the cache directory (the `path` given to `build_teacher_cache`).
            teacher: if given, its weights must be those the cache was built with.
            dataset: if given, it must hold the same input ids in the same order (an `attach`-ed copy is fine).
            tokenizer: if given, it must be the tokenizer recorded at build time.
            max_length: if given, it must be the tokenization `max_length` recorded at build time.

        Raises:
            FileNotFoundError: there is no cache at `path`.
            ValueError: a given part differs from the one the cache was built for (the message names it), or the
                build did not finish.
        """
        path = Path(path)
        metadata = _read_metadata(path)
        if metadata is None:
            raise FileNotFoundError(
                f"There is no teacher-logit cache at {path} (no {METADATA_FILE}). Build it with "
                f"`build_teacher_cache(teacher, train_dataset, data_collator, {str(path)!r}, ...)`, or pass the path "
                "a cache was built in."
            )
        stored = metadata["fingerprint"]
        teacher_id = teacher_fingerprint(teacher) if teacher is not None else None
        tokenizer_id = tokenizer_fingerprint(tokenizer) if tokenizer is not None else None
        changed = _changed_parts(
            stored, teacher=teacher_id, dataset=dataset, tokenizer=tokenizer_id, max_length=max_length
        )
        if changed:
            given = " and ".join(f"the {part}" for part in changed)
            raise ValueError(
                f"{_mismatch_message(path, stored, changed, dataset, max_length)}: rebuild it with "
                f"`build_teacher_cache(...)` (into a new path, or with `overwrite=True`) or pass {given} it was built "
                "with."
            )
        if metadata["completed_rows"] < metadata["num_rows"]:
            raise ValueError(
                f"The cache at {path} is incomplete: its build stopped after {metadata['completed_rows']} of "
                f"{metadata['num_rows']} rows. Finish it by calling `build_teacher_cache` again with the same teacher, "
                "dataset and settings; it resumes from where it stopped."
            )
        return cls(path, metadata)

    # ---- what the cache holds ----

    @property
    def fingerprint(self) -> dict[str, Any]:
        return dict(self._metadata["fingerprint"])

    @property
    def num_rows(self) -> int:
        """N, the number of examples."""
        return int(self._metadata["num_rows"])

    @property
    def num_labels(self) -> int:
        """C, the number of classes."""
        return int(self._metadata["num_labels"])

    @property
    def label_names(self) -> list[str] | None:
        """The teacher's label names in id order, or None (placeholder names, or a cache built before they were
        kept). `DistillationTrainer` refuses a student that names them in another order."""
        return self._metadata.get("label_names")

    @property
    def teacher_name(self) -> str | None:
        """The Hub id or path of the teacher that built the cache ("" if it had none; None for a cache built before
        it was kept), for the model card."""
        return self._metadata.get("teacher_name")

    @property
    def teacher_parameters(self) -> int | None:
        """The parameter count of the teacher that built the cache (None for a cache built before it was kept)."""
        return self._metadata.get("teacher_parameters")

    @property
    def task(self) -> str:
        """`"token_classification"` or `"sequence_classification"`, from the rank of the teacher's logits."""
        return self._metadata["task"]

    @property
    def top_k(self) -> int | None:
        """k when only the top-k logits are stored (k <= C), None for full logits."""
        return self._metadata["top_k"]

    @property
    def exact(self) -> bool:
        """Whether the logits read back are the teacher's (to fp16): full logits, or a top-k of all classes but at
        most one, whose lone tail class gets its own logit back from the tail's log-sum-exp."""
        return self.top_k is None or self.top_k >= self.num_labels - 1

    @property
    def build_seconds(self) -> float:
        """Wall time of the build in seconds, summed over resumed runs."""
        return float(self._metadata["build_seconds"])

    def __len__(self) -> int:
        return self.num_rows

    def __repr__(self) -> str:
        storage = "full logits" if self.top_k is None else f"top-{self.top_k} logits"
        return (
            f"TeacherLogitCache(path={str(self.path)!r}, task={self.task!r}, num_rows={self.num_rows}, "
            f"num_labels={self.num_labels}, {storage})"
        )

    def lengths(self, indices: torch.Tensor | Sequence[int] | np.ndarray) -> torch.Tensor:
        """Number of stored positions of each row: (B,) int64. 1 per row for sequence classification."""
        rows = self._rows(indices)
        return torch.from_numpy(self._offsets[rows + 1] - self._offsets[rows])

    # ---- reading ----

    def attach(self, dataset: Any) -> Any:
        """Return `dataset` with a `teacher_cache_index` column: each row's number in the dataset the cache was built
        from (0..N-1), so that a shuffled batch still finds its logits.

        Args:
            dataset: the dataset the cache was built from (same input ids, same order). A `datasets.Dataset` gets a
                new int64 column (an existing one is replaced); any other map-style dataset of dicts is wrapped so
                that each row gains the key.

        Raises:
            ValueError: `dataset` does not hold the rows the cache was built from.
        """
        if not _dataset_matches(self._metadata["fingerprint"], dataset):
            raise ValueError(
                f"{_mismatch_message(self.path, self._metadata['fingerprint'], ['dataset'], dataset, None)}. Attach the "
                "cache to the dataset it was built from (before any shuffle, filter or select), or rebuild it for "
                "this one with `build_teacher_cache(...)`."
            )
        if isinstance(dataset, Dataset):
            if CACHE_INDEX_COLUMN in dataset.column_names:
                dataset = dataset.remove_columns(CACHE_INDEX_COLUMN)
            return dataset.add_column(CACHE_INDEX_COLUMN, np.arange(len(dataset), dtype=np.int64))
        return _IndexedRows(dataset)

    def check_index(self, dataset: Any) -> None:
        """Check that the `teacher_cache_index` column of `dataset` names, for every row, the cached row built from
        the same input ids (per-row hashes kept with the cache): a column left by another cache, or an attached
        copy that was re-tokenized, would read other rows' logits without an error.

        Raises:
            ValueError: an index is out of range, or names a cached row with other input ids.
        """
        file = self.path / "row_hashes.npy"
        if not file.is_file():  # a cache built before per-row hashes were kept: nothing to compare with
            return
        stored = np.load(file)
        if isinstance(dataset, Dataset):
            column = dataset.select_columns([CACHE_INDEX_COLUMN]).with_format("arrow")[:].column(CACHE_INDEX_COLUMN)
            index = column.to_numpy(zero_copy_only=False).astype(np.int64)
        else:
            index = np.array([dataset[i][CACHE_INDEX_COLUMN] for i in range(len(dataset))], dtype=np.int64)
        outside = (index < 0) | (index >= self.num_rows)
        wrong = outside | (_row_hashes(*_input_ids(dataset)) != stored[np.clip(index, 0, self.num_rows - 1)])
        if wrong.any():
            row = int(wrong.argmax())
            what = (f"outside the cache at {self.path} ({self.num_rows} rows)" if outside[row] else
                    f"but the cache at {self.path} holds that row's logits for other input ids")
            raise ValueError(
                f"Row {row} of the training set has {CACHE_INDEX_COLUMN}={int(index[row])}, {what} "
                f"({int(wrong.sum())} rows differ): the column was made by another cache, or the rows changed after "
                "`attach`. Attach this cache to the dataset it was built from (`cache.attach(dataset)`), or rebuild "
                "the cache for this dataset."
            )

    def logits(self, indices: torch.Tensor | Sequence[int] | np.ndarray, seq_len: int | None = None,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The cached teacher logits of rows `indices`, as float32 on the CPU.

        Args:
            indices: (B,) row numbers, e.g. `batch["teacher_cache_index"]` (any device).
            seq_len: L, the padded length of the batch, `batch["input_ids"].shape[1]` (token classification only;
                defaults to the longest of these rows).
            attention_mask: (B, L), the batch's mask (token classification only). When given, each row must be
                right-padded to exactly the length the cache stores for it, else the logits would land on other
                tokens: a left-padded batch, or an index that names a row of another length, is refused. (An index
                naming another row of the same length cannot be seen here; `check_index`, which
                `DistillationTrainer` runs on its training set, compares each row's input ids with the cache's.)

        Returns:
            Token classification: (B, L, C), each row's stored positions first and zeros after them (right
            padding). Sequence classification: (B, C). With `top_k`, the reconstruction described in the module
            docstring.

        Raises:
            ValueError: an index is outside [0, N), or a row has more stored positions than `seq_len`.
        """
        rows = self._rows(indices)
        if self.task == SEQUENCE_CLASSIFICATION:
            return self._read(self._offsets[rows])
        starts = self._offsets[rows]
        lengths = self._offsets[rows + 1] - starts
        if seq_len is None:
            seq_len = int(lengths.max(initial=0))
        if (lengths > seq_len).any():
            row = int(np.argmax(lengths > seq_len))
            raise ValueError(
                f"Row {int(rows[row])} has {int(lengths[row])} cached positions but the batch is {seq_len} tokens long: "
                "the batch was truncated or built differently from the build (which stores each example's full "
                "`input_ids`). Collate the batches as at build time, without truncation, with right padding, and "
                "pass `seq_len=batch['input_ids'].shape[1]`."
            )
        if attention_mask is not None:
            _check_positions(attention_mask, lengths, rows)
        segment_starts = np.cumsum(lengths) - lengths
        total = int(lengths.sum())
        positions = np.arange(total) + np.repeat(starts - segment_starts, lengths)
        out = torch.zeros(len(rows), seq_len, self.num_labels, dtype=torch.float32)
        out[torch.arange(seq_len) < torch.from_numpy(lengths)[:, None]] = self._read(positions)
        return out

    def _rows(self, indices: torch.Tensor | Sequence[int] | np.ndarray) -> np.ndarray:
        if torch.is_tensor(indices):
            indices = indices.detach().cpu().numpy()
        rows = np.asarray(indices).reshape(-1)
        if rows.size and not np.issubdtype(rows.dtype, np.integer):
            raise ValueError(
                f"Cache indices must be integers, got dtype {rows.dtype}; pass `batch['{CACHE_INDEX_COLUMN}']`."
            )
        rows = rows.astype(np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_rows):
            raise ValueError(
                f"Cache index {int(rows.min() if rows.min() < 0 else rows.max())} is outside [0, {self.num_rows}): "
                f"this cache holds {self.num_rows} rows. Use the `{CACHE_INDEX_COLUMN}` column that `attach` added to "
                "the dataset the cache was built from."
            )
        return rows

    def _read(self, positions: np.ndarray) -> torch.Tensor:
        """Full float32 logits at flat `positions`: (P,) -> (P, C)."""
        values = torch.from_numpy(np.asarray(self._values[positions], dtype=np.float32))
        if self.top_k is None:
            return values
        indices = torch.from_numpy(np.asarray(self._indices[positions], dtype=np.int64))
        k, num_classes = self.top_k, self.num_labels
        if k == num_classes:
            full = torch.empty(len(positions), num_classes, dtype=torch.float32)
        else:
            tail = torch.from_numpy(np.asarray(self._tail[positions], dtype=np.float32))
            fill = tail - math.log(num_classes - k)
            full = fill[:, None].expand(len(positions), num_classes).clone()
        return full.scatter_(1, indices, values)


TEACHER_LOGITS_KEY = "teacher_logits"


class CachedLogitsCollator:
    """Wraps a data collator: batches that carry the cache's index column also get their cached teacher logits, under
    `"teacher_logits"`, padded to the batch's length.

    Reading the cache in the collator keeps it off the training step: it runs in DataLoader workers when there are
    some, and the logits reach the device with the rest of the batch (pinned, non-blocking), so the step never waits
    on a device-to-host copy of the indices.
    """

    def __init__(self, collator: Callable[[list[dict[str, Any]]], dict[str, Any]], cache: TeacherLogitCache):
        self.collator = collator
        self.cache = cache

    @property
    def tokenizer(self) -> Any:
        """The wrapped collator's tokenizer, which Trainer saves with the model when it is given no other."""
        return getattr(self.collator, "tokenizer", None)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(features)
        index = batch.get(CACHE_INDEX_COLUMN)
        if index is not None and "input_ids" in batch:
            tokens = self.cache.task == TOKEN_CLASSIFICATION
            batch[TEACHER_LOGITS_KEY] = self.cache.logits(
                index, seq_len=batch["input_ids"].shape[1] if tokens else None,
                attention_mask=batch.get("attention_mask") if tokens else None)
        return batch


def _refuse_prepadded(attention_mask: torch.Tensor, lengths: np.ndarray, rows: np.ndarray) -> None:
    """Refuse rows whose stored input ids include padding (a dataset tokenized with `padding="max_length"`): the
    cache would keep logits for pad positions, and training batches, padded per batch, would not line up with them."""
    real = attention_mask.detach().cpu().sum(1).numpy()
    short = real < lengths
    if short.any():
        b = int(short.argmax())
        raise ValueError(
            f"Row {int(rows[b])} of the dataset has {int(lengths[b])} input ids but {int(real[b])} real tokens (its "
            "attention mask): it was tokenized with padding (e.g. `padding='max_length'`), so the cache would store "
            "logits for pad positions that training batches, padded per batch, do not line up with. Tokenize "
            "without padding and let the data collator pad each batch (`DataCollatorForTokenClassification`)."
        )


def _check_positions(attention_mask: torch.Tensor, lengths: np.ndarray, rows: np.ndarray) -> None:
    """Refuse a batch whose real tokens are not the first `lengths[b]` positions of each row (see `logits`)."""
    mask = attention_mask.detach().cpu().bool()
    expected = torch.arange(mask.shape[1]) < torch.from_numpy(lengths)[:, None]
    if torch.equal(mask, expected):
        return
    b = int((mask != expected).any(1).int().argmax())
    real = mask[b].nonzero().flatten().tolist()
    where = f"positions {real[0]}..{real[-1]}" if real else "no position"
    raise ValueError(
        f"Row {int(rows[b])} of the cache stores teacher logits for its first {int(lengths[b])} positions, but in this "
        f"batch its attention mask covers {where} of {mask.shape[1]}. Either the batch is left-padded (the cache "
        "places each row's logits from position 0: use a tokenizer with `padding_side='right'`, as at build time), "
        "or truncated unlike the build (collate without truncation, as at build time), or the "
        f"`{CACHE_INDEX_COLUMN}` column names other rows (attach the cache to the dataset it was built from, with "
        "`teacher_cache.attach(dataset)`, after removing a stale index column)."
    )


class _IndexedRows(torch.utils.data.Dataset):
    """A map-style dataset of dicts whose row i gains `teacher_cache_index = i`."""

    def __init__(self, rows: Any):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.rows[i], CACHE_INDEX_COLUMN: i}


# ---- building ----------------------------------------------------------------------------------------------------


def build_teacher_cache(
    teacher: nn.Module,
    dataset: Any,
    data_collator: Callable[[list[dict[str, Any]]], dict[str, Any]],
    path: str | os.PathLike,
    *,
    tokenizer: Any = None,
    max_length: int | None = None,
    top_k: int | None = None,
    batch_size: int = 64,
    overwrite: bool = False,
    progress_bar: bool = True,
    sort_window: int = 4096,
) -> TeacherLogitCache:
    """Run `teacher` once over `dataset` and store its logits in `path`; resume or reuse a cache already there.

    The teacher runs in eval mode under `torch.inference_mode()` on its own device, over batches of `batch_size`
    consecutive rows (dataset order, no shuffling) made by `data_collator`. The collator receives each row's teacher
    input columns and labels, as the Trainer's `remove_unused_columns` would pass them. For token classification
    the batches must be right-padded and not truncated: example i's first len(input_ids_i) positions are stored.
    On a CUDA device the logits come back to the host asynchronously, so that each batch is written to the cache
    while the teacher runs the next one.

    Several processes (`accelerate launch`) must not build the same `path` at once: build it in the main process
    first, e.g. `with training_args.main_process_first(): cache = build_teacher_cache(...)`; the other processes then
    find the complete cache and load it without running the teacher.

    Args:
        teacher: a sequence- or token-classification model; the task is read from its logits' rank (2 or 3).
        dataset: the tokenized training set: a `datasets.Dataset` or a map-style dataset of dicts with `input_ids`.
        data_collator: turns a list of rows into a batch of tensors, e.g. `DataCollatorForTokenClassification`.
        path: the cache directory (created if needed).
        tokenizer: recorded in the fingerprint so that `load` can refuse another tokenizer (optional).
        max_length: the tokenization `max_length`, recorded in the fingerprint (optional).
        top_k: store only the k largest logits per position and the log-sum-exp of the rest (see the module
            docstring); None stores every logit. k >= C stores every logit exactly, as k = C.
        batch_size: rows per teacher forward.
        overwrite: delete a cache in `path` that was built for something else, and rebuild.
        progress_bar: show a tqdm progress bar.
        sort_window: rows are taken in windows of this many consecutive rows; inside a window they are batched in
            order of length, so batches carry little padding. A window is also the unit of resumption: an
            interrupted build restarts at the first window it did not finish.

    Returns:
        The complete `TeacherLogitCache`. A complete cache already in `path` with the same fingerprint is returned
        without running the teacher; an incomplete one is finished from its `completed_rows`.

    Raises:
        ValueError: `path` holds a cache built for another teacher / dataset / tokenizer / max_length / top_k (and
            `overwrite` is False); the batches are left-padded or truncated (token classification); the teacher's
            outputs are not classification logits or contain NaN.
    """
    started = time.perf_counter()
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be at least 1, got {batch_size}.")
    if sort_window < 1:
        raise ValueError(f"`sort_window` must be at least 1, got {sort_window}.")
    if top_k is not None and top_k < 1:
        raise ValueError(f"`top_k` must be None (store every logit) or at least 1, got {top_k}.")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"The cache path {path} is a file; pass a directory (it is created if missing).")
    lengths, ids = _input_ids(dataset)
    check_inputs_fit(dataset, [("teacher", teacher)])
    problem = missing_segments(dataset, [teacher], separator_id(tokenizer, data_collator))
    if problem is not None:  # the cache would keep what the teacher read: the one place that sees the teacher
        logger.warning(problem)
    content, row_hashes = _content_digest(lengths, ids), _row_hashes(lengths, ids)
    num_rows = len(lengths)
    if num_rows == 0:
        raise ValueError("The dataset is empty: there are no rows to run the teacher on.")
    parts = {
        "dataset": _dataset_id(dataset, content),
        "dataset_content": content,
        "dataset_segments": _segments_digest(dataset),
        "teacher": teacher_fingerprint(teacher),
        "tokenizer": tokenizer_fingerprint(tokenizer) if tokenizer is not None else None,
        "max_length": max_length,
        "num_rows": num_rows,
    }

    if overwrite and (path / METADATA_FILE).is_file():  # deleted unread: a damaged one could not be read anyway
        logger.info("Deleting the teacher-logit cache at %s (overwrite=True).", path)
        _delete_cache(path)
    metadata = _read_metadata(path)
    if metadata is not None:
        _check_existing(path, metadata, parts, dataset, top_k)
        if metadata["completed_rows"] >= num_rows:
            logger.info("Reusing the complete teacher-logit cache at %s.", path)
            return TeacherLogitCache(path, metadata)
        logger.info("Resuming the teacher-logit cache at %s from row %d of %d.", path, metadata["completed_rows"], num_rows)

    store = _Store(path, metadata, mode="r+") if metadata is not None else None
    completed = metadata["completed_rows"] if metadata is not None else 0
    previous_seconds = metadata["build_seconds"] if metadata is not None else 0.0
    accepted = forward_inputs(teacher)
    columns = accepted | set(_LABEL_COLUMNS)
    source = dataset
    if isinstance(dataset, Dataset):
        source = dataset.select_columns([c for c in dataset.column_names if c in columns])
    device = next((p.device for p in teacher.parameters()), torch.device("cpu"))
    was_training = teacher.training
    teacher.eval()

    def save(pending: tuple) -> None:
        """Store a batch whose logits are on their way to the host (`_to_host`)."""
        nonlocal store, metadata
        indices, rows, batch, (logits, copied) = pending
        if copied is not None:
            copied.synchronize()
        if store is None:
            metadata = _new_metadata(logits, lengths, parts, top_k)
            metadata["label_names"] = label_names(teacher)  # not part of the fingerprint: a student check
            # Not part of it either: what the model card of a student distilled from the cache says taught it.
            metadata["teacher_name"] = model_name(teacher, default="")
            metadata["teacher_parameters"] = sum(p.numel() for p in teacher.parameters())
            store = _Store(path, metadata, mode="w+", lengths=lengths, row_hashes=row_hashes)
        if metadata["task"] == TOKEN_CLASSIFICATION and torch.is_tensor(batch.get("attention_mask")):
            _refuse_prepadded(batch["attention_mask"], lengths[indices], indices)
        store.write(indices, _positions(logits, batch, rows, lengths[indices], metadata, indices))
        bar.update(len(indices))

    try:
        with torch.inference_mode(), tqdm(
            total=num_rows, initial=completed, unit="row", desc="Teacher logits", disable=not progress_bar
        ) as bar:
            for window_start in range(completed, num_rows, sort_window):
                window_stop = min(window_start + sort_window, num_rows)
                order = window_start + np.argsort(lengths[window_start:window_stop], kind="stable")
                pending = None  # the previous batch: stored on the host while the teacher runs this one
                for b in range(0, len(order), batch_size):
                    indices = order[b:b + batch_size]
                    rows = _rows_for_collator(source, indices, columns)
                    batch = data_collator(rows)
                    inputs = {k: v.to(device) for k, v in batch.items() if k in accepted and torch.is_tensor(v)}
                    outputs = teacher(**inputs)
                    logits = outputs["logits"] if isinstance(outputs, dict) else outputs
                    logits = _to_host(logits if torch.is_tensor(logits) else logits[0])
                    if pending is not None:
                        save(pending)
                    pending = (indices, rows, batch, logits)
                save(pending)  # a window is complete only once its last batch is stored
                store.flush()
                metadata["completed_rows"] = window_stop
                metadata["build_seconds"] = previous_seconds + time.perf_counter() - started
                _write_metadata(path, metadata)
    finally:
        teacher.train(was_training)
    logger.info(
        "Cached the teacher's logits for %d rows (%d positions) at %s in %.1f s.",
        num_rows, int(store.offsets[-1]), path, metadata["build_seconds"],
    )
    return TeacherLogitCache(path, metadata)


def _to_host(logits: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """`(fp32 logits on the CPU, event)`. From a CUDA device the copy is asynchronous, so the host stores the previous
    batch while the device runs the next one; the logits are valid once `event.synchronize()` returns. Elsewhere the
    copy is done on return and the event is None."""
    logits = logits.float()
    if logits.device.type != "cuda":
        return logits.cpu(), None
    host = logits.to("cpu", non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    return host, copied


def _check_existing(path: Path, metadata: dict[str, Any], parts: dict[str, Any], dataset: Any, top_k: int | None):
    stored = metadata["fingerprint"]
    changed = _changed_parts(
        stored, teacher=parts["teacher"], dataset=dataset, tokenizer=parts["tokenizer"], max_length=parts["max_length"]
    )
    messages = [_mismatch_message(path, stored, changed, dataset, parts["max_length"])] if changed else []
    wanted_k = None if top_k is None else min(top_k, metadata["num_labels"])
    if wanted_k != metadata["top_k"]:
        messages.append(f"The cache at {path} stores top_k={metadata['top_k']}, not top_k={wanted_k}")
    if messages:
        raise ValueError(
            f"{'; '.join(messages)}. Build this cache into a new path, or pass `overwrite=True` to delete the one "
            f"at {path} and rebuild it."
        )


def _rows_for_collator(source: Any, indices: np.ndarray, columns: set[str]) -> list[dict[str, Any]]:
    """The rows at `indices`, in that order, as a list of dicts restricted to `columns`."""
    if isinstance(source, Dataset):
        block = source[[int(i) for i in indices]]
        return [dict(zip(block, values, strict=True)) for values in zip(*block.values(), strict=True)]
    return [{k: v for k, v in source[int(i)].items() if k in columns} for i in indices]


def _new_metadata(logits: torch.Tensor, lengths: np.ndarray, parts: dict[str, Any], top_k: int | None) -> dict:
    if logits.dim() == 3:
        task = TOKEN_CLASSIFICATION
    elif logits.dim() == 2:
        task = SEQUENCE_CLASSIFICATION
    else:
        raise ValueError(
            f"The teacher's logits have shape {tuple(logits.shape)}; the cache needs (B, C) (sequence classification) "
            "or (B, L, C) (token classification). Pass a model with a classification head."
        )
    num_labels = int(logits.shape[-1])
    k = None if top_k is None else min(top_k, num_labels)
    if k is not None and num_labels > _INT16_LIMIT:
        raise ValueError(
            f"The teacher has {num_labels} classes, more than the {_INT16_LIMIT} that the int16 top-k indices can "
            "address. Use `top_k=None` to store every logit."
        )
    if task == TOKEN_CLASSIFICATION and lengths.sum() == 0:
        raise ValueError("Every example has 0 input ids: there are no token positions to cache.")
    fingerprint = {**parts, "num_labels": num_labels, "top_k": k, "task": task}
    return {
        "format_version": FORMAT_VERSION,
        "task": task,
        "num_rows": int(len(lengths)),
        "num_labels": num_labels,
        "top_k": k,
        "completed_rows": 0,
        "build_seconds": 0.0,
        "fingerprint": fingerprint,
    }


def _positions(
    logits: torch.Tensor, batch: dict[str, Any], rows: list[dict[str, Any]], lengths: np.ndarray, metadata: dict,
    indices: np.ndarray,
) -> np.ndarray:
    """The logits to store for a batch of rows (dataset `indices`): (B, C), or (Σ L_i, C) for token classification,
    row after row."""
    start = int(indices[0])
    task, num_labels = metadata["task"], metadata["num_labels"]
    expected_rank = 3 if task == TOKEN_CLASSIFICATION else 2
    if logits.dim() != expected_rank or logits.shape[-1] != num_labels:
        raise ValueError(
            f"The teacher's logits for rows {start}.. have shape {tuple(logits.shape)}, but the cache holds "
            f"{task.replace('_', ' ')} logits with {num_labels} classes. Resume the build with the teacher it started "
            "with, or pass `overwrite=True`."
        )
    if len(logits) != len(lengths):
        raise ValueError(
            f"The collator turned {len(lengths)} rows into a batch of {len(logits)}: it must keep one example per row, "
            "in order."
        )
    if task == SEQUENCE_CLASSIFICATION:
        flat = logits
    else:
        _check_right_padded(batch, rows, lengths, logits.shape[1], indices)
        flat = logits[torch.arange(logits.shape[1]) < torch.from_numpy(lengths)[:, None]]
    flat = flat.numpy()
    if np.isnan(flat).any():
        raise ValueError(
            f"The teacher produced NaN logits for rows {sorted(int(i) for i in indices)[:8]}. Check the teacher on "
            "these rows (e.g. an fp16 overflow) before caching its logits."
        )
    if np.isinf(flat).any():
        raise ValueError(
            f"The teacher produced infinite logits for rows {sorted(int(i) for i in indices)[:8]} (an fp16 overflow?), "
            "which online training would skip as non-finite. Check the teacher on these rows (run it in float32) "
            "before caching its logits, or train with the online teacher (no teacher_cache)."
        )
    _check_fp16_holds(flat, indices, metadata["top_k"])
    return np.clip(flat, -_FP16_MAX, _FP16_MAX)


def _check_fp16_holds(flat: np.ndarray, indices: np.ndarray, top_k: int | None = None,
                      tolerance: float = 0.01) -> None:
    """Refuse logits whose softmax (at temperature 1) moves by more than `tolerance` once stored in fp16: large logits
    lose their differences there (10000 and 10003 are both 10000: fp16's step is 8), which would cache a confident
    teacher as a uniform one, with a tie for its argmax. With `top_k`, what is compared is what the cache keeps: the
    top-k probabilities and the tail's mass, the top logits in fp16 beside the tail's fp32 log-sum-exp."""
    # Below 32, fp16 rounds a logit by at most 32 * 2**-11 = 0.016, which moves a softmax by at most half that
    # (< 0.01): the usual fine-tuned teacher is cleared by one pass over the batch, not two softmaxes.
    if flat.size == 0 or float(np.abs(flat).max()) <= 32.0:
        return
    logits = torch.from_numpy(flat).float()
    if top_k is not None and top_k < logits.shape[-1]:
        top = logits.topk(top_k, dim=-1)
        tail = torch.logsumexp(logits.scatter(-1, top.indices, float("-inf")), dim=-1, keepdim=True)
        exact = torch.cat([top.values, tail], dim=-1).softmax(-1)
        kept = torch.cat([top.values.clamp(-_FP16_MAX, _FP16_MAX).half().float(), tail], dim=-1).softmax(-1)
    else:
        exact, kept = logits.softmax(-1), logits.clamp(-_FP16_MAX, _FP16_MAX).half().float().softmax(-1)
    shift = (kept - exact).abs().amax()
    if shift > tolerance:
        raise ValueError(
            f"fp16, in which the cache stores logits, cannot hold the teacher's logits for rows "
            f"{sorted(int(i) for i in indices)[:8]}: they reach {float(logits.abs().max()):.4g}, where fp16 rounds away "
            f"their differences, and their softmax would move by up to {float(shift):.3f}. Train with the online "
            "teacher (no teacher_cache)."
        )


def _check_right_padded(
    batch: dict[str, Any], rows: list[dict[str, Any]], lengths: np.ndarray, seq_len: int, indices: np.ndarray
) -> None:
    """Raise unless each row's input ids sit untruncated at the start of its batch row."""
    fix = (
        "The cache stores each example's positions from the start of the sequence, so it needs right-padded, "
        "untruncated batches: build the collator with a tokenizer whose `padding_side='right'` (the default for "
        "BERT-like models) and no `max_length`"
    )
    mask = batch.get("attention_mask")
    if mask is not None and ((mask[:, 0] == 0) & torch.from_numpy(lengths > 0)).any():
        raise ValueError(f"The collator left-pads the batch (its attention_mask starts with 0); right padding is "
                         f"required. {fix}.")
    input_ids = batch["input_ids"]
    if (lengths <= seq_len).all():  # fast path: the whole batch in one comparison
        expected = np.concatenate([np.asarray(row["input_ids"]).reshape(-1) for row in rows])
        valid = torch.arange(seq_len) < torch.from_numpy(lengths)[:, None]
        got = input_ids.cpu()[valid].numpy()
        if got.shape == expected.shape and np.array_equal(got, expected):
            return
    for b, (row, length) in enumerate(zip(rows, lengths, strict=True)):  # find the row, and say what is wrong
        if length > seq_len:
            raise ValueError(
                f"Row {int(indices[b])} has {length} input ids but its batch is {seq_len} tokens long: the collator "
                f"truncates. {fix}."
            )
        expected = torch.as_tensor(row["input_ids"]).reshape(-1)
        if not torch.equal(input_ids[b, :length].cpu(), expected.to(input_ids.dtype)):
            padded_left = torch.equal(input_ids[b, seq_len - length:].cpu(), expected.to(input_ids.dtype))
            what = "left-pads the batch; right padding is required" if padded_left else "changes the input ids"
            raise ValueError(f"The collator {what} (row {int(indices[b])}). {fix}.")


class _Store:
    """The memory-mapped arrays of a cache being built."""

    def __init__(self, path: Path, metadata: dict[str, Any], mode: str, lengths: np.ndarray | None = None,
                 row_hashes: np.ndarray | None = None):
        num_rows, num_labels, k = metadata["num_rows"], metadata["num_labels"], metadata["top_k"]
        if mode == "w+":
            path.mkdir(parents=True, exist_ok=True)
            _delete_cache(path)
            np.save(path / "row_hashes.npy", row_hashes)
            per_row = lengths if metadata["task"] == TOKEN_CLASSIFICATION else np.ones(num_rows, dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int64)
            self.offsets = np.lib.format.open_memmap(path / "offsets.npy", mode="w+", dtype=np.int64,
                                                     shape=offsets.shape)
            self.offsets[:] = offsets
            self.offsets.flush()
        else:
            self.offsets = _open_array(path, "offsets.npy", (num_rows + 1,), np.int64, mode)
        total = int(self.offsets[-1])
        self.top_k = k

        def array(name, shape, dtype):
            if mode == "w+":
                return np.lib.format.open_memmap(path / name, mode="w+", dtype=dtype, shape=shape)
            return _open_array(path, name, shape, dtype, mode)

        self.values = array("values.npy", (total, num_labels if k is None else k), np.float16)
        self.indices = array("indices.npy", (total, k), np.int16) if k is not None else None
        self.tail = array("tail_logsumexp.npy", (total,), np.float32) if k is not None else None

    def write(self, rows: np.ndarray, flat: np.ndarray) -> None:
        """Store the (P, C) fp32 logits of the dataset rows `rows` (their positions one row after another)."""
        starts, stops = self.offsets[rows], self.offsets[np.asarray(rows) + 1]
        where = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops, strict=True)]) if len(rows) else []
        if self.top_k is None:
            self.values[where] = flat.astype(np.float16)
            return
        logits = torch.from_numpy(flat)
        top = logits.topk(self.top_k, dim=-1)
        rest = logits.scatter(-1, top.indices, float("-inf"))
        self.values[where] = top.values.numpy().astype(np.float16)
        self.indices[where] = top.indices.numpy().astype(np.int16)
        self.tail[where] = torch.logsumexp(rest, dim=-1).numpy()

    def flush(self) -> None:
        """Write what the arrays hold to disk (before the metadata says those rows are complete)."""
        for array in (self.values, self.indices, self.tail):
            if array is not None:
                array.flush()


# ---- files -------------------------------------------------------------------------------------------------------


def _open_array(path: Path, name: str, shape: tuple[int, ...], dtype: Any, mode: str = "r") -> np.ndarray:
    try:
        array = np.load(path / name, mmap_mode=mode)
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(
            f"The cache at {path} is damaged: {name} cannot be read ({error}). Rebuild it with "
            "`build_teacher_cache(..., overwrite=True)`."
        ) from error
    if array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
        raise ValueError(
            f"The cache at {path} is damaged: {name} holds {array.dtype} {array.shape}, but its metadata says "
            f"{np.dtype(dtype)} {tuple(shape)}. Rebuild it with `build_teacher_cache(..., overwrite=True)`."
        )
    return array


def _read_metadata(path: Path) -> dict[str, Any] | None:
    """The cache's metadata, or None when `path` holds no cache."""
    file = path / METADATA_FILE
    if not file.is_file():
        return None
    try:
        metadata = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{file} is not valid JSON ({error}). Rebuild the cache with `build_teacher_cache(..., overwrite=True)`."
        ) from error
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"The cache at {path} has format version {metadata.get('format_version')}, but this hf_distill reads "
            f"version {FORMAT_VERSION}. Rebuild it with `build_teacher_cache(..., overwrite=True)`."
        )
    return metadata


def _write_metadata(path: Path, metadata: dict[str, Any]) -> None:
    """Write metadata.json atomically (`files.atomic_write_json`)."""
    atomic_write_json(path / METADATA_FILE, metadata)


def _delete_cache(path: Path) -> None:
    """Remove the cache's own files from `path`, and nothing else."""
    for name in (METADATA_FILE, *_ARRAY_FILES):
        (path / name).unlink(missing_ok=True)
