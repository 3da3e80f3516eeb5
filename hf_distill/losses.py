"""Pure loss functions for logit distillation. No state, no trainer: tensors in, tensors out.

Every function takes logits flattened to rows, shape (N, C): N examples for sequence classification, or N
token positions for token classification (flatten (B, L, C) to (B*L, C) *before* any softmax, which is always
over the class axis C). Everything is computed in fp32, whatever the input dtype, so that fp16/bf16 logits cannot
overflow or lose the small probabilities that KL depends on.

References:
    Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network".
    Sanh et al. (2019), "DistilBERT": T²·KL(batchmean) on real (non-padding) positions.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)) for each row.

    Args:
        student_logits: (N, C).
        teacher_logits: (N, C).
        temperature: T > 0.

    Returns:
        (N,) fp32, one value per row. Both distributions are taken as log-probabilities (`log_target=True`), so
        there is no epsilon and no log(0).
    """
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(s, t, reduction="none", log_target=True).sum(-1) * temperature**2


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy -Σ softmax(teacher/T) · log softmax(student/T) for each row, *without* the T² factor.

    This differs from `soft_kl / T²` by the teacher's entropy, a constant for the student, so the gradients are
    those of KL divided by T². Shapes as in `soft_kl`; returns (N,) fp32.
    """
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return -(t * s).sum(-1)


def logit_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over classes of the squared difference between raw logits, for each row: (N, C) -> (N,) fp32."""
    return (student_logits.float() - teacher_logits.float()).pow(2).mean(-1)


def hard_label_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student against the teacher's argmax (pseudo-labels), for each row: (N,) fp32."""
    return F.cross_entropy(student_logits.float(), teacher_logits.argmax(-1), reduction="none")


def distillation_per_row(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float,
    distill_loss: str = "kl",
    teacher_labels: str = "soft",
) -> torch.Tensor:
    """The distillation term for each row, as chosen by `distill_loss` and `teacher_labels`. (N, C) -> (N,)."""
    if teacher_labels == "hard":
        return hard_label_cross_entropy(student_logits, teacher_logits)
    if distill_loss == "kl":
        return soft_kl(student_logits, teacher_logits, temperature)
    if distill_loss == "soft_ce":
        return soft_cross_entropy(student_logits, teacher_logits, temperature)
    if distill_loss == "mse":
        return logit_mse(student_logits, teacher_logits)
    raise ValueError(f"Unknown distill_loss {distill_loss!r}; expected 'kl', 'soft_ce' or 'mse'.")


class DistillationLoss(NamedTuple):
    """The loss to back-propagate, and its parts as sums and counts (detached) for exact logging."""

    loss: torch.Tensor
    kd_sum: torch.Tensor
    kd_count: torch.Tensor
    ce_sum: torch.Tensor
    ce_count: torch.Tensor


def distillation_objective(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor | None,
    distill_mask: torch.Tensor,
    *,
    alpha: float,
    temperature: float,
    distill_loss: str = "kl",
    teacher_labels: str = "soft",
    kd_normalizer: torch.Tensor | float | None = None,
    ce_normalizer: torch.Tensor | float | None = None,
    label_smoothing: float = 0.0,
) -> DistillationLoss:
    """`alpha · distill + (1 - alpha) · CE(labels)`, each term a mean over its own positions.

    Args:
        student_logits: (..., C), e.g. (B, C) or (B, L, C).
        teacher_logits: same shape as `student_logits`; may be `None` only when `alpha == 0`.
        labels: (...) class ids, `-100` where there is no label; may be `None` only when `alpha == 1`.
        distill_mask: (...) bool, the positions that are distilled.
        alpha: weight of the distillation term in [0, 1].
        temperature: softmax temperature of the distillation term.
        distill_loss, teacher_labels: see `distillation_per_row`.
        kd_normalizer: divisor of the summed distillation term. Defaults to the number of distilled positions
            here. Under gradient accumulation pass the count over the *whole* accumulated batch, so that the
            micro-batch losses add up to the full-batch loss even when micro-batches hold different numbers of
            tokens.
        ce_normalizer: divisor of the summed cross-entropy; defaults to the number of labelled positions here.
        label_smoothing: ε of the label cross-entropy, whose target is (1 - ε)·one-hot + ε/C (`torch.nn.functional.
            cross_entropy`'s `label_smoothing`, the same loss as Transformers' `label_smoothing_factor`); 0 is plain CE.

    Returns:
        A `DistillationLoss`. A batch with no distilled (or no labelled) positions contributes 0, never NaN.
    """
    num_classes = student_logits.shape[-1]
    flat_student = student_logits.reshape(-1, num_classes)
    mask = distill_mask.reshape(-1).bool()

    if alpha > 0:
        if teacher_logits is None:
            raise ValueError("`teacher_logits` is required when alpha > 0.")
        if teacher_logits.shape != student_logits.shape:
            raise ValueError(
                f"Teacher logits {tuple(teacher_logits.shape)} and student logits {tuple(student_logits.shape)} "
                "differ in shape; teacher and student must share the label set and see the same inputs."
            )
        # Every row is computed and the masked ones are zeroed with `where` (no boolean indexing, whose output size
        # the host must wait for). Masked rows are first replaced by zeros, so a NaN there (padding of an fp16
        # teacher) reaches neither the sum nor the gradient.
        keep = mask.unsqueeze(-1)
        rows = distillation_per_row(
            torch.where(keep, flat_student, 0.0),
            torch.where(keep, teacher_logits.reshape(-1, num_classes), 0.0),
            temperature=temperature,
            distill_loss=distill_loss,
            teacher_labels=teacher_labels,
        )
        if distill_loss not in ("kl", "mse") or teacher_labels == "hard":
            # Zeroed rows give KL and MSE exactly 0 (and a zero gradient), but the entropy log C to soft_ce and
            # hard-label CE: only those need their masked rows zeroed once more.
            rows = torch.where(mask, rows, 0.0)
        kd_sum, kd_count = rows.sum(), mask.sum()
    else:  # a term that is not computed is a zero sum over zero positions
        kd_sum, kd_count = _zero_term(flat_student)

    if alpha < 1:
        if labels is None:
            raise ValueError("`labels` are required when alpha < 1; set alpha=1 to train on the teacher alone.")
        flat_labels = labels.reshape(-1)
        ce_count = flat_labels.ne(IGNORE_INDEX).sum()
        ce_sum = F.cross_entropy(flat_student.float(), flat_labels, ignore_index=IGNORE_INDEX, reduction="sum",
                                 label_smoothing=label_smoothing)
    else:
        ce_sum, ce_count = _zero_term(flat_student)

    kd_div = kd_count.clamp_min(1) if kd_normalizer is None else _at_least_one(kd_normalizer)
    ce_div = ce_count.clamp_min(1) if ce_normalizer is None else _at_least_one(ce_normalizer)
    loss = alpha * kd_sum / kd_div + (1.0 - alpha) * ce_sum / ce_div
    return DistillationLoss(loss, kd_sum.detach(), kd_count, ce_sum.detach(), ce_count)


def _zero_term(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(sum, count)` of a term with no positions: fp32 and int64 zeros on `like`'s device."""
    return like.new_zeros((), dtype=torch.float32), like.new_zeros((), dtype=torch.long)


def _at_least_one(value: torch.Tensor | float) -> torch.Tensor | float:
    return value.clamp_min(1) if torch.is_tensor(value) else max(float(value), 1.0)


def pseudo_labels(
    labels: torch.Tensor | None,
    teacher_logits: torch.Tensor,
    candidates: torch.Tensor,
    threshold: float,
) -> torch.Tensor:
    """Fill unlabelled positions with the teacher's argmax where the teacher is confident.

    Args:
        labels: (...) class ids with -100 where unlabelled, or None (nothing labelled).
        teacher_logits: (..., C).
        candidates: (...) bool, the positions that may receive a pseudo-label (e.g. the distilled positions of
            examples that carry no label at all).
        threshold: minimum top-class probability of the teacher (at temperature 1) for a pseudo-label.

    Returns:
        Labels of the same shape: the original ones, plus pseudo-labels at confident candidate positions.
    """
    probs = teacher_logits.float().softmax(-1)
    confidence, prediction = probs.max(-1)
    base = torch.full_like(prediction, IGNORE_INDEX) if labels is None else labels.clone()
    take = candidates.bool() & base.eq(IGNORE_INDEX) & confidence.ge(threshold)
    base[take] = prediction[take]
    return base


def unlabeled_rows(labels: torch.Tensor | None, batch_size: int, device: torch.device) -> torch.Tensor:
    """(B,) bool: the examples that carry no label at all (every label -100, or no `labels` in the batch)."""
    if labels is None:
        return torch.ones(batch_size, dtype=torch.bool, device=device)
    return labels.reshape(batch_size, -1).eq(IGNORE_INDEX).all(-1)


def zero_weighted_loss(logits: torch.Tensor) -> torch.Tensor:
    """A loss of exactly 0 that is finite even where `logits` are not, yet connected to every parameter that produced
    them: a skipped batch back-propagates it, so DDP still gets the full backward (and all-reduce) it waits for, and
    the gradients it adds are zeros."""
    return (logits.float().nan_to_num(0.0, 0.0, 0.0) * 0.0).sum()


def zero_parameter_loss(model: torch.nn.Module) -> torch.Tensor:
    """A loss of exactly 0 built from the trainable parameters alone, not from a forward: its backward gives every one
    of them a zero gradient (so that an fp16 grad scaler still finds gradients to check when every batch of a step
    was skipped) and adds nothing to what they hold, whatever NaN the forward produced."""
    terms = [p.sum() * 0.0 for p in model.parameters() if p.requires_grad]
    return torch.stack(terms).sum() if terms else torch.zeros((), requires_grad=True)
