"""Schedules for the distillation temperature and weight.

A schedule is a pure function of training progress p = step / total_steps in [0, 1]. Annealing the temperature
from high to low over training follows the "gradually lowered temperature" practice of
Jafari et al. (2021), "Annealing Knowledge Distillation".
"""

from __future__ import annotations

import math


def scheduled_value(start: float, end: float | None, progress: float, schedule: str = "constant") -> float:
    """Value of a quantity that moves from `start` (progress 0) to `end` (progress 1).

    Args:
        start: value at the beginning of training.
        end: value at the end of training; ignored (may be `None`) for `"constant"`.
        progress: fraction of training done; clipped to [0, 1].
        schedule: `"constant"`, `"linear"` or `"cosine"` (half-cosine, flat at both ends).
    """
    if schedule not in ("constant", "linear", "cosine"):
        raise ValueError(f"Unknown schedule {schedule!r}; expected 'constant', 'linear' or 'cosine'.")
    if schedule == "constant":
        return float(start)
    if end is None:
        raise ValueError(f"A {schedule!r} schedule needs an end value to move towards; pass `end`, or use 'constant'.")
    p = min(max(float(progress), 0.0), 1.0)
    if schedule == "linear":
        return start + (end - start) * p
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * p))
