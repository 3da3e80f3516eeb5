"""Checks made before a distillation run starts: do the teacher, the student and the data fit together?

Each check raises a `ValueError` that names the mismatch and the fix. Logit distillation silently learns the
wrong thing when the two models disagree on the vocabulary or on the order of the labels, so these run at init.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset
from torch import nn

TOKEN_CLASSIFICATION = "token_classification"
SEQUENCE_CLASSIFICATION = "sequence_classification"
_HEADS = {"ForTokenClassification": TOKEN_CLASSIFICATION, "ForSequenceClassification": SEQUENCE_CLASSIFICATION}
_LABEL_COLUMNS = ("labels", "label", "label_ids")
_DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")
logger = logging.getLogger(__name__)
_IGNORE_INDEX = -100


def _base(model: nn.Module) -> nn.Module:
    """The transformers model under `torch.compile`, a PEFT or other thin wrapper."""
    model = getattr(model, "_orig_mod", model)
    if hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def forward_inputs(model: nn.Module) -> set[str]:
    """The batch keys that `model.forward` takes by name, without the label columns (so no loss is computed).

    Looks through `torch.compile` (whose forward takes only `*args, **kwargs`) and through a PEFT-style wrapper, whose
    forward names a few inputs and passes the rest (`token_type_ids`, `position_ids`, ...) on to the base model in
    `**kwargs`: the base model's names count too. Otherwise `*args`/`**kwargs` accept nothing here.
    """
    model = getattr(model, "_orig_mod", model)
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    names = {p.name for p in inspect.signature(model.forward).parameters.values() if p.kind not in variadic}
    base = _base(model)
    if base is not model:
        names |= forward_inputs(base)
    return names - set(_LABEL_COLUMNS)


def infer_task(model: nn.Module, role: str = "student") -> str:
    """`"token_classification"` or `"sequence_classification"`, from the model's head class."""
    if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
        advice = ("hf-distill places the teacher on the device itself and never wraps it" if role.startswith("teacher")
                  else "Trainer wraps the student itself")
        raise ValueError(
            f"The {role} is wrapped in {type(model).__name__}: pass the model itself (`{role.split()[0]}.module`); "
            f"{advice}."
        )
    for cls in type(_base(model)).__mro__:
        for suffix, task in _HEADS.items():
            if cls.__name__.endswith(suffix):
                return task
    name = type(_base(model)).__name__
    raise ValueError(
        f"The {role} is a {name}, which has no sequence- or token-classification head. "
        "hf-distill distils classification logits: load it with `AutoModelForSequenceClassification` or "
        "`AutoModelForTokenClassification` (with `num_labels`, `id2label` and `label2id` set). It tells the task "
        "from the class name: a model of your own (a BiLSTM student, say) is distilled when its class name ends in "
        "`ForSequenceClassification` or `ForTokenClassification`, it has a `config` with `num_labels` (a "
        "`transformers.PretrainedConfig`), and its forward returns a `ModelOutput` with `logits` (such as "
        "`transformers.modeling_outputs.SequenceClassifierOutput`)"
        + (f" (e.g. `class {name}ForSequenceClassification(nn.Module)`)." if not name.endswith("Model") else ".")
    )


def task_of(model: nn.Module) -> str | None:
    """`infer_task` for code that also takes models of one's own: None when the class name tells no task."""
    try:
        return infer_task(model, "model")
    except ValueError:
        return None


def is_placeholder_label(name: Any) -> bool:
    """Whether `name` is a default class name such as `LABEL_0` (Transformers' id2label when none was given)."""
    return isinstance(name, str) and _DEFAULT_LABEL.match(name) is not None


def label_names(model: nn.Module) -> list[str] | None:
    """A model's label names in id order, or None for placeholder names (`LABEL_0`, ...)."""
    return _labels(_base(model).config)


def _labels(config: Any) -> list[str] | None:
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(id2label, key=int)]
    if not names or all(is_placeholder_label(n) for n in names):
        return None  # placeholder names carry no information about the order
    return names


def check_teachers_agree(teachers: list[nn.Module]) -> None:
    """An ensemble's teachers must name the same labels in the same order: their soft targets are mixed class by
    class, whatever the student's (possibly placeholder) label names allow."""
    named = [(i, t, labels) for i, t in enumerate(teachers) if (labels := _labels(_base(t).config)) is not None]
    # Every teacher that names its labels is compared with the first that does (placeholder names say nothing).
    for index, teacher, labels in named[1:]:
        first_index, first_teacher, first = named[0]
        if labels != first:
            same = sorted(labels) == sorted(first)
            raise ValueError(
                f"Teacher {index} ({model_name(teacher)}) has the labels {labels}, teacher {first_index} "
                f"({model_name(first_teacher)}) {first}: "
                f"{'the same labels in another order' if same else 'another label set'}. An ensemble mixes "
                "its teachers' outputs class by class; use teachers fine-tuned on the same label set, with the same "
                "`id2label`."
            )


LOADED_FROM = "_hf_distill_loaded_from"
"""The attribute where `loading.load_model` records the local folder it read: an adapter folder's model names only its
base model in `config._name_or_path`, and the folder must still be named on cards and kept out of the way of saves."""
CUT_FROM = "_hf_distill_cut_from"
"""The attribute where `create_student` records the name of the model it cut (its config's name is cleared), for the
model card. Not in the config: `config.json` is published with the student, and a local path would go with it."""


def model_name(model: nn.Module, default: str = "unnamed") -> str:
    """A model's name: the Hub id or path its config records, or, where `load_model` read another folder (an adapter
    folder, whose config names only its base model), that folder; `default` when it has neither."""
    name = getattr(getattr(_base(model), "config", None), "_name_or_path", "") or ""
    folder = getattr(model, LOADED_FROM, "") or ""
    if folder and not (name and os.path.isdir(name) and os.path.realpath(name) == folder):
        return folder
    return name or default


def check_teacher_student(teacher: nn.Module, student: nn.Module) -> str:
    """Check that `teacher` can distil into `student`; return the task they share."""
    student_task = infer_task(student, "student")
    teacher_task = infer_task(teacher, "teacher")
    if teacher_task != student_task:
        raise ValueError(
            f"The teacher has a {teacher_task.replace('_', ' ')} head but the student has a "
            f"{student_task.replace('_', ' ')} head. Load the teacher with the same Auto class as the student "
            f"(a fine-tuned {student_task.replace('_', ' ')} checkpoint)."
        )
    t_cfg, s_cfg = _base(teacher).config, _base(student).config
    check_single_label(teacher, "teacher")
    check_single_label(student, "student")
    t_vocab, s_vocab = getattr(t_cfg, "vocab_size", None), getattr(s_cfg, "vocab_size", None)
    if t_vocab is not None and s_vocab is not None and t_vocab != s_vocab:
        # Not refused: a shared tokenizer under tables of other sizes works (an XLM-R teacher and a multilingual
        # MiniLM student; a table padded by `resize_token_embeddings`). The ids are checked against both tables.
        logger.warning(
            "The teacher's vocab_size is %d but the student's is %d. Both models read the same input_ids, so they "
            "must share a tokenizer (one table padded past it is fine); a student pre-trained with another tokenizer "
            "would read each id as another word. If so, build the student from the teacher "
            "(`hf_distill.create_student(teacher, layers=...)`) or pick one with the teacher's tokenizer.",
            t_vocab, s_vocab,
        )
    t_num, s_num = t_cfg.num_labels, s_cfg.num_labels
    if t_num != s_num:
        raise ValueError(
            f"The teacher predicts {t_num} labels but the student predicts {s_num}. Load the student with the "
            "teacher's labels: `from_pretrained(..., num_labels=teacher.config.num_labels, "
            "id2label=teacher.config.id2label, label2id=teacher.config.label2id, ignore_mismatched_sizes=True)` "
            "(its classifier is then new, to be trained)."
        )
    check_label_names(_labels(t_cfg), student)
    return student_task


def label_order_mismatch(dataset: Any, model_labels: list[str] | None, source: str = "the teacher") -> str | None:
    """A warning for a split whose label column is a `ClassLabel` (or a list of them, for token labels) naming the
    models' classes in another order, ignoring case (GLUE/MNLI's [entailment, neutral, contradiction] against an MNLI
    checkpoint's [CONTRADICTION, NEUTRAL, ENTAILMENT]), else None. A warning, not an error: `Dataset.map` keeps a
    column's ClassLabel when it re-encodes the ids (as run_glue.py does), so the names may be stale and the ids
    right. Other names, or placeholder model labels (`model_labels` None), say nothing about the order."""
    if model_labels is None or not isinstance(dataset, Dataset):
        return None
    wanted = [str(name).casefold() for name in model_labels]
    for column in _LABEL_COLUMNS:
        feature = dataset.features.get(column)
        per_token = hasattr(feature, "feature")  # Sequence/List of ClassLabel: token labels
        feature = getattr(feature, "feature", feature)
        if not isinstance(feature, ClassLabel):
            continue
        names = list(feature.names)
        folded = [name.casefold() for name in names]
        if folded == wanted or sorted(folded) != sorted(wanted):
            continue
        moved = next(i for i, (a, b) in enumerate(zip(folded, wanted, strict=True)) if a != b)
        renamed = f"datasets.ClassLabel(names={model_labels})"
        if per_token:  # (datasets' align_labels_with_mapping handles single labels only)
            reencode = (f"map each id through `teacher.config.label2id[{names}[id]]` (the recipes' `align_labels` "
                        "does this)")
            renamed = f"datasets.Sequence({renamed})"
        else:
            reencode = f"`dataset = dataset.align_labels_with_mapping(teacher.config.label2id, {column!r})`"
        return (
            f"Column {column!r} is a ClassLabel with the names {names}: the classes of {source} ({model_labels}) in "
            f"another order. If its ids follow those names, id {moved} trains {names[moved]!r} as "
            f"{model_labels[moved]!r}: re-encode them, {reencode}. If the ids already follow the models' order "
            "(mapped after loading, as run_glue.py does), only the names are stale: "
            f"`dataset = dataset.cast_column({column!r}, {renamed})` records that, and this warning goes."
        )
    return None


def separator_id(tokenizer: Any, data_collator: Any = None) -> int | None:
    """The separator token's id, from the tokenizer or, without one, from the collator's."""
    for source in (tokenizer, getattr(data_collator, "tokenizer", None)):
        sep = getattr(source, "sep_token_id", None)
        if sep is not None:
            return sep
    return None


def missing_segments(dataset: Any, teachers: list[nn.Module], sep_token_id: int | None, rows: int = 64) -> str | None:
    """What goes wrong when `dataset` holds sentence pairs (two separator tokens in a row) without `token_type_ids`
    while a teacher takes them and was built with two or more segments (a BERT teacher, pairs tokenized by a
    DistilBERT student's tokenizer): the teacher reads every token as the first sentence, unlike in its fine-tuning.
    None when nothing is wrong or the first `rows` rows hold no pair."""
    columns = dataset_columns(dataset) if dataset is not None else []
    if sep_token_id is None or "input_ids" not in columns or {"token_type_ids", "teacher_token_type_ids"} & set(columns):
        return None
    takers = [t for t in teachers if "token_type_ids" in forward_inputs(t)
              and (getattr(_base(t).config, "type_vocab_size", 0) or 0) >= 2]
    if not takers:
        return None
    sample = dataset.select(range(min(rows, len(dataset)))) if isinstance(dataset, Dataset) else None
    if sample is None or not any(list(ids).count(sep_token_id) >= 2 for ids in sample["input_ids"]):
        return None
    teacher = _base(takers[0])
    return (
        f"The training set's rows hold two separator tokens, as sentence pairs do, but no token_type_ids, and the "
        f"teacher ({type(teacher).__name__}, type_vocab_size={teacher.config.type_vocab_size}) takes them. If these "
        "are pairs, it reads the second sentence as the first one's segment, unlike in its fine-tuning, and teaches "
        "from there: tokenize with the teacher's tokenizer, or pass `return_token_type_ids=True` to the tokenizer call "
        "(the student, if it takes none, is not given them). Single texts that contain a separator need nothing."
    )


def check_single_label(model: nn.Module, role: str) -> None:
    """Refuse a regression or multi-label head: hf-distill distils softmax distributions over two or more classes."""
    cfg = _base(model).config
    problem = getattr(cfg, "problem_type", None)
    if cfg.num_labels < 2 or problem in ("regression", "multi_label_classification"):
        what = "multi-label classification (independent sigmoids)" if problem == "multi_label_classification" \
            else f"regression (num_labels={cfg.num_labels})"
        raise ValueError(
            f"The {role} is configured for {what}, but hf-distill distils single-label classification: the KL "
            "between softmax distributions over two or more classes (over one class it is always 0, so nothing "
            "would be distilled). Regression and multi-label heads are not supported; load both models with "
            "`num_labels` >= 2 and `problem_type` unset or 'single_label_classification'."
        )


def check_label_names(teacher_labels: list[str] | None, student: nn.Module, teacher: str = "Teacher",
                      id2label: str = "teacher.config.id2label") -> None:
    """Refuse a student whose `id2label` names the teacher's labels in another order, or other labels (placeholder
    `LABEL_<i>` names on either side tell nothing, and pass). `teacher` names the source in messages, `id2label`
    the expression that gives its labels."""
    s_labels = _labels(_base(student).config)
    if teacher_labels is None or s_labels is None or teacher_labels == s_labels:
        return
    if sorted(teacher_labels) == sorted(s_labels):
        raise ValueError(
            f"{teacher} and student have the same labels in a different order (teacher id2label: "
            f"{teacher_labels}; student id2label: {s_labels}). Their logits would be compared class by class and "
            f"scramble the labels. If the student's head is new, load it with `id2label={id2label}` (and the matching "
            "`label2id`) and encode the dataset's labels with the same mapping; if its head was trained on these "
            "labels, renaming would give its rows other labels: permute its classifier rows to the teacher's order "
            "(or fine-tune it with the teacher's id2label) first."
        )
    raise ValueError(
        f"{teacher} and student have different label sets: teacher {teacher_labels}, student {s_labels}. "
        "Distillation needs the teacher's labels; fine-tune the teacher on the student's label set or load the "
        "student with the teacher's `id2label`."
    )


def has_no_vocabulary(tokenizer: Any) -> bool:
    """Whether `tokenizer` knows no token but its special ones. `AutoTokenizer.from_pretrained` on a directory without
    tokenizer files (a model saved alone) can return such a tokenizer, which turns every word into the unknown token."""
    special = getattr(tokenizer, "all_special_ids", None)
    return special is not None and hasattr(tokenizer, "__len__") and len(tokenizer) <= len(set(special))


def check_tokenizer(tokenizer: Any, teacher: nn.Module, student: nn.Module | None = None) -> None:
    """Check that the tokenizer has a vocabulary and that its ids fit the teacher's (and the student's) embedding
    table."""
    if tokenizer is None or not hasattr(tokenizer, "__len__"):
        return
    if has_no_vocabulary(tokenizer):
        raise ValueError(
            f"The tokenizer ({getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__}) has no vocabulary, "
            f"only its {len(tokenizer)} special tokens, so every word would become {tokenizer.unk_token!r}. It was "
            "probably loaded from a directory that holds a model but no tokenizer files. Load the tokenizer the "
            "teacher was trained with (e.g. `AutoTokenizer.from_pretrained(<the teacher's base model>)`) and save it "
            "next to the teacher with `tokenizer.save_pretrained(<teacher dir>)`."
        )
    vocab = getattr(_base(teacher).config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the teacher's vocab_size is {vocab}: it is not the "
            "teacher's tokenizer. Pass `processing_class=AutoTokenizer.from_pretrained(<teacher path>)`."
        )
    vocab = getattr(_base(student).config, "vocab_size", None) if student is not None else None
    if vocab is not None and len(tokenizer) > vocab:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the student's vocab_size is {vocab}: the student cannot "
            "embed all of the teacher's token ids. Pick a student with the teacher's tokenizer, build it from the "
            "teacher (`hf_distill.create_student`), or grow its table with `student.resize_token_embeddings("
            "len(tokenizer))`."
        )


def dataset_columns(dataset: Any) -> list[str]:
    """The columns of a training set: `column_names` for a `datasets.Dataset`, else the keys of its first row (a
    torch `Subset` or `random_split` part of one, a list of dicts), else none."""
    names = getattr(dataset, "column_names", None)
    if isinstance(names, list | tuple):
        return list(names)
    try:
        first = dataset[0] if len(dataset) else None
    except Exception:  # not indexable by position (an iterable dataset): no columns to read ahead
        return []
    return list(first) if hasattr(first, "keys") else []


def _reject_dataset_dict(dataset: Any, name: str) -> None:
    """Raise if `dataset` is a `DatasetDict` (a mapping of splits) where one split was meant."""
    if hasattr(dataset, "keys") and hasattr(dataset, "column_names") and isinstance(dataset.column_names, dict):
        splits = list(dataset.keys())
        raise ValueError(
            f"`{name}` is a DatasetDict with splits {splits}, not a single split. "
            f"Did you mean `dataset[{splits[0]!r}]`?"
        )


def check_train_dataset(dataset: Any, needs_labels: bool, why: str | None = None) -> None:
    """Check that the training split is a split, has rows, and has labels when they are needed (`why` says by what,
    and how to do without: `DistillationArguments.labels_needed_by`)."""
    if dataset is None:
        return
    _reject_dataset_dict(dataset, "train_dataset")
    try:
        n_rows = len(dataset)
    except TypeError:  # an IterableDataset has no length
        n_rows = None
    if n_rows == 0:
        columns = getattr(dataset, "column_names", None)
        raise ValueError(
            f"The training dataset is empty (after filtering?): it has 0 rows (columns: {columns}). Check the "
            "`filter`/`select` calls that built it (a length or label filter can drop every row) and that the data "
            "file holds examples."
        )
    columns = getattr(dataset, "column_names", None)
    if needs_labels and columns is not None and not any(c in columns for c in _LABEL_COLUMNS):
        why = why or ("alpha < 1 gives weight to the hard-label loss. Add a `labels` column, or set `alpha=1.0` (and "
                      "no `final_alpha` below 1) to train on the teacher's outputs alone.")
        raise ValueError(f"The training data has no labels column (found columns: {columns}), but {why}")


def check_token_labels(dataset: Any) -> None:
    """Token classification: the tags must sit under `labels` (the data collator pads only that name, and the trainer
    reads only it) and each row must have one label per input id (word-level tags never aligned to the sub-words
    would be padded with -100 by the collator: [CLS] would take the first word's tag). Checked on Arrow-backed
    datasets; nothing is read from other kinds."""
    if not isinstance(dataset, Dataset):
        return
    columns = dataset.column_names
    if "label" in columns and "labels" not in columns:
        raise ValueError(
            "The token-classification data has its tags in a `label` column, but the token collator pads, and the "
            'trainer reads, `labels`: `dataset = dataset.rename_column("label", "labels")`.'
        )
    if "labels" not in columns or "input_ids" not in columns:
        return
    table = dataset.select_columns(["input_ids", "labels"]).with_format("arrow")[:]
    ids, labels = table.column("input_ids"), table.column("labels")
    if not (pa.types.is_list(labels.type) or pa.types.is_large_list(labels.type)):
        return
    id_lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False)
    label_lengths = pc.list_value_length(labels).to_numpy(zero_copy_only=False)
    wrong = np.flatnonzero(id_lengths != label_lengths)
    if wrong.size:
        row = int(wrong[0])
        raise ValueError(
            f"Token-classification row {row} has {int(label_lengths[row])} labels for {int(id_lengths[row])} input "
            f"ids ({wrong.size} rows differ): word-level tags must be aligned to the sub-words, one label per input "
            "id with -100 on special tokens and later sub-words. Tokenize with `hf_distill.tokenize_and_align_labels`."
        )


def unlabeled_token_rows(dataset: Any) -> int:
    """Token classification: how many rows of an Arrow-backed dataset have no label at all (every label -100); 0 for
    other kinds of dataset, whose rows are not read."""
    if not isinstance(dataset, Dataset) or "labels" not in dataset.column_names:
        return 0
    labels = dataset.select_columns(["labels"]).with_format("arrow")[:].column("labels").combine_chunks()
    if not (pa.types.is_list(labels.type) or pa.types.is_large_list(labels.type)):
        return 0
    labelled = pc.not_equal(pc.list_flatten(labels), _IGNORE_INDEX).to_numpy(zero_copy_only=False)
    rows = pc.list_parent_indices(labels).to_numpy(zero_copy_only=False)
    return len(dataset) - len(np.unique(rows[labelled]))


# Model families whose learned absolute positions bound the length, and how many position ids they reserve
# (RoBERTa-style models, MPNet among them, count positions from pad_token_id + 1; None stands for that).
_ABSOLUTE_POSITIONS = {"bert": 0, "distilbert": 0, "electra": 0, "albert": 0, "mobilebert": 0, "megatron-bert": 0,
                       "ernie": 0, "deberta": 0, "deberta-v2": 0, "roberta": None, "xlm-roberta": None,
                       "camembert": None, "mpnet": None, "data2vec-text": None, "xlm-roberta-xl": None,
                       "roberta-prelayernorm": None}


def _max_length(model: nn.Module) -> int | None:
    config = _base(model).config
    if getattr(config, "model_type", None) not in _ABSOLUTE_POSITIONS or not hasattr(config, "max_position_embeddings"):
        return None
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return None
    if not getattr(config, "position_biased_input", True):  # DeBERTa's relative positions only: any length
        return None
    offset = _ABSOLUTE_POSITIONS[config.model_type]
    offset = (getattr(config, "pad_token_id", 0) or 0) + 1 if offset is None else offset
    return config.max_position_embeddings - offset


def check_inputs_fit(dataset: Any, models: list[tuple[str, nn.Module]], prefix: str = "") -> None:
    """Check a tokenized split against each model's embedding tables: token ids below `vocab_size`, segment ids below
    `type_vocab_size`, and (for learned absolute positions) no row longer than the positions the model has. Otherwise
    the forward fails mid-training with "index out of range in self" (a device-side assert on GPU). Checked on
    Arrow-backed datasets; `models` are `(role, model)` pairs named in messages. `prefix` checks the columns those
    models read under another name (`"teacher_"`: a teacher view's `teacher_input_ids`, ...)."""
    ids_column, types_column = f"{prefix}input_ids", f"{prefix}token_type_ids"
    if not isinstance(dataset, Dataset) or ids_column not in dataset.column_names or not models:
        return
    columns = [c for c in (ids_column, types_column) if c in dataset.column_names]
    table = dataset.select_columns(columns).with_format("arrow")[:]
    ids = table.column(ids_column)
    if not (pa.types.is_list(ids.type) or pa.types.is_large_list(ids.type)) or len(ids) == 0:
        return
    # (a row without a teacher view, as interleave_datasets leaves it, is None: no length to check)
    lengths = pc.fill_null(pc.list_value_length(ids), 0).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(ids)
    top_id = pc.max(flat).as_py() if len(flat) else None
    top_type = None
    if types_column in columns and len(pc.list_flatten(table.column(types_column))):
        top_type = pc.max(pc.list_flatten(table.column(types_column))).as_py()
    where = f" (column {ids_column!r})" if prefix else ""
    for role, model in models:
        config = _base(model).config
        vocab = getattr(config, "vocab_size", None)
        if top_id is not None and vocab is not None and top_id >= vocab:
            raise ValueError(
                f"The data{where} holds token id {top_id}, but the {role}'s vocab_size is {vocab}: it was tokenized with "
                "another tokenizer. Tokenize it with the teacher's tokenizer."
            )
        types = getattr(config, "type_vocab_size", None)
        if top_type is not None and types and top_type >= types:  # 0: the model has no segments (DeBERTa)
            raise ValueError(
                f"The data{where} holds token_type_id {top_type}, but the {role} has type_vocab_size {types}. Tokenize it "
                "with the teacher's tokenizer."
            )
        limit = _max_length(model)
        if limit is not None and int(lengths.max()) > limit:
            row = int(lengths.argmax())
            raise ValueError(
                f"Row {row} of the data{where} has {int(lengths[row])} tokens, but the {role} has positions for {limit} "
                f"(max_position_embeddings={config.max_position_embeddings}). Tokenize with `truncation=True, "
                f"max_length={limit}` (or less)."
            )


def check_label_range(dataset: Any, num_labels: int, label_column: str | None = None, *,
                      per_token: bool | None = None) -> None:
    """Check that every class id in `label_column` is in `[0, num_labels)`, ignoring `-100`.

    Works for one label per row (sequence classification, ints) and for a list of labels per row (token
    classification, with `-100` on the positions to skip). A label outside the range makes cross-entropy fail on
    CPU with an unhelpful index error, or trigger a device-side assert on GPU, in the middle of training.

    Nothing is checked when the column is absent (`check_train_dataset` covers missing labels) or when `dataset` is
    not an Arrow-backed `datasets.Dataset` (e.g. an `IterableDataset`, which cannot be scanned up front).

    Args:
        dataset: The split to check, e.g. the tokenised `train_dataset` or `eval_dataset`.
        num_labels: The number of classes the models predict (`model.config.num_labels`).
        label_column: The column holding the labels; by default each of the columns the Trainer takes as labels
            (`labels`, `label`, `label_ids`) that the dataset has.
        per_token: True for token classification (a list of labels per row), False for sequence classification
            (one label per row: a list is refused), None when not known.

    Raises:
        ValueError: `dataset` is a `DatasetDict`; the column holds strings, floats or booleans instead of ids, or
            lists for a sequence classifier; or a label is negative (other than -100) or at least `num_labels`.
    """
    if dataset is None:
        return
    _reject_dataset_dict(dataset, "dataset")
    if not isinstance(dataset, Dataset):
        return
    if label_column is None:
        for column in _LABEL_COLUMNS:
            check_label_range(dataset, num_labels, column, per_token=per_token)
        return
    if label_column not in dataset.column_names:
        return
    column = dataset.with_format("arrow")[label_column]
    values = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    rows = None
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        if per_token is False:
            raise ValueError(
                f"Column {label_column!r} holds a list per row (e.g. {values[0].as_py()!r}), but a sequence classifier "
                "takes one class id per row. Several classes per text (multi-label) and multi-hot rows are not "
                "supported: keep one class per row (or, for labels per token, use a token-classification teacher "
                "and student)."
            )
        rows = pc.list_parent_indices(values)
        values = pc.list_flatten(values)
    if pa.types.is_boolean(values.type):
        raise ValueError(
            f"Column {label_column!r} holds booleans (e.g. {values[0].as_py()!r}), but the loss needs integer class "
            f"ids. Cast them, `dataset.cast_column({label_column!r}, datasets.Value('int64'))` (False is 0, True is "
            "1), and check that the teacher's `config.label2id` gives those ids the classes you mean."
        )
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        raise ValueError(
            f"Column {label_column!r} holds strings (e.g. {values[0].as_py()!r}), but the loss needs class ids. Map "
            "the names to ids with the teacher's `config.label2id`, or load the file with "
            "`load_text_classification_file(..., label_names=...)`."
        )
    if pa.types.is_floating(values.type):
        raise ValueError(
            f"Column {label_column!r} holds floats (e.g. {values[0].as_py()!r}), but the hard-label loss needs integer "
            "class ids: regression targets and multi-hot (multi-label) rows are not supported. If the floats are "
            f"whole class ids (read from a CSV, say), cast them: `dataset.cast_column({label_column!r}, "
            "datasets.Value('int64'))` (for token labels: `datasets.Sequence(datasets.Value('int64'))`)."
        )
    if values.null_count:
        first = pc.indices_nonzero(pc.is_null(values))[0].as_py()
        row = first if rows is None else rows[first].as_py()
        raise ValueError(
            f"Column {label_column!r} has {values.null_count} missing (None) label{'s' * (values.null_count > 1)}, the "
            f"first in row {row} "
            f"(`dataset[{row}]`), which no collator can batch. Mark a position without a label with -100 (it is then "
            "distilled but not in the hard-label loss), or add unlabeled rows with `hf_distill.mix_unlabeled`."
        )
    if not pa.types.is_integer(values.type):
        return
    outside = pc.and_(
        pc.not_equal(values, _IGNORE_INDEX),
        pc.or_(pc.less(values, 0), pc.greater_equal(values, num_labels)),
    )
    outside = pc.fill_null(outside, False)
    n_outside = pc.sum(outside).as_py() or 0
    if n_outside == 0:
        return
    first = pc.indices_nonzero(outside)[0].as_py()
    value = values[first].as_py()
    row = first if rows is None else rows[first].as_py()
    bad = pc.filter(values, outside)
    low, high = pc.min(bad).as_py(), pc.max(bad).as_py()
    n_checked = pc.sum(pc.fill_null(pc.not_equal(values, _IGNORE_INDEX), False)).as_py()
    hidden = " (A label of -1 is how GLUE's test splits hide theirs: use a split with labels.)" if value == -1 else ""
    raise ValueError(
        f"Column {label_column!r} has the label {value} in row {row} (`dataset[{row}]`), outside the {num_labels} "
        f"classes the model predicts (ids 0..{num_labels - 1}; -100 marks positions to skip). Out of range: "
        f"{n_outside} of {n_checked} labels, with values from {low} to {high}. Encode the labels with the teacher's "
        "`config.label2id`, or, if the data has more classes, use a teacher and student with `num_labels` covering "
        f"them all.{hidden}"
    )


def unweighted_processes(args: Any) -> str | None:
    """A warning for several processes with `average_tokens_across_devices=False`: each process then divides its loss
    by its own counts and DDP averages the processes, so a process with few distilled tokens weighs as much as one
    with many, and the update is not the token-weighted full-batch one that one process would take."""
    if getattr(args, "world_size", 1) > 1 and not getattr(args, "average_tokens_across_devices", True):
        return (
            f"average_tokens_across_devices=False with {args.world_size} processes: each process's loss is a mean over "
            "its own tokens and the processes are averaged as equals, so the update differs from the full-batch one "
            "(token-weighted, as one process would take it). Leave average_tokens_across_devices=True (Transformers "
            "5's default; an older config may set it False) for that update."
        )
    return None


def check_sharding(args: Any, *, fsdp: bool, deepspeed: bool) -> None:
    """Refuse the settings that cannot train a student that FSDP or DeepSpeed shards.

    Args:
        args: the `DistillationArguments` (read: `self_distillation`, `adversarial`).
        fsdp, deepspeed: whether the student is sharded by FSDP / run by DeepSpeed (`Trainer.is_fsdp_enabled`,
            `Trainer.is_deepspeed_enabled`, which hold whether these come from `--fsdp`/`--deepspeed` or from the
            config of `accelerate launch`).
    """
    if args.self_distillation == "ema" and (fsdp or deepspeed):
        raise ValueError(
            "`self_distillation='ema'` keeps a full copy of the student, which FSDP and DeepSpeed shard. Use "
            "DDP (plain `accelerate launch`) for EMA self-distillation."
        )
    if args.adversarial != "none" and deepspeed:
        raise ValueError(
            "`adversarial` needs several backward passes per optimizer step, but DeepSpeed's engine steps the "
            "optimizer inside `backward`. Use DDP (plain `accelerate launch`) for adversarial distillation, or set "
            "`adversarial='none'`."
        )
    if args.adversarial != "none" and fsdp:
        raise ValueError(
            "`adversarial` looks up the student's word embeddings outside its forward (to feed them, plus the "
            "perturbation, as `inputs_embeds`), but FSDP keeps those weights sharded between forwards. Use DDP (plain "
            "`accelerate launch`) for adversarial distillation, or set `adversarial='none'`."
        )
