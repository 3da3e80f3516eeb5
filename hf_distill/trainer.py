"""`DistillationTrainer`: a `transformers.Trainer` that trains a student against a frozen teacher.

The trainer wires things together; the maths lives in `losses.py`, the schedules in `schedules.py` and the
compatibility checks in `checks.py`.

How the pieces fit:
- The teacher is a trainer attribute, not a submodule of the student, so it is never in the optimizer and never
  saved with the student. Accelerate places it after `Trainer.__init__` with `prepare_model(evaluation_mode=True)`
  (device and mixed precision, no DDP wrapper). It is in `eval()` mode and frozen.
- `get_batch_samples` counts, over the whole accumulated batch (and across processes), the distilled positions and
  the labelled positions. `compute_loss` divides each summed term by its count, so gradient accumulation gives the
  full-batch update and every token weighs the same however tokens fall into micro-batches.
- Evaluation runs the student alone (stock Trainer loss and metrics); the teacher is not run.
- Strategies beyond logits are wired in here but computed elsewhere: feature losses in `features.py` (the trainer
  owns the projection and checkpoints it), ensembles in `ensemble.py`, the EMA teacher in `self_distillation.py`,
  augmentation in `augment.py`, pseudo-labels in `losses.py`.
- A training set built by `views.add_noisy_view` carries a teacher view (`teacher_input_ids`, ...): the student trains
  on the noisy text, the teacher reads the clean text, and `views.TeacherViewCollator` pads each view on its own.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import torch
from accelerate.utils import DistributedType
from accelerate.utils.memory import clear_device_cache
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, HubStrategy, TrainOutput, rotate_checkpoints

from .adversarial import AttackSettings, EmbeddingPathCheck, adversarial_backward, embed_inputs, perturbation_mask
from .augment import augment_input_ids
from .cache import (
    CACHE_INDEX_COLUMN,
    TEACHER_LOGITS_KEY,
    CachedLogitsCollator,
    TeacherLogitCache,
    teacher_fingerprint,
    tokenizer_fingerprint,
)
from .checks import (
    CUT_FROM,
    LOADED_FROM,
    TOKEN_CLASSIFICATION,
    _base,
    check_inputs_fit,
    check_label_names,
    check_label_range,
    check_sharding,
    check_single_label,
    check_teacher_student,
    check_teachers_agree,
    check_token_labels,
    check_tokenizer,
    check_train_dataset,
    dataset_columns,
    forward_inputs,
    infer_task,
    label_names,
    label_order_mismatch,
    missing_segments,
    separator_id,
    unlabeled_token_rows,
    unweighted_processes,
)
from .checks import (
    model_name as name_of,
)
from .config import DistillationArguments, distillation_settings
from .data import word_free_special_ids
from .ensemble import combine_teacher_logits
from .features import (
    ATTENTION_DROPOUT_FIELDS,
    FeatureProjector,
    attention_dropout_field,
    attention_kl,
    cut_layer_map,
    hidden_state_loss,
    parse_layer_map,
)
from .files import (
    CHECKPOINT_MARKER,
    atomic_write_json,
    atomic_write_text,
    checkpoint_to_resume,
    is_complete_checkpoint,
    last_complete_checkpoint,
    move_into,
    remove_stale_weights,
)
from .loading import load_model
from .losses import (
    IGNORE_INDEX,
    DistillationLoss,
    distillation_objective,
    pseudo_labels,
    unlabeled_rows,
    zero_parameter_loss,
    zero_weighted_loss,
)
from .model_card import build_model_card, display_name, evaluation_by_model
from .schedules import scheduled_value
from .self_distillation import ema_copy, ema_update
from .views import TEACHER_VIEW_KEYS, TEACHER_VIEW_PREFIX, TeacherViewCollator, has_teacher_view, teacher_view_inputs

logger = logging.getLogger(__name__)

# Batch entries that only the trainer reads: the teacher's side of the batch, never given to the student.
_TEACHER_SIDE = (CACHE_INDEX_COLUMN, TEACHER_LOGITS_KEY, *TEACHER_VIEW_KEYS)

PROJECTOR_FILE = "feature_projector.pt"
EMA_TEACHER_FILE = "ema_teacher.pt"


def _named_outputs(model: nn.Module) -> dict[str, bool]:
    """`{"return_dict": True}` for a Transformers model built with `return_dict=False` (e.g. saved with
    `torchscript=True`), which returns tuples unless asked; nothing for any other model. `model` is not wrapped for
    DDP (the trainer's `model`, a teacher); a compiled or PEFT model reads its config through."""
    config = getattr(model, "config", None)
    return {"return_dict": True} if config is not None and getattr(config, "return_dict", True) is False else {}


class DistillationTrainer(Trainer):
    """Train `model` (the student) to match `teacher_model` while also fitting the labels.

    Takes Trainer's arguments in Trainer's order (`DistillationTrainer(student, args, ...)`); `teacher_model` and
    `teacher_cache` are keyword-only.

    Args:
        model: the student, a sequence- or token-classification model.
        teacher_model: the fine-tuned teacher, a model or a local path / Hub id loaded with the student's Auto
            class (a checkpoint without that task head, a base model, is refused), or a list of them (an ensemble,
            combined as `args.teacher_ensemble` says). Every teacher must share the student's tokenizer and labels
            (checked at init; embedding tables of other sizes are warned of). May be `None` when `teacher_cache`
            holds its logits for every training example, or with `args.self_distillation="ema"`.
        teacher_cache: a `TeacherLogitCache` built over `train_dataset` (`build_teacher_cache`). Batches read the
            teacher's logits from it instead of running the teacher; the training set gets the cache's index
            column automatically. The cache covers clean inputs only: adversarial training still works (the teacher
            only ever sees clean inputs), but a batch without the index column needs an online `teacher_model`.
        args: a [`DistillationArguments`].
        Other arguments are those of `transformers.Trainer`, except `model_init` and `compute_loss_func`, which are
        refused with the way to do without them (and so is `hyperparameter_search`, which needs `model_init`).

    The loss is `alpha · distill + (1 - alpha) · CE(labels)` (see `DistillationArguments`); its components are
    logged as `kd_loss` and `ce_loss`, each pooled over the logging window's positions (sum over count), with the
    mean `temperature` and `alpha` of its batches; Trainer's `loss` is the mean of the steps' losses, so under a
    schedule or uneven batches it is close to, not exactly, `alpha · kd_loss + (1 - alpha) · ce_loss`. A skipped
    batch (`nonfinite_policy="skip"`) is counted in `skipped_batches` and left out of `loss` and `train_loss`.

    A subclass that overrides `compute_loss` to add a term gets `num_items_in_batch` as a tensor of three counts over
    the whole accumulated batch, `[distilled positions, labelled positions, real tokens]` (`get_batch_samples`), not
    Trainer's one count: divide a term summed over labelled positions by `num_items_in_batch[1]`. Real tokens are
    counted only where hidden-state or attention distillation is on (they divide those terms), else the slot is 0: a
    per-token term of your own needs its own count then.
    """

    # compute_loss divides by counts over the whole accumulated batch, so Trainer must not divide again.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | None = None,
        args: DistillationArguments | None = None,
        data_collator: Callable | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        model_init: Callable | None = None,
        compute_loss_func: Callable | None = None,
        compute_metrics: Callable | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (None, None),
        optimizer_cls_and_kwargs: tuple[type[torch.optim.Optimizer], dict[str, Any]] | None = None,
        preprocess_logits_for_metrics: Callable | None = None,
        *,
        teacher_model: PreTrainedModel | nn.Module | str | list | None = None,
        teacher_cache: TeacherLogitCache | None = None,
    ):
        if model_init is not None:
            raise ValueError("`model_init` is not supported by DistillationTrainer: the teacher is checked against one "
                             "student at init. Pass the student as `model` (for a hyperparameter search, build a "
                             "trainer per trial).")
        if compute_loss_func is not None:
            raise ValueError("`compute_loss_func` would replace the distillation loss that DistillationTrainer "
                             "computes. Choose the loss with `DistillationArguments` (`distill_loss`, `alpha`, "
                             "`temperature`, ...), or subclass and override `compute_loss` (its `num_items_in_batch` "
                             "is `[distilled, labelled, tokens]`, counted over the accumulated batch, tokens only with "
                             "feature distillation; see the class docstring).")
        # An (model, teacher_model, args) order, or a slip: arguments where a collator or dataset belongs, or a model
        # or path where the arguments do.
        given = {"data_collator": data_collator, "train_dataset": train_dataset, "eval_dataset": eval_dataset}
        misplaced = next((name for name, value in given.items() if isinstance(value, TrainingArguments)), None)
        if misplaced is None and isinstance(args, nn.Module | str | os.PathLike):
            misplaced, given["args"] = "args", args
        if misplaced is not None:
            raise ValueError(
                f"`{misplaced}` is a {type(given[misplaced]).__name__}: the arguments come second, as in Trainer "
                "(`DistillationTrainer(student, args, ...)`), and the teacher is passed by keyword, "
                "`teacher_model=teacher` (or `teacher_cache=`)."
            )
        if args is None:
            args = DistillationArguments(output_dir="tmp_trainer")
        if not isinstance(args, DistillationArguments):
            raise ValueError(
                f"`args` is a {type(args).__name__}; DistillationTrainer needs `hf_distill.DistillationArguments`, "
                "which takes every TrainingArguments field plus the distillation settings."
            )
        if model is None:
            raise ValueError("`model` (the student) is required; `model_init` is not supported by DistillationTrainer.")
        launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if launched > 1 and args.world_size == 1:
            raise ValueError(
                f"This process is one of {launched} (WORLD_SIZE={launched}, from `accelerate launch` or `torchrun`), "
                "but the arguments train on one process: each process would train alone, on the whole data, and "
                "all would write the same `output_dir`. On CPU, pass `use_cpu=True` (`--use_cpu true`) so that "
                "Trainer joins the processes (recipes/accelerate/cpu_multi_process.yaml); otherwise launch one process."
            )
        self.task = infer_task(model, "student")
        check_single_label(model, "student")
        teachers = list(teacher_model) if isinstance(teacher_model, list | tuple) else (
            [] if teacher_model is None else [teacher_model])
        teachers = [load_model(t, self.task, role="teacher", require_all_weights=True)
                    if isinstance(t, str | os.PathLike) else t for t in teachers]
        _check_teacher_sources(args, teachers, teacher_cache)
        for index, teacher in enumerate(teachers):
            try:
                check_teacher_student(teacher, model)
                check_tokenizer(processing_class, teacher, model)
            except ValueError as error:
                if len(teachers) == 1:
                    raise
                raise ValueError(f"Teacher {index} of {len(teachers)} ({name_of(teacher)}): {error}") from error
        check_teachers_agree(teachers)
        _refuse_shared_weights(teachers, model, cast=args.teacher_dtype != "auto")
        _refuse_teacher_in_output_dir(teachers, args.output_dir, pushing=args.push_to_hub)
        if args.attention_distill_weight > 0:
            _use_eager_attention([model, *teachers[args.feature_teacher:args.feature_teacher + 1]])
        num_labels = model.config.num_labels
        if teacher_cache is not None:
            if teacher_cache.task != self.task or teacher_cache.num_labels != num_labels:
                raise ValueError(
                    f"The teacher cache holds {teacher_cache.task} logits over {teacher_cache.num_labels} labels, but "
                    f"the student does {self.task} with {num_labels} labels. Build the cache with the teacher of this "
                    "task (`build_teacher_cache`)."
                )
            check_label_names(teacher_cache.label_names, model, teacher="The cached teacher",
                              id2label="dict(enumerate(teacher_cache.label_names))")
            _refuse_cache_in_pushed_folder(teacher_cache, args)
            if train_dataset is not None and (isinstance(train_dataset, torch.utils.data.IterableDataset)
                                              or not hasattr(train_dataset, "__len__")):
                raise ValueError(
                    "The teacher-logit cache checks, before training, that the training set holds the rows it was built "
                    f"from, so it needs a map-style dataset; got a {type(train_dataset).__name__}. Train on the "
                    "`datasets.Dataset` itself (not `.to_iterable_dataset()` or a streaming one), or with an online "
                    "`teacher_model`."
                )
            try:
                if train_dataset is not None and CACHE_INDEX_COLUMN not in dataset_columns(train_dataset):
                    train_dataset = teacher_cache.attach(train_dataset)
                elif train_dataset is not None:
                    teacher_cache.check_index(train_dataset)  # an index column already there must name the right rows
            except ValueError as error:  # other rows: say so when the tokenizer is why
                raise ValueError(f"{error}{_other_tokenizer(teacher_cache, processing_class)}") from None
        _adopt_teacher_label_names(model, label_names(teachers[0]) if teachers else (
            teacher_cache.label_names if teacher_cache is not None else None))
        why = args.labels_needed_by
        if why is None and self.task == TOKEN_CLASSIFICATION and args.distill_positions == "first_subword":
            why = ("distill_positions='first_subword' finds each word's first sub-word by its label (not -100). For "
                   "text without labels use distill_positions='all_subwords'.")
        check_train_dataset(train_dataset, why is not None, why)
        self.teacher_view = has_teacher_view(train_dataset)
        if self.teacher_view:
            _check_teacher_view(self.task, args, teacher_cache, processing_class)
        # An iterable training set (streaming) names no columns before training: a teacher view is looked for in its
        # batches instead (`training_step`), and the view collator, which passes batches without one through, is put in.
        columns_unknown = train_dataset is not None and not dataset_columns(train_dataset)
        per_token = self.task == TOKEN_CLASSIFICATION
        named = next(((labels, source) for labels, source in (
            (label_names(teachers[0]) if teachers else None, "the teacher"),
            (teacher_cache.label_names if teacher_cache is not None else None, "the cached teacher"),
            (label_names(model), "the student")) if labels is not None), (None, ""))
        splits = [train_dataset, *(eval_dataset.values() if isinstance(eval_dataset, dict) else [eval_dataset])]
        for split in splits:
            if split is not None:
                check_label_range(split, num_labels, per_token=per_token)
                problem = label_order_mismatch(split, *named)
                if problem is not None:
                    logger.warning(problem)
                if self.task == TOKEN_CLASSIFICATION:
                    check_token_labels(split)
        if self.task == TOKEN_CLASSIFICATION:
            check_token_labels(train_dataset)
            unlabeled = unlabeled_token_rows(train_dataset) if args.distill_positions == "first_subword" else 0
            if unlabeled:
                logger.warning(
                    "%d of %d training rows have no label at all (every label -100): with distill_positions="
                    "'first_subword', which distils the labelled positions, they are neither distilled nor trained on. "
                    "Set `distill_positions='all_subwords'` to distil them (e.g. rows from `mix_unlabeled`).",
                    unlabeled, len(train_dataset))
        roles = [("student", model), *((f"teacher {i}" if len(teachers) > 1 else "teacher", t)
                                       for i, t in enumerate(teachers))]
        for split in splits:
            if has_teacher_view(split):  # the teachers read the clean view, under its own column names
                check_inputs_fit(split, roles[:1])
                check_inputs_fit(split, roles[1:], prefix=TEACHER_VIEW_PREFIX)
            else:
                check_inputs_fit(split, roles)
        if self.task == TOKEN_CLASSIFICATION and args.pseudo_label_threshold is not None and (
                args.distill_positions == "first_subword"):
            raise ValueError(
                "Pseudo-labels go to the distilled positions of unlabeled sentences, but `distill_positions="
                "'first_subword'` distils labelled positions only, so unlabeled sentences would get none. Use "
                "`distill_positions='all_subwords'` with `pseudo_label_threshold`."
            )
        if self.task == TOKEN_CLASSIFICATION and args.distill_positions == "all_subwords":
            if processing_class is None or not hasattr(processing_class, "all_special_ids"):
                raise ValueError(
                    "`distill_positions='all_subwords'` needs the tokenizer to tell special tokens apart: pass "
                    "`processing_class=tokenizer`."
                )

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        self.teacher_cache = teacher_cache
        if teacher_cache is not None:
            self.data_collator = CachedLogitsCollator(self.data_collator, teacher_cache)
        # Where the view collator is, Trainer's column removal keeps the view columns for it (and only there: an
        # evaluation set's view would reach a collator that cannot pad it; the student does not read it anyway).
        self._keeps_teacher_view = self.teacher_view or columns_unknown
        if self._keeps_teacher_view:
            self.data_collator = TeacherViewCollator(self.data_collator, processing_class)
        check_sharding(args, fsdp=self.is_fsdp_enabled, deepspeed=self.is_deepspeed_enabled)
        if (problem := unweighted_processes(args)) is not None:
            logger.warning(problem)
        if _adapter_base(self._unwrap(self.model)) == "":
            logger.warning(
                "The student is a PEFT adapter whose base model has no name (a `create_student` cut, say): the saved "
                "adapter loads only onto that base, which is not saved with it. Save the cut student before "
                "`get_peft_model` (`student.save_pretrained(...)`), or merge the adapter after training "
                "(`merge_and_unload()`) and save the result."
            )
        if args.adversarial == "freelb" and args.adv_objective == "kd" and args._hard_label_loss_weighted:
            when = f"from optimizer step {args.adv_start_step} on" if args.adv_start_step else "throughout"
            logger.warning(
                "FreeLB with adv_objective='kd' trains on the distillation term on perturbed inputs alone, %s: "
                "alpha=%s%s is not used there and the labels are not trained on (the logged alpha is 1). For the "
                "alpha-weighted loss on perturbed inputs use adv_objective='both'; set alpha=1 to train on the "
                "teacher alone and silence this.", when, args.alpha,
                f" (to final_alpha={args.final_alpha})" if args.final_alpha is not None else "")
        if args.self_distillation == "ema":
            teachers = [ema_copy(self._unwrap(self.model))]
        self.teacher_models = [self._prepare_teacher(t) for t in teachers]
        # Decided once: the teachers' dtypes and the run's mixed precision are fixed from here on.
        self._teacher_apart = [_in_own_precision(t, self.accelerator.mixed_precision, self.args.teacher_dtype)
                               for t in self.teacher_models]
        self.teacher_model = self.teacher_models[0] if self.teacher_models else None
        # Each teacher gets the batch keys its own forward takes (an ensemble may mix BERT and DistilBERT).
        self._teacher_inputs: list[set[str]] = [forward_inputs(self._unwrap(t)) for t in self.teacher_models]
        # Inputs a teacher takes and the student does not (a BERT teacher's token_type_ids for a DistilBERT student):
        # kept through Trainer's column removal for the teacher, and never handed to the student.
        self._teacher_only_inputs: tuple[str, ...] = tuple(sorted(
            set().union(*self._teacher_inputs) - forward_inputs(self._unwrap(self.model))))
        self._teacher_keys = frozenset({*_TEACHER_SIDE, *self._teacher_only_inputs})  # never given to the student
        problem = missing_segments(train_dataset, [self._unwrap(t) for t in self.teacher_models],
                                   separator_id(processing_class, data_collator))
        if problem is not None:
            logger.warning(problem)
        # [CLS], [SEP], [PAD]...: not [UNK] (a word the vocabulary lacks) nor [MASK] (written into words by augmentation).
        special = word_free_special_ids(processing_class) or []
        # The attack leaves special tokens alone by default; without processing_class, the collator's tokenizer
        # names them, and with neither the trainer would perturb [CLS] and [SEP] without a word.
        attack_special = special or word_free_special_ids(getattr(data_collator, "tokenizer", None)) or []
        if args.adversarial != "none" and not args.adv_perturb_special_tokens and not attack_special:
            raise ValueError(
                "Adversarial training leaves special tokens ([CLS], [SEP], ...) unperturbed, and needs the tokenizer "
                "to know them: pass `processing_class=tokenizer` (or set `adv_perturb_special_tokens=True` to "
                "perturb them as well)."
            )
        self._special_ids = torch.tensor(sorted(set(attack_special)), dtype=torch.long)
        self._distill_skip_ids = torch.tensor(sorted(set(special)), dtype=torch.long)
        self.feature_projector: FeatureProjector | None = None
        self._layer_map: dict[int, int] = {}  # hidden states: student layer -> teacher layer
        self._attention_map: dict[int, int] = {}  # attention maps (the same unless the student was cut, see below)
        if args.uses_features:
            self._setup_features()
        if args.self_distillation == "ema":
            self.add_callback(_EMACallback(self))
        if self.feature_projector is not None:
            self.add_callback(_ProjectorCallback(self))
        self.add_callback(_FreshStartCallback(self))
        self._projector_grads_averaged = False
        self._model_step: int | None = None  # the step of the weights in `self.model`, once the best were reloaded
        self._trainer_state_saved_in: tuple[str, int] | None = None
        self._rotation_limit: int | None = None  # the run's save_total_limit while a checkpoint save holds it back
        self._augment_generator = None
        if args.augments:
            if processing_class is None or not hasattr(processing_class, "all_special_ids"):
                raise ValueError(
                    "Augmentation (`augment_mask_prob`/`augment_replace_prob`) needs the tokenizer to find the mask "
                    "token and the special tokens it must not touch: pass `processing_class=tokenizer`."
                )
            if args.augment_mask_prob > 0 and getattr(processing_class, "mask_token_id", None) is None:
                raise ValueError(
                    f"`augment_mask_prob={args.augment_mask_prob}` writes the mask token into the student's input, but "
                    f"the tokenizer ({type(processing_class).__name__}) has none (`mask_token_id` is None, as for "
                    "GPT-2 or Llama tokenizers). Use `augment_replace_prob` (random replacements) instead, or a "
                    "tokenizer with a mask token."
                )
            self._augment_generator = torch.Generator().manual_seed(args.seed + 1)
            # Random replacements are drawn from the vocabulary without the special tokens that stand for no word
            # ([CLS], [SEP], [PAD]; [UNK] and [MASK] may be drawn, as in BERT's own random replacements): the ids the
            # tokenizer makes, not the rows an embedding matrix padded past them holds (ModernBERT, DeBERTa-v3).
            vocab = self._unwrap(self.model).config.vocab_size
            vocab = min(vocab, len(processing_class)) if hasattr(processing_class, "__len__") else vocab
            keep = torch.ones(vocab, dtype=torch.bool)
            keep[self._special_ids[self._special_ids < vocab]] = False
            self._replacement_ids = keep.nonzero().squeeze(-1)
        self._window = _LossWindow()
        self._run_skipped = 0  # batches skipped in this run, over every process
        self._run_shares = [0.0, 0.0]  # optimizer steps' shares trained on and skipped in this run, for its train_loss
        self._closing_run = False  # set while Trainer logs the run's closing metrics
        self.skipped_batches = 0
        self._skipped_before_resume = 0  # the count a resumed checkpoint carried, for the final metrics
        self._attack = None
        if args.adversarial != "none":
            self._check_embedding_path = EmbeddingPathCheck()
            self._attack = AttackSettings(
                method=args.adversarial, epsilon=args.adv_epsilon, step_size=args.adv_step_size, steps=args.adv_steps,
                norm=args.adv_norm, init_scale=args.adv_init_scale,
            )
            self._attack_generator = torch.Generator().manual_seed(args.seed)
        # Filled in by recipes (or users) to enrich the model card written with every save.
        self.dataset_name: str | list[str] | None = None
        self.dataset_config_name: str | None = None  # the configuration of a Hub dataset (`mrpc` of `glue`)
        self.data_splits: dict[str, str] | None = None  # what each split was ({"train": "..., first 3000 rows"})
        # The metadata given to `create_model_card` (through `push_to_hub(license=...)`, say), kept for the cards of
        # later saves, which would otherwise publish a card without them.
        self._card_metadata: dict[str, Any] = {}
        self._fingerprints: list[str] | None = None  # the teachers' weights, for the checkpoint marker
        # The distillation settings resumes changed, as [step, {setting: [before, after]}] pairs (for the card)
        self._resumed_changes: list[list[Any]] = []
        self._evaluation_report: dict[str, dict[str, float]] | None = None
        self.noisy_view: dict[str, Any] | None = None  # how a teacher-view training set's noise was made
        # Born-again distillation (set by whoever chains the generations): the card names the first generation's
        # teacher, not the previous generation that taught this one. Under EMA self-distillation: the model the
        # student started from.
        self.generations: int = 1
        self.original_teacher: nn.Module | None = None

    # ---- teacher ---------------------------------------------------------------------------------------------

    def _unwrap(self, module: nn.Module) -> nn.Module:
        """The model under Accelerate's wrappers, `torch.compile`'s included (whose `forward` takes only
        `*args, **kwargs` and whose parameter names carry an `_orig_mod.` prefix)."""
        return self.accelerator.unwrap_model(module, keep_torch_compile=False)

    def _prepare_teacher(self, teacher: nn.Module) -> nn.Module:
        teacher.requires_grad_(False)
        teacher.eval()
        if self.args.teacher_dtype != "auto":
            dtype = getattr(torch, self.args.teacher_dtype)
            teacher.to(dtype)
            _keep_float32_modules(teacher, dtype)
        if self.is_deepspeed_enabled:
            stage = self.accelerator.state.deepspeed_plugin.zero_stage
            if stage == 3:
                raise ValueError(
                    "DeepSpeed ZeRO-3 shards parameters across processes, and a teacher outside the DeepSpeed engine "
                    "cannot be sharded with it. Use ZeRO-2 or FSDP for the student (the teacher is then replicated "
                    "and run in inference mode), or precompute the teacher's logits."
                )
            return teacher.to(self.args.device)
        # Under FSDP, prepare_model places nothing (FSDP moves the modules it wraps, and evaluation mode wraps
        # nothing): the teacher, replicated whole on every process, is placed here.
        fsdp = self.accelerator.distributed_type == DistributedType.FSDP
        prepared = self.accelerator.prepare_model(teacher, device_placement=True if fsdp else None,
                                                  evaluation_mode=True).eval()
        # prepare_model lists the teacher among the accelerator's models, and Trainer's evaluation loop prepares the
        # student (mixed-precision autocast, compile, FSDP) only while that list is empty: an evaluate() before
        # train() would otherwise run the student unprepared. The teacher has no training state to track there.
        self.accelerator._models = [m for m in self.accelerator._models if m is not prepared and m is not teacher]
        if _in_own_precision(prepared, self.accelerator.mixed_precision, self.args.teacher_dtype):
            # Accelerate's autocast wrapper off, on the module it wraps: the model itself, or the one a compiled
            # wrapper holds (whose own forward, the compiled one, stays).
            for module in (prepared, getattr(prepared, "_orig_mod", None)):
                if module is not None and "_original_forward" in vars(module):
                    module.forward = vars(module)["_original_forward"]
                    break
        return prepared

    @torch.inference_mode()
    def _teacher_forward(self, index: int, inputs: dict[str, Any], features: bool = False) -> Any:
        flags = self._feature_flags() if features else {}
        inputs = teacher_view_inputs(inputs)
        accepted = self._teacher_inputs[index]
        teacher = self.teacher_models[index]
        apart = self._teacher_apart[index]  # the step's autocast off around a teacher in its own half precision
        with torch.autocast(self.accelerator.device.type, enabled=False) if apart else contextlib.nullcontext():
            return teacher(**{k: v for k, v in inputs.items() if k in accepted}, **flags, **_named_outputs(teacher))

    def _feature_flags(self) -> dict[str, bool]:
        flags = {}
        if self.args.hidden_distill_weight > 0:
            flags["output_hidden_states"] = True
        if self.args.attention_distill_weight > 0:
            flags["output_attentions"] = True
        return flags

    def teacher_outputs(self, inputs: dict[str, Any], features: bool = False) -> dict[str, Any]:
        """The teacher's outputs for a batch, as ordinary (autograd-usable) tensors without gradient.

        `logits` are read from the cache when the batch carries its index column, else computed by the teacher (or
        combined from several teachers at the current temperature). With `features`, also `hidden_states` and
        `attentions`, from the online teacher `args.feature_teacher` picks. `confidence_logits` are the logits whose
        softmax at temperature 1 says how sure the teacher is (for pseudo-labels; an ensemble computes them only when
        pseudo-labels are on).
        """
        index = inputs.get(CACHE_INDEX_COLUMN)
        if inputs.get(TEACHER_LOGITS_KEY) is not None and not features:  # read from the cache by the collator
            logits = inputs[TEACHER_LOGITS_KEY]
            return {"logits": logits, "confidence_logits": logits}
        if self.teacher_cache is not None and index is not None and not features:
            tokens = self.teacher_cache.task == TOKEN_CLASSIFICATION
            logits = self.teacher_cache.logits(index, seq_len=inputs["input_ids"].shape[1],
                                               attention_mask=inputs.get("attention_mask") if tokens else None)
            logits = logits.to(inputs["input_ids"].device, non_blocking=True)
            return {"logits": logits, "confidence_logits": logits}
        if self.teacher_model is None:
            raise ValueError(
                f"This batch has no `{CACHE_INDEX_COLUMN}` column, so its teacher logits are not in the cache (an "
                "augmented or unattached dataset?), and no online `teacher_model` was given. Pass `teacher_model` "
                "too, or train on `teacher_cache.attach(dataset)`."
            )
        matched = self.args.feature_teacher if features else None  # the one teacher whose internals are matched
        outputs = [self._teacher_forward(i, inputs, i == matched) for i in range(len(self.teacher_models))]
        result = {}
        if features:  # only the matched layers leave inference mode (attention maps are indexed from layer 1)
            for key, offset, layer_map in (("hidden_states", 0, self._layer_map),
                                           ("attentions", 1, self._attention_map)):
                if f"output_{key}" in self._feature_flags():  # not maps that the teacher's config returns anyway
                    maps = _feature_outputs(outputs[matched], key, "teacher")
                    result[key] = {t - offset: maps[t - offset].clone() for t in layer_map.values()}
        all_logits = [o["logits"].clone() for o in outputs]
        if len(all_logits) == 1:
            result["logits"] = result["confidence_logits"] = all_logits[0]
            return result
        a = self.args
        # Hard labels are the argmax of the ensemble's own prediction (the mixture at temperature 1), which must not
        # move with the distillation temperature or its schedule.
        temperature = 1.0 if a.teacher_labels == "hard" else self.current_temperature
        result["logits"] = combine_teacher_logits(all_logits, method=a.teacher_ensemble, weights=a.teacher_weights,
                                                  temperature=temperature, distill_loss=a.distill_loss)
        if a.pseudo_label_threshold is not None:  # the mixture at temperature 1, only when pseudo-labels need it
            result["confidence_logits"] = combine_teacher_logits(all_logits, method=a.teacher_ensemble,
                                                                 weights=a.teacher_weights, temperature=1.0)
        return result

    def teacher_logits(self, inputs: dict[str, Any]) -> torch.Tensor:
        """The teacher's logits for a batch (see `teacher_outputs`)."""
        return self.teacher_outputs(inputs)["logits"]

    def get_train_dataloader(self):
        if not self._keeps_teacher_view and has_teacher_view(self.train_dataset):
            # A training set with a teacher view given after init (`trainer.train_dataset = ...`): set up what init
            # sets up for one, or its view columns would be dropped and the teacher would read the noisy text.
            _check_teacher_view(self.task, self.args, self.teacher_cache, self.processing_class)
            self.teacher_view = self._keeps_teacher_view = True
            self.data_collator = TeacherViewCollator(self.data_collator, self.processing_class)
            if self._signature_columns is not None:
                self._signature_columns += [k for k in TEACHER_VIEW_KEYS if k not in self._signature_columns]
        return super().get_train_dataloader()

    def _set_signature_columns_if_needed(self):
        # Trainer keeps the columns the student's forward takes; the teacher's side of a batch is kept too: the cache
        # index, a teacher view (which an iterable training set may carry unannounced), and what only a teacher takes.
        super()._set_signature_columns_if_needed()
        wanted = [*(TEACHER_VIEW_KEYS if getattr(self, "_keeps_teacher_view", False) else ()),
                  *getattr(self, "_teacher_only_inputs", ())]
        if self.teacher_cache is not None:
            wanted.append(CACHE_INDEX_COLUMN)
        self._signature_columns += [k for k in wanted if k not in self._signature_columns]

    def _student_inputs(self, inputs: dict[str, Any], *, drop: tuple[str, ...] = ()) -> dict[str, Any]:
        """The entries of a batch that go to the student: not the labels (the loss is computed here), nor the teacher's
        side (its view, cached logits, inputs only a teacher takes), nor `drop`; plus `return_dict=True` for a student
        whose config asks for tuples, since its outputs are read by name."""
        entries = {k: v for k, v in inputs.items() if k not in self._teacher_keys and k != "labels" and k not in drop}
        return {**entries, **_named_outputs(self.model)}

    # ---- schedules and positions -------------------------------------------------------------------------------

    @property
    def progress(self) -> float:
        """Fraction of the optimizer steps done, in [0, 1]."""
        return self.state.global_step / max(self.state.max_steps, 1)

    @property
    def current_temperature(self) -> float:
        a = self.args
        return scheduled_value(a.temperature, a.final_temperature, self.progress, a.temperature_schedule)

    @property
    def current_alpha(self) -> float:
        a = self.args
        return scheduled_value(a.alpha, a.final_alpha, self.progress, a.alpha_schedule)

    def distill_mask(self, inputs: dict[str, Any]) -> torch.Tensor:
        """Bool mask of the positions to distil: (B,) for sequence classification, (B, L) for tokens."""
        input_ids = inputs["input_ids"]
        if self.task != TOKEN_CLASSIFICATION:
            return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if self.args.distill_positions == "first_subword":
            labels = inputs.get("labels")
            if labels is None:
                raise ValueError(
                    "`distill_positions='first_subword'` distils the positions whose label is not -100, but this "
                    "batch has no `labels`. For unlabeled text use `distill_positions='all_subwords'`."
                )
            return labels.ne(IGNORE_INDEX)
        return _real_tokens(inputs, self._distill_skip_ids)

    def pseudo_label_candidates(self, inputs: dict[str, Any]) -> torch.Tensor:
        """Bool mask of the positions that may get a pseudo-label: the distilled positions of unlabeled examples."""
        mask = self.distill_mask(inputs)
        rows = unlabeled_rows(inputs.get("labels"), mask.shape[0], mask.device)
        return mask & rows.view(-1, *([1] * (mask.dim() - 1)))

    # ---- loss ----------------------------------------------------------------------------------------------------

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Collect the micro-batches of one optimizer step and count their distilled and labelled positions.

        Returns `(batches, counts)` where `counts` is a tensor `[distilled, labelled, tokens]` summed over the
        micro-batches (and over processes when `average_tokens_across_devices`): distilled positions, labelled
        positions (plus pseudo-label candidates when `pseudo_label_threshold` is set) and real tokens (counted for
        feature distillation only, else 0). Trainer passes it to `compute_loss` as `num_items_in_batch`.
        """
        # Trainer's own count (labels only, gathered across processes) would be thrown away: collect without it.
        batch_samples = []
        for _ in range(num_batches):
            try:
                batch_samples.append(next(epoch_iterator))
            except StopIteration:
                break
        rows = []  # summed where the batches live, with no host synchronisation
        for batch in batch_samples:
            labels = batch.get("labels")
            labelled = labels.ne(IGNORE_INDEX).sum() if labels is not None else torch.zeros((), dtype=torch.long)
            if self.args.pseudo_label_threshold is not None:
                labelled = labelled + self.pseudo_label_candidates(batch).sum()
            distilled = self.distill_mask(batch).sum()
            tokens = self.feature_mask(batch).sum() if self.args.uses_features else distilled.new_zeros(())
            rows.append(torch.stack([distilled, labelled.to(batch["input_ids"].device), tokens]))
        if not rows:
            counts = torch.zeros(3, dtype=torch.long, device=device)
        else:  # (one micro-batch, the usual case: no stack and sum of a single row)
            counts = (rows[0] if len(rows) == 1 else torch.stack(rows).sum(0)).to(device, non_blocking=True)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            counts = self.accelerator.gather(counts.unsqueeze(0)).sum(0)
        return batch_samples, counts

    def get_eval_dataloader(self, eval_dataset=None):
        with self._collating_without_cache():
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset):
        with self._collating_without_cache():
            return super().get_test_dataloader(test_dataset)

    @contextlib.contextmanager
    def _collating_without_cache(self):
        """Evaluation scores the student alone: its batches skip the cache read (an eval set may carry another
        cache's index column), and the DataLoader built meanwhile keeps the plain collator."""
        collator = self.data_collator
        if isinstance(collator, CachedLogitsCollator):
            self.data_collator = collator.collator
        elif isinstance(collator, TeacherViewCollator) and isinstance(collator.collator, CachedLogitsCollator):
            self.data_collator = TeacherViewCollator(collator.collator.collator, collator.tokenizer)
        try:
            yield
        finally:
            self.data_collator = collator

    def _prepare_inputs(self, inputs):
        # Under DeepSpeed, Trainer casts every floating tensor of a batch to the engine's dtype: cached teacher logits
        # (exact to fp16, in fp32 here) keep their precision, as an online teacher's fp32 logits do.
        logits = inputs.get(TEACHER_LOGITS_KEY) if self.is_deepspeed_enabled and hasattr(inputs, "get") else None
        prepared = super()._prepare_inputs(inputs)
        if logits is not None:
            prepared[TEACHER_LOGITS_KEY] = logits.to(self.args.device)
        return prepared

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Evaluation and prediction score the student alone, exactly as the stock Trainer does. The teacher's side of
        # a batch goes first: without labels the stock step calls the model directly, and a forward that takes
        # **kwargs would accept the teacher's columns silently.
        inputs = {k: v for k, v in inputs.items() if k not in self._teacher_keys}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            # Evaluation and prediction: the student alone; `prediction_step` has dropped the teacher's side.
            return super().compute_loss(model, inputs, return_outputs=return_outputs)
        model_inputs = self._student_inputs(inputs)
        features = self.args.uses_features
        outputs = model(**model_inputs, **(self._feature_flags() if features else {}))
        alpha, temperature = self.current_alpha, self.current_temperature
        needs_teacher = alpha > 0 or features or self.args.pseudo_label_threshold is not None
        teacher = self.teacher_outputs(inputs, features=features) if needs_teacher else {}
        teacher_logits = teacher.get("logits")

        objective, scale = self._objective(inputs, teacher, alpha, temperature, num_items_in_batch)
        parts = objective(outputs["logits"], alpha)
        ratios = []
        if features:
            parts, ratios = self._add_feature_losses(parts, outputs, teacher, inputs, num_items_in_batch)
        finite = _is_finite(parts.loss)
        hard = teacher_logits is not None and self.args.teacher_labels == "hard"
        distilled = self.distill_mask(inputs) if hard else None
        if hard:
            # The argmax of a NaN row is a class like any other: the loss stays finite, so check the logits themselves.
            finite = finite & torch.isfinite(torch.where(distilled.unsqueeze(-1), teacher_logits, 0.0)).all()
        if not finite:
            self._handle_nonfinite(parts, teacher_logits, distilled if hard else self.distill_mask(inputs))
            loss = self._skipped_batch_loss(model, outputs["logits"])
            return (loss, outputs) if return_outputs else loss
        self._window.add(parts, temperature, alpha, self._step_share())
        for name, total, count in ratios:
            self._window.add_ratio(name, total, count)
        loss = parts.loss * scale if scale != 1.0 else parts.loss  # one device operation fewer per step
        return (loss, outputs) if return_outputs else loss

    def _keeps_processes_in_step(self) -> bool:
        """Whether a skipped batch must still back-propagate (a zero-weighted loss): several processes wait for its
        gradient all-reduce, and DeepSpeed's engine steps inside `backward`."""
        return self.accelerator.num_processes > 1 or self.is_deepspeed_enabled

    def _skipped_batch_loss(self, model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
        """The loss a skipped batch returns to Trainer: zero-weighted through the logits where other processes wait for
        its backward, else `zero_parameter_loss`, whose backward bypasses the forward (a NaN in the student's forward
        would otherwise reach the gradients that earlier micro-batches accumulated)."""
        if self._keeps_processes_in_step():
            return zero_weighted_loss(logits)
        return zero_parameter_loss(model)

    def _handle_nonfinite(self, parts: DistillationLoss, teacher_logits, mask) -> None:
        """Name the non-finite component, then raise or count the skipped batch (`nonfinite_policy`)."""
        if teacher_logits is not None and not torch.isfinite(teacher_logits[mask.bool()]).all():
            component = "the teacher's logits"
        elif not torch.isfinite(parts.kd_sum):
            component = "the distillation loss (kd_loss)"
        elif not torch.isfinite(parts.ce_sum):
            component = "the hard-label loss (ce_loss)"
        else:
            component = "the total loss"
        self._report_nonfinite(
            f"Non-finite values in {component} at step {self.state.global_step + 1}",  # as log_history counts
            "Check the teacher (fp16 overflow? a corrupted checkpoint?) and the learning rate",
        )

    def _step_share(self) -> float:
        """This micro-batch's share of its optimizer step (1 / the step's micro-batches): Trainer's logged loss is a
        mean over steps, and an epoch's last step may hold fewer micro-batches than the others."""
        return 1.0 / max(getattr(self, "current_gradient_accumulation_steps", 1) or 1, 1)

    def _report_nonfinite(self, message: str, hint: str) -> None:
        """Raise (`nonfinite_policy="raise"`) or count the skipped batch and warn."""
        if self.args.nonfinite_policy == "raise":
            raise FloatingPointError(f"{message}. {hint}, or set `nonfinite_policy='skip'` to skip such batches.")
        self.skipped_batches += 1
        self._window.skipped += 1
        self._window.skipped_share += self._step_share()
        logger.warning("%s: skipped (%d skipped so far).", message, self.skipped_batches)

    def _objective(self, inputs, teacher, alpha, temperature, num_items_in_batch):
        """`(objective, scale)`: `objective(student_logits, alpha)` is the batch's `DistillationLoss`, normalised by
        the counts over the whole accumulated batch; `scale` undoes DDP's gradient mean when those counts are global.
        `teacher` is `teacher_outputs(...)` (or {} when no teacher is needed)."""
        kd_normalizer = ce_normalizer = None
        scale = 1.0
        if torch.is_tensor(num_items_in_batch) and num_items_in_batch.numel() == 3:
            kd_normalizer, ce_normalizer = num_items_in_batch[0], num_items_in_batch[1]
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                scale = float(self.args.world_size)
        labels, mask = inputs.get("labels"), self.distill_mask(inputs)
        teacher_logits = teacher.get("logits")
        ce_count = None
        if self.args.pseudo_label_threshold is not None:
            candidates = self.pseudo_label_candidates(inputs)
            # As get_batch_samples counts: labelled positions plus every candidate, confident or not. The logged
            # ce_loss divides by the same count, so that it is the term being trained.
            ce_count = candidates.sum() + (labels.ne(IGNORE_INDEX).sum() if labels is not None else 0)
            ce_normalizer = ce_count if ce_normalizer is None else ce_normalizer
            labels = pseudo_labels(labels, teacher["confidence_logits"], candidates, self.args.pseudo_label_threshold)

        def objective(student_logits, weight):
            parts = distillation_objective(
                student_logits, teacher_logits, labels, mask, alpha=weight, temperature=temperature,
                distill_loss=self.args.distill_loss, teacher_labels=self.args.teacher_labels,
                kd_normalizer=kd_normalizer, ce_normalizer=ce_normalizer,
                label_smoothing=self.args.label_smoothing_factor,
            )
            return parts if ce_count is None or weight >= 1 else parts._replace(ce_count=ce_count)

        return objective, scale

    # ---- feature distillation ------------------------------------------------------------------------------

    def _setup_features(self) -> None:
        """Layer map, head-count and dropout checks, and the projection when hidden sizes differ."""
        if self.teacher_model is None:
            raise ValueError(
                "Hidden-state and attention distillation compare the student with an online teacher's internals, and "
                "a teacher cache holds logits only: pass `teacher_model`, or set `hidden_distill_weight=0` and "
                "`attention_distill_weight=0`."
            )
        count = len(self.teacher_models)
        if self.args.feature_teacher >= count:
            raise ValueError(
                f"`feature_teacher={self.args.feature_teacher}` names a teacher that is not there: `teacher_model` "
                f"holds {count} teacher(s), so it must be in 0..{count - 1}."
            )
        if self.args.adversarial != "none":
            raise ValueError(
                "Feature distillation (`hidden_distill_weight`/`attention_distill_weight`) is not combined with "
                "`adversarial` training; use one or the other."
            )
        student = self._unwrap(self.model).config
        teacher = self._unwrap(self.teacher_models[self.args.feature_teacher]).config
        for role, config in (("student", student), ("teacher", teacher)):
            if getattr(config, "is_encoder_decoder", False):
                raise ValueError(
                    f"Hidden-state and attention distillation match the layers of an encoder (its `hidden_states` and "
                    f"`attentions`), but the {role} is an encoder-decoder model ({config.model_type}), whose outputs "
                    "split them into encoder and decoder parts that hf-distill does not match. Distil its logits "
                    "alone: set `hidden_distill_weight=0` and `attention_distill_weight=0`."
                )
        self._layer_map = parse_layer_map(self.args.feature_layer_map, student.num_hidden_layers,
                                          teacher.num_hidden_layers)
        self._attention_map = self._layer_map
        if not self.args.feature_layer_map:  # a cut student's layers keep their own teacher layer's attention
            self._attention_map = cut_layer_map(student, teacher.num_hidden_layers) or self._layer_map
        if self.args.attention_distill_weight > 0:
            if any(s == 0 or t == 0 for s, t in self._attention_map.items()):
                raise ValueError("Attention distillation matches layers 1..N; `feature_layer_map` pairs layer 0 (the "
                                 "embeddings, which have no attention). Drop the 0 pairs.")
            if student.num_attention_heads != teacher.num_attention_heads:
                raise ValueError(
                    f"Attention distillation compares attention maps head by head, but the student has "
                    f"{student.num_attention_heads} heads and the teacher {teacher.num_attention_heads}. Give the "
                    "student the teacher's head count, or use `hidden_distill_weight` alone."
                )
            name = attention_dropout_field(student)
            dropout = getattr(student, name, 0.0) or 0.0 if name is not None else 0.0
            if name is None:
                logger.warning(
                    "Attention distillation needs a student that does not drop attention probabilities in training, "
                    "but hf-distill cannot check this one: its config (%s) has none of the attention-dropout fields "
                    "it knows (%s). Make sure that the student's attention dropout is off.",
                    getattr(student, "model_type", type(student).__name__), ", ".join(ATTENTION_DROPOUT_FIELDS))
            if dropout > 0:
                raise ValueError(
                    f"Attention distillation compares attention distributions, but the student drops attention "
                    f"probabilities in training (`{name}={dropout}`), so its maps are not distributions. Load the "
                    f"student with `{name}=0.0` (`{type(self._unwrap(self.model)).__name__}.from_pretrained(..., "
                    f"{name}=0.0)`, or `create_student(teacher, layers, {name}=0.0)` for a student cut from the "
                    "teacher)."
                )
        if self.args.hidden_distill_weight > 0 and student.hidden_size != teacher.hidden_size:
            if self.is_deepspeed_enabled:
                raise ValueError(
                    f"Hidden-state distillation between hidden sizes {student.hidden_size} (student) and "
                    f"{teacher.hidden_size} (teacher) trains a projection outside the student, which the DeepSpeed "
                    "engine neither optimises under its own optimizer config nor restores on resume. Use DDP or FSDP "
                    "(`accelerate launch` without DeepSpeed), or a student with the teacher's hidden size."
                )
            self.feature_projector = FeatureProjector(student.hidden_size, teacher.hidden_size,
                                                      list(self._layer_map)).to(self.args.device)

    def feature_mask(self, inputs: dict[str, Any]) -> torch.Tensor:
        """(B, L) bool: the real tokens whose hidden states and attention rows are compared."""
        input_ids = inputs["input_ids"]
        return inputs.get("attention_mask", torch.ones_like(input_ids)).bool()

    def _add_feature_losses(self, parts, outputs, teacher, inputs, num_items_in_batch):
        """`(parts, ratios)`: `parts` with the weighted hidden-state and attention terms added to its loss, and the
        `(name, sum, count)` of each term, logged once the batch is known to be finite."""
        mask = self.feature_mask(inputs)
        normalizer = None
        if torch.is_tensor(num_items_in_batch) and num_items_in_batch.numel() == 3:
            normalizer = num_items_in_batch[2].clamp_min(1)
        loss, ratios = parts.loss, []
        a = self.args
        if a.hidden_distill_weight > 0:
            total, count = hidden_state_loss(_feature_outputs(outputs, "hidden_states", "student"),
                                             teacher["hidden_states"], self._layer_map, mask,
                                             kind=a.hidden_distill_loss, projector=self.feature_projector)
            loss = loss + a.hidden_distill_weight * total / (count.clamp_min(1) if normalizer is None else normalizer)
            ratios.append(("hidden_loss", total, count))
        if a.attention_distill_weight > 0:
            total, count = attention_kl(_feature_outputs(outputs, "attentions", "student"), teacher["attentions"],
                                        self._attention_map, mask)
            loss = loss + a.attention_distill_weight * total / (
                count.clamp_min(1) if normalizer is None else normalizer)
            ratios.append(("attention_loss", total, count))
        return parts._replace(loss=loss), ratios

    def create_optimizer(self, model=None):
        """The stock optimizer, plus the feature projection (when there is one) as its own parameter group."""
        optimizer = super().create_optimizer(model)
        if self.feature_projector is not None and not any(
            p is q for group in optimizer.param_groups for p in group["params"]
            for q in self.feature_projector.parameters()
        ):
            if self.lr_scheduler is not None:
                raise ValueError(
                    "Hidden-state distillation trains a projection from the student's hidden size to the teacher's "
                    "(`trainer.feature_projector`) with the student, but the optimizer you passed does not hold its "
                    "parameters, and the learning-rate scheduler you passed was built without them. Pass the "
                    "optimizer alone, `optimizers=(optimizer, None)`: the projection joins it as a parameter group and "
                    "Trainer builds the scheduler (`lr_scheduler_type`) over every group."
                )
            optimizer.add_param_group({"params": list(self.feature_projector.parameters()),
                                       "weight_decay": self.args.weight_decay})
        return optimizer

    # ---- the feature projection's gradients ------------------------------------------------------------------

    def _average_projector_grads(self) -> None:
        """Average the projection's gradients across processes, once per optimizer step (DDP does the student's)."""
        import torch.distributed as dist

        if self._projector_grads_averaged:
            return
        self._projector_grads_averaged = True
        if self.args.world_size > 1 and dist.is_available() and dist.is_initialized():
            for param in self.feature_projector.parameters():
                # A process whose batch was skipped has no gradient here (its zero-weighted loss does not reach the
                # projection): it contributes zeros, and every process enters the same collectives.
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
                dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
                param.grad /= dist.get_world_size()

    def _clips_projector(self, model) -> bool:
        """Whether the projection joins the student's gradient norm: on one device and under DDP. DeepSpeed and FSDP
        clip inside their own engines, which do not hold the projection."""
        mixed_mesh = getattr(self, "_has_mixed_mesh_grads", None)
        return self.feature_projector is not None and not (
            self.is_deepspeed_enabled or self.is_fsdp_enabled or (mixed_mesh is not None and mixed_mesh(model)))

    def _clip_grad_norm(self, model):
        """Trainer clips `model.parameters()` to `max_grad_norm`; the feature projection, trained with them, is
        clipped with them under one global norm (which is also the logged `grad_norm`)."""
        if not self._clips_projector(model):
            return super()._clip_grad_norm(model)
        self._average_projector_grads()
        parameters = [*model.parameters(), *self.feature_projector.parameters()]
        return self.accelerator.clip_grad_norm_(parameters, self.args.max_grad_norm)

    def _get_grad_norm(self, model, grad_norm=None):
        if grad_norm is None and self._clips_projector(model):
            self._average_projector_grads()
            parameters = [*model.parameters(), *self.feature_projector.parameters()]
            grad_norm = self.accelerator.clip_grad_norm_(parameters, float("inf"))
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    # ---- augmentation ----------------------------------------------------------------------------------------

    def augment(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """A copy of the batch with masked / replaced tokens (`augment_*_prob`). The cache index is dropped, so the
        teacher labels the augmented input online."""
        input_ids = inputs["input_ids"]
        tokenizer = self.processing_class
        new_ids = augment_input_ids(
            input_ids, _real_tokens(inputs, self._special_ids), mask_prob=self.args.augment_mask_prob, replace_prob=self.args.augment_replace_prob,
            mask_token_id=getattr(tokenizer, "mask_token_id", None),
            vocab_size=self._unwrap(self.model).config.vocab_size,
            generator=self._augment_generator, replacement_ids=self._replacement_ids,
        )
        return {**{k: v for k, v in inputs.items() if k not in (CACHE_INDEX_COLUMN, TEACHER_LOGITS_KEY)},
                "input_ids": new_ids}

    # ---- adversarial training ------------------------------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not self.teacher_view and TEACHER_VIEW_KEYS[0] in inputs:
            # An iterable training set shows its teacher view only in its batches: the checks made at init for a
            # map-style one run on the first batch instead, and the model card will say the student read noisy text.
            _check_teacher_view(self.task, self.args, self.teacher_cache, self.processing_class)
            self.teacher_view = True
        skipped = self.skipped_batches
        loss = self._training_step(model, inputs, num_items_in_batch)
        if self.skipped_batches != skipped and self.accelerator.num_processes == 1 and self.is_deepspeed_enabled:
            # One process under DeepSpeed: a skipped batch back-propagated a zero-weighted loss (its engine steps in
            # `backward`), whose gradients are zeros, except that a NaN inside the student's own forward still reaches
            # them (0 * NaN). Elsewhere a single process skips that backward (`_skipped_batch_loss`); with several, the
            # last micro-batch's gradients are already all-reduced, and the README says what that means.
            for param in model.parameters():
                if param.grad is not None:
                    param.grad.nan_to_num_(0.0, 0.0, 0.0)
        return loss

    def _training_step(self, model, inputs, num_items_in_batch=None):
        if self._augment_generator is not None:
            inputs = self.augment(inputs)
        if self._attack is None or self.state.global_step < self.args.adv_start_step:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()  # as Trainer's step does: schedule-free optimizers have an eval mode
        inputs = self._prepare_inputs(inputs)
        model_inputs = self._student_inputs(inputs, drop=("input_ids",))
        input_ids = inputs["input_ids"]
        alpha, temperature = self.current_alpha, self.current_temperature
        # The teacher sees the clean input once; every perturbed pass is compared with these targets.
        needs_teacher = alpha > 0 or self.args.adv_objective != "ce" or self.args.pseudo_label_threshold is not None
        with self.compute_loss_context_manager():  # as Trainer runs compute_loss (a subclass may autocast here)
            teacher = self.teacher_outputs(inputs) if needs_teacher else {}
        teacher_logits = teacher.get("logits")
        objective, scale = self._objective(inputs, teacher, alpha, temperature, num_items_in_batch)
        distilled = self.distill_mask(inputs)
        if teacher_logits is not None and not torch.isfinite(teacher_logits[distilled]).all():
            # As compute_loss skips a batch: reported once, and a zero-weighted backward keeps DDP in step.
            zero = teacher_logits.new_zeros(())
            self._handle_nonfinite(DistillationLoss(zero, zero, zero, zero, zero), teacher_logits, distilled)
            if self._keeps_processes_in_step():
                with self.compute_loss_context_manager():
                    logits = model(input_ids=input_ids, **model_inputs)["logits"]
                self.accelerator.backward(zero_weighted_loss(logits))
            else:
                self.accelerator.backward(zero_parameter_loss(model))
            return zero
        adv_alpha = {"kd": 1.0, "ce": 0.0, "both": alpha}[self.args.adv_objective]
        base = self._unwrap(model)
        self._check_embedding_path(model, input_ids, model_inputs, base)  # δ = 0 must be the ordinary forward
        special = None if self.args.adv_perturb_special_tokens else self._special_ids.to(input_ids.device)
        mask = perturbation_mask(input_ids, model_inputs.get("attention_mask"), special)

        def forward(delta):
            with self.compute_loss_context_manager():
                embeds = embed_inputs(base, input_ids)
                return model(inputs_embeds=embeds + delta.to(embeds.dtype), **model_inputs)["logits"]

        def backward(loss):
            self.accelerator.backward(loss * scale)

        def on_nonfinite():
            self._report_nonfinite(
                f"Non-finite adversarial loss at step {self.state.global_step + 1}",
                "Lower `adv_epsilon` or `adv_step_size`, or delay the attack with `adv_start_step`",
            )

        def sync(last):
            # Trainer already suppresses sync on micro-batches before the last; within the step only the final
            # pass may all-reduce.
            return contextlib.nullcontext() if last else self.accelerator.no_sync(model)

        # A skipped batch must add no gradient, but FGM/PGD's clean pass (and FreeLB's earlier passes) are
        # back-propagated before a later pass can turn out non-finite: keep what the gradients held before this
        # micro-batch (nothing at the first micro-batch of a step; a copy under gradient accumulation).
        params = [p for p in model.parameters() if p.requires_grad]
        copy = self.args.nonfinite_policy == "skip" and any(p.grad is not None for p in params)
        held = [None if p.grad is None else p.grad.detach().clone() for p in params] if copy else None

        def discard():
            for i, param in enumerate(params):
                if param.grad is not None:
                    if held is None or held[i] is None:
                        param.grad.zero_()
                    else:
                        param.grad.copy_(held[i])

        step = adversarial_backward(
            self._attack, shape=(*input_ids.shape, self._embedding_width(base, input_ids)), device=input_ids.device,
            mask=mask,
            forward=forward, clean_objective=lambda logits: objective(logits, alpha),
            adversarial_objective=lambda logits: objective(logits, adv_alpha), backward=backward, sync=sync,
            on_nonfinite=on_nonfinite, adv_weight=self.args.adv_weight, generator=self._attack_generator,
            same_objectives=adv_alpha == alpha, discard=discard, grad_scale=self._loss_scale(),
            keep_in_step=self._keeps_processes_in_step(),
        )
        if step.skipped and not self._keeps_processes_in_step():
            self.accelerator.backward(zero_parameter_loss(model))
        if not step.skipped:  # a skipped step was counted by on_nonfinite and has nothing to log
            # FreeLB has no clean pass: its logged parts, and so its alpha, are those of the adversarial objective.
            self._window.add(step.clean, temperature, adv_alpha if self._attack.method == "freelb" else alpha,
                             self._step_share())
            self._window.add_objective("adv_loss", step.adversarial, adv_alpha)
            norms = step.delta_norms  # a mean over examples, however the batch was split into micro-batches
            self._window.add_ratio("adv_delta_norm", norms.sum(), norms.new_tensor(float(norms.numel())))
        empty_cache_every = self.args.torch_empty_cache_steps
        if empty_cache_every is not None and self.state.global_step % empty_cache_every == 0:
            clear_device_cache()  # as Trainer.training_step does
        return (step.loss * scale).detach()

    @staticmethod
    def _embedding_width(base: nn.Module, input_ids: torch.Tensor) -> int:
        """H of the word embeddings, from one lookup: an adapter's embedding layer (PEFT's LoRA `Embedding`) need
        not carry `embedding_dim`."""
        with torch.no_grad():
            return embed_inputs(base, input_ids[:1, :1]).shape[-1]

    def _loss_scale(self) -> float:
        """The AMP grad scaler's current scale (fp16), else 1: the attack's input gradients are taken at that scale so
        that they do not underflow in half precision."""
        scaler = getattr(self.accelerator, "scaler", None)
        return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0

    # ---- logging ----------------------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # every process logs a training step, and takes part in the window's one reduce
            a = self.args
            ratios = [n for n, w in (("hidden_loss", a.hidden_distill_weight), ("attention_loss",
                                                                              a.attention_distill_weight)) if w > 0]
            adversarial = ["adv_loss"] if self._attack is not None else []
            ratios += ["adv_delta_norm"] if adversarial else []
            window = self._window
            logs.update(window.averages(self.accelerator, ratios, adversarial))
            trained, skipped = window.reduced_shares
            if skipped:  # Trainer counted each skipped batch as a loss of 0, in a mean over optimizer steps
                logs["loss"] = logs["loss"] * (trained + skipped) / trained if trained else float("nan")
            self._run_shares[0] += trained  # over every process, as Trainer's loss is
            self._run_shares[1] += skipped
            self._run_skipped += window.reduced_skipped
            self._window = _LossWindow()
        if self._closing_run and "train_loss" in logs:  # the run's closing metrics (every process logs them)
            window = self._window
            # The steps since the last log: Trainer adds this process's own loss for them, never gathered.
            own_tail = float(getattr(self, "_tr_loss", 0.0))
            tail = torch.tensor([window.skipped, window.trained_share, window.skipped_share, own_tail],
                                dtype=torch.float32, device=self.accelerator.device)
            if self.accelerator.num_processes > 1:
                tail = self.accelerator.reduce(tail, reduction="sum")
            skipped = self._run_skipped + round(float(tail[0]))
            trained_share, skipped_share = self._run_shares[0] + float(tail[1]), self._run_shares[1] + float(tail[2])
            if skipped + self._skipped_before_resume:  # the whole run's count, as `skipped_batches` carries it
                logs["skipped_batches"] = skipped + self._skipped_before_resume
            if skipped:  # Trainer's train_loss covers this train() call only
                # Trainer's total, its logged windows (gathered means) plus this process's tail, made the sum over
                # every (process, step) and divided by the steps trained: a skip on another process in the tail
                # must not rescale this process's loss.
                processes = self.accelerator.num_processes
                total = logs["train_loss"] * (trained_share + skipped_share) / processes
                total = processes * (total - own_tail) + float(tail[3])
                logs["train_loss"] = total / trained_share if trained_share else float("nan")
        super().log(logs, start_time)

    def hyperparameter_search(self, *args, **kwargs):
        """Not supported: Trainer's search re-creates the model from `model_init` for each trial, and the teacher is
        checked against one student at init."""
        raise RuntimeError(  # the error Trainer's own search gives without `model_init`
            "`hyperparameter_search` is not supported by DistillationTrainer: it needs `model_init`, and the teacher is "
            "checked against one student at init. Run the search yourself, with a new DistillationTrainer (and a new "
            "student) per trial, e.g. inside an Optuna objective that returns `trainer.evaluate()[...]`."
        )

    def _finalize_training(self, trial, num_train_samples, start_time):
        # Trainer logs the run's metrics (corrected in `log` for skipped batches) and returns its own train_loss. Only
        # that log is corrected: an `evaluate(metric_key_prefix="train")` logs a `train_loss` of its own.
        self._closing_run = True
        try:
            output = super()._finalize_training(trial, num_train_samples, start_time)
        finally:
            self._closing_run = False
        return TrainOutput(output.global_step, output.metrics.get("train_loss", output.training_loss), output.metrics)


    # ---- saving and the model card ------------------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the student (never the teacher) with its model card, as `Trainer.save_model` does, but atomically:
        everything is written to a staging folder inside `output_dir` and moved in only once complete, so an error
        or a kill while saving never leaves a half-written model over a good one. (Inside, not beside: `output_dir`
        may be a mount point or sit in a folder the run cannot write to. Its `_` name keeps it out of
        `push_to_hub`'s upload.)"""
        output_dir = output_dir or self.args.output_dir
        staging = os.path.join(output_dir, STAGING_FOLDER)
        if self.args.should_save and os.path.isdir(staging):
            shutil.rmtree(staging)  # left by an earlier save that was killed
        try:
            with self._full_state_dict():
                # An internal call: Trainer's would push from inside the save, and its push saves again, over this
                # staging folder. The push comes below, once the save is in place.
                super().save_model(staging, _internal_call=True)
            if self.args.should_save:
                self.create_model_card(output_dir=staging)
                written = set(os.listdir(staging))
                move_into(staging, output_dir)
                stale = remove_stale_weights(output_dir, written)
                if stale:
                    logger.info("Removed weight files of an earlier save from %s: %s", output_dir, ", ".join(stale))
        finally:
            if self.args.should_save and os.path.isdir(staging):
                shutil.rmtree(staging, ignore_errors=True)
        if self.args.push_to_hub and not _internal_call:  # as Trainer.save_model does when a user calls it
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    @contextlib.contextmanager
    def _full_state_dict(self):
        """Under FSDP with sharded state dicts (the usual setting for checkpoints), `Trainer.save_model` writes no
        weights at all: the student is gathered whole for the save instead, and the plugin's setting restored after
        (the resumable sharded checkpoint files are written apart from this)."""
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
        if not self.is_fsdp_enabled or plugin is None or "FULL_STATE_DICT" in str(plugin.state_dict_type):
            yield
            return
        saved = (plugin.state_dict_type, plugin.state_dict_config, plugin.optim_state_dict_config)
        plugin.state_dict_config = plugin.optim_state_dict_config = None  # rebuilt for FULL_STATE_DICT
        plugin.set_state_dict_type("FULL_STATE_DICT")
        try:
            yield
        finally:
            plugin.state_dict_type, plugin.state_dict_config, plugin.optim_state_dict_config = saved

    def _cache_description(self) -> str | None:
        """The card's row for a teacher-logit cache: whether the soft targets were exact."""
        cache = self.teacher_cache
        if cache is None:
            return None
        stored = "every logit (fp16)" if cache.exact else (
            f"the top {cache.top_k} of {cache.num_labels} logits and the tail mass (approximate soft targets)")
        return f"cached: {stored}"  # not where: a local path means nothing on the Hub

    def _student_origin(self) -> tuple[str | None, tuple[str, list[int], int] | None]:
        """Where the student's weights came from, for the card: the checkpoint it was loaded from, or, for a student
        `create_student` cut, `(the model it cut, the layers kept, that model's depth)`."""
        student = self._unwrap(self.model)
        start = name_of(student, default="")
        if start:
            return start, None
        base = _base(student)
        layers = getattr(getattr(base, "config", None), "cut_from_teacher_layers", None)
        if layers:
            return None, (getattr(base, CUT_FROM, ""), list(layers), base.config.cut_from_teacher_depth)
        return None, None

    def _optimizer_rates(self) -> tuple[str, list[float]] | None:
        """The optimizer's class and its learning rates (as set, before any schedule), once there is one."""
        optimizer = self.optimizer
        if optimizer is None:
            return None
        inner = getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper
        rates = sorted({float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups})
        return type(inner).__name__, rates

    def _teacher_params(self, teacher: nn.Module | None) -> int | None:
        """The card's teacher size: that teacher's parameters, or every teacher's for an ensemble."""
        if teacher is None:
            return None
        if len(self.teacher_models) > 1:
            return sum(p.numel() for t in self.teacher_models for p in self._unwrap(t).parameters())
        return sum(p.numel() for p in teacher.parameters())

    def _used_layer_maps(self) -> dict[str, dict[int, int]]:
        """The layer pairs feature distillation compared, per kind, for the model card."""
        maps = {}
        if self.args.hidden_distill_weight > 0:
            maps["hidden-state"] = dict(self._layer_map)
        if self.args.attention_distill_weight > 0:
            maps["attention"] = dict(self._attention_map)
        return maps

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        output_dir: str | None = None,
    ) -> None:
        """Write README.md, the distillation model card, into `output_dir` (default `args.output_dir`).

        The arguments are those of `Trainer.create_model_card`; `tasks` is accepted for compatibility and not used,
        `dataset_tags` are Hub dataset ids for the `datasets` metadata, and `dataset_args` is the dataset's
        configuration (`"mrpc"` of `"glue"`). Several datasets (`dataset=["conll2003", "wikiann"]`) are all named on
        the card, each with its configuration when `dataset_args` is a list of the same length; `dataset` and
        `dataset_args` set `trainer.dataset_name` and `trainer.dataset_config_name`.
        `finetuned_from` overrides the teacher's name on the card. No
        `license` is declared unless one is given (`push_to_hub(license="...")` passes it here): a student's terms
        follow from its teacher's and its training data's.

        What is given here is kept: the cards that later saves write (a checkpoint, `save_model`) carry the same
        license, language, tags, name and datasets, rather than publishing a card without them.
        """
        given = {"language": language, "license": license, "tags": tags, "model_name": model_name,
                 "finetuned_from": finetuned_from, "dataset_tags": dataset_tags}
        self._card_metadata.update({key: value for key, value in given.items() if value is not None})
        if dataset is not None:  # the data named here is the run's, for every later card too
            self.dataset_name, self.dataset_config_name = dataset, dataset_args
        elif dataset_args is not None:
            self.dataset_config_name = dataset_args
        if not self.is_world_process_zero():
            return
        meta = self._card_metadata
        teacher = self._unwrap(self.teacher_model) if self.teacher_model is not None else None
        teacher_name = display_name(name_of(teacher, default="")) if teacher is not None else ""
        if len(self.teacher_models) > 1:
            # (`model_name` is the card argument)
            names = [display_name(name_of(self._unwrap(t))) for t in self.teacher_models]
            teacher_name = f"an ensemble ({self.args.teacher_ensemble}) of " + ", ".join(names)
        if self.args.self_distillation == "ema":
            teacher_name = f"itself (EMA teacher, decay {self.args.ema_decay})"
            teacher = None
            if self.original_teacher is not None:  # a model a report scores as the teacher (the recipes' start)
                # Not "the student started from it": the card cannot tell (a student cut from a pretrained base of
                # the same depth looks the same), and the recipes also start the student from --model_name_or_path.
                teacher = self._unwrap(self.original_teacher)
                start = display_name(name_of(teacher, default="")) or "an unnamed model"
                teacher_name = (f"itself (EMA teacher, decay {self.args.ema_decay}; {start} is the teacher of the size "
                                "and evaluation tables)")
        teacher_params = self._teacher_params(teacher)
        cache = self.teacher_cache
        if not teacher_name and cache is not None:  # the teacher that built the cache, as it recorded it
            teacher_params = cache.teacher_parameters
            teacher_name = (f"{display_name(cache.teacher_name)}, its logits read from a cache" if cache.teacher_name
                            else f"cached logits ({cache.path.name})")  # unnamed: the cache's folder, not its path
        if self.generations > 1 and self.original_teacher is not None:
            teacher = self._unwrap(self.original_teacher)
            teacher_name = display_name(getattr(teacher.config, "_name_or_path", "")) or "unnamed"
            teacher_params = self._teacher_params(teacher)
        student_start, cut_from = self._student_origin()
        tags = meta.get("tags")
        card = build_model_card(
            task=self.task,
            teacher=meta.get("finetuned_from") or teacher_name or "unknown teacher",
            args=self.args,
            # the repository's name, as `Trainer.push_to_hub` gives it
            model_name=meta.get("model_name") or (self.args.hub_model_id or "").split("/")[-1]
            or os.path.basename(os.path.abspath(self.args.output_dir)),
            dataset=self.dataset_name,
            dataset_config=self.dataset_config_name,
            dataset_tags=meta.get("dataset_tags"),
            data_splits=self.data_splits,
            student_params=sum(p.numel() for p in self._unwrap(self.model).parameters()),
            teacher_params=teacher_params,
            student_start=student_start,
            cut_from=cut_from,
            optimizer=self._optimizer_rates(),
            changed_at_resume=self._resumed_changes,
            evaluation=self.evaluation_report,
            license=meta.get("license"),
            tags=[tags] if isinstance(tags, str) else tags,
            language=meta.get("language"),
            teacher_view=self.teacher_view,
            noisy_view=self.noisy_view,
            layer_maps=self._used_layer_maps(),
            generations=self.generations,
            adapter_of=_adapter_base(self._unwrap(self.model)),
            cached_logits=self._cache_description(),
            steps_trained=self._model_step if self._model_step is not None else self.state.global_step,
            planned_steps=self.state.max_steps or None,
            train_batch_size=self._ran_batch_size(),
        )
        directory = output_dir or self.args.output_dir
        atomic_write_text(os.path.join(directory, "README.md"), str(card))

    @property
    def evaluation_report(self) -> dict[str, Any] | None:
        """What the model card's evaluation table shows: `{"student": {metric: value}, "teacher": {...}, "speed":
        {...}}`, or the student's metrics alone as `trainer.evaluate()` returns them. Checked when set, so that a
        report the card cannot show is refused here, not dropped at a save."""
        return self._evaluation_report

    @evaluation_report.setter
    def evaluation_report(self, report: dict[str, Any] | None) -> None:
        self._evaluation_report = None if report is None else evaluation_by_model(report)

    def _ran_batch_size(self) -> int | None:
        """The per-device batch size that trained, where `auto_find_batch_size` lowered it; else None."""
        ran = getattr(self.state, "train_batch_size", None)
        if not self.args.auto_find_batch_size or not ran:
            return None
        return ran // max(1, self.args.n_gpu)  # Trainer's batch spans the GPUs of one process (DataParallel)

    # ---- checkpoints and exact resume ------------------------------------------------------------------------

    def _save_checkpoint(self, model, trial):
        """Save as Trainer does, then mark the checkpoint complete; the marker is the last file written. Older
        checkpoints are rotated out (`save_total_limit`) only once this one is complete, so that a kill while saving
        never leaves the run without a checkpoint to resume from."""
        self._trainer_state_saved_in = None  # a second train() may save the same step again: write it anew
        if self.args.should_save:
            # A folder saved again is complete only once rewritten: an earlier save's marker and state file would
            # otherwise vouch for it while its files are half this save's, half the earlier one's.
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            # The trainer-owned state too: this run writes its own, and one it has none of (a projection, an EMA
            # teacher) left from the earlier run would refuse this run's resume as another run's settings.
            for name in (CHECKPOINT_MARKER, "trainer_state.json", PROJECTOR_FILE, EMA_TEACHER_FILE):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(folder, name))
            # Before Trainer's files: its trainer_state.json, written near the end of its save, then vouches for
            # ours too where a path to a checkpoint without a marker is resumed (a stock Trainer checkpoint's rule).
            os.makedirs(folder, exist_ok=True)
            self._save_trainer_owned_state(folder)
        limit = self._rotation_limit = self.args.save_total_limit
        self.args.save_total_limit = None  # Trainer would rotate before the trainer-owned state and the marker
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
            self._rotation_limit = None
        skipped = self._run_skipped_batches()  # every process takes part
        # Each process wrote its own files (its RNG state): the checkpoint is complete once all of them have.
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            run_dir = self._get_output_dir(trial=trial)
            folder = os.path.join(run_dir, f"checkpoint-{self.state.global_step}")
            if os.path.isdir(folder):
                atomic_write_json(os.path.join(folder, CHECKPOINT_MARKER), self._marker(skipped))
            rotate_checkpoints(output_dir=run_dir, save_total_limit=limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)

    @contextlib.contextmanager
    def _arguments_as_given(self):
        """The run's own `save_total_limit` back in `args` while Trainer writes them (`training_args.bin`) inside a
        checkpoint's save, which holds back its rotation by unsetting the limit."""
        held, limit = self.args.save_total_limit, self._rotation_limit
        if limit is not None:
            self.args.save_total_limit = limit
        try:
            yield
        finally:
            self.args.save_total_limit = held

    def _save(self, output_dir: str | None = None, state_dict=None):
        with self._arguments_as_given():
            super()._save(output_dir, state_dict)

    def _marker(self, skipped: int) -> dict[str, Any]:
        """The completion marker's record: the step, the batches skipped so far, and what a resume must find the same
        or say it changed: the distillation settings and the teachers' weights (`_check_resumed_run`)."""
        return {"global_step": self.state.global_step, "skipped_batches": skipped,
                "distillation": distillation_settings(self.args), "teachers": self._teacher_fingerprints(),
                "teacher_source": self._teacher_source(),
                "changed_at_resume": self._resumed_changes}

    def _teacher_fingerprints(self) -> list[str] | None:
        """A fingerprint of each teacher's weights (or of the teacher that built the logit cache), computed once: the
        teachers are frozen. None under EMA self-distillation, whose teacher moves with the student."""
        if self.args.self_distillation == "ema":
            return None
        if self._fingerprints is None:
            if self.teacher_cache is not None and not self.teacher_models:
                self._fingerprints = [self.teacher_cache.fingerprint["teacher"]]
            else:
                self._fingerprints = [teacher_fingerprint(self._unwrap(t)) for t in self.teacher_models]
        return self._fingerprints

    def _teacher_source(self) -> str:
        return "cache" if self.teacher_cache is not None and not self.teacher_models else "online"

    def _check_resumed_run(self, checkpoint: str, marker: dict[str, Any]) -> None:
        """Resuming with other teachers is refused: the steps to come would learn from another model than the steps
        behind the checkpoint did. Changed distillation settings are allowed (as Trainer allows another learning
        rate) but named, in a warning and on the model card, which would otherwise describe the whole run by the
        new ones."""
        saved, before = marker.get("teachers"), marker.get("distillation") or {}
        # A teacher cast to another precision has other bytes: a changed `teacher_dtype` is named below, not refused
        # here, and a cast online teacher cannot be compared with the cache's record of the teacher it read.
        recast = before.get("teacher_dtype", self.args.teacher_dtype) != self.args.teacher_dtype or (
            marker.get("teacher_source", "online") != self._teacher_source() and self.args.teacher_dtype != "auto")
        if saved is not None and not recast and self._teacher_fingerprints() not in (None, saved):
            raise ValueError(
                f"{checkpoint} was trained with another teacher than this run's (the fingerprints of the teachers' "
                "weights differ): resuming would go on distilling from a model that the steps behind it did not learn "
                "from. Resume with the teacher (or the teacher-logit cache) it was trained with; to go on from its "
                "weights with this teacher, start a new run from them instead (`model=AutoModelFor...from_pretrained("
                f"{checkpoint!r})`, no `resume_from_checkpoint`)."
            )
        self._resumed_changes = list(marker.get("changed_at_resume", []))  # earlier resumes' changes carry on
        now = distillation_settings(self.args)
        changed = {name: [before[name], now[name]] for name in now if name in before and before[name] != now[name]}
        if changed:
            step = marker.get("global_step", "?")
            self._resumed_changes.append([step, changed])
            logger.warning(
                "Resuming from %s (step %s) with distillation settings that differ from those it was trained with: "
                "%s. The steps from here on use the new ones; the model card records the change.", checkpoint, step,
                "; ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changed.items()))

    def _run_skipped_batches(self) -> int:
        """The batches skipped so far on every process, those of the checkpoint this run resumed from included
        (`skipped_batches` counts this process's own, on top of the resumed checkpoint's count)."""
        since_resume = self.skipped_batches - self._skipped_before_resume
        if self.accelerator.num_processes > 1:
            count = torch.tensor(since_resume, device=self.accelerator.device)
            since_resume = int(self.accelerator.reduce(count, reduction="sum"))
        return self._skipped_before_resume + since_resume

    def _save_trainer_owned_state(self, folder: str) -> None:
        """The feature projection and the EMA teacher, which a resume needs; written once per checkpoint."""
        if self._trainer_state_saved_in == (folder, self.state.global_step):
            return
        if self.feature_projector is not None:
            torch.save(self.feature_projector.state_dict(), os.path.join(folder, PROJECTOR_FILE))
        if self.args.self_distillation == "ema":
            torch.save(self._unwrap(self.teacher_model).state_dict(), os.path.join(folder, EMA_TEACHER_FILE))
        self._trainer_state_saved_in = (folder, self.state.global_step)

    def push_to_hub(self, *args, **kwargs):
        """`Trainer.push_to_hub`, refused before anything is uploaded when a teacher-logit cache lies inside the
        folder it uploads whole."""
        if self.teacher_cache is not None:
            _refuse_cache_in_pushed_folder(self.teacher_cache, self.args, pushing=True)
        _refuse_teacher_in_output_dir([self._unwrap(t) for t in self.teacher_models if self.args.self_distillation
                                       != "ema"], self.args.output_dir, pushing=True)
        return super().push_to_hub(*args, **kwargs)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Trainer uploads a checkpoint (hub_strategy "checkpoint" / "all_checkpoints") from inside its save, before
        `_save_checkpoint` returns: write the trainer-owned state and the completion marker first, so that the pushed
        copy resumes as the local one does (with the count of skipped batches the marker carries). Every process
        comes here (Trainer pushes from the main one), so the count is summed and the files of all are written by
        then; `_save_checkpoint` writes the marker again once it returns."""
        skipped = self._run_skipped_batches()
        self.accelerator.wait_for_everyone()
        if self.args.should_save and os.path.isdir(checkpoint_folder):
            self._save_trainer_owned_state(checkpoint_folder)
            atomic_write_json(os.path.join(checkpoint_folder, CHECKPOINT_MARKER), self._marker(skipped))
            card = os.path.join(checkpoint_folder, "README.md")
            if self.args.hub_strategy != HubStrategy.END and os.path.isfile(card):
                # Trainer uploads the output folder with the checkpoint's weights copied in, but not its card: the
                # repo would hold a student with no card (or an older one) until the end of training.
                shutil.copy(card, os.path.join(self.args.output_dir, "README.md"))
        with self._arguments_as_given():
            super()._push_from_checkpoint(checkpoint_folder)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Load the student as Trainer does, then the trainer-owned state: the feature projection and the EMA
        teacher."""
        if self.feature_projector is None and os.path.isfile(os.path.join(resume_from_checkpoint, PROJECTOR_FILE)):
            raise ValueError(_other_projection(resume_from_checkpoint, "this run has none"))
        marker, record = os.path.join(resume_from_checkpoint, CHECKPOINT_MARKER), None
        if os.path.isfile(marker):
            with open(marker, encoding="utf-8") as handle:
                record = json.load(handle)
            self._check_resumed_run(resume_from_checkpoint, record)  # before any weight is loaded
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if record is not None:  # the count of skipped batches carries on
            self.skipped_batches = self._skipped_before_resume = record.get("skipped_batches", 0)
        self._load_trainer_owned_state(resume_from_checkpoint)

    def _load_best_model(self):
        """`load_best_model_at_end`: the student as Trainer loads it, and the projection and EMA teacher of the same
        checkpoint, so that the trainer's state stays one step's."""
        super()._load_best_model()
        self._load_trainer_owned_state(self.state.best_model_checkpoint)
        self._model_step = self.state.best_global_step  # the card describes the training of the weights it ships

    def _load_trainer_owned_state(self, folder: str) -> None:
        """The feature projection and the EMA teacher saved in checkpoint `folder` (those this run has)."""
        for module, name in ((self.feature_projector, PROJECTOR_FILE), (
                self._unwrap(self.teacher_model) if self.args.self_distillation == "ema" else None,
                EMA_TEACHER_FILE)):
            if module is None:
                continue
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                raise ValueError(
                    f"{folder!r} has no {name}, which this run needs to continue exactly: it was saved by a run "
                    "without the same feature-distillation / self-distillation settings, or its save was cut short. "
                    "Resume with the settings of the run that wrote it from a complete checkpoint, or start a new run."
                )
            # On the CPU: load_state_dict copies onto the module's device. (Under several CPU processes
            # `args.device` is "cpu:0", which torch.load cannot map storages to.)
            state = torch.load(path, map_location="cpu", weights_only=True)
            if module is self.feature_projector and _shapes(state) != _shapes(module.state_dict()):
                raise ValueError(_other_projection(folder, "this run's differs (another layer map or model sizes)"))
            module.load_state_dict(state)

    def _save_rng_state(self, output_dir):
        super()._save_rng_state(output_dir)
        if self._attack is not None:
            path = os.path.join(output_dir, f"adversarial_rng_state_{self.args.process_index}.pth")
            torch.save(self._attack_generator.get_state(), path)
        if self._augment_generator is not None:
            path = os.path.join(output_dir, f"augment_rng_state_{self.args.process_index}.pth")
            torch.save(self._augment_generator.get_state(), path)

    def _load_rng_state(self, checkpoint):
        super()._load_rng_state(checkpoint)
        if checkpoint is not None and self._augment_generator is not None:
            path = os.path.join(checkpoint, f"augment_rng_state_{self.args.process_index}.pth")
            if os.path.isfile(path):
                self._augment_generator.set_state(torch.load(path, weights_only=True))
        if checkpoint is None or self._attack is None:
            return
        path = os.path.join(checkpoint, f"adversarial_rng_state_{self.args.process_index}.pth")
        if os.path.isfile(path):
            self._attack_generator.set_state(torch.load(path, weights_only=True))
        else:
            logger.warning("%s has no adversarial RNG state: random starts of δ will differ from the first run.",
                           checkpoint)

    def train(self, resume_from_checkpoint: str | os.PathLike | bool | None = None, trial=None,
              ignore_keys_for_eval=None):
        """`Trainer.train`, resuming only from checkpoints that were completely written.

        `resume_from_checkpoint=True` picks the last *complete* checkpoint in `output_dir` (one cut short by a crash
        while saving is skipped with a warning); a path to an incomplete checkpoint is refused.
        """
        # A new run counts its own skipped batches; a resume's checkpoint sets both again.
        self.skipped_batches = self._skipped_before_resume = 0
        if resume_from_checkpoint is True:
            resume_from_checkpoint, incomplete = checkpoint_to_resume(self.args.output_dir)
            for skipped in incomplete:
                logger.warning("%s is incomplete (interrupted while saving) and is skipped.", skipped)
        if isinstance(resume_from_checkpoint, os.PathLike):
            resume_from_checkpoint = os.fspath(resume_from_checkpoint)  # (Trainer's own checks take a str)
        if isinstance(resume_from_checkpoint, str) and os.path.isdir(resume_from_checkpoint):
            # A checkpoint from plain Trainer has no marker but does have its state file, written near the end.
            has_state = os.path.isfile(os.path.join(resume_from_checkpoint, "trainer_state.json"))
            if not is_complete_checkpoint(resume_from_checkpoint) and not has_state:
                inside, _ = last_complete_checkpoint(resume_from_checkpoint)
                if inside is not None:
                    raise ValueError(
                        f"{resume_from_checkpoint!r} is a run's output folder, not a checkpoint. Pass the path of one "
                        f"of its checkpoints (the last complete one is {inside!r}), or `resume_from_checkpoint=True` "
                        "with that folder as `output_dir`."
                    )
                earlier, _ = last_complete_checkpoint(os.path.dirname(os.path.abspath(resume_from_checkpoint)))
                raise ValueError(
                    f"{resume_from_checkpoint!r} is an incomplete checkpoint (the run stopped while saving it). "
                    + (f"Resume from {earlier!r} instead." if earlier else "Start the run again.")
                )
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                             ignore_keys_for_eval=ignore_keys_for_eval)


def _other_projection(folder: str, this_run: str) -> str:
    return (
        f"{folder!r} holds a hidden-state projection ({PROJECTOR_FILE}) and {this_run}: it was saved with other "
        "hidden-state distillation settings (`hidden_distill_weight`, `feature_layer_map`), and its optimizer state "
        "cannot continue without the same projection. Resume with the settings of the run that wrote it, or start a "
        "new run from its weights (`from_pretrained` on the checkpoint folder) without `resume_from_checkpoint`."
    )


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(value.shape) for name, value in state.items()}


def _other_tokenizer(cache: TeacherLogitCache, tokenizer: Any) -> str:
    """The end of a message on rows that do not match the cache's, when the trainer's tokenizer is not the one the
    cache was built with ("" when it is, or when either is unknown)."""
    stored = cache.fingerprint.get("tokenizer")
    is_tokenizer = hasattr(tokenizer, "backend_tokenizer") or hasattr(tokenizer, "get_vocab")
    if stored is None or not is_tokenizer or tokenizer_fingerprint(tokenizer) == stored:
        return ""
    return (" The tokenizer given as `processing_class` is not the one the cache was built with (its vocabulary or "
            "settings differ), which explains the other input ids: tokenize the data with the cache's tokenizer, or "
            "rebuild the cache with this one.")


def _adopt_teacher_label_names(student: nn.Module, names: list[str] | None) -> None:
    """Give a student whose classes are unnamed (`LABEL_0`, ..., what `from_pretrained(base, num_labels=2)` gives)
    the teacher's names: its class i learns the teacher's class i, and the saved student (a `pipeline`'s predictions,
    the Hub widget) should say `positive`, not `LABEL_1`. A student that names its classes was checked against the
    teacher's names instead (`check_label_names`)."""
    config = getattr(_base(student), "config", None)
    if not names or config is None or label_names(student) is not None or len(names) != config.num_labels:
        return
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}
    logger.info("The student's classes had placeholder names (LABEL_0, ...): it takes the teacher's, %s, which its "
                "classes learn in that order, so that the saved student names its predictions.", names)


def _adapter_base(model: nn.Module) -> str | None:
    """For a PEFT model, the name or path of the base model its adapter goes on ("" if unnamed); else None."""
    config = getattr(model, "peft_config", None)
    if not isinstance(config, dict) or not config:
        return None
    active = getattr(model, "active_adapter", None)
    adapter = config.get(active) if isinstance(active, str) else None
    named = getattr(adapter or next(iter(config.values())), "base_model_name_or_path", None)
    base = model.get_base_model() if hasattr(model, "get_base_model") else None
    return named or getattr(getattr(base, "config", None), "_name_or_path", None) or ""


def _real_tokens(inputs: dict[str, Any], skip_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: positions that are neither padding nor one of `skip_ids`."""
    input_ids = inputs["input_ids"]
    mask = inputs.get("attention_mask", torch.ones_like(input_ids)).bool()
    return mask & ~torch.isin(input_ids, skip_ids.to(input_ids.device))


def _keep_float32_modules(model: nn.Module, dtype: torch.dtype) -> None:
    """Return to fp32 the weights that `from_pretrained(dtype=dtype)` keeps in fp32 (`_keep_in_fp32_modules`: T5's
    feed-forward output, which overflows in fp16)."""
    plan = model._get_dtype_plan(dtype) if hasattr(model, "_get_dtype_plan") else {}
    if not plan:
        return
    from transformers.core_model_loading import build_glob_alternation

    kept, _, _ = build_glob_alternation(list(plan))
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        if kept.search(name) and tensor.is_floating_point():
            tensor.data = tensor.data.float()


def _in_own_precision(teacher: nn.Module, mixed_precision: Any, teacher_dtype: str = "auto") -> bool:
    """Whether a teacher runs outside the run's autocast, in its own precision: a half precision other than the mixed
    one (fp16 under a bf16 autocast mixed fp16 weights with bf16 activations, which a CPU refuses, and on a GPU
    overrode `teacher_dtype`), or full precision that `teacher_dtype="float32"` asks for (a teacher whose logits
    overflow fp16). An fp32 teacher left at `"auto"`, or one in the autocast's own precision, runs under the
    autocast."""
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(mixed_precision))
    if amp is None:
        return False
    if teacher_dtype == "float32":
        return True
    own = next(teacher.parameters(), torch.empty(0)).dtype
    return own in (torch.float16, torch.bfloat16) and own != amp


def _check_teacher_sources(args: DistillationArguments, teachers: list, cache: TeacherLogitCache | None) -> None:
    """Exactly one source of teacher outputs, and the settings that source allows."""
    if args.self_distillation == "ema":
        if teachers or cache is not None:
            raise ValueError(
                "`self_distillation='ema'` makes the teacher an average of the student itself; do not pass "
                "`teacher_model` or `teacher_cache` with it (or set `self_distillation='none'`)."
            )
        if args.teacher_dtype != "auto":
            raise ValueError("The EMA teacher accumulates small updates and is kept in float32 so that none is "
                             "rounded away; leave `teacher_dtype='auto'` with `self_distillation='ema'`.")
        if args.teacher_ensemble != "mean" or args.teacher_weights is not None:
            raise ValueError(
                f"`teacher_ensemble={args.teacher_ensemble!r}` and `teacher_weights={args.teacher_weights}` combine "
                "several teachers, and `self_distillation='ema'` has one (the student's average): leave them at their "
                "defaults ('mean', None)."
            )
        return
    if not teachers and cache is None:
        raise ValueError(
            "`teacher_model` is required: pass a fine-tuned model, a local path or a Hub id (or a `teacher_cache` "
            "of its logits built with `hf_distill.build_teacher_cache`, or `self_distillation='ema'`)."
        )
    if len(teachers) <= 1 and (args.teacher_ensemble != "mean" or args.teacher_weights is not None):
        raise ValueError(
            f"`teacher_ensemble={args.teacher_ensemble!r}` and `teacher_weights={args.teacher_weights}` combine "
            "several teachers, and this run has one: pass a list of teachers as `teacher_model`, or leave them at "
            "their defaults ('mean', None)."
        )
    if len(teachers) > 1 and cache is not None:
        raise ValueError("A teacher cache holds one teacher's logits; with several teachers, train online (drop "
                         "`teacher_cache`) or build the cache from one of them.")
    if len(teachers) == 1 and cache is not None and teacher_fingerprint(teachers[0]) != cache.fingerprint["teacher"]:
        raise ValueError(
            f"The teacher cache at {cache.path} was built from another teacher (its weights differ from "
            "`teacher_model`'s), so the cached logits and the online teacher (hidden states, adversarial and augmented "
            "batches) would teach different things. Pass the teacher the cache was built with, or rebuild the cache "
            "with this one (`build_teacher_cache(..., overwrite=True)`)."
        )
    if cache is not None and teachers and args.uses_features:
        raise ValueError(
            "Hidden-state and attention distillation runs the online teacher on every batch, and its logits come "
            "exact from the same forward: a teacher cache would be read and never used. Train with `teacher_model` "
            "alone (drop `teacher_cache`), or without feature distillation to train from the cache."
        )
    if cache is not None and teachers and args.augments:
        raise ValueError(
            "Augmentation (`augment_mask_prob`/`augment_replace_prob`) changes every training batch, which the online "
            "teacher then labels: a teacher cache, which holds the logits of the clean inputs, would be read and never "
            "used. Train with `teacher_model` alone (drop `teacher_cache`), or turn augmentation off to train from the "
            "cache."
        )
    if args.teacher_weights is not None and len(args.teacher_weights) != len(teachers):
        raise ValueError(
            f"`teacher_weights` has {len(args.teacher_weights)} weights but {len(teachers)} teachers were given; "
            "give one weight per teacher, in the order of `teacher_model`."
        )
    if args.augments and not teachers:
        raise ValueError(
            "Augmented inputs are new inputs, so the teacher must label them online, but only a `teacher_cache` "
            "(logits of the clean inputs) was given. Pass `teacher_model` too, or turn augmentation off."
        )
    if not teachers and args.teacher_dtype != "auto":
        raise ValueError(
            f"`teacher_dtype={args.teacher_dtype!r}` casts the teacher, but no teacher runs: the logits come from the "
            "teacher cache, at the precision the teacher had when the cache was built. Leave `teacher_dtype='auto'` "
            "(or pass `teacher_model` too, for the batches the cache cannot label)."
        )
    lossy = cache is not None and not cache.exact
    if lossy and args.distill_loss == "mse":  # (config refuses mse with hard teacher labels)
        raise ValueError(
            f"`distill_loss='mse'` matches the teacher's raw logits, but this cache keeps only the top {cache.top_k} "
            f"of {cache.num_labels} (the others are stood in for by their shared tail mass, a distribution, not the "
            "teacher's logits). Build the cache with `top_k=None`, or use `distill_loss='kl'` or 'soft_ce'."
        )


def _refuse_shared_weights(teachers: list[nn.Module], student: nn.Module, cast: bool) -> None:
    """A teacher is frozen in place (and cast in place by `teacher_dtype`): a parameter it shares with the student
    would stop training (or change dtype under the student). A shared parameter the student keeps frozen is fine,
    unless the teacher is cast."""
    own = {id(p) for p in student.parameters() if p.requires_grad or cast}
    for teacher in teachers:
        shared = sum(id(p) in own for p in teacher.parameters())
        if shared:
            raise ValueError(
                f"The teacher shares {shared} parameters with the student (the same tensors, not copies), and the "
                "teacher is frozen: the student would stop training them. Give the teacher its own weights, e.g. "
                "`teacher_model=copy.deepcopy(model)`, or use `self_distillation='ema'` to learn from the student's "
                "own average."
            )


def _inside(path: str, folder: str) -> bool:
    """Whether real path `path` is `folder` or below it (both already `os.path.realpath`)."""
    return os.path.commonpath([path, folder]) == folder


def _refuse_teacher_in_output_dir(teachers: list[nn.Module], output_dir: str, pushing: bool) -> None:
    """A teacher loaded from `output_dir` itself would be overwritten by the student's save, one loaded from a
    `checkpoint-*` folder in it deleted by checkpoint rotation, and anything inside it uploaded by `push_to_hub`
    (`pushing`). Other subfolders are left alone."""
    out = os.path.realpath(output_dir)
    # The folder the config names, and the one `load_model` read (an adapter folder names only its base model).
    sources = [s for t in teachers for s in (getattr(getattr(t, "config", None), "_name_or_path", ""),
                                             getattr(t, LOADED_FROM, ""))]
    for source in dict.fromkeys(os.path.realpath(s) for s in sources if s and os.path.isdir(s)):
        if not _inside(source, out):
            continue
        inside = os.path.relpath(source, out).split(os.sep)
        if source == out:
            harm = "saving the student would overwrite it"
        elif any(part.startswith(PREFIX_CHECKPOINT_DIR + "-") for part in inside):
            harm = "checkpoint rotation (`save_total_limit`) could delete it"
        elif pushing:
            harm = "`push_to_hub` uploads that folder whole and would publish it"
        else:
            continue
        raise ValueError(
            f"`output_dir` ({output_dir}) holds the teacher loaded from {source}: {harm}. Choose another `output_dir`, "
            "outside the teacher's folder."
        )


def _refuse_cache_in_pushed_folder(cache: TeacherLogitCache, args: DistillationArguments,
                                   pushing: bool = False) -> None:
    """`push_to_hub` uploads `output_dir` whole: a teacher-logit cache kept inside it would go up with the student.
    Checked at init when `args.push_to_hub` is set, and by `push_to_hub` itself (`pushing`)."""
    if not (args.push_to_hub or pushing):
        return
    cache_path, output_dir = os.path.realpath(cache.path), os.path.realpath(args.output_dir)
    if _inside(cache_path, output_dir):
        raise ValueError(
            f"The teacher-logit cache at {cache.path} is inside `output_dir` ({args.output_dir}), which `push_to_hub` "
            "uploads whole: the cache would be published with the student. Build the cache outside it (next to the "
            "dataset, say), or move it there and load it with `TeacherLogitCache.load`."
        )


def _check_teacher_view(task: str, args: DistillationArguments, cache: TeacherLogitCache | None,
                        tokenizer: Any) -> None:
    """A training set with a teacher view (`views.add_noisy_view`) needs per-example teacher outputs, computed online,
    and a tokenizer to pad the view with."""
    if task == TOKEN_CLASSIFICATION:
        raise ValueError(
            "The training set has a teacher view (`teacher_input_ids`), but the student does token classification: "
            "the two views tokenize to different lengths, so the teacher's token logits do not line up with the "
            "student's. Use a teacher view for sequence classification only; for token-level noise that keeps the "
            "length, use `augment_mask_prob`/`augment_replace_prob`."
        )
    if cache is not None:
        raise ValueError(
            "The training set has a teacher view (`teacher_input_ids`) for the teacher to label online, and a "
            "`teacher_cache` was given too. Drop one: train on the noisy view with `teacher_model`, or on the "
            "dataset the cache was built from."
        )
    if args.uses_features:
        raise ValueError(
            "Hidden-state and attention distillation compare the two models token by token, but with a teacher view "
            "(`teacher_input_ids`) they read different tokens. Set `hidden_distill_weight=0` and "
            "`attention_distill_weight=0`, or train without the teacher view."
        )
    if tokenizer is None or not hasattr(tokenizer, "pad"):
        raise ValueError("The training set has a teacher view (`teacher_input_ids`), which the trainer pads with the "
                         "tokenizer: pass `processing_class=tokenizer`.")


def _use_eager_attention(models: list[nn.Module]) -> None:
    """Attention maps are only returned by eager attention; switch the models that use SDPA/flash kernels."""
    for model in models:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        if getattr(base.config, "_attn_implementation", "eager") != "eager":
            logger.info("Attention distillation: switching %s to eager attention to read its attention maps.",
                        type(base).__name__)
            base.set_attn_implementation("eager")


class _EMACallback(TrainerCallback):
    """After each optimizer step, move the EMA teacher towards the student."""

    def __init__(self, trainer: DistillationTrainer):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        trainer = self.trainer
        ema_update(trainer._unwrap(trainer.teacher_model),
                   trainer._unwrap(trainer.model), args.ema_decay)


class _FreshStartCallback(TrainerCallback):
    """Each run of Trainer's training loop starts with an empty loss window and no projection gradients, and its
    model card describes the steps it trains (not a best checkpoint an earlier run reloaded). Trainer
    reruns the loop with a smaller batch after an out-of-memory error (`auto_find_batch_size`) and zeroes the student's
    gradients, not what the aborted attempt left here."""

    def __init__(self, trainer: DistillationTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self.trainer
        trainer._window = _LossWindow()
        trainer._run_skipped = 0
        trainer._run_shares = [0.0, 0.0]
        if trainer.feature_projector is not None:
            trainer.feature_projector.zero_grad(set_to_none=True)
        trainer._projector_grads_averaged = False
        trainer._model_step = None  # the weights are trained on from here


class _ProjectorCallback(TrainerCallback):
    """The feature projection lives outside the (DDP-wrapped) student, so Trainer neither averages its gradients
    across processes nor zeroes them: do both around the optimizer step, as is done for the student. (Gradient
    clipping, which comes first, averages them itself; see `DistillationTrainer._clip_grad_norm`.)"""

    def __init__(self, trainer: DistillationTrainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._average_projector_grads()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.feature_projector.zero_grad(set_to_none=True)
        self.trainer._projector_grads_averaged = False


STAGING_FOLDER = "_hf_distill_saving"  # inside the folder being saved; `_*` is left out of Trainer's Hub uploads


def _feature_outputs(outputs, key: str, role: str):
    """`outputs[key]` (`hidden_states` or `attentions`, one tensor per layer), or an error naming the model that did not
    return them."""
    maps = outputs.get(key)
    if not maps:
        raise ValueError(
            f"Feature distillation needs the {role}'s `{key}`, but its forward returned none when asked "
            f"(`output_{key}=True`), e.g. a model that names its outputs otherwise or an attention implementation "
            "that returns no maps. Distil this pair's logits alone (`hidden_distill_weight=0`, "
            "`attention_distill_weight=0`)."
        )
    return maps


def _is_finite(value: torch.Tensor) -> torch.Tensor:
    """`torch.isfinite(value)` in two device operations instead of four: `value - value` is 0 exactly where `value` is
    finite (inf - inf and NaN - NaN are NaN)."""
    value = value.detach()
    return (value - value).eq(0)


def _parts_row(parts: DistillationLoss) -> torch.Tensor:
    """(4,) fp32: a loss's summed terms and their counts, `[kd_sum, kd_count, ce_sum, ce_count]`."""
    return torch.stack([parts.kd_sum.float(), parts.kd_count.float(), parts.ce_sum.float(),
                        parts.ce_count.float()]).detach()


def _parts_rows(parts: Sequence[DistillationLoss]) -> torch.Tensor:
    """(4,) fp32: `_parts_row` summed over several losses, in 6 device operations however many there are."""
    sums = torch.stack([t for p in parts for t in (p.kd_sum, p.ce_sum)]).detach().float().view(-1, 2).sum(0)
    counts = torch.stack([t for p in parts for t in (p.kd_count, p.ce_count)]).view(-1, 2).sum(0).float()
    return torch.stack([sums[0], counts[0], sums[1], counts[1]])


_FOLD_EVERY = 32  # main losses a logging window holds before summing them (a window may never be logged)


class _LossWindow:
    """Sums of the loss components since the last log, kept as tensors so that no step waits on the device.

    `averages` reduces them across processes in one all-reduce of a layout fixed by the run's settings (`names`), never
    by what this process happened to record: a process whose every batch in the window was skipped still takes part
    with zeros, so that no process waits on a collective the others never enter."""

    def __init__(self):
        self.steps = 0
        self.sums: torch.Tensor | None = None
        # The main losses since the last fold into `sums`: stacking them a few dozen at a time instead of one by one
        # saves a small student's step four device operations, which count where a step is launch-bound.
        self.pending: list[DistillationLoss] = []
        self.temperature = 0.0
        self.alpha = 0.0
        self.ratios: dict[str, torch.Tensor] = {}
        self.objectives: dict[str, tuple[torch.Tensor, float, int]] = {}
        self.skipped = 0
        # Each batch's share of its optimizer step, trained on and skipped: Trainer's loss is a mean over steps.
        self.trained_share = 0.0
        self.skipped_share = 0.0
        self.reduced_skipped = 0  # the skipped batches over every process, once `averages` has run
        self.reduced_shares = (0.0, 0.0)  # (trained_share, skipped_share) over every process, likewise


    def add_ratio(self, name: str, total: torch.Tensor, count: torch.Tensor) -> None:
        """A per-position loss logged exactly: its sum and its count are accumulated (and summed across
        processes), and the log shows sum / count."""
        row = torch.stack([total.detach().float(), count.detach().float()])
        self.ratios[name] = row if name not in self.ratios else self.ratios[name] + row

    def add_objective(self, name: str, parts: DistillationLoss, alpha: float) -> None:
        """A whole objective, `alpha · distill + (1 - alpha) · CE`, logged exactly as the main components are: its
        sums and counts are accumulated (and summed across processes), so neither gradient accumulation nor the
        number of processes changes the logged value."""
        row = _parts_row(parts)
        if name in self.objectives:
            sums, alphas, n = self.objectives[name]
            row, alpha, n = sums + row, alphas + alpha, n + 1
        else:
            n = 1
        self.objectives[name] = (row, alpha, n)

    def add(self, parts: DistillationLoss, temperature: float, alpha: float, share: float = 1.0) -> None:
        self.pending.append(parts)
        self.trained_share += share
        if len(self.pending) >= _FOLD_EVERY:
            self._fold()
        self.temperature += temperature
        self.alpha += alpha
        self.steps += 1

    def _fold(self) -> None:
        if self.pending:
            row = _parts_rows(self.pending)
            self.sums = row if self.sums is None else self.sums + row
            self.pending = []

    def averages(self, accelerator, ratios: Sequence[str] = (), objectives: Sequence[str] = ()) -> dict[str, float]:
        """The window's logged values, summed over the processes in one all-reduce. `ratios` and `objectives` name
        every entry the run can record (the same on every process); one not recorded here counts as zeros."""
        device = accelerator.device
        self._fold()

        def vector(values) -> torch.Tensor:
            return torch.stack([torch.as_tensor(v, dtype=torch.float32, device=device).reshape(()) for v in values])

        pieces = [self.sums.to(device) if self.sums is not None else torch.zeros(4, device=device),
                  vector([self.temperature, self.alpha, self.steps, self.skipped, self.trained_share,
                          self.skipped_share])]
        pieces += [self.ratios[n].to(device) if n in self.ratios else torch.zeros(2, device=device) for n in ratios]
        for name in objectives:
            row, alpha_sum, n = self.objectives.get(name, (torch.zeros(4), 0.0, 0))
            pieces += [row.to(device), vector([alpha_sum, n])]
        flat = torch.cat(pieces)
        if accelerator.num_processes > 1:
            flat = accelerator.reduce(flat, reduction="sum")
        values = iter(flat.tolist())

        def take(n: int) -> list[float]:
            return [next(values) for _ in range(n)]

        kd_sum, kd_count, ce_sum, ce_count = take(4)
        temperature, alpha, steps, skipped, trained_share, skipped_share = take(6)
        self.reduced_skipped = round(skipped)
        self.reduced_shares = (trained_share, skipped_share)
        logs = {}
        if steps > 0:
            logs.update(temperature=temperature / steps, alpha=alpha / steps)
            if kd_count > 0:
                logs["kd_loss"] = kd_sum / kd_count
            if ce_count > 0:
                logs["ce_loss"] = ce_sum / ce_count
        if skipped:
            logs["skipped_batches"] = int(skipped)
        for name in ratios:
            total, count = take(2)
            if count > 0:
                logs[name] = total / count
        for name in objectives:
            kd_sum, kd_count, ce_sum, ce_count = take(4)
            alpha_sum, n = take(2)
            if n > 0:
                a = alpha_sum / n
                logs[name] = a * kd_sum / max(kd_count, 1.0) + (1.0 - a) * ce_sum / max(ce_count, 1.0)
        return logs
