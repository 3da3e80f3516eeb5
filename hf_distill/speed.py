"""Inference latency of a model on one batch: the number behind "the student is N× faster"."""

from __future__ import annotations

import statistics
import time
from typing import Any

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
