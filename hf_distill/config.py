"""`DistillationArguments`: the `TrainingArguments` of a distillation run.

Only the fields that distillation adds are documented here; everything else is a `transformers.TrainingArguments`
field. Every field's `help` text is what `HfArgumentParser --help` prints.

References:
    Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network" (temperature, T² scaling).
    Sanh et al. (2019), "DistilBERT" (KL on softened logits mixed with the hard-label loss).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

SCHEDULES = ("constant", "linear", "cosine")
DISTILL_LOSSES = ("kl", "mse", "soft_ce")
TEACHER_LABELS = ("soft", "hard")
DISTILL_POSITIONS = ("first_subword", "all_subwords")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}.")


def _schedule(name: str, start: float, final: float | None, schedule: str) -> None:
    _choice(f"{name}_schedule", schedule, SCHEDULES)
    if schedule != "constant" and final is None:
        raise ValueError(
            f"`{name}_schedule={schedule!r}` moves `{name}` towards `final_{name}`, but `final_{name}` is not set. "
            f"Set `final_{name}`, or use `{name}_schedule='constant'`."
        )
    if schedule == "constant" and final is not None and final != start:
        raise ValueError(
            f"`final_{name}={final}` differs from `{name}={start}` but `{name}_schedule` is 'constant', so it would "
            f"be ignored. Choose `{name}_schedule='linear'` or `'cosine'`, or drop `final_{name}`."
        )


@dataclass
class DistillationArguments(TrainingArguments):
    """
    `TrainingArguments` for [`DistillationTrainer`]. The fields below are added; all others are as in Transformers.

    Args:
        temperature (`float`, defaults to `2.0`):
            Softmax temperature T applied to teacher and student logits in the distillation term (> 0). With
            `distill_loss="kl"` the term is scaled by T² so that its gradients keep their size as T changes.
        final_temperature (`float` or `None`, defaults to `None`):
            Temperature reached at the end of training when `temperature_schedule` is not `"constant"`.
        temperature_schedule (`str`, defaults to `"constant"`):
            How T moves from `temperature` to `final_temperature` over the optimizer steps: `"constant"`,
            `"linear"` or `"cosine"`.
        alpha (`float`, defaults to `0.5`):
            Weight of the distillation term, in [0, 1]. The loss is `alpha * distill + (1 - alpha) * CE(labels)`.
            With `alpha=1` no labels are needed.
        final_alpha (`float` or `None`, defaults to `None`):
            Weight reached at the end of training when `alpha_schedule` is not `"constant"`.
        alpha_schedule (`str`, defaults to `"constant"`):
            How alpha moves from `alpha` to `final_alpha`: `"constant"`, `"linear"` or `"cosine"`.
        distill_loss (`str`, defaults to `"kl"`):
            `"kl"`: T² · KL(softmax(teacher/T) ‖ softmax(student/T)). `"soft_ce"`: cross-entropy of the student's
            softened distribution against the teacher's, *without* the T² factor (TextBrewer's `"ce"`).
            `"mse"`: mean squared error between raw logits (the temperature is not used).
        teacher_labels (`str`, defaults to `"soft"`):
            `"soft"`: the teacher's distribution is the target. `"hard"`: the teacher's argmax is the target
            (pseudo-labels), trained with plain cross-entropy; temperature and `distill_loss` are then unused.
        distill_positions (`str`, defaults to `"first_subword"`):
            Token classification only: which positions are distilled. `"first_subword"`: exactly the positions
            whose label is not -100. `"all_subwords"`: every real sub-word token (padding and special tokens
            excluded), which also needs no labels.
    """

    temperature: float = field(
        default=2.0,
        metadata={"help": "Softmax temperature T of the distillation term (> 0); the KL term is scaled by T²."},
    )
    final_temperature: float | None = field(
        default=None,
        metadata={"help": "Temperature at the end of training when `temperature_schedule` is not 'constant'."},
    )
    temperature_schedule: str = field(
        default="constant",
        metadata={"help": "How T moves from `temperature` to `final_temperature`.", "choices": list(SCHEDULES)},
    )
    alpha: float = field(
        default=0.5,
        metadata={"help": "Weight of the distillation term in [0, 1]: alpha * distill + (1 - alpha) * CE."},
    )
    final_alpha: float | None = field(
        default=None,
        metadata={"help": "Alpha at the end of training when `alpha_schedule` is not 'constant'."},
    )
    alpha_schedule: str = field(
        default="constant",
        metadata={"help": "How alpha moves from `alpha` to `final_alpha`.", "choices": list(SCHEDULES)},
    )
    distill_loss: str = field(
        default="kl",
        metadata={
            "help": "'kl': T²·KL on softened logits; 'soft_ce': soft-target cross-entropy without T²; "
            "'mse': MSE between raw logits.",
            "choices": list(DISTILL_LOSSES),
        },
    )
    teacher_labels: str = field(
        default="soft",
        metadata={
            "help": "'soft': match the teacher's distribution; 'hard': train on the teacher's argmax (pseudo-labels).",
            "choices": list(TEACHER_LABELS),
        },
    )
    distill_positions: str = field(
        default="first_subword",
        metadata={
            "help": "Token classification: 'first_subword' distils positions whose label is not -100; "
            "'all_subwords' distils every real sub-word token.",
            "choices": list(DISTILL_POSITIONS),
        },
    )

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {self.temperature}.")
        if self.final_temperature is not None and not self.final_temperature > 0:
            raise ValueError(f"`final_temperature` must be > 0, got {self.final_temperature}.")
        _schedule("temperature", self.temperature, self.final_temperature, self.temperature_schedule)
        for name in ("alpha", "final_alpha"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1], got {value}.")
        _schedule("alpha", self.alpha, self.final_alpha, self.alpha_schedule)
        _choice("distill_loss", self.distill_loss, DISTILL_LOSSES)
        _choice("teacher_labels", self.teacher_labels, TEACHER_LABELS)
        _choice("distill_positions", self.distill_positions, DISTILL_POSITIONS)
        if self.teacher_labels == "hard" and self.distill_loss == "mse":
            raise ValueError(
                "`teacher_labels='hard'` trains on the teacher's argmax with cross-entropy, which `distill_loss='mse'` "
                "cannot express. Use `distill_loss='kl'` (the default) with hard labels, or soft labels with 'mse'."
            )
        super().__post_init__()

    @property
    def needs_labels(self) -> bool:
        """Whether the hard-label loss has any weight at some point of training."""
        return self.alpha < 1.0 or (self.final_alpha is not None and self.final_alpha < 1.0)
