"""Evaluation metrics for ``Trainer(compute_metrics=...)``: entity-level seqeval for NER, accuracy/F1 for classification.

``Seqeval`` is a local ``evaluate.Metric`` (no Hub download, unlike ``evaluate.load("seqeval")``) that reports what
the Hub's seqeval metric reports.

References:
    - seqeval (Hiroki Nakayama, 2018), https://github.com/chakki-works/seqeval: entity-level precision, recall and F1
      as in the CoNLL-2000 ``conlleval`` script.
    - Tjong Kim Sang & De Meulder (2003), CoNLL-2003 shared task: an entity counts only if its type and span match.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import datasets
import evaluate
import numpy as np
import seqeval.metrics
import seqeval.scheme
from transformers import EvalPrediction

from .checks import is_placeholder_label
from .data import IGNORE_INDEX

_SCHEMES = ("IOB1", "IOB2", "IOE1", "IOE2", "IOBES", "BILOU")
_REPORT_AVERAGES = ("micro avg", "macro avg", "weighted avg")


class Seqeval(evaluate.Metric):
    """Entity-level precision, recall and F1 of tag sequences, via ``seqeval.metrics.classification_report``.

    Inputs are lists of tag-string sequences, one per sentence, e.g. ``[["B-PER", "I-PER", "O"]]``; predictions and
    references must have the same shapes. Use it as ``Seqeval().compute(predictions=..., references=...)``.

    ``compute`` returns ``overall_precision``, ``overall_recall``, ``overall_f1`` (micro averages over entities),
    ``overall_accuracy`` (token-level) and, for each entity type found in references or predictions,
    ``"<TYPE>": {"precision", "recall", "f1", "number"}`` where ``number`` is the count of reference entities.
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Entity-level precision, recall and F1 of IOB-style tag sequences (seqeval).",
            citation="Hiroki Nakayama. seqeval: A Python framework for sequence labeling evaluation. 2018.",
            inputs_description=(
                "predictions, references: lists of lists of tag strings. scheme: one of "
                f"{list(_SCHEMES)} (with mode='strict'), or None. mode: None for conlleval-style matching, or "
                "'strict' to match by `scheme` (which seqeval infers from the tags when it is None)."
            ),
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string")),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
            homepage="https://github.com/chakki-works/seqeval",
        )

    def _compute(
        self,
        predictions: list[list[str]],
        references: list[list[str]],
        scheme: str | None = None,
        mode: str | None = None,
    ) -> dict[str, Any]:
        scheme_class = None
        if scheme is not None:
            if scheme not in _SCHEMES:
                raise ValueError(f"`scheme` must be one of {list(_SCHEMES)} or None, got {scheme!r}.")
            scheme_class = getattr(seqeval.scheme, scheme)
        if mode not in (None, "strict"):
            raise ValueError(f"`mode` must be None (conlleval-style) or 'strict' (by `scheme`), got {mode!r}.")
        if scheme is not None and mode is None:
            # seqeval reads the scheme only in strict mode; without it the match would silently be lenient.
            raise ValueError(f"`scheme={scheme!r}` takes effect only with mode='strict'; pass both, or neither for "
                             "conlleval-style matching.")

        with warnings.catch_warnings():
            # With no entity at all, seqeval's macro average takes the mean of an empty array; we do not report it.
            warnings.filterwarnings("ignore", message="Mean of empty slice", category=RuntimeWarning)
            warnings.filterwarnings("ignore", message="invalid value encountered", category=RuntimeWarning)
            report = seqeval.metrics.classification_report(
                y_true=references,
                y_pred=predictions,
                output_dict=True,
                mode=mode,
                scheme=scheme_class,
                zero_division=0,
            )
        overall = report["micro avg"]
        results: dict[str, Any] = {
            "overall_precision": float(overall["precision"]),
            "overall_recall": float(overall["recall"]),
            "overall_f1": float(overall["f1-score"]),
            # seqeval divides by the number of tags, so nothing labelled (every position -100) scores 0, like the rest.
            "overall_accuracy": float(seqeval.metrics.accuracy_score(y_true=references, y_pred=predictions))
            if any(references) else 0.0,
        }
        for entity, scores in report.items():
            if entity in _REPORT_AVERAGES:
                continue
            results[entity] = {
                "precision": float(scores["precision"]),
                "recall": float(scores["recall"]),
                "f1": float(scores["f1-score"]),
                "number": int(scores["support"]),
            }
        return results


def _logits(predictions: Any) -> np.ndarray:
    """The first prediction array: models that return extra outputs give the Trainer a tuple (logits, ...)."""
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    return np.asarray(predictions)


def _batches(eval_prediction: EvalPrediction) -> list[tuple[np.ndarray, np.ndarray]]:
    """`(predictions, label_ids)` per evaluation batch. Trainer concatenates the batches (one pair), unless
    `eval_do_concat_batches=False`: then both are lists with one array (or `(logits, ...)` tuple) per batch, of
    different widths for tokens."""
    predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
    if not (isinstance(labels, list) and labels and all(isinstance(batch, np.ndarray) for batch in labels)):
        return [(_logits(predictions), np.asarray(labels))]
    if not isinstance(predictions, list) or len(predictions) != len(labels):
        count = len(predictions) if isinstance(predictions, list) else "not a list"
        raise ValueError(
            f"Got {count} batches of predictions for {len(labels)} batches of labels (`eval_do_concat_batches=False` "
            "gives one of each per evaluation batch). Check `preprocess_logits_for_metrics`."
        )
    return [(_logits(batch), label_batch) for batch, label_batch in zip(predictions, labels, strict=True)]


def _names_in_id_order(label_names: Sequence[str] | Mapping[int | str, str]) -> list[str]:
    """Tag names as a list indexed by label id; `config.id2label` (int keys, or str keys from JSON) is accepted."""
    if not isinstance(label_names, Mapping):
        return list(label_names)
    try:
        by_id = {int(key): name for key, name in label_names.items()}
    except (TypeError, ValueError) as err:
        raise ValueError(f"`label_names` as a mapping must map label ids to names, got keys {list(label_names)}.") from err
    if sorted(by_id) != list(range(len(by_id))):
        raise ValueError(
            f"`label_names` as a mapping (id2label) must hold ids 0 to {len(by_id) - 1}, got {sorted(by_id)}. Pass "
            "the model's `config.id2label`, or the names as a list in id order."
        )
    return [by_id[i] for i in range(len(by_id))]


_SCHEME_PREFIXES = {
    "IOB1": {"B", "I"}, "IOB2": {"B", "I"}, "IOE1": {"E", "I"}, "IOE2": {"E", "I"}, "IOBES": {"B", "I", "E", "S"},
    "BILOU": {"B", "I", "L", "U"},
}


def _prefixes(names: Sequence[str]) -> list[tuple[str, str]]:
    """`(prefix, type)` of every tag but "O"."""
    return [tuple(name.partition("-")[::2]) for name in names if name != "O"]


def _check_tag_prefixes(names: Sequence[str], scheme: str | None) -> None:
    """Refuse tag names that seqeval would misread: a name without a ``<prefix>-`` (IO tags named by type alone), and,
    under conlleval-style matching, prefixes it does not know (BILOU's ``L-``/``U-``)."""
    if scheme is not None and scheme not in _SCHEMES:
        raise ValueError(f"`scheme` must be one of {list(_SCHEMES)} or None, got {scheme!r}.")
    for name in names:
        if name == "O":
            continue
        if is_placeholder_label(name):
            raise ValueError(
                f"Tag {name!r} is a placeholder name: the model's `config.id2label` does not name its tags. Pass the "
                "tag names in id order (e.g. from the training data's `ner_tags` feature), or set `id2label` on the "
                "model's config."
            )
        prefix, dash, entity = name.partition("-")
        if not dash or not entity or prefix not in ("B", "I", "E", "S", "L", "U"):
            raise ValueError(
                f"Tag {name!r} has no B-/I-/E-/S-/L-/U- prefix; seqeval reads a tag as <prefix>-<type> (it would take "
                f"{name!r} as prefix {name[:1]!r} of type {name[1:]!r}). "
                + (f"Name the tags of an IO scheme 'I-<type>' (e.g. 'I-{name}'): conlleval-style matching scores each "
                   "run of a type as one entity." if scheme in (None, "IOB1", "IOE1") else
                   f"Write the tags in scheme {scheme!r} (e.g. 'B-{name}' opening each entity, as IOB2 does), or score "
                   "IO tags named 'I-<type>' with scheme=None.")
            )
        if scheme is None and prefix in ("L", "U"):
            raise ValueError(
                f"Tag {name!r} is a BILOU tag, which conlleval-style matching cannot read; pass scheme='BILOU' to score "
                "entities strictly by that scheme."
            )
        if scheme is not None and prefix not in _SCHEME_PREFIXES[scheme]:
            fits = [s for s, prefixes in _SCHEME_PREFIXES.items() if set(p for p, _ in _prefixes(names)) <= prefixes]
            raise ValueError(
                f"Tag {name!r} is not a tag of scheme={scheme!r}, whose prefixes are "
                f"{'/'.join(sorted(_SCHEME_PREFIXES[scheme]))}; seqeval would stop at the first evaluation. "
                + (f"These tags fit scheme={fits[0]!r}." if fits else "Pass the scheme the tags are written in.")
            )


def token_classification_metrics(
    label_names: Sequence[str] | Mapping[int, str], *, scheme: str | None = None
) -> Callable[[EvalPrediction], dict[str, float]]:
    """Build a ``compute_metrics`` for token classification that scores entities with [`Seqeval`].

    Args:
        label_names: Tag names in label-id order, or the model's ``config.id2label`` itself. Each is ``"O"`` or
            ``<prefix>-<type>`` with prefix B, I, E, S, L or U.
        scheme: ``None`` (the default) matches entities conlleval-style, as CoNLL-2003 results are reported (IOB1,
            IOB2 and IOBES tags). One of ``"IOB1"``, ``"IOB2"``, ``"IOE1"``, ``"IOE2"``, ``"IOBES"``, ``"BILOU"``
            scores strictly by that scheme (seqeval's ``mode="strict"``): an entity that breaks it is not counted.
            BILOU tags need ``scheme="BILOU"``.

    Returns:
        A function of an ``EvalPrediction`` whose ``predictions`` are logits ``(N, L, C)`` (or already-argmaxed ids
        ``(N, L)``) and whose ``label_ids`` are ``(N, L)`` with ``-100`` at ignored positions (special tokens, later
        sub-words, padding). Those positions are dropped before scoring. It returns ``precision``, ``recall``, ``f1``
        (entity-level micro averages), ``accuracy`` (token-level) and ``<TYPE>_f1`` for each entity type that occurs
        in the references or predictions. With ``eval_do_concat_batches=False`` both are lists with one array per
        evaluation batch, scored together.
    """
    names = _names_in_id_order(label_names)
    _check_tag_prefixes(names, scheme)
    strict = {"scheme": scheme, "mode": "strict"} if scheme is not None else {}
    metric = Seqeval(keep_in_memory=True)

    def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
        references, predicted = [], []
        for predictions, label_ids in _batches(eval_prediction):
            if predictions.ndim == label_ids.ndim + 1:
                predictions = predictions.argmax(axis=-1)
            if predictions.shape != label_ids.shape:
                raise ValueError(
                    f"Predictions of shape {predictions.shape} do not match labels of shape {label_ids.shape}; "
                    "expected logits (N, L, C) or ids (N, L) for labels (N, L). Check `preprocess_logits_for_metrics`."
                )
            if predictions.size and int(predictions.max()) >= len(names):
                raise ValueError(
                    f"A predicted id is {int(predictions.max())}, but `label_names` has only {len(names)} entries; "
                    "pass the model's labels in id order, e.g. `config.id2label`."
                )
            keep = label_ids != IGNORE_INDEX
            references += [[names[i] for i in row[mask]] for row, mask in zip(label_ids, keep, strict=True)]
            predicted += [[names[i] for i in row[mask]] for row, mask in zip(predictions, keep, strict=True)]
        scores = metric.compute(predictions=predicted, references=references, **strict)
        results = {
            "precision": scores["overall_precision"],
            "recall": scores["overall_recall"],
            "f1": scores["overall_f1"],
            "accuracy": scores["overall_accuracy"],
        }
        for entity, entity_scores in scores.items():
            if isinstance(entity_scores, dict):
                results[f"{entity}_f1"] = entity_scores["f1"]
        return results

    return compute_metrics


def _f1(true_positives: int, false_positives: int, false_negatives: int) -> float:
    """F1 = 2TP / (2TP + FP + FN), and 0 when the class never occurs in labels or predictions."""
    denominator = 2 * true_positives + false_positives + false_negatives
    return 2 * true_positives / denominator if denominator else 0.0


def sequence_classification_metrics(num_labels: int = 2) -> Callable[[EvalPrediction], dict[str, float]]:
    """Build a ``compute_metrics`` for sequence classification: accuracy and F1.

    F1 is the binary F1 of class 1 when ``num_labels == 2`` (as GLUE reports for MRPC/QQP), otherwise the macro
    average of per-class F1 over the classes that occur in the labels or the predictions (scikit-learn's
    ``f1_score(average="macro")``).

    Args:
        num_labels: Number of classes C, at least 2.

    Returns:
        A function of an ``EvalPrediction`` with ``predictions`` logits ``(N, C)`` (or ids ``(N,)``) and
        ``label_ids`` ``(N,)``, returning ``{"accuracy": float, "f1": float}`` over the rows whose label is not
        ``-100`` (unlabelled rows, as ``mix_unlabeled`` marks them). Lists of per-batch arrays
        (``eval_do_concat_batches=False``) are scored together.
    """
    if num_labels < 2:
        raise ValueError(f"`num_labels` must be at least 2 for classification metrics, got {num_labels}.")

    def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
        batches = _batches(eval_prediction)
        widths = {batch.shape[-1] for batch, _ in batches if batch.ndim == 2}
        if widths - {num_labels}:
            raise ValueError(
                f"The model gives logits over {max(widths - {num_labels})} classes, but these metrics were built for "
                f"num_labels={num_labels} (its F1 would be {'class 1' if num_labels == 2 else 'a macro average'}'s "
                f"alone). Build them with `sequence_classification_metrics(num_labels=model.config.num_labels)`."
            )
        labels = np.concatenate([batch.reshape(-1) for _, batch in batches])
        predictions = np.concatenate([(batch.argmax(axis=-1) if batch.ndim == 2 else batch).reshape(-1)
                                      for batch, _ in batches])
        for name, ids in (("label", labels[labels != IGNORE_INDEX]), ("predicted class", predictions)):
            if ids.size and (ids.min() < 0 or ids.max() >= num_labels):
                raise ValueError(
                    f"A {name} id {ids.max() if ids.max() >= num_labels else ids.min()} is outside [0, {num_labels}): "
                    f"these metrics were built for num_labels={num_labels}. Build them with "
                    "`sequence_classification_metrics(num_labels=model.config.num_labels)`."
                )
        if predictions.shape != labels.shape:
            raise ValueError(
                f"Got {predictions.shape[0]} predictions for {labels.shape[0]} labels; expected logits (N, C) or "
                "ids (N,) for labels (N,)."
            )
        labelled = labels != IGNORE_INDEX  # rows without a label (`mix_unlabeled`) are not scored
        predictions, labels = predictions[labelled], labels[labelled]
        accuracy = float((predictions == labels).mean()) if labels.size else 0.0
        if num_labels == 2:
            classes = [1]
        else:
            classes = np.union1d(np.unique(labels), np.unique(predictions)).tolist()
        per_class = [
            _f1(
                int(np.sum((predictions == c) & (labels == c))),
                int(np.sum((predictions == c) & (labels != c))),
                int(np.sum((predictions != c) & (labels == c))),
            )
            for c in classes
        ]
        f1 = float(np.mean(per_class)) if per_class else 0.0
        return {"accuracy": accuracy, "f1": f1}

    return compute_metrics
