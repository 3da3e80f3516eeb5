"""Pieces shared by the recipes: their argument dataclasses, data loading aligned to the teacher's labels, and the
teacher-vs-student evaluation table."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import datasets
import huggingface_hub
import torch
from transformers import AutoConfig, Trainer, TrainingArguments

from hf_distill import DistillationTrainer, check_label_range, create_student, evaluate_robustness
from hf_distill.data import cast_label_names, conll_label_names, label_name_lookup, read_conll
from hf_distill.features import attention_dropout_field, parse_layer_map
from hf_distill.loading import LOADED_FROM, load_model, load_tokenizer
from hf_distill.speed import compare_latency
from hf_distill.text_attacks import attack_accuracy, model_predict_proba

logger = logging.getLogger("recipes")


@dataclass
class ModelArguments:
    """Which teacher and which student."""

    teacher_model_name_or_path: str = field(
        default=None, metadata={"help": "The fine-tuned teacher: a local directory or a Hub id."}
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "The student to start from. If absent, --student_layers cuts it from the teacher."}
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "The teacher's tokenizer, when the teacher's directory holds none (default: the teacher's "
                  "own directory or Hub id). It is saved with the student."},
    )
    student_layers: str = field(
        default="0,2,4", metadata={"help": "Teacher layers copied into the student when --model_name_or_path is absent."}
    )
    generations: int = field(
        default=1,
        metadata={"help": "Born-again training: generation k > 1 restarts from the same initial student and is "
                  "distilled from generation k-1 (frozen). Earlier generations are saved next to output_dir, in "
                  "<output_dir>-generation-k (outside it, so that --push_to_hub uploads the last one alone)."},
    )

    def __post_init__(self):
        if self.generations < 1:
            raise ValueError(f"`generations` must be >= 1, got {self.generations}.")
        pieces = [p.strip() for p in self.student_layers.split(",")]
        if not pieces or not all(p.isdigit() for p in pieces):
            raise ValueError(
                f"--student_layers {self.student_layers!r} is not a comma-separated list of teacher layer indices; "
                "write e.g. \"0,2,4\" (the teacher layers copied into the student, counting from 0)."
            )

    @property
    def layers(self) -> list[int]:
        """`--student_layers` as a list of teacher layer indices."""
        return [int(p) for p in self.student_layers.split(",")]


@dataclass
class DataArguments:
    """Where the data comes from: a Hub dataset or local files."""

    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset, e.g. 'lhoestq/conll2003' or 'glue'."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's config, e.g. 'sst2'."})
    train_file: str | None = field(default=None, metadata={"help": "Local training file (CoNLL .txt/.conll for NER; csv/tsv/json for text)."})
    validation_file: str | None = field(default=None, metadata={"help": "Local validation file."})
    test_file: str | None = field(default=None, metadata={"help": "Local test file (optional)."})
    text_column_name: str | None = field(default=None, metadata={"help": "Column with the text (or the tokens for NER)."})
    text_pair_column_name: str | None = field(
        default=None,
        metadata={"help": "Text classification: the column with each example's second text, for sentence-pair tasks "
                  "(GLUE's MRPC, RTE, QNLI: e.g. --text_column_name sentence1 --text_pair_column_name sentence2)."},
    )
    label_column_name: str | None = field(default=None, metadata={"help": "Column with the labels (or the tags for NER)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N validation/test examples."})
    max_seq_length: int = field(default=128, metadata={"help": "Longer inputs are truncated."})
    tag_scheme: str = field(
        default="iob2",
        metadata={"help": "NER, local CoNLL files: their tagging, 'iob2' (every entity opens with B-) or 'iob1' (the "
                  "original CoNLL-2003 release; converted to IOB2 while reading)."},
    )

    def __post_init__(self):
        if self.tag_scheme not in ("iob2", "iob1"):
            raise ValueError(f"--tag_scheme {self.tag_scheme!r} is not a CoNLL tagging hf-distill reads: pass iob2 "
                             "(every entity opens with B-) or iob1 (an entity opens with I- unless it follows one of "
                             "its own type).")
        for flag in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, flag)
            if value is not None and value < 1:
                raise ValueError(f"--{flag} {value} keeps no rows: give a positive number, or leave it out to keep "
                                 "every row.")
        if self.dataset_name is None and self.train_file is None:
            raise ValueError(
                "No data: pass --dataset_name (a Hub dataset) or --train_file/--validation_file (local files)."
            )


@dataclass
class RobustnessArguments:
    """After training, how teacher and student hold up on every scored split: white-box embedding PGD
    (`hf_distill.evaluate_robustness`), the split again with seeded character typos, and, for text classification, a
    black-box greedy word attack (`hf_distill.text_attacks`). Each is off unless its flag is set; the scores join the
    comparison table, all_results.json and the model card (with how they were measured)."""

    robustness_epsilon: float | None = field(
        default=None,
        metadata={"help": "Embedding PGD: the budget of the perturbation of the word embeddings (per-example l2 norm "
                  "over the text; [CLS], [SEP] and padding untouched). BERT-size word vectors have a norm of about "
                  "1 to 1.5: benchmarks/robustness.py reports 0.25 and 0.5. Off if unset."},
    )
    robustness_steps: int = field(default=3, metadata={"help": "Embedding PGD: ascent steps (step 2.5 * epsilon / steps)."})
    robustness_typo_rate: float | None = field(
        default=None,
        metadata={"help": "Score each split again with one character typo (swap, delete, insert, keyboard neighbour) "
                  "in this fraction of the words of every text (NER: of the tokens, tags kept), seeded by --seed. "
                  "benchmarks/robustness.py uses 0.2. Off if unset."},
    )
    robustness_word_attack_samples: int | None = field(
        default=None,
        metadata={"help": "Text classification: attack the first N examples of each split with the greedy word "
                  "attack (typos in up to 0.3 of the words, the most important first, until the prediction flips; "
                  "both texts of a pair). Reports the accuracy under attack and the attack success rate. Off if "
                  "unset."},
    )

    def __post_init__(self):
        if self.robustness_epsilon is not None and not 0 < self.robustness_epsilon < float("inf"):
            raise ValueError(f"--robustness_epsilon {self.robustness_epsilon} is no budget: give a norm > 0 (e.g. "
                             "0.5), or leave it out to skip the embedding attack.")
        if self.robustness_steps < 1:
            raise ValueError(f"--robustness_steps {self.robustness_steps}: the attack takes at least one step.")
        if self.robustness_typo_rate is not None and not 0 < self.robustness_typo_rate <= 1:
            raise ValueError(f"--robustness_typo_rate {self.robustness_typo_rate} is not a fraction of the words in "
                             "(0, 1]: give e.g. 0.2, or leave it out to skip the typo scores.")
        if self.robustness_word_attack_samples is not None and self.robustness_word_attack_samples < 1:
            raise ValueError(f"--robustness_word_attack_samples {self.robustness_word_attack_samples} attacks no "
                             "example: give a positive number, or leave it out to skip the word attack.")

    @property
    def enabled(self) -> bool:
        return any(value is not None for value in (self.robustness_epsilon, self.robustness_typo_rate,
                                                   self.robustness_word_attack_samples))


@dataclass
class RobustnessProbe:
    """What a recipe gives `robustness_report` for its task: the options, `typo_split(name, rate, seed)` (that split
    encoded again from its text with seeded typos), and, for the word attack, `attack_texts(name, n)` (the first `n`
    texts of the split as lists of words, or pairs of them, with their class ids) with the tokenizer that reads
    them."""

    options: RobustnessArguments
    typo_split: Callable[[str, float, int], datasets.Dataset]
    attack_texts: Callable[[str, int], tuple[list[Any], list[int]]] | None = None
    tokenizer: Any = None
    max_length: int | None = None


RUN_SWITCHES = {
    "do_train": (True, "a recipe always trains, and saves the result in --output_dir over what is there. To score a "
                       "model you already have, load it and call `Trainer.evaluate` (or `hf_distill."
                       "evaluate_robustness`)."),
    "do_eval": (True, "a recipe always scores the model it trained on every labelled split other than train "
                      "(validation, and test when it has labels)."),
    "do_predict": (False, "a recipe writes no predictions file; it scores every labelled split (written to "
                          "all_results.json in --output_dir). For predictions, load the model and call "
                          "`Trainer.predict`."),
}
"""`TrainingArguments` switches that the recipes do not read (`cli.parse_args(fixed_switches=...)`): a run that asks
for something else is refused, instead of silently training over the model in --output_dir."""


def _no_attention_dropout(config) -> dict:
    """The config override that turns attention dropout off (attention distillation compares the student's maps
    as distributions, which dropped-out maps are not)."""
    name = attention_dropout_field(config)
    return {name: 0.0} if name is not None else {}


def load_models(model_args: ModelArguments, task: str, *, attention_distillation: bool = False):
    """`(teacher, tokenizer, student)`: the student is loaded with the teacher's labels, or cut from the teacher.

    With `attention_distillation` (`--attention_distill_weight` > 0), the student is built without attention dropout,
    which that loss requires."""
    if model_args.teacher_model_name_or_path is None:
        raise ValueError("Pass --teacher_model_name_or_path: a fine-tuned teacher (local directory or Hub id).")
    teacher = load_model(model_args.teacher_model_name_or_path, task, role="teacher", require_all_weights=True)
    tokenizer_name = model_args.tokenizer_name_or_path or model_args.teacher_model_name_or_path
    tokenizer = load_tokenizer(tokenizer_name, pre_split_words=task == "token_classification")
    if model_args.model_name_or_path:
        try:
            config = AutoConfig.from_pretrained(os.path.expanduser(model_args.model_name_or_path))
        except (OSError, ValueError):
            config = None  # load_model below explains what is wrong with the path
        if config is not None:
            _check_student_label_order(config, teacher.config, model_args.model_name_or_path)
        overrides = _no_attention_dropout(config) if attention_distillation and config is not None else {}
        student = load_model(
            model_args.model_name_or_path, task, role="student", num_labels=teacher.config.num_labels,
            id2label=teacher.config.id2label, label2id=teacher.config.label2id, **overrides,
        )
    else:
        overrides = _no_attention_dropout(teacher.config) if attention_distillation else {}
        student = create_student(teacher, model_args.layers, **overrides)
    student = trainable_in_fp32(student, "student")
    if overrides:
        logger.info("Attention distillation: the student is built with %s (no attention dropout).",
                    ", ".join(f"{k}={v}" for k, v in overrides.items()))
    return teacher, tokenizer, student


def trainable_in_fp32(model, role: str):
    """`model` in float32 if its weights are half precision (Transformers 5 loads a checkpoint in the dtype it was
    saved in, and a student cut from a bf16 teacher is bf16): an optimizer step on bf16 weights drops every update
    smaller than bf16's resolution. `--bf16` / `--fp16` still train in mixed precision, on float32 weights."""
    dtype = next(model.parameters()).dtype
    if dtype in (torch.float16, torch.bfloat16):
        logger.info("The %s's weights are %s: it is trained in float32 (mixed precision comes from --bf16/--fp16).",
                    role, str(dtype).removeprefix("torch."))
        model = model.float()
    return model


def _check_student_label_order(config, teacher_config, name) -> None:
    """A student is loaded with the teacher's `id2label`; that is right for a base model or other labels (its head is
    new) but would only rename the rows of a head trained on the teacher's labels in another order."""
    names = [config.id2label[i] for i in range(config.num_labels)] if config.id2label else []
    teacher_names = [teacher_config.id2label[i] for i in range(teacher_config.num_labels)]
    if names != teacher_names and sorted(names) == sorted(teacher_names):
        raise ValueError(
            f"The student {name!r} has the same labels in another order than the teacher (student: {names}; teacher: "
            f"{teacher_names}). Loading it with the teacher's label order would give its trained classifier rows "
            "other labels (its row for one tag would be read as another's). Use a student whose classifier follows "
            "the teacher's order (fine-tune it with the teacher's id2label, or permute its classifier rows and "
            "id2label to match and save it), or start from a base model, whose new head takes the teacher's order."
        )


def load_splits(
    data: DataArguments, read_local, *, columns=(), label_column: str | None = None, label_names=None
) -> dict[str, datasets.Dataset]:
    """`{"train", "validation"[, "test"]}` from the Hub or from local files (`read_local(path)` reads one file).

    A local `--train_file`/`--validation_file`/`--test_file` also supplies (or replaces) that split of a Hub dataset,
    e.g. one that has no validation split. Every split must hold `columns` (the text); the train and validation splits also
    `label_column`. With `label_names`, a Hub label column of strings ("positive") is mapped to their ids, as
    `read_local` does for files.
    """
    if data.dataset_name is not None:
        try:
            raw = datasets.load_dataset(data.dataset_name, data.dataset_config_name)
        except Exception as err:  # the Hub or the network: say what to do instead
            script = "Dataset scripts are no longer supported" in str(err)
            hint = ("It is a loading-script dataset, which `datasets` 4 and later cannot run: use a Parquet copy of it "
                    "(for CoNLL-2003, --dataset_name lhoestq/conll2003) or local files: --train_file, "
                    "--validation_file [--test_file]." if script else
                    "If you are offline or the id is wrong, pass local files instead: --train_file, --validation_file "
                    "[--test_file].")
            raise ValueError(
                f"Could not load the Hub dataset {data.dataset_name!r} ({type(err).__name__}: {err}). {hint}"
            ) from err
        splits = {name: raw[name] for name in ("train", "validation", "test") if name in raw}
        for name, path in (("train", data.train_file), ("validation", data.validation_file), ("test", data.test_file)):
            if path is not None:
                splits[name] = read_local(path)
        missing = [name for name in ("train", "validation") if name not in splits]
        if missing:
            raise ValueError(
                f"The Hub dataset {data.dataset_name!r} has the splits {list(raw)}, without {missing}: the recipes "
                "train on 'train' and compare teacher and student on 'validation'. Pass --validation_file (a local "
                "file for the missing split), or use a copy of the dataset with both splits."
            )
        if label_names is not None:
            splits = {name: _label_names_to_ids(split, label_column, label_names, data.dataset_name)
                      for name, split in splits.items()}
    else:
        files = {"train": data.train_file, "validation": data.validation_file, "test": data.test_file}
        splits = {name: read_local(path) for name, path in files.items() if path is not None}
        if "validation" not in splits:
            raise ValueError("Pass --validation_file as well: teacher and student are compared on it.")
    for name, split in splits.items():
        needed = [c for c in columns if c] + ([label_column] if label_column and name != "test" else [])
        absent = [c for c in needed if c not in split.column_names]
        if absent:
            raise ValueError(
                f"The {name} split has no column {absent} (its columns: {split.column_names}). Name the right ones "
                "with --text_column_name, --text_pair_column_name and --label_column_name."
            )
    if data.max_train_samples:
        splits["train"] = splits["train"].select(range(min(data.max_train_samples, len(splits["train"]))))
    if data.max_eval_samples:
        for name in ("validation", "test"):
            if name in splits:
                splits[name] = splits[name].select(range(min(data.max_eval_samples, len(splits[name]))))
    return splits


def describe_splits(data: DataArguments, splits: dict) -> dict[str, str]:
    """What each split was, for the model card's data table: where it came from, how many examples it held, and
    whether --max_train_samples / --max_eval_samples cut it (a score on the first 1000 test sentences is not the test
    set's)."""
    files = {"train": data.train_file, "validation": data.validation_file, "test": data.test_file}
    described = {}
    for name, split in splits.items():
        if files.get(name) is not None:
            source = f"`{os.path.basename(files[name])}` (local file)"
        else:
            config = f" (configuration `{data.dataset_config_name}`)" if data.dataset_config_name else ""
            source = f"`{data.dataset_name}`{config}, split `{name}`"
        flag = "max_train_samples" if name == "train" else "max_eval_samples"
        limit = getattr(data, flag)
        cut = f", the first {len(split)} kept by --{flag}" if limit and len(split) == limit else ""
        described[name] = f"{source}: {len(split)} examples{cut}"
    return described


def _label_names_to_ids(split: datasets.Dataset, column: str, names, source: str) -> datasets.Dataset:
    """A Hub split whose label column holds names ("positive") as a `ClassLabel` of `names`, so ids follow them."""
    if getattr(split.features.get(column), "dtype", None) not in ("string", "large_string"):
        return split
    id_of = label_name_lookup(names)
    unknown = sorted(v for v in set(split.unique(column)) - {None} if id_of(v) is None)
    if unknown:
        raise ValueError(
            f"The Hub dataset {source!r} has labels {unknown[:5]} in {column!r}, which are not among the label names "
            f"{list(names)}. Use a dataset whose labels are these names or their ids."
        )
    split = cast_label_names(split, column, names)
    if None in split.unique(column):  # a hidden label given as a null: -1, as GLUE's test sets write it
        split = split.map(lambda batch: {column: [-1 if v is None else v for v in batch[column]]}, batched=True)
    return split


def _scoring_args(scratch: str, args) -> TrainingArguments:
    """`TrainingArguments` for scoring with a plain `Trainer` in the run's precision and device."""
    return TrainingArguments(
        output_dir=scratch, per_device_eval_batch_size=args.per_device_eval_batch_size, report_to="none",
        use_cpu=args.use_cpu, bf16=args.bf16, fp16=args.fp16, disable_tqdm=args.disable_tqdm,
        # The stock loss under several processes is scaled for a token count summed across them, which
        # evaluation never passes: the logged loss would be multiplied by the number of processes.
        average_tokens_across_devices=False,
    )


_LATENCY_ROUNDS, _LATENCY_CALLS = 4, 5  # the card's latencies: alternating rounds of teacher and student calls


def compare(teacher, student, splits, collator, compute_metrics, args, metric: str, log: bool = True) -> dict:
    """Score teacher and student on each evaluation split, time them, and log a side-by-side table (unless `log` is
    False: the caller adds to the report, and logs it).

    Returns the report that goes on the model card: {"teacher": {...}, "student": {...}, "speed": {...}}.
    """
    report = {"teacher": {}, "student": {}}
    # Trainer wants an output directory even to evaluate; this one is scratch and is removed afterwards.
    with tempfile.TemporaryDirectory(prefix="hf_distill_eval_") as scratch:
        eval_args = _scoring_args(scratch, args)
        for role, model in (("teacher", teacher), ("student", student)):
            scorer = Trainer(model=model, args=eval_args, data_collator=collator, compute_metrics=compute_metrics)
            for split, data in splits.items():
                result = scorer.evaluate(data, metric_key_prefix=split)
                report[role][f"{split}_{metric}"] = round(result[f"{split}_{metric}"], 4)
            report[role]["parameters"] = sum(p.numel() for p in model.parameters())
    split_name, first = next(iter(splits.items()))
    speed, lengths = {}, []
    # Batches of 1 and 32 (or the whole split, if smaller: the key names the size measured).
    for batch_size in sorted({1, min(32, len(first))}):
        batch = collator([first[i] for i in range(batch_size)])
        lengths.append(f"{batch['input_ids'].shape[-1]} tokens (batch {batch_size})")
        timed = compare_latency(teacher, student, batch, rounds=_LATENCY_ROUNDS, repeats=_LATENCY_CALLS)
        speed[f"teacher_ms_batch{batch_size}"] = round(timed.teacher_ms, 2)
        speed[f"student_ms_batch{batch_size}"] = round(timed.student_ms, 2)
        speed[f"speedup_batch{batch_size}"] = round(timed.speedup, 2)
    # A latency means little without where it was measured (the card shows this row under the figures).
    speed["measured on"] = (f"{_device_words(next(student.parameters()).device)}, {next(student.parameters()).dtype}; "
                            f"teacher and student timed in {_LATENCY_ROUNDS} alternating rounds of {_LATENCY_CALLS} "
                            "forward calls in eval mode (medians; the speed-up is the median of the rounds' ratios), "
                            f"on the first `{split_name}` examples, padded to "
                            + " and ".join(lengths))
    report["speed"] = speed
    if log:
        logger.info("\n%s", format_table(report))
    return report


def _device_words(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} GPU"
    return f"{device.type.upper()}, {torch.get_num_threads()} torch threads"


_WORD_ATTACK_SCORES = {"attacked_accuracy": "word_attack_accuracy", "attack_success_rate": "word_attack_success_rate",
                       "clean_accuracy": "word_attack_clean_accuracy"}
"""`attack_accuracy`'s results, as the recipes name them (the clean accuracy is that of the attacked examples)."""


def _check_word_attack(probe: RobustnessProbe | None) -> None:
    if probe is not None and probe.options.robustness_word_attack_samples is not None and probe.attack_texts is None:
        raise ValueError("--robustness_word_attack_samples attacks the class a text classifier predicts for a whole "
                         "text; this recipe's task has none. Leave it out (--robustness_typo_rate and "
                         "--robustness_epsilon work for every task).")


def robustness_report(models: dict, splits: dict, collator, compute_metrics, args, metric: str,
                      probe: RobustnessProbe) -> tuple[dict, dict]:
    """Score each of `models` (`{"teacher": ..., "student": ...}`) on each split under the attacks `probe.options`
    asks for. Returns `({role: {score: value}}, {attack: how it was measured})`.

    Scores are named after the split and metric: `validation_f1_pgd0.5` (embedding PGD at that budget),
    `validation_f1_typos0.2` (typos in that fraction of the words), and `validation_word_attack_accuracy`,
    `validation_word_attack_success_rate` and `validation_word_attack_clean_accuracy` (the attacked examples' accuracy
    before the attack). The typo scores go through `Trainer.evaluate`, as the clean ones do; the
    two attacks run in full on every process (they are not split across processes), with the same seed.
    """
    options, seed = probe.options, args.seed
    scores = {role: {} for role in models}
    settings = {}
    if options.robustness_epsilon is not None:
        settings["embedding PGD"] = (f"l2 budget {options.robustness_epsilon:g} on the word embeddings, "
                                     f"{options.robustness_steps} steps, seed {seed} (`hf_distill.evaluate_robustness`)")
    if options.robustness_typo_rate is not None:
        settings["typos"] = (f"one character typo in {options.robustness_typo_rate:g} of the words of each text, "
                             f"seeded by {seed} per row (`hf_distill.text_attacks.perturb_characters`)")
    attack = options.robustness_word_attack_samples
    if attack is not None:
        _check_word_attack(probe)
    attacked = {}  # the examples the word attack ran on, per split: the first `attack`, or all of a smaller split
    noisy = {}
    if options.robustness_typo_rate is not None:
        with args.main_process_first(desc="typo splits"):  # the first process writes the `map` caches, as in tokenizing
            noisy = {name: probe.typo_split(name, options.robustness_typo_rate, seed) for name in splits}
    with tempfile.TemporaryDirectory(prefix="hf_distill_eval_") as scratch:
        eval_args = _scoring_args(scratch, args)
        for role, model in models.items():
            scorer = Trainer(model=model, args=eval_args, data_collator=collator, compute_metrics=compute_metrics)
            model = scorer.model  # on the run's device
            for name, data in splits.items():
                if options.robustness_epsilon is not None:
                    result = evaluate_robustness(
                        model, data, epsilon=options.robustness_epsilon, steps=options.robustness_steps,
                        data_collator=collator, compute_metrics=compute_metrics,
                        batch_size=args.per_device_eval_batch_size, seed=seed)
                    scores[role][f"{name}_{metric}_pgd{options.robustness_epsilon:g}"] = round(
                        result[f"attacked_{metric}"], 4)
                if name in noisy:
                    result = scorer.evaluate(noisy[name], metric_key_prefix=name)
                    scores[role][f"{name}_{metric}_typos{options.robustness_typo_rate:g}"] = round(
                        result[f"{name}_{metric}"], 4)
                if attack is not None:
                    texts, labels = probe.attack_texts(name, attack)
                    attacked[name] = len(texts)
                    predict = model_predict_proba(model, probe.tokenizer, batch_size=args.per_device_eval_batch_size,
                                                  max_length=probe.max_length)
                    result = attack_accuracy(predict, texts, labels, budget=0.3, seed=seed)
                    for key, score in _WORD_ATTACK_SCORES.items():
                        scores[role][f"{name}_{score}"] = round(result[key], 4)
    if attack is not None:
        examples = ", ".join(f"the first {count} {name} examples" if count == attack else
                             f"all {count} {name} examples" for name, count in attacked.items())
        settings["word attack"] = (f"greedy black-box typos in up to 0.3 of the words of {examples} "
                                   f"(--robustness_word_attack_samples {attack}), seed {seed} "
                                   "(`hf_distill.text_attacks.attack_accuracy`)")
    return scores, settings


def distill(teacher, student, tokenizer, tokenized, collator, metrics, metric, args, data_args, generations=1,
            noisy_view=None, robustness: RobustnessProbe | None = None):
    """Distil on `tokenized["train"]`, compare teacher and student on the other splits, save, and push if asked.

    `noisy_view` (how a noisy student view of the training text was made) goes on the model card. With
    `robustness` (and one of its attacks asked for), teacher and student are also scored under attack
    ([`robustness_report`]), next to their clean scores.

    With `generations > 1` (born-again training), each later generation starts again from the initial student
    weights and is distilled from the previous generation, frozen; the last one is the result.
    """
    evaluation = scorable_splits(tokenized, teacher.config.num_labels)
    _check_word_attack(robustness)  # before training, not after it
    resume = resume_target(args.resume_from_checkpoint)
    if resume is not None and generations > 1:
        raise ValueError(
            "--resume_from_checkpoint resumes a single run, and --generations > 1 chains several (each generation "
            "starts from the initial student). Resume without --generations, or start the generations again."
        )
    ema = args.self_distillation == "ema"
    if ema and generations > 1:
        raise ValueError(
            "--self_distillation ema teaches the student with its own average, and --generations > 1 with the previous "
            "generation: choose one."
        )
    if generations > 1 and args.feature_layer_map and args.uses_features:
        # From generation 2 on, the teacher is the previous generation: a student as deep as this one. Checked now,
        # not after a whole generation has trained.
        depth = student.config.num_hidden_layers
        try:
            parse_layer_map(args.feature_layer_map, depth, depth)
        except ValueError as err:
            raise ValueError(
                f"--feature_layer_map {args.feature_layer_map!r} cannot serve every generation: from generation 2 "
                f"on, the teacher is the previous generation's {depth}-layer student ({err}). Leave "
                "--feature_layer_map out (each generation then maps its own layers), or use --generations 1."
            ) from err
    if generations > 1 and args.push_to_hub and args.process_index == 0:
        # Only the last generation's trainer pushes, and Trainer creates (or checks) the repository when it is built:
        # done now, so that an unreachable Hub or a repository the token cannot write fails before any training.
        huggingface_hub.create_repo(args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir)),
                                    token=args.hub_token, private=args.hub_private_repo, exist_ok=True)
    initial = copy.deepcopy(student) if generations > 1 else None
    # The trainer casts the teacher it is given in place (--teacher_dtype): it gets a copy, so that the comparison
    # below scores and times the teacher as it was loaded, in the student's precision.
    generation_teacher = teacher if args.teacher_dtype == "auto" or ema else copy.deepcopy(teacher)
    for generation in range(1, generations + 1):
        last = generation == generations
        gen_args = args if last else dataclasses.replace(
            args, output_dir=f"{os.path.normpath(args.output_dir)}-generation-{generation}", push_to_hub=False)
        # Under EMA the loaded teacher only gave the student its start (and is scored next to it below).
        trainer = DistillationTrainer(
            model=student, teacher_model=None if ema else generation_teacher, args=gen_args,
            train_dataset=tokenized["train"],
            eval_dataset=tokenized["validation"], data_collator=collator, processing_class=tokenizer,
            compute_metrics=metrics,
        )
        # The data the student trained on: a local --train_file (which replaces a Hub dataset's train split) is named
        # on the card but never listed as a Hub dataset in its metadata (`eng.train` could be either; only the
        # recipe knows).
        trainer.dataset_name = (f"{os.path.basename(data_args.train_file)} (local file)" if data_args.train_file
                                else data_args.dataset_name)
        trainer.dataset_config_name = None if data_args.train_file else data_args.dataset_config_name
        trainer.data_splits = describe_splits(data_args, {"train": tokenized["train"], **evaluation})
        trainer.noisy_view = noisy_view
        trainer.generations, trainer.original_teacher = generation, teacher
        train_output = trainer.train(resume_from_checkpoint=resume)
        if not last:
            trainer.save_model()
            logger.info("born-again generation %d of %d saved in %s", generation, generations, gen_args.output_dir)
            generation_teacher = trainer.accelerator.unwrap_model(trainer.model).eval()
            # It lives in the generation's folder now, not where its start was loaded from (which may be the output
            # directory itself, for a student refined in place): the teacher-folder guard looks at both records.
            generation_teacher.config._name_or_path = gen_args.output_dir
            setattr(generation_teacher, LOADED_FROM, os.path.realpath(gen_args.output_dir))
            student = copy.deepcopy(initial)
    # Saved before anything else can fail: the trained student is never lost. Locally only (an internal call, which
    # Trainer does not push): the push below comes once the card has the evaluation.
    trainer.save_model(_internal_call=True)
    if trainer.args.should_save:
        tokenizer.save_pretrained(args.output_dir)
    # Every process scores (Trainer.evaluate gathers across processes); the card is written by the main one.
    attacked = robustness is not None and robustness.options.enabled
    report = compare(teacher, trainer.model, evaluation, collator, metrics, args, metric, log=not attacked)
    if attacked:
        scores, report["robustness"] = robustness_report({"teacher": teacher, "student": trainer.model}, evaluation,
                                                         collator, metrics, args, metric, robustness)
        for role, values in scores.items():
            report[role].update(values)
        logger.info("\n%s", format_table(report))
    trainer.evaluation_report = report
    save_results(trainer, train_output.metrics, trainer.evaluation_report)
    trainer.create_model_card()  # again, now with the teacher/student table
    if args.push_to_hub:
        trainer.push_to_hub()  # the card names `trainer.dataset_name`, the training data
    return trainer


def save_results(trainer: Trainer, train_metrics: dict, scores: dict) -> None:
    """`train_results.json`, `eval_results.json` and `all_results.json` in --output_dir, as the Transformers example
    scripts write them: the training metrics, and each evaluation score as `<model>_<split>_<metric>` (`student_...`,
    and `teacher_...` where the recipe scored a teacher too)."""
    trainer.save_metrics("train", train_metrics)
    trainer.save_metrics("eval", {f"{role}_{name}": value for role in ("student", "teacher") if role in scores
                                  for name, value in scores[role].items()})


def text_encoder(tokenizer, data: DataArguments, text_column: str, label_column: str):
    """`encode(batch)` for `Dataset.map(batched=True)`: the text (and, with `--text_pair_column_name`, its pair, as
    the tokenizer joins two segments: [SEP] between them and `token_type_ids` 1 on the second), truncated to
    `--max_seq_length`, with the labels under `labels`."""
    pair_column = data.text_pair_column_name

    def encode(batch):
        pair = batch[pair_column] if pair_column else None
        encoded = tokenizer(batch[text_column], pair, truncation=True, max_length=data.max_seq_length)
        encoded["labels"] = batch[label_column]
        return encoded

    return encode


def conll_tag_names(data: DataArguments) -> list[str]:
    """A new NER teacher's tags: those of every local CoNLL file (a tag may appear in one split only), in
    `conll_label_names` order."""
    files = [f for f in (data.train_file, data.validation_file, data.test_file) if f]
    return conll_label_names({tag for path in files
                              for tag in read_conll(path, tag_scheme=data.tag_scheme).features["ner_tags"].feature.names})


def text_label_names(data: DataArguments, read_local, label_column: str) -> tuple[list[str], bool]:
    """A new teacher's class names for a text-classification dataset, from every split before any
    `--max_*_samples` cut (a class seen only in validation, or only past the cut, still gets an id).

    `read_local(path)` reads one file with its label column as written. Returns `(names, by_name)`: a `ClassLabel`'s
    names; for integer ids, `"0"` to the largest id (ids keep their meaning; a negative id is a hidden label, as in
    GLUE's test sets); for names such as `"positive"`, the sorted names, with `by_name` True (the files must then be
    read with `label_names=names`).
    """
    splits = load_splits(dataclasses.replace(data, max_train_samples=None, max_eval_samples=None), read_local)
    values, names = set(), None
    for name, split in splits.items():
        if label_column not in split.column_names:
            continue
        feature = split.features[label_column]
        if isinstance(feature, datasets.ClassLabel):
            names = names or list(feature.names)
        column = {v for v in split[label_column] if v is not None}
        negative = sorted(v for v in column if (_is_id(v) and v < 0) or (isinstance(v, str) and v.strip().startswith(
            "-") and v.strip()[1:].isdigit()))
        if negative and name != "test":
            raise ValueError(
                f"The {name} split has the label {negative[0]} in the {label_column!r} column: class ids are 0, 1, 2, "
                "... (a negative id marks a hidden label, which only a test split may have). Renumber the classes "
                "from 0 (e.g. -1/0/1 as 0/1/2), or write their names (negative, neutral, positive)."
            )
        if any(isinstance(v, str) and not v.strip() for v in column):
            raise ValueError(f"The {name} split has an empty label in the {label_column!r} column: fill it in, or "
                             "drop those rows (a blank cell would otherwise become a class of its own and shift every "
                             "id).")
        values |= column
    if names is not None:
        return names, False
    # A split's column is text as soon as one cell is not a number: ids written as text count as ids.
    text = {v for v in values if isinstance(v, str)}
    written_ids = {v for v in text if v.strip().lstrip("-").isdigit()}
    numbers = {int(v) for v in values - text if _is_id(v)} | {int(v) for v in written_ids}
    numbers = {n for n in numbers if n >= 0}  # hidden labels (GLUE's test sets write -1)
    label_names = sorted(text - written_ids)
    if label_names and numbers:
        raise ValueError(f"The {label_column!r} column mixes class ids ({', '.join(map(str, sorted(numbers)[:3]))}) "
                         f"with other values ({', '.join(map(repr, label_names[:3]))}): write every label as an id, "
                         "or every label as a name.")
    if label_names:
        return label_names, True
    ids = sorted(numbers)
    if not ids:
        raise ValueError(f"No split has a class id in the {label_column!r} column: there is nothing to train on.")
    return [str(i) for i in range(max(ids) + 1)], False


def _is_id(value) -> bool:
    """An int, or a float with a whole value (a csv reader gives `1.0`); not a bool."""
    return not isinstance(value, bool) and (isinstance(value, int) or (isinstance(value, float)
                                                                       and value.is_integer()))


def align_labels(dataset, column, label_names, *, strict):
    """Re-encode a `ClassLabel` column (or a sequence of them, for tags) in the teacher's label order: Hub datasets
    may order their labels differently, and the ids would then mean other classes to the teacher.

    Names are compared without case (`label_name_lookup`). A label the teacher does not have is an error with
    `strict` (NER tags, whose names are standard); otherwise (text classes, whose teachers are often named LABEL_0, LABEL_1, ...) the ids are
    kept with a warning. Columns without names (plain ids) are kept as they are.
    """
    feature = dataset.features[column]
    sequence = hasattr(feature, "feature")
    names = getattr(feature.feature if sequence else feature, "names", None)
    id_of = label_name_lookup(label_names)
    if names is None or [id_of(name) for name in names] == list(range(len(label_names))):
        return dataset
    missing = sorted(name for name in names if id_of(name) is None)
    if missing:
        message = (f"The dataset's labels {missing} are not labels of the teacher ({list(label_names)}).")
        if strict:
            raise ValueError(f"{message} Distil with a teacher fine-tuned on this label set.")
        logger.warning("%s Their ids are kept as they are (dataset label i = teacher label i): check that this is "
                       "what the teacher was trained with.", message)
        return dataset
    remap = [id_of(name) for name in names]
    features = dataset.features.copy()
    relabelled = datasets.ClassLabel(names=[str(name) for name in label_names])
    features[column] = datasets.Sequence(relabelled) if sequence else relabelled

    def realign(row):
        if sequence:
            return {column: [remap[t] for t in row[column]]}
        return {column: remap[row[column]] if row[column] >= 0 else row[column]}  # -1: a hidden test label

    return dataset.map(realign, features=features, desc="aligning labels to the teacher")


def resume_target(value: str | None) -> str | bool | None:
    """`TrainingArguments.resume_from_checkpoint` (a string on the command line) as `Trainer.train` takes it: a
    checkpoint folder, or `True` for "true" (the last complete checkpoint in output_dir)."""
    if value is None or value.strip().lower() in ("", "false", "none"):
        return None
    return True if value.strip().lower() == "true" else value


def scorable_splits(tokenized: dict, num_labels: int) -> dict:
    """The splits other than "train" that the teacher/student comparison scores, checked before any training.

    A split other than "validation" whose labels are all negative has none to score (GLUE's test sets carry -1 for
    their hidden labels): it is left out with a warning. The other splits must hold class ids in [0, num_labels)
    (-100 aside), so that a bad label fails now and not after training.
    """
    splits = {}
    for name, split in tokenized.items():
        if name == "train":
            continue
        labels = [v for row in split["labels"] for v in (row if isinstance(row, list) else [row])]
        if name != "validation" and labels and all(label < 0 for label in labels):
            logger.warning("The %s split has no labels (all negative, as in GLUE's hidden test sets): it is not "
                           "scored.", name)
            continue
        check_label_range(split, num_labels)
        splits[name] = split
    return splits


def format_table(report: dict) -> str:
    keys = [k for k in report["teacher"] if k in report["student"]]
    width = max(len(k) for k in keys + ["latency ms, batch 32"]) + 2
    lines = [f"{'':<{width}}{'teacher':>14}{'student':>14}"]
    for key in keys:
        t, s = report["teacher"][key], report["student"][key]
        lines.append(f"{key:<{width}}{t:>14,}{s:>14,}" if isinstance(t, int) else f"{key:<{width}}{t:>14.4f}{s:>14.4f}")
    speed = report["speed"]
    for b in sorted(int(k.removeprefix("speedup_batch")) for k in speed if k.startswith("speedup_batch")):
        label = f"latency ms, batch {b}"
        lines.append(f"{label:<{width}}{speed[f'teacher_ms_batch{b}']:>14.2f}{speed[f'student_ms_batch{b}']:>14.2f}"
                     f"   ({speed[f'speedup_batch{b}']:.2f}x faster)")
    return "\n".join(lines)
