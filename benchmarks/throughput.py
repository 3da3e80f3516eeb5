"""Training throughput, memory and inference speed: five ways to train the same 3-layer CoNLL-2003 student.

    python throughput.py                  # CPU: interleaved throughput, memory, latency, cache build (27 min on 2
                                          # shared cores)
    python throughput.py --quick          # a smoke run on 300 sentences (2 min on 2 shared cores)
    python throughput.py --f1 --compile   # GPU: also train every method for 2 epochs and score dev/test F1, and
                                          # measure `online_compiled` (torch_compile=True); 8 min on one H100, the
                                          # teacher's fine-tuning included
    python throughput.py --teacher_dtype bfloat16 --methods plain,naive,textbrewer,textbrewer_bf16_teacher,online,cached \
        --results_name throughput_cpu_bf16_teacher   # CPU with bf16 units (AMX): the fast teacher path, and TextBrewer
                                          # with the same bf16 teacher for a same-precision comparison
    python throughput.py --plot_only      # redraw throughput.png (and RESULTS.md) from results/throughput*.json

Run from `benchmarks/`. Every method trains the same student (layers 0, 2, 4 of the fine-tuned 6-layer MiniLM
teacher, `hf_distill.create_student`) on the same CoNLL-2003 batches (length-grouped sampler, batch 32, seed 42,
max_length 128) with the same optimizer (AdamW, lr 1e-4, weight decay 0.01, linear decay after 10% warm-up,
gradient clipping at 1.0):

- plain: stock `transformers.Trainer` on the labels; no teacher. The speed limit.
- naive: `common.NaiveKDTrainer`, the blog-post `compute_loss` override.
- textbrewer: TextBrewer 0.2.1 `GeneralDistiller`, logits only: soft cross-entropy (its `kd_loss_type="ce"`) at
  T = 2 weighted alpha·T² plus the student's own CE weighted 1 - alpha, which has the gradient of hf-distill's
  alpha·T²·KL + (1 - alpha)·CE; both are means over the labelled (first sub-word) positions.
- online: `hf_distill.DistillationTrainer` with the teacher (`ner_conll2003.KD_SETTINGS`).
- cached: `DistillationTrainer(teacher_model=None, teacher_cache=build_teacher_cache(...))`.
- online_compiled (`--compile`): online with `torch_compile=True`.

Measured:
- train samples/s, interleaved (`common.interleaved_rates`): after an untimed warm-up, each round runs the same
  number of optimizer steps of every method in turn, in alternating order; the medians over rounds are reported.
- peak memory of each method: on a GPU `torch.cuda.max_memory_allocated` while that method alone is resident (reset
  before it is built); on a CPU the peak resident set size (VmHWM, reset through /proc/self/clear_refs once the data is
  loaded) of a subprocess that loads the data, builds only that method and trains a few steps.
- the teacher-logit cache's build time against one epoch of plain teacher inference over the training set at the
  same batch size (dataset order, logits copied to the CPU), timed epoch / build / epoch.
- inference latency of the student and the teacher (eval mode, `torch.inference_mode`, bf16 on a GPU, fp32 on a
  CPU), median of many calls in alternating rounds, at batch 1 and batch 32.

Writes results/throughput.json (CPU) or results/throughput_gpu.json (GPU), RESULTS.md, the README results section and
throughput.png. `--quick` writes to .cache/throughput_quick/ only.

References: TextBrewer (Yang et al., ACL 2020 demo; github.com/airaria/TextBrewer); DistilBERT (Sanh et al., 2019) for
the every-other-layer student.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.machinery
import importlib.util
import inspect
import json
import logging
import math
import os
import resource
import shlex
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
from common import (
    CACHE_DIR,
    HERE,
    LAYERS,
    RESULTS_DIR,
    NaiveKDTrainer,
    StepTimer,
    benchmark_training_args,
    interleaved_rates,
    load_or_finetune_teacher,
    machine,
    median,
    minilm_path,
    now,
    num_params,
    score,
    setup_logging,
    write_results,
    write_results_md,
)
from ner_conll2003 import KD_SETTINGS, load_data
from transformers import (
    AutoModelForTokenClassification,
    AutoTokenizer,
    Trainer,
    TrainingArguments,
    get_linear_schedule_with_warmup,
    set_seed,
)

from hf_distill import (
    DistillationArguments,
    DistillationTrainer,
    TeacherLogitCache,
    build_teacher_cache,
    create_student,
)
from hf_distill.speed import compare_latency

logger = logging.getLogger("benchmarks.throughput")
METHODS = ["plain", "naive", "textbrewer", "online", "cached"]
# Opt-in: TextBrewer with its teacher cast to bf16 by hand, the parity check for an online run whose teacher is bf16
# (`--teacher_dtype bfloat16` on a CPU; on a GPU textbrewer's teacher already runs under bf16 autocast).
OPTIONAL_METHODS = ["textbrewer_bf16_teacher"]
TARGETS = {  # name: (ratio or figure, comparison, bound)
    "cached_vs_plain": ("ratios", ">=", 0.95),
    "online_vs_naive": ("ratios", ">=", 1.0),
    "online_vs_textbrewer": ("ratios", ">=", 1.2),
    "cache_build_vs_teacher_epoch": ("ratios", "<=", 1.0),
    "student_inference_speedup": ("ratios", ">=", 1.9),
    "cached_vs_online_test_f1_gap": ("f1", "<=", 0.2),
}
PROBE_PREFIX = "THROUGHPUT_PROBE "


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run on a few hundred sentences (.cache only)")
    p.add_argument("--f1", action="store_true", help="also train every method to completion and score dev/test F1")
    p.add_argument("--compile", action="store_true", help="also measure online_compiled (torch_compile=True)")
    p.add_argument("--plot_only", action="store_true", help="redraw throughput.png from the results files")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated subset of " + ",".join(METHODS + OPTIONAL_METHODS))
    p.add_argument("--teacher_dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="dtype of the online run's teacher (`DistillationArguments.teacher_dtype`); auto: bfloat16 on "
                        "a GPU, float32 on a CPU. bfloat16 on a CPU is hf-distill's fast teacher path where the CPU "
                        "has bf16 matrix units (AMX)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per method per round")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    p.add_argument("--warmup_steps", type=int, default=None, help="untimed steps of every method first")
    p.add_argument("--memory_steps", type=int, default=None, help="steps trained while measuring peak memory")
    p.add_argument("--teacher_epochs", type=float, default=3)
    p.add_argument("--epochs", type=float, default=2, help="epochs of every student (--f1)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--cache_only", action="store_true",
                   help="measure only the cache build against teacher epochs, with an untrained teacher head (speed "
                        "does not depend on the weights); skips fine-tuning")
    p.add_argument("--results_name", default=None,
                   help="results file name (default: throughput, or throughput_gpu on a GPU)")
    p.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # internal: one method's CPU memory subprocess
    args = p.parse_args()
    gpu = torch.cuda.is_available()
    defaults = {  # (steps, rounds, warmup, memory steps)
        "quick": (3, 2, 1, 2), "gpu": (40, 5, 5, 20), "cpu": (16, 5, 2, 4),
    }["quick" if args.quick else "gpu" if gpu else "cpu"]
    for field, value in zip(("steps", "rounds", "warmup_steps", "memory_steps"), defaults, strict=True):
        if getattr(args, field) is None:
            setattr(args, field, value)
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = set(args.methods) - set(METHODS + OPTIONAL_METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {METHODS + OPTIONAL_METHODS}")
    if args.teacher_dtype == "auto":
        args.teacher_dtype = "bfloat16" if gpu else "float32"
    return args


# ---- set-up shared by every method ---------------------------------------------------------------------------------


class Setup:
    """Data, tokenizer and the paths of the teacher, the initial student and the teacher-logit cache."""

    def __init__(self, args):
        self.args = args
        self.gpu = torch.cuda.is_available()
        self.task_name = "ner_conll2003_quick" if args.quick else "ner_conll2003"
        self.name = "throughput_quick" if args.quick else "throughput"  # output folder under .cache
        self.dir = CACHE_DIR / self.name
        self.tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        data = load_data(self.tokenizer, args.max_length, quick=args.quick)
        self.train, self.dev, self.test = data["train"], data["dev"], data["test"]
        self.collator, self.metrics = data["collator"], data["metrics"]
        self.label_kwargs = dict(num_labels=len(data["label_names"]), id2label=data["id2label"],
                                 label2id=data["label2id"])
        self.teacher_dir = CACHE_DIR / self.task_name / "teacher"
        self.student_dir = self.dir / "student_init"
        self.cache_dir = self.dir / "teacher_logits"
        self._cache = None

    def training_args(self, cls, out, **extra):
        return benchmark_training_args(cls, self.name, out, self.args, self.args.epochs, **extra)

    def student(self):
        return AutoModelForTokenClassification.from_pretrained(self.student_dir)

    def teacher(self):
        return AutoModelForTokenClassification.from_pretrained(self.teacher_dir).eval()

    def cache(self) -> TeacherLogitCache:
        if self._cache is None:
            self._cache = TeacherLogitCache.load(self.cache_dir, max_length=self.args.max_length)
        return self._cache


# ---- the methods ----------------------------------------------------------------------------------------------------


class TrainerRun:
    """A Trainer-based method: `run(steps)` trains that many optimizer steps and returns `(samples, seconds)`;
    `train_to_end(epochs)` trains the full epochs."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.timer = StepTimer()
        trainer.add_callback(self.timer)

    def __call__(self, steps: int) -> tuple[int, float]:
        self.trainer.args.max_steps = steps
        self.timer.start = self.timer.end = None
        set_seed(self.trainer.args.seed)  # the same batches every round, as TextBrewer's run re-seeds for its own
        self.trainer.train()
        return steps * self.trainer.args.per_device_train_batch_size, self.timer.end - self.timer.start

    def train_to_end(self, epochs: float) -> float:
        self.trainer.args.max_steps = -1
        self.trainer.args.num_train_epochs = epochs
        start = time.perf_counter()
        self.trainer.train()
        return time.perf_counter() - start

    @property
    def scorer(self) -> Trainer:
        return self.trainer


def import_textbrewer():
    """Import TextBrewer 0.2.1 as it is (it predates Transformers 5 but imports nothing from it).

    Its `distiller_utils` imports `SummaryWriter` from tensorboardX, else from `torch.utils.tensorboard`, at import time,
    although it only writes TensorBoard logs when `TrainingConfig.log_dir` is set. Where neither tensorboardX nor
    tensorboard is installed, a stand-in `tensorboardX` module is registered first; this benchmark never sets `log_dir`.
    """
    if ("tensorboardX" not in sys.modules and importlib.util.find_spec("tensorboardX") is None
            and importlib.util.find_spec("tensorboard") is None):
        shim = types.ModuleType("tensorboardX")
        shim.__spec__ = importlib.machinery.ModuleSpec("tensorboardX", None)

        class SummaryWriter:
            def __init__(self, *args, **kwargs):
                raise RuntimeError("tensorboard is not installed; leave TextBrewer's `log_dir` at None.")

        shim.SummaryWriter = SummaryWriter
        sys.modules["tensorboardX"] = shim
        logger.info("tensorboard is not installed: registered a stand-in tensorboardX module for TextBrewer")
    try:
        import textbrewer
    except ImportError as err:
        raise SystemExit("The textbrewer method needs TextBrewer: `pip install textbrewer==0.2.1.post1`.") from err
    return textbrewer


class TextBrewerRun:
    """TextBrewer's `GeneralDistiller` (logits only) with the adaptors a Transformers 5 model needs.

    A helper `Trainer` over the same student and arguments supplies what the Trainer methods get: the same
    length-grouped batches (`get_train_dataloader`, on the device), the same AdamW parameter groups
    (`create_optimizer`), and the scoring. Steps are timed as the Trainer runs are (`common.StepTimer`): from the first batch
    handed to the distiller to the end of the last optimizer step. The teacher gets the batch without `labels` (so it computes no loss); the
    student gets it with them and its own CE is TextBrewer's hard-label loss. On a GPU both forwards run under bf16
    autocast, as Trainer's `bf16=True` runs the student, and the logits are cast to fp32 for the loss. Checkpointing
    (`save_and_callback` writes the student's state dict to disk) is switched off, as in the Trainer runs.
    """

    def __init__(self, setup: Setup, student, teacher, alpha: float, temperature: float):
        textbrewer = import_textbrewer()
        self.setup = setup
        self.helper = Trainer(model=student, args=setup.training_args(TrainingArguments, "textbrewer"),
                              train_dataset=setup.train, data_collator=setup.collator,
                              compute_metrics=setup.metrics)
        device = self.helper.args.device
        teacher.to(device).eval().requires_grad_(False)
        if setup.gpu:
            for model in (student, teacher):
                model.forward = torch.autocast("cuda", dtype=torch.bfloat16)(model.forward)
        self.mask = None

        def adaptor_t(batch, outputs):
            return {"logits": outputs["logits"].float(), "logits_mask": self.mask}

        def adaptor_s(batch, outputs):
            return {"logits": outputs["logits"].float(), "logits_mask": self.mask, "losses": outputs["loss"]}

        run = self

        class Distiller(textbrewer.GeneralDistiller):
            def save_and_callback(self, global_step, step, epoch, callback):
                run.end = now(setup.gpu)  # called once, after the last optimizer step (ckpt_steps = steps)
                if callback is not None:
                    callback(model=self.model_S, step=global_step)

        out = setup.dir / "textbrewer"
        train_config = textbrewer.TrainingConfig(device=str(device), output_dir=str(out), log_dir=None,
                                                 ckpt_steps=1, fp16=False)
        distill_config = textbrewer.DistillationConfig(
            temperature=temperature, kd_loss_type="ce", kd_loss_weight=alpha * temperature**2,
            hard_label_weight=1 - alpha,
        )
        self.distiller = Distiller(train_config, distill_config, teacher, student, adaptor_t, adaptor_s)
        self.loader = self.helper.get_train_dataloader()
        self.optimizer = self.helper.create_optimizer()
        self.student = student
        self.start = self.end = None

    def _split(self, batch):
        if self.start is None:
            self.start = now(self.setup.gpu)
        self.mask = batch["labels"].ne(-100)
        return {"teacher": {k: v for k, v in batch.items() if k != "labels"}, "student": batch}

    def _train(self, total_steps: int, **how) -> None:
        warmup = math.ceil(0.1 * total_steps)
        set_seed(self.setup.args.seed)  # the same batches every round, as the Trainer runs re-seed for theirs
        with self.distiller:
            self.distiller.train(
                self.optimizer, self.loader, scheduler_class=get_linear_schedule_with_warmup,
                scheduler_args={"num_warmup_steps": warmup, "num_training_steps": total_steps}, max_grad_norm=1.0,
                batch_postprocessor=self._split, **how,
            )

    def __call__(self, steps: int) -> tuple[int, float]:
        self.distiller.t_config.ckpt_steps = steps
        self.start = self.end = None
        self._train(steps, num_steps=steps)
        return steps * self.setup.args.batch_size, self.end - self.start

    def train_to_end(self, epochs: float) -> float:
        start = time.perf_counter()
        epochs = max(1, round(epochs))  # TextBrewer trains whole epochs
        self._train(len(self.loader) * epochs, num_epochs=epochs)
        return time.perf_counter() - start

    @property
    def scorer(self) -> Trainer:
        return self.helper


def build(method: str, setup: Setup):
    """A fresh run of `method`: a callable `run(steps) -> samples`, with `train_to_end(epochs)` and `scorer`."""
    set_seed(setup.args.seed)
    student = setup.student()
    common = dict(train_dataset=setup.train, data_collator=setup.collator, compute_metrics=setup.metrics)
    kd = dict(KD_SETTINGS)
    if method == "plain":
        return TrainerRun(Trainer(model=student, args=setup.training_args(TrainingArguments, method), **common))
    if method == "naive":
        return TrainerRun(NaiveKDTrainer(model=student, teacher=setup.teacher(),
                                         args=setup.training_args(TrainingArguments, method), **common))
    if method == "textbrewer":
        return TextBrewerRun(setup, student, setup.teacher(), kd["alpha"], kd["temperature"])
    if method == "textbrewer_bf16_teacher":
        return TextBrewerRun(setup, student, setup.teacher().to(torch.bfloat16), kd["alpha"], kd["temperature"])
    if setup.args.teacher_dtype != "float32":
        kd["teacher_dtype"] = setup.args.teacher_dtype
    if method == "online":
        return TrainerRun(DistillationTrainer(model=student, teacher_model=setup.teacher(),
                                              args=setup.training_args(DistillationArguments, method, **kd),
                                              processing_class=setup.tokenizer, **common))
    if method == "online_compiled":
        return TrainerRun(DistillationTrainer(
            model=student, teacher_model=setup.teacher(),
            args=setup.training_args(DistillationArguments, method, torch_compile=True, **kd),
            processing_class=setup.tokenizer, **common))
    if method == "cached":  # no teacher runs, so none to cast (the trainer refuses a teacher_dtype)
        kd.pop("teacher_dtype", None)
        return TrainerRun(DistillationTrainer(model=student, teacher_model=None, teacher_cache=setup.cache(),
                                              args=setup.training_args(DistillationArguments, method, **kd),
                                              processing_class=setup.tokenizer, **common))
    raise ValueError(method)


# ---- memory ---------------------------------------------------------------------------------------------------------


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def probe(args) -> None:
    """Subprocess entry (CPU): peak RSS while building `args.probe` and training `args.memory_steps` steps."""
    setup = Setup(args)
    gc.collect()
    baseline = _rss_mb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        how = "VmHWM, reset after loading the data"
    except OSError:
        how = "ru_maxrss (VmHWM could not be reset), includes loading the data"
    run = build(args.probe, setup)
    run(args.memory_steps)
    peak = _rss_mb("VmHWM") if how.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(PROBE_PREFIX + json.dumps({"peak_mb": peak, "baseline_mb": baseline, "how": how}), flush=True)


def cpu_peak_memory(method: str, args) -> tuple[dict, str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--probe", method, "--memory_steps", str(args.memory_steps),
               "--batch_size", str(args.batch_size), "--learning_rate", str(args.learning_rate),
               "--max_length", str(args.max_length), "--seed", str(args.seed),
               "--teacher_dtype", args.teacher_dtype] + (["--quick"] if args.quick else [])
    done = subprocess.run(command, capture_output=True, text=True, cwd=HERE)
    lines = [line for line in done.stdout.splitlines() if line.startswith(PROBE_PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"memory probe of {method} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    found = json.loads(lines[-1][len(PROBE_PREFIX):])
    how = f"peak RSS of a subprocess ({found['how']}) over building the method alone and {args.memory_steps} steps"
    return {
        "peak_memory_mb": round(found["peak_mb"], 1),
        "peak_memory_above_data_mb": round(found["peak_mb"] - found["baseline_mb"], 1),
    }, how


def gpu_measure(method: str, setup: Setup, epochs: float | None) -> tuple[dict, object, str]:
    """Build `method` alone on the GPU and train it (`epochs`, or `memory_steps` steps): its peak allocated memory."""
    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run = build(method, setup)
    record = {}
    if epochs:
        seconds = run.train_to_end(epochs)
        record = {"f1_run_train_seconds": round(seconds, 1),
                  "f1_run_samples_per_second": round(len(setup.train) * epochs / seconds, 1)}
        what = f"the whole {epochs:g}-epoch run"
    else:
        run(setup.args.memory_steps)
        what = f"{setup.args.memory_steps} steps"
    record["peak_memory_mb"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
    return record, run, f"torch.cuda.max_memory_allocated over building the method alone and {what}"


def release() -> None:
    """Return freed memory (call after `del` of the last references)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- teacher inference, cache build, latency --------------------------------------------------------------------


def teacher_epoch_seconds(teacher, setup: Setup, window: int | None = None) -> float:
    """One pass of the teacher over the training set at the training batch size, logits copied to the CPU: in dataset
    order, or with `window` in windows of that many consecutive rows sorted by length inside each (as
    `build_teacher_cache` batches them when it has a `sort_window`), so that batches carry little padding."""
    device = next(teacher.parameters()).device
    order = list(range(len(setup.train)))
    if window:
        lengths = [len(ids) for ids in setup.train["input_ids"]]
        order = [i for start in range(0, len(order), window)
                 for i in sorted(range(start, min(start + window, len(order))), key=lengths.__getitem__)]
    loader = torch.utils.data.DataLoader(setup.train, batch_size=setup.args.batch_size, sampler=order,
                                         collate_fn=setup.collator)
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in loader:
            logits = teacher(**{k: v.to(device) for k, v in batch.items() if k != "labels"})["logits"]
            logits.float().cpu()
    return time.perf_counter() - start


def cache_build_vs_epoch(teacher, setup: Setup, builds: int) -> dict:
    """Time epoch / build / epoch / ... (`builds` cache builds between teacher inference epochs), after 20 untimed
    batches (CUDA and allocator warm-up); each build is compared with the mean of the epochs either side of it, and
    the median of those ratios is reported."""
    epochs, times = [], []
    warm = torch.utils.data.Subset(setup.train, range(min(len(setup.train), 20 * setup.args.batch_size)))
    teacher_epoch_seconds(teacher, types.SimpleNamespace(train=warm, args=setup.args, collator=setup.collator))
    for i in range(2 * builds + 1):
        if i % 2 == 0:
            epochs.append(teacher_epoch_seconds(teacher, setup))
            logger.info("teacher inference epoch: %.1f s", epochs[-1])
            continue
        start = time.perf_counter()
        cache = build_teacher_cache(teacher, setup.train, setup.collator, setup.cache_dir,
                                    tokenizer=setup.tokenizer, max_length=setup.args.max_length,
                                    batch_size=setup.args.batch_size, overwrite=True, progress_bar=False)
        times.append(time.perf_counter() - start)
        logger.info("cache build: %.1f s (build_seconds %.1f)", times[-1], cache.build_seconds)
    ratios = [t / ((epochs[i] + epochs[i + 1]) / 2) for i, t in enumerate(times)]
    extra = {}
    window = inspect.signature(build_teacher_cache).parameters.get("sort_window")
    if window is not None and setup.gpu:  # a further pass; on a 2-core CPU it costs minutes
        sorted_epoch = teacher_epoch_seconds(teacher, setup, window=window.default)
        logger.info("teacher inference epoch, length-sorted windows of %d: %.1f s", window.default, sorted_epoch)
        extra = {"teacher_epoch_length_sorted_seconds": round(sorted_epoch, 2),
                 "cache_build_vs_length_sorted_epoch": round(median(times) / sorted_epoch, 3),
                 "sort_window": window.default}
    return {**extra,
        "teacher_epoch_seconds": [round(s, 2) for s in epochs],
        "cache_build_seconds": [round(s, 2) for s in times],
        "ratios": [round(r, 3) for r in ratios],
        "ratio": median(ratios),
        "cache_size_mb": round(sum(f.stat().st_size for f in setup.cache_dir.iterdir()) / 2**20, 1),
        "teacher_dtype": str(next(teacher.parameters()).dtype).replace("torch.", ""),
        "how": f"batch {setup.args.batch_size}; the epoch runs the teacher over the training set in dataset order "
               "(DataLoader + the same collator) and copies the logits to the CPU (the length-sorted epoch takes the "
               "rows in the order the cache build batches them); the build is `build_teacher_cache` "
               "(fingerprints, forward, writing the memory-mapped arrays); each build against the mean of the epochs "
               "either side of it",
    }


def latency(student, teacher, setup: Setup) -> dict:
    """Median latency in ms of student and teacher at batch 1 and 32, in alternating rounds."""
    test = setup.test
    lengths = sorted(range(len(test)), key=lambda i: len(test[i]["input_ids"]))
    batches = {1: setup.collator([test[lengths[len(lengths) // 2]]]), 32: setup.collator([test[i] for i in range(32)])}
    rounds, reps = (2, 3) if setup.args.quick else (6, 10)
    out = {}
    for size, batch in batches.items():
        timed = compare_latency(teacher, student, batch, rounds=rounds, repeats=reps)  # the library's side-by-side
        out[f"batch_{size}"] = {
            "student_ms": round(timed.student_ms, 3), "teacher_ms": round(timed.teacher_ms, 3),
            "speedup": round(timed.speedup, 3), "tokens": int(batch["input_ids"].shape[1]),
        }
        logger.info("latency batch %d: %s", size, out[f"batch_{size}"])
    out["dtype"] = str(next(student.parameters()).dtype).replace("torch.", "")
    out["how"] = (f"eval mode, torch.inference_mode; median over {rounds} alternating rounds of the median of {reps} "
                  "calls (after warm-up); speedup = median over rounds of teacher/student in the same round; batch 1 = the test sentence of median length, batch 32 = the first 32 test "
                  "sentences padded to the longest")
    return out


# ---- results --------------------------------------------------------------------------------------------------------


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a[i] / b[i]: each round's two figures were measured a few seconds apart."""
    return round(median([x / y for x, y in zip(a, b, strict=True)]), 3)


def targets(results: dict) -> dict:
    out = {}
    for name, (where, comparison, bound) in TARGETS.items():
        value = results.get(where, {}).get(name)
        if value is None:
            continue
        passed = value >= bound if comparison == ">=" else value <= bound
        out[name] = {"measured": value, "target": f"{comparison} {bound}", "pass": passed}
    return out


def save(setup: Setup, results: dict) -> None:
    results["targets"] = targets(results)
    results["command"] = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    if setup.args.quick:
        path = setup.dir / "results.json"
        path.write_text(json.dumps(results, indent=2) + "\n")
        plot([path], setup.dir / "throughput.png")
    else:
        path = write_results(setup.args.results_name or results_name(), results)
        plot(sorted(RESULTS_DIR.glob("throughput*.json")), HERE / "throughput.png")
    logger.info("wrote %s", path)


def code_version() -> dict:
    """The hf_distill code measured: the git commit (when there is a checkout) and a hash of hf_distill/*.py."""
    import hashlib

    package = HERE.parent / "hf_distill"
    digest = hashlib.sha256()
    for path in sorted(package.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    out = {"hf_distill_sha256": digest.hexdigest()[:16]}
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", str(package)], cwd=HERE, capture_output=True,
                               text=True)
        if head.returncode == 0:
            out["git_head"] = head.stdout.strip()
            out["hf_distill_uncommitted_changes"] = bool(dirty.stdout.strip())
    except OSError:
        pass
    return out


def results_name() -> str:
    return "throughput_gpu" if torch.cuda.is_available() else "throughput"


def plot(paths: list[Path], out: Path) -> None:
    """Bars of train samples/s per method (one panel per results file) and test F1 per method where measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for path in paths:
        data = json.loads(path.read_text())
        runs = data.get("runs", {})
        device = "GPU" if "gpu" in path.stem else "CPU"
        label = data.get("device_label", device)
        speed = {m: r["train_samples_per_second"] for m, r in runs.items() if "train_samples_per_second" in r}
        if speed:
            panels.append((f"train samples/s, {label}", speed, "samples/s"))
        f1 = {m: r["test_f1"] for m, r in runs.items() if "test_f1" in r}
        if f1:
            panels.append((f"test F1 after {data.get('settings', {}).get('epochs', 2):g} epochs, {label}", f1, "F1"))
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for ax, (title, values, unit) in zip(axes[0], panels, strict=True):
        names = list(values)
        bars = ax.bar(names, [values[n] for n in names],
                      color=["#1f77b4" if n in ("online", "cached", "online_compiled") else "#999999" for n in names])
        ax.bar_label(bars, labels=[f"{values[n]:.1f}" for n in names], fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(unit)
        if unit == "F1":
            low = min(values.values())
            ax.set_ylim(max(0, low - 5), max(values.values()) + 1.5)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle("hf-distill vs alternatives: 3-layer CoNLL-2003 student (blue: hf-distill)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


# ---- main -----------------------------------------------------------------------------------------------------------


def main():
    args = parse_args()
    if args.probe:
        logging.basicConfig(level=logging.WARNING)
        probe(args)
        return
    if args.plot_only:
        plot(sorted(RESULTS_DIR.glob("throughput*.json")), HERE / "throughput.png")
        write_results_md()
        return
    setup_logging("throughput_quick" if args.quick else results_name())
    logger.info("%s", machine())
    load_start = os.getloadavg()
    setup = Setup(args)
    gpu = setup.gpu
    results = {
        "machine": machine(),
        "device_label": (f"{torch.cuda.get_device_name()}, bf16" if gpu else f"{os.cpu_count()} CPU cores, fp32"
                         + (", online teacher bf16" if args.teacher_dtype == "bfloat16" else "")),
        "code": code_version(),
        "runs": {}, "ratios": {},
        "settings": {
            "batch_size": args.batch_size, "learning_rate": args.learning_rate, "seed": args.seed,
            "max_length": args.max_length, "student_layers": LAYERS, "kd": KD_SETTINGS,
            "teacher_dtype_online": args.teacher_dtype, "train_examples": len(setup.train),
            "steps_per_round": args.steps, "rounds": args.rounds, "warmup_steps": args.warmup_steps,
            "memory_steps": args.memory_steps, "epochs": args.epochs, "torch_threads": torch.get_num_threads(),
            "textbrewer": {"kd_loss_type": "ce", "temperature": KD_SETTINGS["temperature"],
                           "kd_loss_weight": KD_SETTINGS["alpha"] * KD_SETTINGS["temperature"] ** 2,
                           "hard_label_weight": 1 - KD_SETTINGS["alpha"]},
        },
        "notes": (
            "Samples/s are medians over interleaved rounds, each timed from the start of a run's first optimizer step "
            "to the end of its last (each train() call's set-up left out); ratios are medians of the per-round "
            "ratios. Each round starts from the first batches of the "
            "length-grouped sampler (the longest batch first), so absolute samples/s are below an epoch's average "
            "and the ratios are the figures to compare. naive runs its teacher as the blog post does: moved to the "
            "device by hand and called inside compute_loss, which Transformers 5 does not autocast, so on a GPU its "
            "teacher runs in fp32 while online runs it in bf16 (teacher_dtype) and textbrewer under bf16 autocast; "
            "on a CPU every method trains in fp32 (see below for --teacher_dtype bfloat16). "
            "TextBrewer 0.2.1 ran unmodified under Transformers 5 with adaptors (logits + labelled-position mask, "
            "teacher batch without labels) and, where tensorboard is missing, a stand-in tensorboardX module."
            + ("" if gpu or args.teacher_dtype != "bfloat16" else
               " On this CPU, online (and cached, which runs no teacher) had teacher_dtype='bfloat16' "
               "(--teacher_dtype), hf-distill's fast teacher path for CPUs with bf16 matrix units, while the "
               "student trained in fp32 in every method; plain, naive and textbrewer ran as they are shipped (fp32 "
               "on a CPU: TextBrewer's own fp16 switch needs apex on CUDA), and textbrewer_bf16_teacher is "
               "TextBrewer with its teacher cast to bf16 by hand, the same-precision comparison "
               "(online_vs_textbrewer_bf16_teacher). The cache build (cache_build) and the latencies (latency_ms) "
               "use the fp32 teacher on a CPU.")
        ),
    }

    if args.cache_only:
        teacher = AutoModelForTokenClassification.from_pretrained(minilm_path(), **setup.label_kwargs)
        teacher = teacher.to("cuda" if gpu else "cpu", dtype=torch.bfloat16 if gpu else torch.float32).eval()
        results["cache_build"] = cache_build_vs_epoch(teacher, setup, builds=1 if args.quick else 2)
        results["ratios"]["cache_build_vs_teacher_epoch"] = round(results["cache_build"].pop("ratio"), 3)
        results["runs"] = {}
        save(setup, results)
        logger.info("cache build %s", results["cache_build"])
        return

    # Teacher and the shared initial student.
    teacher, teacher_record = load_or_finetune_teacher(
        setup.task_name, args, AutoModelForTokenClassification, setup.label_kwargs, setup.train, setup.dev,
        setup.test, setup.collator, setup.metrics, "f1", score_teacher=args.f1)
    results["runs"]["teacher"] = {k: v for k, v in teacher_record.items() if k in ("dev_f1", "test_f1", "params")}
    set_seed(args.seed)
    student = create_student(teacher, LAYERS)
    student.save_pretrained(setup.student_dir)
    results["settings"]["student_params"] = num_params(student)
    device = torch.device("cuda") if gpu else torch.device("cpu")

    # Cache build vs one epoch of teacher inference: bf16 on a GPU, as the online run's teacher; fp32 on a CPU, even
    # with --teacher_dtype bfloat16 (the notes say so).
    cache_teacher = copy.deepcopy(teacher).to(device, dtype=torch.bfloat16 if gpu else torch.float32).eval()
    cache_record = cache_build_vs_epoch(cache_teacher, setup, builds=1 if args.quick else 2)
    results["cache_build"] = cache_record
    results["ratios"]["cache_build_vs_teacher_epoch"] = round(cache_record.pop("ratio"), 3)

    # Inference latency: student vs teacher.
    infer_student = copy.deepcopy(student).to(device, dtype=cache_teacher.dtype).eval()
    results["latency_ms"] = latency(infer_student, cache_teacher, setup)
    results["ratios"]["student_inference_speedup"] = results["latency_ms"]["batch_32"]["speedup"]
    results["ratios"]["student_inference_speedup_batch_1"] = results["latency_ms"]["batch_1"]["speedup"]
    del infer_student, cache_teacher, student, teacher
    release()

    # Interleaved training throughput.
    runs = {}
    for method in args.methods:
        logger.info("building %s", method)
        try:
            runs[method] = build(method, setup)
            logger.info("warm-up: %s, %d steps", method, args.warmup_steps)
            runs[method](args.warmup_steps)
        except Exception as error:  # one broken method must not cost the others' figures
            logger.exception("%s failed", method)
            results["runs"][method] = {"error": repr(error)[:300]}
            runs.pop(method, None)
    rates = interleaved_rates(runs, steps=args.steps, rounds=args.rounds)
    for method, values in rates.items():
        results["runs"][method] = {"train_samples_per_second": round(median(values), 2),
                                   "rounds_samples_per_second": [round(v, 2) for v in values]}
    for name, (a, b) in {"cached_vs_plain": ("cached", "plain"), "online_vs_naive": ("online", "naive"),
                         "online_vs_textbrewer": ("online", "textbrewer"),
                         "online_vs_textbrewer_bf16_teacher": ("online", "textbrewer_bf16_teacher")}.items():
        if a in rates and b in rates:
            results["ratios"][name] = paired_ratio(rates[a], rates[b])
    runs_measured = sorted(runs, key=lambda m: m not in ("online", "cached"))  # the F1 target's pair first
    del runs
    release()
    save(setup, results)

    # Peak memory (and, with --f1, dev/test F1 after full training).
    for method in runs_measured:
        logger.info("memory%s: %s", " and F1" if args.f1 else "", method)
        try:
            record, how = memory_and_f1(method, setup)
        except Exception as error:
            logger.exception("memory/F1 of %s failed", method)
            results["runs"][method]["error"] = repr(error)[:300]
            continue
        results["runs"][method].update(record)
        results["memory_measured_as"] = how
        logger.info("%s %s", method, results["runs"][method])
        save(setup, results)
    if args.f1 and all("test_f1" in results["runs"].get(m, {}) for m in ("online", "cached")):
        gap = abs(results["runs"]["online"]["test_f1"] - results["runs"]["cached"]["test_f1"])
        results.setdefault("f1", {})["cached_vs_online_test_f1_gap"] = round(gap, 2)
    save(setup, results)

    # torch.compile: online vs online_compiled, interleaved on their own.
    if args.compile:
        try:
            compile_comparison(setup, results)
        except Exception as error:
            logger.exception("the torch.compile comparison failed")
            results["compile"] = {"error": repr(error)[:300]}
        release()
        save(setup, results)
    results["load_average"] = {"start": [round(x, 2) for x in load_start],
                               "end": [round(x, 2) for x in os.getloadavg()]}
    save(setup, results)
    logger.info("ratios %s", results["ratios"])
    logger.info("targets %s", results["targets"])


def memory_and_f1(method: str, setup: Setup) -> tuple[dict, str]:
    """Peak memory of `method` alone and, with --f1, its dev/test F1 after `args.epochs` epochs."""
    args = setup.args
    if setup.gpu:
        record, run, how = gpu_measure(method, setup, args.epochs if args.f1 else None)
        if args.f1:
            record.update(score(run.scorer, setup.dev, setup.test, "f1"))
        del run
        release()
        return record, how
    record, how = cpu_peak_memory(method, args)
    if args.f1:
        run = build(method, setup)
        seconds = run.train_to_end(args.epochs)
        record.update(score(run.scorer, setup.dev, setup.test, "f1"), f1_run_train_seconds=round(seconds, 1))
        del run
        release()
    return record, how


def compile_comparison(setup: Setup, results: dict) -> None:
    """online vs online_compiled (Trainer's torch_compile=True), interleaved on their own after a longer warm-up."""
    args = setup.args
    pair = {"online": build("online", setup), "online_compiled": build("online_compiled", setup)}
    start = time.perf_counter()
    pair["online_compiled"](max(args.warmup_steps, 10))  # compiles, and recompiles for a few sequence lengths
    compile_seconds = time.perf_counter() - start
    rates = interleaved_rates(pair, steps=args.steps, rounds=args.rounds, warmup_steps=args.warmup_steps)
    results["runs"]["online_compiled"] = {
        "train_samples_per_second": round(median(rates["online_compiled"]), 2),
        "rounds_samples_per_second": [round(v, 2) for v in rates["online_compiled"]],
    }
    results["compile"] = {
        "online_samples_per_second": round(median(rates["online"]), 2),
        "online_compiled_samples_per_second": round(median(rates["online_compiled"]), 2),
        "first_10_steps_seconds": round(compile_seconds, 1),
        "how": "Trainer torch_compile=True (Accelerate also compiles the teacher it prepares); measured in its own "
               "interleaving with a fresh online run, after the warm-up",
    }
    results["ratios"]["online_compiled_vs_online"] = paired_ratio(rates["online_compiled"], rates["online"])


if __name__ == "__main__":
    main()
