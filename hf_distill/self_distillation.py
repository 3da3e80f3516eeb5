"""Self-distillation without a second model: the teacher is an exponential moving average of the student.

The EMA ("mean teacher") starts as a copy of the student and after every optimizer step moves towards it:
`θ_teacher ← d · θ_teacher + (1 − d) · θ_student`. It is frozen (no gradient), runs in eval mode, and is kept in
float32 whatever the student's dtype: with d = 0.999 each update moves a weight by a thousandth of its gap to the
student, which bfloat16 or float16 weights would mostly round away.

Born-again training, the other self-distillation scheme (a frozen earlier generation teaches the next), needs no
code here: train generation k with generation k−1 as `teacher_model` (the recipes' `--generations`).

References:
    - Tarvainen & Valpola (2017), "Mean teachers are better role models".
    - Furlanello et al. (2018), "Born-Again Neural Networks".
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_copy(student: nn.Module) -> nn.Module:
    """A frozen, eval-mode, float32 copy of `student` to serve as its EMA teacher (see the module docstring)."""
    teacher = copy.deepcopy(student).float()
    teacher.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """`teacher ← decay · teacher + (1 − decay) · student`, parameter by parameter; buffers are copied."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"`decay` must be in [0, 1], got {decay}.")
    student_params = dict(student.named_parameters())
    for name, param in teacher.named_parameters():
        param.lerp_(student_params[name].detach().to(param.dtype), 1.0 - decay)
    student_buffers = dict(student.named_buffers())
    for name, buffer in teacher.named_buffers():
        buffer.copy_(student_buffers[name])
