"""Several teachers: combine their logits into one soft target.

Probabilities are averaged at the distillation temperature, and the mixture is returned as logits
`T · log(p̄)`, so that the distillation loss, which divides by T and takes a softmax, sees exactly the mixture
`p̄`. With `distill_loss="mse"` the raw logits are averaged instead.

References:
    - Hinton, Vinyals & Dean (2015): an ensemble's averaged soft targets distilled into one model.
    - Fukuda et al. (2017), "Efficient Knowledge Distillation from an Ensemble of Teachers".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .config import ENSEMBLE_METHODS


def teacher_weights(
    logits: Sequence[torch.Tensor], method: str, weights: Sequence[float] | None = None
) -> torch.Tensor:
    """Weights of each teacher, (K, ...) broadcastable to the logits' leading dims, summing to 1 over teachers.

    `"mean"`: equal; `"weighted"`: the fixed `weights`, normalised; `"confidence"`: per position, each teacher's
    top-class probability (at temperature 1), normalised over teachers, so a teacher that is sure counts more.
    """
    k = len(logits)
    lead = logits[0].shape[:-1]
    if method == "mean":
        return torch.full((k, *lead), 1.0 / k, device=logits[0].device)
    if method == "weighted":
        if weights is None or len(weights) != k:
            raise ValueError(
                f"`teacher_ensemble='weighted'` needs one weight per teacher: got {k} teachers and "
                f"{'no' if weights is None else len(weights)} `teacher_weights`."
            )
        w = torch.tensor([float(x) for x in weights], device=logits[0].device)
        return (w / w.sum()).view(k, *([1] * len(lead))).expand(k, *lead)
    if method == "confidence":
        confidence = torch.stack([z.float().softmax(-1).amax(-1) for z in logits])
        return confidence / confidence.sum(0, keepdim=True)
    raise ValueError(f"Unknown teacher_ensemble {method!r}; expected one of {ENSEMBLE_METHODS}.")


def combine_teacher_logits(
    logits: Sequence[torch.Tensor],
    *,
    method: str = "mean",
    weights: Sequence[float] | None = None,
    temperature: float = 1.0,
    distill_loss: str = "kl",
) -> torch.Tensor:
    """One teacher's worth of logits (..., C) from K teachers' logits, each (..., C).

    For `"kl"`/`"soft_ce"` and hard labels: `T · log Σ_k w_k softmax(z_k / T)`, whose softmax at temperature T is
    the weighted mixture of the teachers' distributions. For `"mse"`: `Σ_k w_k z_k`.
    """
    if len(logits) == 1:
        return logits[0]
    shapes = {tuple(z.shape) for z in logits}
    if len(shapes) != 1:
        raise ValueError(f"The teachers' logits differ in shape: {sorted(shapes)}; they must share labels and inputs.")
    w = teacher_weights(logits, method, weights).unsqueeze(-1)  # (K, ..., 1)
    stacked = torch.stack([z.float() for z in logits])  # (K, ..., C)
    if distill_loss == "mse":
        return (w * stacked).sum(0)
    log_mixture = torch.logsumexp(torch.log_softmax(stacked / temperature, dim=-1) + torch.log(w), dim=0)
    return temperature * log_mixture
