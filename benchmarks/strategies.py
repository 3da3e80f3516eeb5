"""Distillation strategies beyond logits on CoNLL-2003, at equal epochs against `student_kd`.

    python benchmarks/strategies.py                  # every run (meant for a GPU; hours on 2 CPU cores)
    python benchmarks/strategies.py --quick          # a smoke run on a few hundred sentences
    python benchmarks/strategies.py --runs hidden_kd,attention_kd   # some runs; others in the JSON are kept
    python benchmarks/strategies.py --results_name strategies_cpu --cache_name strategies_cpu \
        --teacher_from .cache/ner_conll2003/teacher --kd '{"alpha": 0.95}' --runs student_kd,ensemble_kd
                                                     # on another machine, into a file of its own
    python benchmarks/strategies.py --runs '' --variants '{"ensemble3_hidden_attention_kd": {"teachers": 3,
        "teacher_ensemble": "confidence", "hidden_distill_weight": 1.0, "attention_distill_weight": 1.0}}'
                                                     # a combination: three teachers' confidence-weighted targets,
                                                     # hidden states and attention maps of the first

Every student has 3 layers and trains for `--epochs` epochs with the same batch, learning rate and seed. Runs:
- student_kd: logit KD as in benchmarks/ner_conll2003.py (alpha 0.8, T 2, or what `--kd` sets), student = teacher
  layers 0, 2, 4. The baseline, re-run here so every figure comes from the same machine and run; every strategy
  adds its own settings on top of these;
- hidden_kd: + hidden-state MSE (uniform layer map 1:2, 2:4, 3:6), weight --hidden_weight;
- attention_kd: + attention-map KL (the library's default map: each layer of this cut student against the teacher
  layer it was copied from, 1:1, 2:3, 3:5), weight --attention_weight, student without attention dropout;
- ensemble_kd: two teachers fine-tuned with seeds 42 and 43, their softened distributions averaged (a --variants
  entry with "teachers": N uses N teachers, seeds 42 to 41 + N);
- ema_self: self-distillation, no second model: the teacher is an EMA of the student (decay --ema_decay);
- born_again: one born-again generation: a fresh student distilled from the trained student_kd;
- augment_kd: student_kd plus seeded token masking/replacement, the teacher labelling the augmented inputs;
- low_label_kd: 10% of the training sentences labelled, the other 90% as unlabelled text (mix_unlabeled), all
  sub-words distilled, pseudo-labels above --pseudo_threshold; student cut from the pretrained base (not from the
  teacher, whose layers have seen every label);
- student_10pct: the same base-initialised student fine-tuned on the 10% alone, for as many optimizer steps as
  low_label_kd (so 10× the epochs: the fair, better-trained baseline).
The teacher of low_label_kd is the full-data teacher (the usual setting: a strong teacher exists, labels for the
student are scarce). `--strict_low_label` also runs low_label_kd_strict, whose teacher saw only the 10%.

Writes benchmarks/results/strategies.json ({"runs": {name: {"dev_f1", "test_f1", "train_samples_per_second"}}})
and benchmarks/RESULTS.md. With `--seed N --results_name <name>_seed<N>`, a run is replicated at another seed; the
suite's file then also holds `seed_means` and targets judged on them.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import torch
from common import (
    CACHE_DIR,
    DEFAULT_SEED,
    RESULTS_DIR,
    device_kwargs,
    machine,
    minilm_path,
    own_teacher,
    score,
    seed_means,
    setup_logging,
    write_results,
)
from ner_conll2003 import KD_SETTINGS, load_data
from transformers import AutoModelForTokenClassification, AutoTokenizer, Trainer, TrainingArguments, set_seed

from hf_distill import DistillationArguments, DistillationTrainer, create_student, mix_unlabeled

logger = logging.getLogger("benchmarks.strategies")
LAYERS = [0, 2, 4]
ALL_RUNS = ("student_kd", "hidden_kd", "attention_kd", "ensemble_kd", "ema_self", "born_again", "augment_kd",
            "low_label_kd", "student_10pct")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny smoke run; writes results/strategies_quick.json")
    p.add_argument("--runs", default=",".join(ALL_RUNS))
    p.add_argument("--teacher_epochs", type=float, default=3)
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--hidden_weight", type=float, default=1.0)
    p.add_argument("--attention_weight", type=float, default=1.0)
    p.add_argument("--ema_decay", type=float, default=0.999)
    p.add_argument("--label_fraction", type=float, default=0.1)
    p.add_argument("--pseudo_threshold", type=float, default=0.9)
    p.add_argument("--strict_low_label", action="store_true")
    p.add_argument("--cache_name", default=None, help="folder under benchmarks/.cache (default: per task/quick)")
    p.add_argument("--results_name", default=None,
                   help="results/<name>.json to write (default: strategies, or strategies_quick with --quick); give "
                        "runs on another machine a file of their own, so that one file never mixes machines")
    p.add_argument("--teacher_from", default=None,
                   help="folder of a teacher already fine-tuned on the task with the same seed and epochs (e.g. "
                        "benchmarks/.cache/ner_conll2003/teacher), used instead of fine-tuning one again")
    p.add_argument("--kd", default="{}",
                   help="JSON overriding the KD settings of every run, e.g. the core benchmark's chosen student_kd "
                        "settings ('{\"alpha\": 0.95}')")
    p.add_argument("--variants", default="{}",
                   help="JSON {name: settings} of extra strategy runs: DistillationArguments fields on top of the KD "
                        "settings, plus \"teachers\": N for an N-teacher ensemble (seeds 42, 43, ...)")
    args = p.parse_args()
    unknown = [r for r in args.runs.split(",") if r and r not in ALL_RUNS]
    if unknown:
        p.error(f"--runs names {unknown}, which are not runs of this benchmark ({', '.join(ALL_RUNS)}); give "
                "--runs '' to train only the --variants")
    return args


def main():
    args = parse_args()
    name = args.results_name or ("strategies_quick" if args.quick else "strategies")
    kd_settings = {**KD_SETTINGS, **json.loads(args.kd)}
    setup_logging(name)
    cache = CACHE_DIR / (args.cache_name or name)
    base_path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    data = load_data(tokenizer, args.max_length, quick=args.quick)
    train, dev, test, collator, metrics = (data[k] for k in ("train", "dev", "test", "collator", "metrics"))
    label_kwargs = dict(num_labels=len(data["label_names"]), id2label=data["id2label"], label2id=data["label2id"])

    def training_args(cls, out, epochs, dataset_size=None, **extra):
        """Shared settings; `extra` (a run's settings, which may include e.g. `learning_rate` or `seed`) wins."""
        shared = dict(
            output_dir=str(cache / out), num_train_epochs=epochs, learning_rate=args.learning_rate,
            per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64, warmup_steps=0.1,
            weight_decay=0.01, seed=args.seed, data_seed=args.seed,
            train_sampling_strategy="group_by_length", logging_steps=50, save_strategy="no", eval_strategy="no",
            report_to="none", disable_tqdm=True, **device_kwargs(),
        )
        return cls(**{**shared, **extra})

    def record(trainer, started):
        out = trainer.train()
        rec = {"train_seconds": round(time.perf_counter() - started, 1),
               "train_samples_per_second": round(out.metrics["train_samples_per_second"], 2)}
        rec.update(score(trainer, dev, test, "f1"))
        return rec

    def teacher_for(tag, seed, dataset, epochs):
        folder = Path(args.teacher_from) if tag == "teacher" and args.teacher_from else cache / tag
        if folder == Path(args.teacher_from or "") and not (folder / "config.json").exists():
            raise SystemExit(f"--teacher_from {folder} holds no model (no config.json): run "
                             "benchmarks/ner_conll2003.py first, or leave --teacher_from out to fine-tune one here.")
        if (folder / "config.json").exists():
            logger.info("reusing %s", folder)
            return AutoModelForTokenClassification.from_pretrained(folder).to(device()), None
        set_seed(seed)
        model = AutoModelForTokenClassification.from_pretrained(base_path, **label_kwargs)
        trainer = Trainer(model=model, args=training_args(TrainingArguments, tag + "_run", epochs, seed=seed),
                          train_dataset=dataset, data_collator=collator, compute_metrics=metrics)
        rec = record(trainer, time.perf_counter())
        model.save_pretrained(folder)
        return model.eval(), rec

    results = {"runs": {}}
    wanted = [r for r in args.runs.split(",") if r]
    if args.strict_low_label:
        wanted.append("low_label_kd_strict")

    def save(run, rec, settings=None):
        results["runs"][run] = {**rec, **({"settings": settings} if settings else {})}
        logger.info("%s %s", run, results["runs"][run])
        write_results(name, {**results, **meta(args)})

    teacher, rec = teacher_for("teacher", args.seed, train, args.teacher_epochs)
    if rec:
        save("teacher", rec)

    def kd(run, student, teacher_model, settings, dataset=train, epochs=args.epochs):
        set_seed(args.seed)
        trainer = DistillationTrainer(
            model=student, teacher_model=own_teacher(teacher_model, settings),
            args=training_args(DistillationArguments, run, epochs, **settings), train_dataset=dataset,
            data_collator=collator, processing_class=tokenizer, compute_metrics=metrics,
        )
        rec = record(trainer, time.perf_counter())
        save(run, rec, settings)
        return trainer

    def from_teacher(**overrides):
        set_seed(args.seed)
        return create_student(teacher, LAYERS, **overrides)

    def from_base():
        set_seed(args.seed)
        return create_student(AutoModelForTokenClassification.from_pretrained(base_path, **label_kwargs), LAYERS)

    def extra_teachers(count):
        """The teacher (fine-tuned with the suite's seed, 42) plus `count - 1` more, fine-tuned like it with the seeds
        after it, 43, 44, ... (cached under teacher_seed<N>; the seed is the tag's, whatever --seed the students use)."""
        teachers = [teacher]
        for seed in range(DEFAULT_SEED + 1, DEFAULT_SEED + count):
            other, rec = teacher_for(f"teacher_seed{seed}", seed, train, args.teacher_epochs)
            if rec:
                save(f"teacher_seed{seed}", rec)
            teachers.append(other)
        return teachers

    if "student_kd" in wanted or "born_again" in wanted:
        trainer = kd("student_kd", from_teacher(), teacher, dict(kd_settings))
        if "born_again" in wanted:
            previous = trainer.model.eval()
            previous.requires_grad_(False)
            kd("born_again", from_teacher(), previous, dict(kd_settings))
    if "hidden_kd" in wanted:
        kd("hidden_kd", from_teacher(), teacher, {**kd_settings, "hidden_distill_weight": args.hidden_weight})
    if "attention_kd" in wanted:
        kd("attention_kd", from_teacher(attention_probs_dropout_prob=0.0), teacher,
           {**kd_settings, "attention_distill_weight": args.attention_weight})
    if "ensemble_kd" in wanted:
        kd("ensemble_kd", from_teacher(), extra_teachers(2), {**kd_settings, "teacher_ensemble": "mean"})
    if "ema_self" in wanted:
        # The same initial student as student_kd, but no second model: it teaches itself through its own EMA.
        kd("ema_self", from_teacher(), None, {**kd_settings, "self_distillation": "ema", "ema_decay": args.ema_decay})
    for run, settings in json.loads(args.variants).items():
        settings = dict(settings)
        teachers = extra_teachers(settings.pop("teachers", 1))
        overrides = {"attention_probs_dropout_prob": 0.0} if settings.get("attention_distill_weight") else {}
        kd(run, from_teacher(**overrides), None if settings.get("self_distillation") == "ema" else teachers,
           {**kd_settings, **settings})
    if "augment_kd" in wanted:
        kd("augment_kd", from_teacher(), teacher,
           {**kd_settings, "augment_mask_prob": 0.1, "augment_replace_prob": 0.05})

    low = [r for r in ("low_label_kd", "student_10pct", "low_label_kd_strict") if r in wanted]
    if low:
        shuffled = train.shuffle(seed=args.seed)
        n_labeled = max(1, int(round(args.label_fraction * len(train))))
        labeled = shuffled.select(range(n_labeled))
        unlabeled = shuffled.select(range(n_labeled, len(train))).remove_columns("labels")
        mixed = mix_unlabeled(labeled, unlabeled)
        low_settings = {**kd_settings, "distill_positions": "all_subwords",
                        "pseudo_label_threshold": args.pseudo_threshold}
        same_steps = args.epochs * len(mixed) / len(labeled)
        if "low_label_kd" in wanted:
            kd("low_label_kd", from_base(), teacher, low_settings, dataset=mixed)
        if "student_10pct" in wanted:
            set_seed(args.seed)
            trainer = Trainer(model=from_base(), args=training_args(TrainingArguments, "student_10pct", same_steps),
                              train_dataset=labeled, data_collator=collator, compute_metrics=metrics)
            save("student_10pct", {**record(trainer, time.perf_counter()), "epochs": round(same_steps, 2)})
        if "low_label_kd_strict" in wanted:
            teacher_10, rec = teacher_for("teacher_10pct", args.seed, labeled, same_steps * args.teacher_epochs /
                                          args.epochs)
            if rec:
                save("teacher_10pct", rec)
            kd("low_label_kd_strict", from_base(), teacher_10, low_settings, dataset=mixed)

    path = write_results(name, {**results, **meta(args), "targets": targets(name), "seed_means": suite_means(name)})
    logger.info("wrote %s", path)
    base = name.removesuffix(f"_seed{args.seed}")
    if base != name and (RESULTS_DIR / f"{base}.json").exists():  # a seed replica: refresh its suite's seed means
        write_results(base, {"targets": targets(base), "seed_means": suite_means(base)})


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def meta(args) -> dict:
    return {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": machine(),
        "setup": {"teacher_epochs": args.teacher_epochs, "student_epochs": args.epochs, "batch_size": args.batch_size,
                  "learning_rate": args.learning_rate, "max_length": args.max_length, "seed": args.seed,
                  "student_layers": LAYERS, "label_fraction": args.label_fraction,
                  "hidden_weight": args.hidden_weight, "attention_weight": args.attention_weight,
                  "ema_decay": args.ema_decay, "pseudo_threshold": args.pseudo_threshold},
    }


def with_replicas(name: str) -> dict:
    """The runs of results/<name>.json plus those of its seed replicas (results/<name>_seed<N>.json, written with
    --seed N and --results_name <name>_seed<N>), renamed `<run>_seed<N>` as `common.seed_means` expects."""
    runs = dict(json.loads((RESULTS_DIR / f"{name}.json").read_text())["runs"])
    for path in sorted(RESULTS_DIR.glob(f"{name}_seed*.json")):
        replica = json.loads(path.read_text())
        seed = replica["setup"]["seed"]
        if path.stem != f"{name}_seed{seed}":
            continue
        runs.update({f"{run}_seed{seed}": {**rec, "seed": seed} for run, rec in replica["runs"].items()
                     if run in runs})
    return runs


def suite_means(name: str) -> dict:
    """Dev and test F1 means over the seeds of every run that has seed replicas (results/<name>_seed<N>.json)."""
    return seed_means(with_replicas(name), "f1")


# Runs designed after the test figures of their parts were known: a target they meet is not a test-free result,
# even when the run is picked by dev, because the test set shaped what was tried. Their verdicts say so.
TEST_INFORMED = {
    "ensemble3_hidden_attention_kd": "test-informed: combines the three strategies whose seed-mean test F1 had each "
                                     "gained a little, one of which (ensemble3_confidence_kd) had lost on dev",
}


def _verdict(met: bool, run: str) -> str:
    return ("met" if met else "missed") + (f"; {TEST_INFORMED[run]}" if run in TEST_INFORMED else "")


def targets(name: str) -> dict:
    """The issue's targets, checked on what the results file holds (and, where seed replicas exist, on the means
    over the seeds that student_kd and a strategy share)."""
    runs = json.loads((RESULTS_DIR / f"{name}.json").read_text())["runs"]
    out = {}
    base = runs.get("student_kd", {}).get("test_f1")
    not_strategies = ("student_kd", "low_label_kd", "low_label_kd_strict", "student_10pct")
    strategies = {k: v for k, v in runs.items() if "settings" in v and k not in not_strategies}
    if base is not None and strategies:
        for label, key in (("best_on_test", "test_f1"), ("best_on_dev", "dev_f1")):
            best = max(strategies, key=lambda k: strategies[k][key])
            delta = strategies[best]["test_f1"] - base
            out[f"{label}_strategy_vs_student_kd"] = (
                f"{best} (dev {strategies[best]['dev_f1']}, test {strategies[best]['test_f1']}) vs student_kd "
                f"(dev {runs['student_kd']['dev_f1']}, test {base}): test {delta:+.2f} (target +0.5: "
                f"{_verdict(delta >= 0.5, best)})")
    means = suite_means(name)
    if "student_kd" in means:
        kd_mean = means["student_kd"]
        same_seeds = {k: v for k, v in means.items() if k in strategies and v["seeds"] == kd_mean["seeds"]}
        # The best by test mean, and the one a user would pick without the test set: the best by dev mean, also
        # among the runs designed without the test figures alone.
        test_free = {k: v for k, v in same_seeds.items() if k not in TEST_INFORMED}
        for label, key, pool in (("_on_test", "test_f1_mean", same_seeds), ("_on_dev", "dev_f1_mean", same_seeds),
                                 ("_on_dev_test_free", "dev_f1_mean", test_free if test_free != same_seeds else {})):
            if not pool:
                continue
            best = max(pool, key=lambda k: pool[k][key])
            delta = pool[best]["test_f1_mean"] - kd_mean["test_f1_mean"]
            out[f"seed_mean_best{label}_strategy_vs_student_kd"] = (
                f"{best} vs student_kd, seeds {kd_mean['seeds']}: dev mean {pool[best]['dev_f1_mean']} vs "
                f"{kd_mean['dev_f1_mean']}, test mean {pool[best]['test_f1_mean']} vs "
                f"{kd_mean['test_f1_mean']}: {delta:+.2f} (target +0.5: {_verdict(delta >= 0.5, best)})")
    low, ten = runs.get("low_label_kd", {}).get("test_f1"), runs.get("student_10pct", {}).get("test_f1")
    if low is not None and base is not None:
        out["low_label_vs_full_student_kd"] = (f"{low} / {base} = {100 * low / base:.1f}% (target 95%: "
                                               f"{'met' if low >= 0.95 * base else 'missed'})")
    if low is not None and ten is not None:
        out["low_label_vs_10pct_alone"] = (f"{low} vs {ten}: {low - ten:+.2f} (target +3: "
                                           f"{'met' if low - ten >= 3 else 'missed'})")
    return out


if __name__ == "__main__":
    main()
