"""`DistillationArguments`: the `TrainingArguments` of a distillation run.

Only the fields that distillation adds are documented here; everything else is a `transformers.TrainingArguments`
field. Every field's `help` text is what `HfArgumentParser --help` prints.

References:
    Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network" (temperature, T² scaling).
    Sanh et al. (2019), "DistilBERT" (KL on softened logits mixed with the hard-label loss).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from transformers import TrainingArguments

SCHEDULES = ("constant", "linear", "cosine")
DISTILL_LOSSES = ("kl", "mse", "soft_ce")
TEACHER_LABELS = ("soft", "hard")
DISTILL_POSITIONS = ("first_subword", "all_subwords")
ADVERSARIAL = ("none", "fgm", "pgd", "freelb")
ADV_OBJECTIVES = ("kd", "ce", "both")
ADV_NORMS = ("l2", "linf")
NONFINITE_POLICIES = ("skip", "raise")
TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")
HIDDEN_LOSSES = ("mse", "cosine")
ADV_SETTINGS = ("adv_objective", "adv_epsilon", "adv_step_size", "adv_steps", "adv_norm", "adv_init_scale",
                "adv_weight", "adv_start_step", "adv_perturb_special_tokens")
ENSEMBLE_METHODS = ("mean", "weighted", "confidence")
SELF_DISTILLATION = ("none", "ema")


def _check_types(args: DistillationArguments) -> None:
    """Each distillation field holds a value of its type: parsers that pass values through unconverted (a YAML 1.1
    loader reads `1e-2` as text, a JSON file may quote numbers) must not reach a comparison error, nor a string
    "false" read as true."""
    # The annotations as written in this class (HfArgumentParser rewrites the dataclass fields' `type` in place).
    for name, annotation in DistillationArguments.__annotations__.items():
        kinds = {part.strip() for part in str(annotation).split("|")}
        value = getattr(args, name)
        if value is None and "None" in kinds:
            continue
        kinds.discard("None")
        boolean = isinstance(value, bool | np.bool_)
        if kinds == {"bool"}:
            ok, what, plain = boolean, "true or false", bool
        elif kinds == {"int"}:
            ok, what, plain = isinstance(value, numbers.Integral) and not boolean, "an integer", int
        elif kinds == {"float"}:
            ok, what, plain = isinstance(value, numbers.Real) and not boolean, "a number", float
        elif kinds == {"str"}:  # (a layer map may also be given as a {student: teacher} mapping)
            mapping = name == "feature_layer_map" and isinstance(value, Mapping)
            ok, what, plain = isinstance(value, str) or mapping, "text", str
        else:
            continue
        if ok and type(value) is not plain and not (plain is float and type(value) is int) and not (
                plain is str and isinstance(value, Mapping)):
            setattr(args, name, plain(value))  # a numpy scalar (from a sweep, say) as a Python one: JSON-serialisable
        if not ok:
            if plain is str:
                hint = (" (YAML 1.1 readers such as PyYAML read an unquoted 2:4 as the base-60 number 124 and no as "
                        "false: quote the value, or read YAML files with hf_distill.cli, which follows YAML 1.2)")
            elif isinstance(value, str):
                hint = (" (a string: write the number unquoted, or read YAML files with hf_distill.cli, which follows "
                        "YAML 1.2, where 1e-2 is a number)")
            else:
                hint = ""
            raise ValueError(f"`{name}` must be {what}, got {value!r}{hint}.")


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
            Temperature reached at the end of training when `temperature_schedule` is not `"constant"`. Step s of N
            trains at progress s / N, as Transformers' learning-rate schedules do: the last step trains one step
            short of it (T 4 -> 1 linear over 4 steps trains at 4, 3.25, 2.5, 1.75).
        temperature_schedule (`str`, defaults to `"constant"`):
            How T moves from `temperature` to `final_temperature` over the optimizer steps: `"constant"`,
            `"linear"` or `"cosine"`.
        alpha (`float`, defaults to `0.5`):
            Weight of the distillation term, in [0, 1]. The loss is `alpha * distill + (1 - alpha) * CE(labels)`.
            With `alpha=1` no labels are needed.
        final_alpha (`float` or `None`, defaults to `None`):
            Weight reached at the end of training when `alpha_schedule` is not `"constant"`; as for the temperature,
            the last step trains one step short of it (a schedule to 1 never trains on the teacher alone).
        alpha_schedule (`str`, defaults to `"constant"`):
            How alpha moves from `alpha` to `final_alpha`: `"constant"`, `"linear"` or `"cosine"`.
        distill_loss (`str`, defaults to `"kl"`):
            `"kl"`: T² · KL(softmax(teacher/T) ‖ softmax(student/T)). `"soft_ce"`: cross-entropy of the student's
            softened distribution against the teacher's, *without* the T² factor (TextBrewer's `"ce"`).
            `"mse"`: mean squared error between raw logits (the temperature is not used).
        teacher_labels (`str`, defaults to `"soft"`):
            `"soft"`: the teacher's distribution is the target. `"hard"`: the teacher's argmax is the target
            (pseudo-labels), trained with plain cross-entropy; the temperature is then unused, and `distill_loss`
            must be `"kl"` or `"soft_ce"`, which it replaces (with several teachers, the argmax of their mixture at
            temperature 1).
        distill_positions (`str`, defaults to `"first_subword"`):
            Token classification only: which positions are distilled. `"first_subword"`: exactly the positions
            whose label is not -100. `"all_subwords"`: every real sub-word token (padding and special tokens
            excluded), which also needs no labels.
        adversarial (`str`, defaults to `"none"`):
            Embedding-space adversarial training: `"fgm"` (2 forward+backward passes per step), `"pgd"` (K+1) or
            `"freelb"` (K). The perturbation δ is added to the word-embedding output; the teacher always sees the
            clean input.
        adv_objective (`str`, defaults to `"kd"`):
            The loss on perturbed inputs, which the attacker maximises and the student minimises. `"kd"`: the
            distillation term between student(x + δ) and the clean teacher(x) (adversarially robust distillation,
            Goldblum et al. 2020). `"ce"`: cross-entropy on the labels. `"both"`: the full alpha-weighted loss. FGM and
            PGD add it to the clean loss with weight `adv_weight`; FreeLB trains on it alone (with `"kd"` and
            `adv_start_step=0` the hard labels are then unused: not required for sequence classification, nor for
            token classification with `distill_positions="all_subwords"`; `"first_subword"` finds each word's first
            sub-word by its label). Unless it equals the clean loss (`"both"`), FGM and PGD take its gradient at
            δ = 0 with one extra backward to the embeddings (no weight gradients). FreeLB logs, as `kd_loss`/`ce_loss`,
            the objective's parts on its first pass (perturbed by the random start), and no `ce_loss` with `"kd"`.
        adv_epsilon (`float`, defaults to `1.0`):
            Radius of the per-example ε-ball (over the whole sequence) that δ is projected into (>= 0). Scale it to
            the word embeddings: a BERT-family token embedding has a norm of about 1, so a budget of 1 can erase the
            one word a short sentence hinges on (FGM at 1.0 collapsed an SST-2 MiniLM student to chance); the
            benchmarks use 0.3 for FGM and 0.5 for FreeLB (`benchmarks/robustness.py`).
        adv_step_size (`float`, defaults to `0.3`):
            Ascent step size α of PGD and FreeLB (> 0).
        adv_steps (`int`, defaults to `3`):
            Ascent steps K of PGD and FreeLB (>= 1).
        adv_norm (`str`, defaults to `"l2"`):
            `"l2"` or `"linf"`: the norm of the ε-ball and of the ascent direction.
        adv_init_scale (`float`, defaults to `0.0`):
            Norm of PGD's and FreeLB's random start (0: start from δ = 0). PGD's first ascent step from it follows
            the clean pass's gradient (taken at δ = 0), which saves a forward and backward per step.
        adv_weight (`float`, defaults to `1.0`):
            Weight of the adversarial term added to the clean loss (FGM, PGD).
        adv_start_step (`int`, defaults to `0`):
            Optimizer step from which adversarial training starts; earlier steps distil on clean inputs only
            (a delay avoids unstable early steps).
        adv_perturb_special_tokens (`bool`, defaults to `False`):
            Whether δ may be non-zero on special tokens ([CLS], [SEP]); padding is never perturbed.
        hidden_distill_weight (`float`, defaults to `0.0`):
            Weight of the hidden-state matching term added to the loss (>= 0; 0 turns it off). Hidden states of the
            layers in `feature_layer_map` are compared on real tokens, through a learned linear projection when the
            hidden sizes differ (trained with the student, kept in checkpoints, not in the exported student).
        hidden_distill_loss (`str`, defaults to `"mse"`):
            `"mse"` (mean squared difference per token) or `"cosine"` (1 - cosine similarity per token).
        attention_distill_weight (`float`, defaults to `0.0`):
            Weight of the attention-map term (>= 0): KL between the teacher's and the student's attention
            distributions of the matched layers, per head and real query token (MiniLM-style). Needs the same number
            of heads and a student without attention dropout; both models run eager attention.
        feature_layer_map (`str` or `None`, defaults to `None`):
            Which student layer matches which teacher layer, as `"1:2,2:4,3:6"` (0 is the embedding output, i the
            output of layer i), for hidden states and attention maps. `None`: hidden states uniform, student layer
            s -> teacher layer round(s·T/S); attention maps the same, except for a student made by `create_student`
            from this teacher's depth, whose layers each match the teacher layer they were copied from (layers 0, 2,
            4 of 6 -> `"1:1,2:3,3:5"`; on CoNLL-2003 the uniform map cost it several F1 points, see
            `benchmarks/RESULTS.md`).
        teacher_ensemble (`str`, defaults to `"mean"`):
            With several teachers (`teacher_model=[...]`): `"mean"` averages their softened distributions,
            `"weighted"` uses `teacher_weights`, `"confidence"` weighs each teacher per position by its top-class
            probability.
        teacher_weights (`list[float]` or `None`, defaults to `None`):
            One weight per teacher for `teacher_ensemble="weighted"` (normalised to sum to 1).
        feature_teacher (`int`, defaults to `0`):
            With several teachers and hidden-state or attention distillation: the index, in `teacher_model`'s list,
            of the teacher whose internals the student matches (the soft targets still come from the whole
            ensemble). Choose the teacher the student was cut from (`create_student(teachers[i], ...)`): the student
            starts in its representation space. Only that teacher returns hidden states or attention maps.
        self_distillation (`str`, defaults to `"none"`):
            `"ema"`: no `teacher_model`; the teacher is an exponential moving average of the student (mean teacher),
            updated after every optimizer step and saved in checkpoints.
        ema_decay (`float`, defaults to `0.999`):
            Decay d of the EMA teacher, in [0, 1): `teacher ← d·teacher + (1-d)·student`. Another value without
            `self_distillation="ema"` is refused: there would be no EMA teacher to use it.
        pseudo_label_threshold (`float` or `None`, defaults to `None`):
            Unlabeled data: examples with no label at all get the teacher's argmax as hard label at the distilled
            positions where the teacher's top probability is at least this value (in (0, 1]). Those positions count
            in the hard-label loss's mean whether or not they pass the threshold (a low-confidence one adds 0).
        augment_mask_prob (`float`, defaults to `0.0`):
            Training inputs: probability that a real (non-special) token is replaced by the mask token. The
            teacher labels the augmented input, so it runs online (a teacher cache is refused). With a teacher view
            (`add_noisy_view`) the teacher reads its own clean view instead: augmentation changes the student's
            input only.
        augment_replace_prob (`float`, defaults to `0.0`):
            Probability that a real token is replaced by a random token of the vocabulary.
        teacher_dtype (`str`, defaults to `"auto"`):
            Dtype the frozen teacher runs in: `"auto"` keeps the dtype it was loaded in; `"bfloat16"` or `"float16"`
            halve its memory and speed up its forward on GPU (the loss is still computed in fp32); `"float32"` forces
            full precision, weights and forward (outside the run's bf16/fp16 autocast: for a teacher whose logits
            overflow fp16). On CPU, `"bfloat16"` pays off only where the CPU has bf16 matrix instructions (Intel AMX or
            AVX512-BF16; `torch.backends.cpu.get_cpu_capability()` and `lscpu` tell) and is usually slower elsewhere.
            The teacher module you pass is cast in place, as the Trainer moves a model to its device in place: pass a
            copy if you still need it in its own precision.
        nonfinite_policy (`str`, defaults to `"skip"`):
            What to do when the teacher's logits or a loss component is NaN or infinite: `"skip"` drops the batch
            (it contributes no gradient), logs a warning naming the step and the component, and counts it in
            `skipped_batches`; `"raise"` stops with a `FloatingPointError`. Under adversarial training, a
            non-finite perturbed pass ends that step's attack the same way, and what its earlier passes added to the
            gradients is taken back (under gradient accumulation, from a copy of the gradients made before each
            attacked micro-batch). One limit with several processes: a NaN
            inside the student's own forward on the last micro-batch of a step reaches the all-reduced gradients of
            every process (under fp16 the grad scaler then skips the step; otherwise prefer `"raise"`).
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

    adversarial: str = field(
        default="none",
        metadata={"help": "Embedding-space adversarial training: 'none', 'fgm', 'pgd' or 'freelb'.",
                  "choices": list(ADVERSARIAL)},
    )
    adv_objective: str = field(
        default="kd",
        metadata={"help": "Loss on perturbed inputs: 'kd' (student(x+δ) vs clean teacher(x)), 'ce' or 'both'.",
                  "choices": list(ADV_OBJECTIVES)},
    )
    adv_epsilon: float = field(default=1.0, metadata={"help": "Radius of the per-example ε-ball of δ (>= 0)."})
    adv_step_size: float = field(default=0.3, metadata={"help": "Ascent step size of PGD and FreeLB (> 0)."})
    adv_steps: int = field(default=3, metadata={"help": "Ascent steps K of PGD and FreeLB (>= 1)."})
    adv_norm: str = field(
        default="l2", metadata={"help": "Norm of the ε-ball and of the ascent: 'l2' or 'linf'.", "choices": list(ADV_NORMS)}
    )
    adv_init_scale: float = field(default=0.0, metadata={"help": "Norm of the random start of δ (PGD, FreeLB; >= 0)."})
    adv_weight: float = field(default=1.0, metadata={"help": "Weight of the adversarial term (FGM, PGD; >= 0)."})
    adv_start_step: int = field(default=0, metadata={"help": "Optimizer step from which adversarial training starts."})
    adv_perturb_special_tokens: bool = field(
        default=False, metadata={"help": "Whether δ may be non-zero on special tokens (padding never is)."}
    )

    hidden_distill_weight: float = field(
        default=0.0, metadata={"help": "Weight of the hidden-state matching term (>= 0; 0 turns it off)."}
    )
    hidden_distill_loss: str = field(
        default="mse", metadata={"help": "Hidden-state distance: 'mse' or 'cosine'.", "choices": list(HIDDEN_LOSSES)}
    )
    attention_distill_weight: float = field(
        default=0.0, metadata={"help": "Weight of the attention-map KL term (>= 0; 0 turns it off)."}
    )
    feature_layer_map: str | None = field(
        default=None,
        metadata={"help": "Student:teacher layer pairs, e.g. '1:2,2:4,3:6' (0 = embeddings); default uniform."},
    )
    teacher_ensemble: str = field(
        default="mean",
        metadata={"help": "Combining several teachers: 'mean', 'weighted' or 'confidence'.",
                  "choices": list(ENSEMBLE_METHODS)},
    )
    teacher_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per teacher for teacher_ensemble='weighted'."}
    )
    feature_teacher: int = field(
        default=0,
        metadata={"help": "With several teachers: index of the one whose hidden states/attention maps are matched."},
    )
    self_distillation: str = field(
        default="none",
        metadata={"help": "'ema': the teacher is an exponential moving average of the student (no teacher_model).",
                  "choices": list(SELF_DISTILLATION)},
    )
    ema_decay: float = field(default=0.999, metadata={"help": "Decay of the EMA teacher, in [0, 1)."})
    pseudo_label_threshold: float | None = field(
        default=None,
        metadata={"help": "Give unlabeled examples the teacher's argmax where its top probability >= this."},
    )
    augment_mask_prob: float = field(
        default=0.0, metadata={"help": "Probability of replacing a real training token by the mask token."}
    )
    augment_replace_prob: float = field(
        default=0.0, metadata={"help": "Probability of replacing a real training token by a random token."}
    )

    teacher_dtype: str = field(
        default="auto",
        metadata={"help": "Dtype of the frozen teacher: 'auto' (as loaded), 'float32', 'bfloat16' or 'float16'.",
                  "choices": list(TEACHER_DTYPES)},
    )

    nonfinite_policy: str = field(
        default="skip",
        metadata={"help": "NaN/inf in the teacher's logits or a loss: 'skip' the batch (logged and counted) or "
                  "'raise'.", "choices": list(NONFINITE_POLICIES)},
    )

    def __post_init__(self):
        _check_types(self)
        for name in ("temperature", "final_temperature"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"`{name}` must be a finite number > 0, got {value}.")
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
        if self.final_temperature is not None and (self.distill_loss == "mse" or self.teacher_labels == "hard"):
            unused = ("`distill_loss='mse'` compares raw logits" if self.distill_loss == "mse" else
                      "`teacher_labels='hard'` trains on the teacher's argmax")
            raise ValueError(
                f"A temperature schedule is set (`final_temperature={self.final_temperature}`), but {unused}, which no "
                "temperature changes: the schedule would do nothing. Drop `final_temperature` and "
                "`temperature_schedule`, or use `distill_loss='kl'` or 'soft_ce' with soft labels."
            )
        _choice("nonfinite_policy", self.nonfinite_policy, NONFINITE_POLICIES)
        _choice("teacher_dtype", self.teacher_dtype, TEACHER_DTYPES)
        for name in ("hidden_distill_weight", "attention_distill_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value}.")
        _choice("hidden_distill_loss", self.hidden_distill_loss, HIDDEN_LOSSES)
        _choice("teacher_ensemble", self.teacher_ensemble, ENSEMBLE_METHODS)
        if self.teacher_weights is not None:
            weights = self.teacher_weights
            listed = isinstance(weights, Sequence | np.ndarray) and not isinstance(weights, str | bytes)
            if not listed or any(isinstance(w, bool | np.bool_) or not isinstance(w, numbers.Real) for w in weights):
                quoted = listed and any(isinstance(w, str) for w in weights)
                raise ValueError(
                    f"`teacher_weights` must be a list of numbers, one per teacher (e.g. [0.7, 0.3]), got {weights!r}"
                    + (" (quoted numbers: write them unquoted)" if quoted else "") + "."
                )
            self.teacher_weights = [float(w) for w in weights]  # numpy scalars as Python ones: JSON-serialisable
            if any(not (math.isfinite(w) and w >= 0) for w in self.teacher_weights) or sum(self.teacher_weights) <= 0:
                raise ValueError(f"`teacher_weights` must be >= 0 with a positive sum, got {self.teacher_weights}.")
            if self.teacher_ensemble != "weighted":
                raise ValueError(
                    f"`teacher_weights` is set but `teacher_ensemble` is {self.teacher_ensemble!r}, which ignores it. "
                    "Set `teacher_ensemble='weighted'`, or drop `teacher_weights`."
                )
        elif self.teacher_ensemble == "weighted":
            raise ValueError("`teacher_ensemble='weighted'` needs `teacher_weights`, one per teacher.")
        if type(self.feature_teacher) is not int or self.feature_teacher < 0:
            raise ValueError(f"`feature_teacher` must be an index >= 0 into the list of teachers, got "
                             f"{self.feature_teacher!r}.")
        if self.feature_teacher != 0 and not self.uses_features:
            raise ValueError(
                f"`feature_teacher={self.feature_teacher}` picks whose hidden states or attention maps the student "
                "matches, but `hidden_distill_weight` and `attention_distill_weight` are both 0, so nothing would be "
                "matched. Turn one of them on, or drop `feature_teacher`."
            )
        _choice("self_distillation", self.self_distillation, SELF_DISTILLATION)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must be in [0, 1), got {self.ema_decay}.")
        if self.self_distillation != "ema":
            self._refuse_unused(("ema_decay",), f"`self_distillation` is {self.self_distillation!r}, so there is no "
                                "EMA teacher", "Set `self_distillation='ema'` to distil from an EMA of the student")
        if self.pseudo_label_threshold is not None and not 0.0 < self.pseudo_label_threshold <= 1.0:
            raise ValueError(f"`pseudo_label_threshold` must be in (0, 1], got {self.pseudo_label_threshold}.")
        if self.pseudo_label_threshold is not None and not self._hard_label_loss_weighted:
            raise ValueError(
                f"`pseudo_label_threshold` is set, but pseudo-labels feed only the hard-label loss, whose weight is "
                f"1 - alpha = 0 throughout (alpha={self.alpha}, final_alpha={self.final_alpha}), so they would change "
                "nothing. Set `alpha` (or `final_alpha`) below 1, or drop `pseudo_label_threshold`."
            )
        if self.pseudo_label_threshold is not None and self._freelb_on_distillation_alone:
            raise ValueError(
                "`pseudo_label_threshold` is set, but pseudo-labels feed only the hard-label loss, and FreeLB with "
                "adv_objective='kd' (from adv_start_step=0) trains on the distillation term alone, so they would change "
                "nothing. Use adv_objective='both' (or 'ce'), start the attack later (`adv_start_step`), or drop "
                "`pseudo_label_threshold`."
            )
        for name in ("augment_mask_prob", "augment_replace_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1], got {value}.")
        if self.augment_mask_prob + self.augment_replace_prob > 1.0:
            raise ValueError(
                f"`augment_mask_prob + augment_replace_prob` must be <= 1, got {self.augment_mask_prob} + "
                f"{self.augment_replace_prob}."
            )
        _choice("adversarial", self.adversarial, ADVERSARIAL)
        _choice("adv_objective", self.adv_objective, ADV_OBJECTIVES)
        _choice("adv_norm", self.adv_norm, ADV_NORMS)
        if not (math.isfinite(self.adv_epsilon) and self.adv_epsilon >= 0):
            raise ValueError(f"`adv_epsilon` must be a finite number >= 0, got {self.adv_epsilon}.")
        if not (math.isfinite(self.adv_step_size) and self.adv_step_size > 0):
            raise ValueError(f"`adv_step_size` must be > 0, got {self.adv_step_size}.")
        if not (isinstance(self.adv_steps, int) and self.adv_steps >= 1):
            raise ValueError(f"`adv_steps` must be an integer >= 1, got {self.adv_steps!r}.")
        for name in ("adv_init_scale", "adv_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value}.")
        if self.adv_start_step < 0:
            raise ValueError(f"`adv_start_step` must be >= 0, got {self.adv_start_step}.")
        if self.adversarial == "none":
            self._refuse_unused(ADV_SETTINGS, "`adversarial` is 'none', so no attack runs",
                                "Set `adversarial` to 'fgm', 'pgd' or 'freelb'")
        if not self.uses_features:
            self._refuse_unused(("hidden_distill_loss", "feature_layer_map"), "`hidden_distill_weight` and "
                                "`attention_distill_weight` are both 0, so no hidden state or attention map is matched",
                                "Turn one of the weights on")
        super().__post_init__()
        # Transformers 5 calls them activation_checkpointing(_kwargs) and keeps the gradient_checkpointing names in step.
        checkpointing = getattr(self, "activation_checkpointing", self.gradient_checkpointing)
        kwargs = getattr(self, "activation_checkpointing_kwargs", self.gradient_checkpointing_kwargs)
        # Transformers turns None or {} into use_reentrant=False; a non-empty dict reaches torch's checkpoint as it
        # is, and torch's default (use_reentrant missing or None) is the reentrant one.
        reentrant = checkpointing and isinstance(kwargs, dict) and bool(kwargs) and kwargs.get("use_reentrant") in (
            True, None)
        which = f"`use_reentrant={kwargs.get('use_reentrant')}`" if reentrant and kwargs.get("use_reentrant") else (
            "`gradient_checkpointing_kwargs` without `use_reentrant`, which torch takes as True")
        if self.attention_distill_weight > 0 and reentrant:
            raise ValueError(
                "Attention distillation trains the student's attention maps, which reentrant gradient checkpointing "
                f"({which}) returns without gradient: the attention loss would be logged but train "
                "nothing. Use `gradient_checkpointing_kwargs={'use_reentrant': False}` (Transformers' default)."
            )
        if self.adversarial in ("fgm", "pgd") and reentrant:
            raise ValueError(
                f"`adversarial='{self.adversarial}'` takes the attack's gradient with `torch.autograd.grad`, which "
                f"reentrant gradient checkpointing ({which}) does not support. Use "
                "`gradient_checkpointing_kwargs={'use_reentrant': False}` (Transformers' default), or "
                "`adversarial='freelb'`, which back-propagates every pass."
            )

    def _refuse_unused(self, names: tuple[str, ...], why: str, fix: str) -> None:
        """Refuse settings changed from their defaults that `why` says nothing would read."""
        defaults = {f.name: f.default for f in fields(self) if f.name in names}
        changed = [f"{name}={getattr(self, name)!r}" for name in names if getattr(self, name) != defaults[name]]
        if changed:
            raise ValueError(f"{', '.join(changed)} {'is' if len(changed) == 1 else 'are'} set, but {why}: "
                             f"{'it' if len(changed) == 1 else 'they'} would be ignored. {fix}, or drop "
                             f"{'it' if len(changed) == 1 else 'them'}.")

    @property
    def uses_features(self) -> bool:
        """Whether hidden states or attention maps are distilled."""
        return self.hidden_distill_weight > 0 or self.attention_distill_weight > 0

    @property
    def augments(self) -> bool:
        return self.augment_mask_prob > 0 or self.augment_replace_prob > 0

    @property
    def needs_labels(self) -> bool:
        """Whether training needs a labels column: the hard-label loss has weight at some point, or the adversary
        attacks it (`adv_objective="ce"`). With pseudo-labels the teacher can supply every label."""
        return self.labels_needed_by is not None

    @property
    def labels_needed_by(self) -> str | None:
        """What needs the labels column, and how to do without it (None when nothing does)."""
        if self.pseudo_label_threshold is not None:
            return None
        if self._hard_label_loss_weighted and not self._freelb_on_distillation_alone:
            return ("alpha < 1 gives weight to the hard-label loss. Add a `labels` column, or set `alpha=1.0` (and no "
                    "`final_alpha` below 1) to train on the teacher's outputs alone.")
        if self.adversarial != "none" and self.adv_objective == "ce":
            return ("adv_objective='ce' attacks the hard-label loss. Add a `labels` column, or let the attack raise "
                    "the distillation loss with adv_objective='kd'.")
        return None

    @property
    def _freelb_on_distillation_alone(self) -> bool:
        """FreeLB attacking the distillation term trains on that term alone, from the first step on: the hard-label
        loss never has weight."""
        return self.adversarial == "freelb" and self.adv_objective == "kd" and self.adv_start_step == 0

    @property
    def _hard_label_loss_weighted(self) -> bool:
        """Whether 1 - alpha is above 0 at some point of training."""
        return self.alpha < 1.0 or (self.final_alpha is not None and self.final_alpha < 1.0)


def distillation_settings(args: DistillationArguments) -> dict[str, Any]:
    """The settings `DistillationArguments` adds to `TrainingArguments`, as JSON values (what a checkpoint records,
    so that a resume can name the ones it changes)."""
    names = sorted({f.name for f in fields(DistillationArguments)} - {f.name for f in fields(TrainingArguments)})
    return json.loads(json.dumps({name: getattr(args, name) for name in names}, default=str))
