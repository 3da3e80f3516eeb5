"""The model card of a distilled student: how it was made, from what, and what it scores.

Built with `huggingface_hub.ModelCard`; `DistillationTrainer` writes it next to every saved student (final model
and checkpoints), and `push_to_hub` uploads it with the weights.
"""

from __future__ import annotations

import importlib.metadata
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .schedules import scheduled_value

_TASK_TAGS = {"token_classification": "token-classification", "sequence_classification": "text-classification"}
_PACKAGES = ("hf-distill", "transformers", "torch", "accelerate", "datasets", "huggingface_hub")
_METHOD_FIELDS = (
    "distill_loss", "teacher_labels", "temperature", "final_temperature", "temperature_schedule", "alpha",
    "final_alpha", "alpha_schedule", "distill_positions", "num_train_epochs", "learning_rate",
    "per_device_train_batch_size", "gradient_accumulation_steps", "seed",
)
# The attack settings each method reads (FGM takes one step of size epsilon from zero; FreeLB has no clean loss to
# weigh the adversarial term against).
_ADVERSARIAL_FIELDS = {
    "fgm": ("adversarial", "adv_objective", "adv_epsilon", "adv_norm", "adv_weight", "adv_start_step",
            "adv_perturb_special_tokens"),
    "pgd": ("adversarial", "adv_objective", "adv_epsilon", "adv_step_size", "adv_steps", "adv_norm", "adv_init_scale",
            "adv_weight", "adv_start_step", "adv_perturb_special_tokens"),
    "freelb": ("adversarial", "adv_objective", "adv_epsilon", "adv_step_size", "adv_steps", "adv_norm",
               "adv_init_scale", "adv_start_step", "adv_perturb_special_tokens"),
}
_ADVERSARIAL_OBJECTIVES = {
    "kd": "the distillation term between the student on perturbed inputs and the teacher on clean ones",
    "ce": "cross-entropy on the labels of the perturbed inputs",
    "both": "the alpha-weighted loss above on perturbed inputs",
}
# Strategy settings shown only when they differ from the default (off).
_STRATEGY_FIELDS = (
    ("hidden_distill_weight", 0.0), ("hidden_distill_loss", None), ("attention_distill_weight", 0.0),
    ("feature_layer_map", None), ("feature_teacher", 0), ("teacher_ensemble", None), ("teacher_weights", None),
    ("self_distillation", "none"), ("ema_decay", None), ("pseudo_label_threshold", None), ("augment_mask_prob", 0.0),
    ("augment_replace_prob", 0.0), ("teacher_dtype", "auto"),
)


def _method_rows(args, task: str, steps_trained: int | None = None, planned_steps: int | None = None,
                 batch_size: int | None = None,
                 optimizer: tuple[str, Sequence[float]] | None = None) -> list[tuple[str, object]]:
    # MSE on raw logits and the teacher's argmax use no temperature: a temperature row would describe nothing.
    no_temperature = getattr(args, "distill_loss", "kl") == "mse" or getattr(args, "teacher_labels", "soft") == "hard"
    hard = getattr(args, "teacher_labels", "soft") == "hard"  # a cross-entropy on the argmax, whatever distill_loss
    rows = [(name, getattr(args, name)) for name in _METHOD_FIELDS if getattr(args, name, None) is not None
            and (name != "distill_positions" or task == "token_classification")
            and not (no_temperature and "temperature" in name) and not (hard and name == "distill_loss")]
    if getattr(args, "max_steps", -1) > 0:  # max_steps, not num_train_epochs, decided how long training ran
        rows = [("max_steps", args.max_steps) if name == "num_train_epochs" else (name, value) for name, value in rows]
    per_device = getattr(args, "per_device_train_batch_size", None)
    if batch_size is not None and per_device is not None and batch_size != per_device:
        # auto_find_batch_size lowered it after running out of memory: the card gives the batch that trained.
        rows = [("per_device_train_batch_size", f"{batch_size} (auto_find_batch_size, from {per_device})")
                if name == "per_device_train_batch_size" else (name, value) for name, value in rows]
        per_device = batch_size
    if optimizer is not None and set(optimizer[1]) != {getattr(args, "learning_rate", None)}:
        # An optimizer built outside the arguments (`optimizers=`, `optimizer_cls_and_kwargs`) sets its own rates.
        name, rates = optimizer
        rate = ", ".join(f"{r:g}" for r in rates)
        rows = [("learning_rate", f"{rate} (set by the {name} optimizer; `learning_rate` {args.learning_rate:g} "
                                  "was not used)") if row == "learning_rate" else (row, value) for row, value in rows]
    if getattr(args, "label_smoothing_factor", 0):
        rows.append(("label_smoothing_factor", args.label_smoothing_factor))
    processes = getattr(args, "world_size", 1)
    if processes > 1:  # the batch above is each process's
        rows.append(("processes", processes))
        rows.append(("total train batch size",
                     per_device * args.gradient_accumulation_steps * processes))
    if steps_trained is not None and planned_steps and steps_trained < planned_steps:
        # A checkpoint, the best one (`load_best_model_at_end`) or an early stop: the weights saw part of the plan.
        rows.append(("optimizer steps behind these weights", f"{steps_trained} of {planned_steps} planned"))
        last = max(steps_trained - 1, 0) / planned_steps  # the progress of the last step these weights trained on
        for name in ("temperature", "alpha"):
            schedule = getattr(args, f"{name}_schedule", "constant")
            if schedule != "constant":
                value = scheduled_value(getattr(args, name), getattr(args, f"final_{name}"), last, schedule)
                rows.append((f"{name} at that last step", round(value, 4)))
    return rows


def _strategy_rows(args) -> list[tuple[str, object]]:
    """The strategy settings in use: the switches that are on, with their companion settings."""
    on = {
        "hidden": getattr(args, "hidden_distill_weight", 0.0) > 0,
        "attention": getattr(args, "attention_distill_weight", 0.0) > 0,
        "ema": getattr(args, "self_distillation", "none") == "ema",
    }
    rows = []
    for name, off in _STRATEGY_FIELDS:
        value = getattr(args, name, None)
        if name == "hidden_distill_loss" and not on["hidden"]:
            continue
        if name == "feature_layer_map" and not (on["hidden"] or on["attention"]):
            continue
        if name == "ema_decay" and not on["ema"]:
            continue
        if name == "teacher_ensemble" and getattr(args, "teacher_ensemble", "mean") == "mean":
            continue
        if value is None or value == off:
            continue
        rows.append((name, value))
    return rows


def framework_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _is_hub_id(name: str | None) -> bool:
    """Whether `name` looks like a Hub repo id rather than a local path or file."""
    if not name or any(c.isspace() for c in name) or name.startswith(("/", ".", "~")) or os.path.exists(name):
        return False
    # A version dot (`Qwen/Qwen2.5-0.5B`) is part of an id; a data or weight file's extension is not.
    return name.count("/") <= 1 and os.path.splitext(name)[1].lower() not in _FILE_EXTENSIONS


def display_name(name: str | None) -> str:
    """How the card names a model: a Hub id as it is, a local folder by its last component. A path on the machine
    that trained means nothing on the Hub, and says more about that machine than its owner may want published."""
    if not name or _is_hub_id(name):
        return name or ""
    return f"{os.path.basename(os.path.normpath(name)) or name} (local folder)"


_FILE_EXTENSIONS = {".json", ".jsonl", ".csv", ".tsv", ".txt", ".parquet", ".arrow", ".conll", ".safetensors", ".bin",
                    ".pt", ".yaml", ".yml"}


def _datasets_used(dataset: str | Sequence[str] | None,
                   config: str | Sequence[str | None] | None) -> list[tuple[str, str | None]]:
    """`[(dataset, configuration or None), ...]` from `build_model_card`'s `dataset` and `dataset_config`."""
    if not dataset:
        return []
    names = [dataset] if isinstance(dataset, str) else list(dataset)
    configs = [config] * len(names) if config is None else [config] if isinstance(config, str) else list(config)
    if len(configs) != len(names):
        raise ValueError(
            f"`dataset` names {len(names)} dataset(s) ({names}) but `dataset_config` {len(configs)} configuration(s) "
            f"({configs}): give one per dataset, in the same order, with None where a dataset has none."
        )
    return [(name, cfg or None) for name, cfg in zip(names, configs, strict=True) if name]


def _datasets_text(used: list[tuple[str, str | None]]) -> str:
    """The card's words for the datasets: `glue` (configuration `mrpc`), or `a`, `b` and `c` for several."""
    named = [f"`{name}`" + (f" (configuration `{cfg}`)" if cfg else "") for name, cfg in used]
    return named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]


def _table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def _adapter_text(base: str) -> str:
    if base:
        return (f"It is a PEFT adapter on `{base}`: load it with `peft.PeftModel.from_pretrained` on that base model (or "
                "an `AutoPeftModelFor...` class).")
    return ("It is a PEFT adapter on a base model with no name (a student cut from the teacher with `create_student`, "
            "say), which is not saved with it: it loads only onto that same base, saved apart. To publish a model "
            "that loads alone, merge the adapter (`merge_and_unload()`) and save the result.")


def build_model_card(
    *,
    task: str,
    teacher: str,
    args: Any,
    model_name: str | None = None,
    dataset: str | Sequence[str] | None = None,
    dataset_config: str | Sequence[str | None] | None = None,
    student_params: int | None = None,
    teacher_params: int | None = None,
    evaluation: dict[str, dict[str, float]] | None = None,
    license: str | None = None,
    tags: list[str] | None = None,
    language: str | None = None,
    teacher_view: bool = False,
    noisy_view: Mapping[str, Any] | None = None,
    layer_maps: Mapping[str, Mapping[int, int]] | None = None,
    generations: int = 1,
    adapter_of: str | None = None,
    cached_logits: str | None = None,
    steps_trained: int | None = None,
    planned_steps: int | None = None,
    train_batch_size: int | None = None,
    student_start: str | None = None,
    cut_from: tuple[str, Sequence[int], int] | None = None,
    dataset_tags: str | Sequence[str] | None = None,
    data_splits: Mapping[str, str] | None = None,
    optimizer: tuple[str, Sequence[float]] | None = None,
    changed_at_resume: Sequence[tuple[Any, Mapping[str, Sequence[Any]]]] | None = None,
) -> ModelCard:
    """A `ModelCard` for a student distilled with hf-distill.

    Args:
        task: `"token_classification"` or `"sequence_classification"`.
        teacher: the teacher's Hub id or path (`config._name_or_path`).
        args: the run's `DistillationArguments`; the method section is read from it.
        model_name: the student's name (the title).
        dataset: the training data (Hub id or file name), or a list of them when the run mixed several (labelled
            data and an unlabelled set, say); every Hub id among them goes into the card's `datasets` metadata.
        dataset_config: the configuration of a Hub dataset that has several (`"mrpc"` of `"glue"`); with a list of
            datasets, a list of the same length (`None` where a dataset has none), as `Trainer.push_to_hub`'s
            `dataset_args` pairs with its `dataset`.
        student_params, teacher_params: parameter counts, for the size ratio.
        evaluation: `{"student": {metric: value}, "teacher": {...}}`, plus optionally
            `{"speed": {"student_latency_ms": .., "teacher_latency_ms": ..}}` and `{"robustness": {attack: how it
            was measured}}` (for scores under attack among the metrics, such as `validation_f1_pgd0.5`).
        license, tags, language: card metadata; the tags `distillation`, `hf-distill` and the task are always set.
            No license is declared unless given: the student's terms follow from its teacher's and its data's,
            which only the user knows.
        teacher_view: whether the student trained on a noisy view of the text while the teacher read the clean text
            (`hf_distill.add_noisy_view`).
        noisy_view: how that noise was made, e.g. `{"noise": "typo_noise(rate=0.2)", "probability": 0.5}`: a table
            under the noisy-inputs section (only with `teacher_view`).
        layer_maps: the student -> teacher layer pairs that feature distillation used, e.g.
            `{"hidden-state": {1: 2, 2: 4, 3: 6}, "attention": {1: 1, 2: 3, 3: 5}}`; shown under the strategies,
            since the effective map can differ from `feature_layer_map` (which may be unset).
        generations: born-again distillation: this student is generation `generations`, each generation distilled
            from the one before it and the first from `teacher`.
        cached_logits: how the teacher's logits were read from a cache (`hf_distill.build_teacher_cache`), e.g.
            "cached: the top 5 of 9 logits and the tail mass": a row under the strategies.
        steps_trained: the optimizer step at which these weights were saved, if known: an attack set to start
            later (`adv_start_step`) is then described as not having run.
        planned_steps: the optimizer steps the run was set to take. When `steps_trained` is fewer (a checkpoint,
            the best one of `load_best_model_at_end`, an early stop), the method table says so and gives the
            scheduled temperature and alpha of the last step these weights trained on.
        train_batch_size: the per-device batch size that trained, when it differs from the arguments'
            (`auto_find_batch_size` lowers it after an out-of-memory error).
        adapter_of: the student is a PEFT adapter (LoRA, say) on this base model (its Hub id or path): the card's
            metadata then names PEFT as the library and that model as the base, as PEFT's own card does, so the Hub
            shows the repository as an adapter to load on its base.
        student_start: the checkpoint the student's weights were loaded from (its `config._name_or_path`), if any.
        cut_from: `(model, kept layers, its depth)` for a student made by `hf_distill.create_student`: the model
            it was cut from ("" if unnamed), the layers it kept, and how many that model had.
            The `base_model` metadata is where the student's weights came from: the model it was cut from or the
            checkpoint it started from (as `Trainer`'s own card gives the model it fine-tuned), when that is a Hub
            id. The teacher, which only supplied the targets, is named in the text.
        dataset_tags: Hub dataset ids for the `datasets` metadata (`Trainer.push_to_hub`'s `dataset_tags`), on top
            of the Hub ids among `dataset`; they also name the data in the text when `dataset` is not given.
        data_splits: what each split was, e.g. `{"train": "`train.txt` (local file), its first 3000 examples",
            "validation": ...}`: a table in the card's data section, so that a score is read against the data that
            gave it.
        optimizer: `(class name, its learning rates)` of the optimizer that trained: the method table gives those
            rates when they are not `args.learning_rate` (an optimizer passed to the trainer sets its own).
        changed_at_resume: `[(step, {setting: (before, after)}), ...]`, one entry per resume from a checkpoint with
            other distillation settings: the method table, which gives the settings from `args` (the latest), says
            which ones the steps before each resume trained with.
    """
    hub_tags = [dataset_tags] if isinstance(dataset_tags, str) else list(dataset_tags or [])
    used = _datasets_used(dataset, dataset_config) if dataset else _datasets_used(hub_tags or None, dataset_config)
    task_tag = _TASK_TAGS.get(task, task)
    all_tags = list(dict.fromkeys(["distillation", "hf-distill", task_tag, *(["peft"] if adapter_of else []),
                                   *(tags or [])]))
    if adapter_of is not None:
        base_model = adapter_of
    else:
        base_model = cut_from[0] if cut_from is not None else student_start
    data = ModelCardData(
        license=license,
        language=language,
        tags=all_tags,
        pipeline_tag=task_tag,
        library_name="peft" if adapter_of is not None else "transformers",
        datasets=list(dict.fromkeys(name for name in [*hub_tags, *(n for n, _ in used)] if _is_hub_id(name))) or None,
        base_model=base_model if _is_hub_id(base_model) else None,
    )
    title = model_name or "Distilled student"
    start = _start_text(student_start, cut_from)
    sections = [
        f"# {title}",
        "",
        f"This model is a **student distilled** with [hf-distill](https://github.com/hf-distill/hf-distill) from the "
        f"teacher `{teacher}`" + (f" on {_datasets_text(used)}." if used else ".") + (f" {start}" if start else ""),
        *(["", _adapter_text(adapter_of)] if adapter_of is not None else []),
        *(["", "## Data", "", _table([(split, what) for split, what in data_splits.items()])] if data_splits else []),
        "",
        "## Distillation method",
        "",
        _method_text(args),
        "",
        _table(_method_rows(args, task, steps_trained, planned_steps, train_batch_size, optimizer)
               + _resume_rows(changed_at_resume)),
    ]
    adversarial = getattr(args, "adversarial", "none")
    if adversarial and adversarial != "none":
        sections += ["", "### Adversarial training", "", _adversarial_text(args, steps_trained)]
        if steps_trained is None or steps_trained > args.adv_start_step:
            sections += ["", _table([(name, getattr(args, name)) for name in _ADVERSARIAL_FIELDS[adversarial]])]
    if teacher_view:
        sections += ["", "### Noisy student inputs", "",
                     "The student trained on a noisy view of the training text (`hf_distill.add_noisy_view`), and the "
                     "teacher labelled the clean text of each example."]
        if noisy_view:
            sections += ["", _table(list(noisy_view.items()))]
    strategy = _strategy_rows(args) + ([("teacher logits", cached_logits)] if cached_logits else [])
    strategy += [(f"{kind} layer map (student → teacher)", _format_layer_map(pairs))
                 for kind, pairs in (layer_maps or {}).items() if pairs]
    if generations > 1:
        strategy.append(("born-again generations", f"{generations} (this is the last; each learned from the one "
                                                   f"before it, the first from `{teacher}`)"))
    if strategy:
        sections += ["", "### Other distillation strategies", "", _table(strategy)]
    sections += ["", "## Size", ""]
    size_rows = []
    if student_params:
        size_rows.append(("student parameters", f"{student_params:,}"))
    if teacher_params:
        size_rows.append(("teacher parameters", f"{teacher_params:,}"))
    if student_params and teacher_params:
        size_rows.append(("student / teacher", f"{student_params / teacher_params:.2f}"))
    sections.append(_table(size_rows) if size_rows else "Not recorded.")
    if evaluation:
        sections += ["", "## Evaluation", "", _evaluation_table(evaluation)]
    sections += ["", "## Framework versions", "", "\n".join(f"- {k} {v}" for k, v in framework_versions().items())]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(sections) + "\n")


def _resume_rows(changed_at_resume: Sequence[tuple[Any, Mapping[str, Sequence[Any]]]] | None) -> list[tuple[str, str]]:
    """A row per resume that changed distillation settings: which, from what, at which step."""
    return [(f"changed when resumed at step {step}",
             "; ".join(f"{name} {before} → {after}" for name, (before, after) in changed.items())
             + f" (the steps up to {step} trained with the earlier values)")
            for step, changed in changed_at_resume or []]


def _start_text(student_start: str | None, cut_from: tuple[str, Sequence[int], int] | None) -> str:
    """Where the student's weights came from, in a sentence ("" when the card cannot tell)."""
    if cut_from is not None:
        source, layers, depth = cut_from
        source = f"`{display_name(source)}`" if source else "an unnamed model"
        return (f"The student started as {len(layers)} of the {depth} layers ({list(layers)}) of {source}, cut by "
                "`hf_distill.create_student`.")
    if student_start:
        return f"The student started from `{display_name(student_start)}`."
    return ""


def _adversarial_text(args: Any, steps_trained: int | None) -> str:
    """What the attack added to training, or that it never started."""
    start = args.adv_start_step
    if steps_trained is not None and steps_trained <= start:
        return (f"Embedding-space `{args.adversarial}` training was set to start at optimizer step {start}; this "
                f"model was saved at step {steps_trained}, no step had been attacked.")
    objective = _ADVERSARIAL_OBJECTIVES[args.adv_objective]
    when = f"After {start} optimizer steps on clean inputs, each" if start else "Each"
    if args.adversarial == "freelb":
        alone = " (no label term)" if args.adv_objective == "kd" else ""
        trained = (f"{when} step trained on {objective}{alone}, averaged over {args.adv_steps} perturbed passes, in "
                   "place of the loss above")
    else:
        trained = f"{when} step added {args.adv_weight} × {objective} to the loss above"
    return (f"{trained}, the embedding-space `{args.adversarial}` perturbation chosen to maximise it within the ε-ball. "
            "The teacher always saw clean inputs.")


def _format_layer_map(pairs: Mapping[int, int]) -> str:
    return ", ".join(f"{s}→{t}" for s, t in sorted(pairs.items()))


def _method_text(args: Any) -> str:
    if getattr(args, "teacher_labels", "soft") == "hard":
        term = "cross-entropy against the teacher's argmax (pseudo-labels)"
    else:
        term = {
            "kl": "T²·KL(softmax(teacher/T) ‖ softmax(student/T))",
            "soft_ce": "soft-target cross-entropy at temperature T (no T² factor)",
            "mse": "mean squared error between logits",
        }.get(getattr(args, "distill_loss", "kl"), getattr(args, "distill_loss", "kl"))
    if getattr(args, "self_distillation", "none") == "ema":
        teacher = ("The teacher was an exponential moving average of the student, updated after every optimizer step; "
                   "it received no gradient.")
    else:
        teacher = "The teacher was frozen and never updated."
    return (
        f"Loss = alpha · distill + (1 − alpha) · cross-entropy on the labels, where the distillation term is {term}, "
        f"averaged over the distilled positions. {teacher}"
    )


_EVALUATION_PARTS = ("teacher", "student", "speed", "robustness")
_RUN_FIGURES = ("_runtime", "_samples_per_second", "_steps_per_second")


def evaluation_by_model(evaluation: Mapping[str, Any]) -> Mapping[str, Any]:
    """`evaluation` as `{"student": {...}, "teacher": {...}, "speed": {...}}`; a flat `{metric: value}` (what
    `trainer.evaluate()` returns) is the student's. Any other shape is refused: it would leave the card's table
    empty."""
    if any(part in evaluation for part in _EVALUATION_PARTS):
        other = [key for key in evaluation if key not in _EVALUATION_PARTS]
        if not other and all(isinstance(value, Mapping) for value in evaluation.values()):
            return evaluation
    elif all(isinstance(value, numbers.Real) and not isinstance(value, bool) for value in evaluation.values()):
        # Trainer's timing figures and the epoch say how the evaluation ran, not how good the model is.
        return {"student": {k: v for k, v in evaluation.items() if k != "epoch" and not k.endswith(_RUN_FIGURES)}}
    raise ValueError(
        f"The evaluation report has keys {list(evaluation)[:6]}: give the student's metrics as returned by "
        "`trainer.evaluate()` ({'eval_f1': ...}), or `{'student': {...}, 'teacher': {...}, 'speed': {...}}` with a "
        "mapping of metric to value under each (and optionally `'robustness': {attack: how it was measured}`)."
    )


def _evaluation_table(evaluation: dict[str, dict[str, float]]) -> str:
    evaluation = evaluation_by_model(evaluation)
    models = [m for m in ("teacher", "student") if m in evaluation]
    metrics = sorted({k for m in models for k in evaluation[m]})
    lines = ["| metric | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    for metric in metrics:
        cells = [_fmt(evaluation[m].get(metric)) for m in models]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    speed = evaluation.get("speed")
    if speed:
        lines += ["", _table([(k, _fmt(v)) for k, v in speed.items()])]
    robustness = evaluation.get("robustness")
    if robustness:
        lines += ["", "The scores under attack were measured as follows.", "",
                  _table([(k, _fmt(v)) for k, v in robustness.items()])]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
