"""Inference latency of a model on one batch: the number behind "the student is N× faster"."""

from __future__ import annotations

import statistics
import time
from typing import Any, NamedTuple

import torch


@torch.inference_mode()
def inference_latency_ms(model: torch.nn.Module, batch: dict[str, Any], *, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time in milliseconds of `model(**batch)` in eval mode, after `warmup` untimed calls.

    On a GPU the device is synchronised around each call so that the time covers the whole forward. Tensors of
    `batch` other than `labels` are the inputs; the model's train/eval mode is restored afterwards, also on error.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"`repeats` must be >= 1 and `warmup` >= 0, got repeats={repeats}, warmup={warmup}.")
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v) and k != "labels"}
    was_training = model.training
    model.eval()
    times = []
    try:
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(**inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    finally:
        model.train(was_training)
    return statistics.median(times)


class LatencyComparison(NamedTuple):
    teacher_ms: float
    student_ms: float
    speedup: float


def compare_latency(teacher: torch.nn.Module, student: torch.nn.Module, batch: dict[str, Any], *, rounds: int = 6,
                    repeats: int = 10) -> LatencyComparison:
    """Teacher and student latency on `batch`, timed side by side: after a warm-up of each, `rounds` rounds time
    both (`inference_latency_ms`, `repeats` calls), in alternating order, so that a burst of load on a shared machine
    hits both. Returns the median latency of each and the median over rounds of teacher / student in the same round.
    Timing one model after the other instead can give a busy machine's slowdown to one of them alone (a student
    "0.4x faster")."""
    if rounds < 1:
        raise ValueError(f"`rounds` must be >= 1, got {rounds}.")
    for model in (student, teacher):
        inference_latency_ms(model, batch, repeats=2, warmup=3)
    times: dict[str, list[float]] = {"student": [], "teacher": []}
    for round_ in range(rounds):
        for name in ("student", "teacher") if round_ % 2 == 0 else ("teacher", "student"):
            model = student if name == "student" else teacher
            times[name].append(inference_latency_ms(model, batch, repeats=repeats, warmup=1))
    ratios = [t / s for t, s in zip(times["teacher"], times["student"], strict=True)]
    return LatencyComparison(statistics.median(times["teacher"]), statistics.median(times["student"]),
                             statistics.median(ratios))
