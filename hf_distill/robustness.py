"""White-box robustness of a classifier to embedding-space perturbations: clean vs PGD-attacked loss and metrics.

For each batch, δ is added to the word embeddings (the output of `get_input_embeddings()`, fed to the model as
`inputs_embeds`) and chosen by projected gradient ascent on the model's own cross-entropy against the labels, inside a
per-example ε-ball (norm over the whole sequence). Only δ is differentiated: the model is in eval mode, its parameters
never receive gradients, and its weights are unchanged afterwards.

Embedding-space robustness does not reliably carry over to real text attacks (AdvGLUE); measure text-level
perturbations too, with `hf_distill.text_attacks`.

References:
    Madry et al. (2018), "Towards Deep Learning Models Resistant to Adversarial Attacks": PGD with a random start and
        step size 2.5 · ε / K.
    Zhu et al. (2020), "FreeLB": per-example norms of δ over the whole sequence.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import EvalPrediction, default_data_collator

from .adversarial import (
    NORMS,
    EmbeddingPathCheck,
    ascent_step,
    embed_inputs,
    eval_mode,
    init_delta,
    model_logits,
    perturbation_mask,
    project,
    word_embeddings,
)
from .checks import TOKEN_CLASSIFICATION, _base, check_inputs_fit, check_label_range, task_of
from .data import word_free_special_ids
from .losses import IGNORE_INDEX

logger = logging.getLogger(__name__)

_LABEL_KEYS = ("labels", "label", "label_ids")
_FEATURE_KEYS = ("input_ids", "attention_mask", "token_type_ids", *_LABEL_KEYS)
_PASSED_THROUGH = ("attention_mask", "token_type_ids")


def _summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of the fp32 cross-entropy over labelled positions. logits (B, C) or (B, L, C); labels (B,) or (B, L)."""
    flat_logits = logits.float().reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1)
    total = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total, flat_labels.ne(IGNORE_INDEX).sum()


def _rescaled_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The attack's objective: each example's summed fp32 cross-entropy times the power of two that brings it into
    [0.5, 1), summed over the batch. The ascent step only uses the direction of each example's gradient (l2: divided
    by its norm; linf: its sign), which an exact power-of-two factor leaves bit for bit as it was; but the gradient
    of a confidently right example (loss ~1e-5) no longer underflows on its way back through an fp16 model, where,
    unscaled, it falls below fp16's normal range and the attack on such examples weakens or stalls."""
    per_position = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                   ignore_index=IGNORE_INDEX, reduction="none")
    per_example = per_position.reshape(labels.shape[0], -1).sum(dim=1)
    _, exponent = torch.frexp(per_example.detach())  # loss = mantissa · 2^exponent, mantissa in [0.5, 1); 0 for 0
    return (per_example * torch.ldexp(torch.ones_like(per_example), -exponent)).sum()


def _rows(dataset: Any, start: int, stop: int) -> list[dict[str, Any]]:
    """Rows `start:stop` as feature dicts, keeping only the columns a classifier's collator needs."""
    rows = []
    for index in range(start, stop):
        row = dataset[index]
        if not isinstance(row, Mapping):
            raise ValueError(
                f"Example {index} of `dataset` is a {type(row).__name__}, not a dict of features; pass a tokenized "
                "datasets.Dataset or a list of dicts with `input_ids` and `labels`."
            )
        rows.append({key: value for key, value in row.items() if key in _FEATURE_KEYS})
    return rows


def _check_columns(dataset: Any) -> None:
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise ValueError(
            f"`dataset` is a {type(dataset).__name__} with splits {list(dataset.keys())}; pass one split, e.g. "
            f"dataset[{next(iter(dataset.keys()))!r}]."
        )
    if isinstance(dataset, (datasets.IterableDataset, torch.utils.data.IterableDataset)) or not hasattr(
            dataset, "__len__"):
        raise ValueError(
            f"`dataset` is a {type(dataset).__name__}; evaluate_robustness reads examples by position, so it needs a "
            "map-style dataset: a `datasets.Dataset` (not streaming), or `list(dataset)` of a small one."
        )
    if len(dataset) == 0:
        raise ValueError("`dataset` is empty; pass the evaluation split with at least one example.")
    first = dataset[0]
    columns = sorted(first) if isinstance(first, Mapping) else []
    if "input_ids" not in columns or not any(key in columns for key in _LABEL_KEYS):
        raise ValueError(
            f"`dataset` needs `input_ids` and `labels` columns (tokenized and labelled), found {columns}. Tokenize it "
            "first (for NER with `tokenize_and_align_labels`)."
        )


def _check_model_fits_data(model: nn.Module, dataset: Any) -> None:
    """The labels must be the model's kind (one per example for a sequence classifier, one per token for a token
    classifier) and its class ids; an Arrow dataset's rows must fit the model's embedding tables. Otherwise the attack
    fails deep inside the loss, with a shape or index error that names neither."""
    task = task_of(model)
    if task is None:  # a model of one's own, named otherwise: its labels are taken as they come
        return
    first = dataset[0]
    labels = next(first[key] for key in _LABEL_KEYS if key in first)
    per_token = isinstance(labels, list | tuple | np.ndarray) or (torch.is_tensor(labels) and labels.dim() > 0)
    if per_token != (task == TOKEN_CLASSIFICATION):
        kind, other = ("token", "sequence") if task == TOKEN_CLASSIFICATION else ("sequence", "token")
        found = "a list per example (token labels)" if per_token else "one per example (sequence labels)"
        raise ValueError(
            f"The model is a {kind} classifier ({type(_base(model)).__name__}), but the dataset's labels are {found}, "
            f"e.g. {_shortened(labels)}. Evaluate a {other}-classification model on this dataset, or give this model "
            "the data of its task."
        )
    num_labels = getattr(getattr(_base(model), "config", None), "num_labels", None)
    if num_labels:
        check_label_range(dataset, num_labels, per_token=per_token)
    check_inputs_fit(dataset, [("model", model)])


def _shortened(value: Any, width: int = 60) -> str:
    text = repr(value.tolist() if hasattr(value, "tolist") else value)
    return text if len(text) <= width else text[: width - 5] + " ...]"


def _collate(rows: list[dict[str, Any]], data_collator: Callable | None) -> dict[str, Any]:
    if data_collator is not None:
        return dict(data_collator(rows))
    lengths = sorted({len(row["input_ids"]) for row in rows})
    if len(lengths) > 1:
        raise ValueError(
            f"The examples have different lengths ({lengths[0]} to {lengths[-1]} tokens) and need padding: pass "
            "`data_collator=DataCollatorForTokenClassification(tokenizer)` for token classification or "
            "`DataCollatorWithPadding(tokenizer)` for sequence classification."
        )
    return dict(default_data_collator(rows))


def _pad_and_stack(arrays: list[np.ndarray], fill: float | int) -> np.ndarray:
    """Concatenate per-batch arrays (B_i, L_i, ...) along the batch axis, padding axis 1 to the longest L_i."""
    if arrays[0].ndim < 2 or len({a.shape[1] for a in arrays}) == 1:
        return np.concatenate(arrays, axis=0)
    length = max(a.shape[1] for a in arrays)
    padded = []
    for a in arrays:
        widths = [(0, 0)] * a.ndim
        widths[1] = (0, length - a.shape[1])
        padded.append(np.pad(a, widths, constant_values=fill))
    return np.concatenate(padded, axis=0)


class _BatchAttack:
    """Embedding PGD on one collated batch of `evaluate_robustness`: `(labels, {"clean": logits, "attacked":
    logits})`, detached. The model is in eval mode with gradients off for its parameters."""

    def __init__(self, model: nn.Module, special: torch.Tensor, *, epsilon: float, steps: int, step_size: float,
                 norm: str, generator: torch.Generator):
        self.model, self.special, self.generator = model, special, generator
        self.epsilon, self.steps, self.step_size, self.norm = epsilon, steps, step_size, norm
        self.device = next(model.parameters()).device
        self.check_path = EmbeddingPathCheck()

    def __call__(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model, device, norm, epsilon = self.model, self.device, self.norm, self.epsilon
        labels = next((batch[key] for key in _LABEL_KEYS if batch.get(key) is not None), None)
        if labels is None:
            raise ValueError(
                f"The collated batch has no `labels` (keys {sorted(batch)}); check that `data_collator` keeps the "
                "labels."
            )
        labels = torch.as_tensor(labels).to(device)
        if labels.is_floating_point():
            raise ValueError(
                f"`labels` are {labels.dtype}, but evaluate_robustness attacks classifiers and needs integer class "
                "ids (-100 on ignored positions). Regression models are not supported."
            )
        labels = labels.long()
        input_ids = torch.as_tensor(batch["input_ids"]).to(device)
        extra = {k: torch.as_tensor(batch[k]).to(device) for k in _PASSED_THROUGH if batch.get(k) is not None}
        mask = perturbation_mask(input_ids, extra.get("attention_mask"), self.special.to(device))
        self.check_path(model, input_ids, extra)  # δ = 0 must be the ordinary forward

        with torch.no_grad():
            embeds = embed_inputs(model, input_ids).detach()
            clean = model_logits(model(inputs_embeds=embeds, **extra))
        delta = init_delta(embeds, mask, init_scale=epsilon, norm=norm, generator=self.generator)
        delta = project(delta, mask, epsilon=epsilon, norm=norm)
        for _ in range(self.steps):
            delta.requires_grad_(True)
            with torch.enable_grad():
                logits = model_logits(model(inputs_embeds=embeds + delta.to(embeds.dtype), **extra))
                (grad,) = torch.autograd.grad(_rescaled_loss(logits, labels), delta)
            delta = ascent_step(delta.detach(), grad, mask, step_size=self.step_size, norm=norm)
            delta = project(delta, mask, epsilon=epsilon, norm=norm)
        with torch.no_grad():
            attacked = model_logits(model(inputs_embeds=embeds + delta.to(embeds.dtype), **extra))
        return labels, {"clean": clean.detach(), "attacked": attacked.detach()}


def evaluate_robustness(
    model: nn.Module,
    dataset: Any,
    *,
    epsilon: float,
    steps: int,
    norm: str = "l2",
    data_collator: Callable[[list[dict[str, Any]]], Mapping[str, Any]] | None = None,
    compute_metrics: Callable[[EvalPrediction], Mapping[str, float]] | None = None,
    batch_size: int = 32,
    step_size: float | None = None,
    seed: int = 0,
    special_token_ids: Sequence[int] | None = None,
) -> dict[str, float]:
    """Loss and metrics of `model` on `dataset`, clean and under a white-box PGD attack on its word embeddings.

    Per batch: δ starts uniformly at random (seeded; l2: norm ε, linf: in the ε-box), then `steps` times
    δ ← project(δ + α · direction(∇δ CE)), with CE the model's own cross-entropy on the labels (-100 ignored). The
    attacked logits are those at the final δ. Padding is never perturbed. With ε = 0, δ stays zero and the attacked
    results equal the clean ones exactly. Neither are special tokens ([CLS], [SEP], ...), as in training
    (`adv_perturb_special_tokens=False`): no edit of the text can reach them. Each example's CE is scaled by a power
    of two before it is differentiated: the direction of its step is exactly the same, and the gradient of a
    confidently right example (CE ~1e-5) does not underflow in an fp16 model.

    Args:
        model: A sequence- or token-classification model that accepts `inputs_embeds`. It is run in eval mode on its
            own device; its train/eval mode and `requires_grad` flags are restored afterwards, and its parameters
            get no `.grad`.
        dataset: A tokenized `datasets.Dataset` (one split) or a list of feature dicts with `input_ids`, `labels`
            (an int per example, or a list per example with -100 on ignored positions) and optionally
            `attention_mask`/`token_type_ids`. Other columns are dropped.
        epsilon: ε >= 0, radius of the per-example ball, in embedding units.
        steps: K >= 1 ascent steps.
        norm: "l2" (norm over the whole sequence) or "linf".
        data_collator: Builds a batch from a list of rows. Needed when examples have different lengths, e.g.
            `DataCollatorForTokenClassification(tokenizer)`; without it, equal-length examples are stacked.
        compute_metrics: As for `Trainer`: takes an `EvalPrediction` with `predictions` logits (N, C) or (N, L, C)
            (token-classification batches padded to a common L with -100 labels) and `label_ids`, and returns a
            dict of floats, e.g. `hf_distill.metrics.token_classification_metrics(label_names)`.
        batch_size: Examples per batch.
        step_size: α; defaults to 2.5 · ε / K.
        seed: Seeds the random start. It is drawn batch by batch, so the attacked figures of a seed also depend on
            `batch_size` (and on the padding the collator adds): compare models at the same `batch_size`.
        special_token_ids: Ids never perturbed, e.g. `hf_distill.data.word_free_special_ids(tokenizer)`. Defaults to
            the special tokens of `data_collator.tokenizer` (the Transformers padding collators have one) other than
            [UNK] and [MASK], which stand in for words, as in training; pass `[]` to attack every token.
            Without either, only padding is left alone, and a warning says so.

    Returns:
        `{"clean_loss", "attacked_loss"}`, each the mean cross-entropy over all labelled positions of the dataset,
        plus `"clean_<m>"` and `"attacked_<m>"` for every metric `m` that `compute_metrics` returns.

    Raises:
        ValueError: A setting is out of range, the dataset lacks `input_ids`/`labels`, examples need padding and no
            `data_collator` is given, the labels are not integer class ids, or the model has no input embeddings.
    """
    if norm not in NORMS:
        raise ValueError(f"`norm` must be one of {', '.join(repr(n) for n in NORMS)}, got {norm!r}.")
    if not epsilon >= 0 or not np.isfinite(epsilon):
        raise ValueError(f"`epsilon` must be a finite number >= 0, got {epsilon}.")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"`steps` must be an integer >= 1, got {steps!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")
    steps, batch_size = int(steps), int(batch_size)  # (a numpy integer, say)
    if step_size is None:
        step_size = 2.5 * epsilon / steps
    elif not step_size >= 0 or not np.isfinite(step_size):
        raise ValueError(
            f"`step_size` must be a finite number >= 0 (or None for 2.5 * epsilon / steps), got {step_size}."
        )
    _check_columns(dataset)
    word_embeddings(model)  # fails early, with the fix, if the model has no input embeddings
    _check_model_fits_data(model, dataset)
    if special_token_ids is None:
        special_token_ids = word_free_special_ids(getattr(data_collator, "tokenizer", None))
        if special_token_ids is None:
            logger.warning("evaluate_robustness perturbs special tokens too: pass `special_token_ids="
                           "hf_distill.data.word_free_special_ids(tokenizer)` (or a collator with a tokenizer) to "
                           "leave [CLS], [SEP] and padding alone as training does ([UNK] and [MASK] stand for words, "
                           "and are perturbed).")
    special_token_ids = [] if special_token_ids is None else torch.as_tensor(
        list(special_token_ids) if isinstance(special_token_ids, set | frozenset) else special_token_ids
    ).flatten().tolist()
    special = torch.tensor(sorted(set(special_token_ids)), dtype=torch.long)

    generator = torch.Generator(device="cpu").manual_seed(seed)
    requires_grad = [p.requires_grad for p in model.parameters()]
    totals = {"clean": [0.0, 0], "attacked": [0.0, 0]}
    collected: dict[str, list[np.ndarray]] = {"clean": [], "attacked": [], "labels": []}
    # The attack needs gradients: a caller's `torch.inference_mode()` (common around evaluation code) is lifted here,
    # as `torch.no_grad()` is by the attack's own `enable_grad`.
    with eval_mode(model), torch.inference_mode(False):
        try:
            model.requires_grad_(False)
            attack = _BatchAttack(model, special, epsilon=epsilon, steps=steps, step_size=step_size, norm=norm,
                                  generator=generator)
            for start in range(0, len(dataset), batch_size):
                batch = _collate(_rows(dataset, start, min(start + batch_size, len(dataset))), data_collator)
                labels, logits = attack(batch)
                for name, batch_logits in logits.items():
                    total, count = _summed_cross_entropy(batch_logits, labels)
                    totals[name][0] += float(total)
                    totals[name][1] += int(count)
                    if compute_metrics is not None:
                        collected[name].append(batch_logits.float().cpu().numpy())
                if compute_metrics is not None:
                    collected["labels"].append(labels.cpu().numpy())
        finally:
            for parameter, flag in zip(model.parameters(), requires_grad, strict=True):
                parameter.requires_grad_(flag)

    if totals["clean"][1] == 0:
        logger.warning("No labelled position in the dataset (every label is -100); both losses are reported as 0.")
    results = {f"{name}_loss": total / max(count, 1) for name, (total, count) in totals.items()}
    if compute_metrics is not None:
        label_ids = _pad_and_stack(collected["labels"], IGNORE_INDEX)
        for name in ("clean", "attacked"):
            predictions = _pad_and_stack(collected[name], IGNORE_INDEX)
            metrics = compute_metrics(EvalPrediction(predictions=predictions, label_ids=label_ids))
            results.update({f"{name}_{key}": float(value) for key, value in metrics.items()})
    logger.info(
        "Embedding PGD (%s, epsilon=%g, %d steps): loss %.4f clean -> %.4f attacked",
        norm,
        epsilon,
        steps,
        results["clean_loss"],
        results["attacked_loss"],
    )
    return results
