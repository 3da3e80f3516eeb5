"""Soak test: thousands of distillation steps on a tiny model; memory (RSS) must not grow, throughput must not drift.

    python benchmarks/soak.py                 # 2,400 steps, about a minute on 2 CPU cores
    python benchmarks/soak.py --steps 10000

Runs hf-distill with the adversarial path on (FGM), logging and checkpoint rotation, so that every per-step code path
is exercised. RSS and steps/s are sampled every `--window` steps; the first windows are warm-up. The script exits
non-zero if RSS grows by more than `--max_rss_growth_mb` or throughput drifts by more than `--max_drift` between the
first and last post-warm-up windows (throughput: medians of the first and second half of the windows). Writes benchmarks/results/soak.json and RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch
from common import machine, write_results
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from distributed_run import data, tiny  # noqa: E402

from hf_distill import DistillationArguments, DistillationTrainer  # noqa: E402


class Sampler(TrainerCallback):
    def __init__(self, window):
        self.window, self.samples, self.last = window, [], None
        self.process = psutil.Process(os.getpid())

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.window == 0:
            now = time.perf_counter()
            rss = self.process.memory_info().rss / 2**20
            rate = None if self.last is None else self.window / (now - self.last[0])
            self.samples.append({"step": state.global_step, "rss_mb": round(rss, 1),
                                 "steps_per_second": None if rate is None else round(rate, 2)})
            self.last = (now, rss)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2400)
    p.add_argument("--window", type=int, default=200)
    p.add_argument("--warmup_windows", type=int, default=2)
    p.add_argument("--max_rss_growth_mb", type=float, default=50.0)
    p.add_argument("--max_drift", type=float, default=0.2)
    args = p.parse_args()
    torch.set_num_threads(1)
    sampler = Sampler(args.window)
    out = tempfile.mkdtemp(prefix="soak_")
    train_args = DistillationArguments(
        output_dir=out, per_device_train_batch_size=4, max_steps=args.steps, learning_rate=1e-4, report_to="none",
        use_cpu=True, logging_steps=50, save_steps=500, save_total_limit=2, disable_tqdm=True, seed=0,
        adversarial="fgm", temperature=4.0, final_temperature=1.0, temperature_schedule="cosine",
        adv_perturb_special_tokens=True,  # synthetic ids without special tokens (and no tokenizer to name them)
    )

    def pad(features):
        width = max(len(f["input_ids"]) for f in features)
        return {key: torch.tensor([f[key] + [fill] * (width - len(f[key])) for f in features])
                for key, fill in (("input_ids", 0), ("attention_mask", 0), ("labels", -100))}

    trainer = DistillationTrainer(model=tiny(1, 1), teacher_model=tiny(2, 2), args=train_args, train_dataset=data(),
                                  data_collator=pad, callbacks=[sampler])
    start = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - start
    steady = [s for s in sampler.samples[args.warmup_windows:] if s["steps_per_second"]]
    first, last = steady[0], steady[-1]
    growth = last["rss_mb"] - first["rss_mb"]
    # Medians of the first and second half of the windows: one window is too noisy on a shared machine.
    half = len(steady) // 2
    early = sorted(s["steps_per_second"] for s in steady[:half])[half // 2]
    late = sorted(s["steps_per_second"] for s in steady[half:])[(len(steady) - half) // 2]
    drift = late / early - 1
    ok = growth <= args.max_rss_growth_mb and abs(drift) <= args.max_drift
    write_results("soak", {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "machine": machine(),
        "runs": {"soak": {"steps": args.steps, "seconds": round(elapsed, 1), "rss_first_mb": first["rss_mb"],
                          "rss_last_mb": last["rss_mb"], "rss_growth_mb": round(growth, 1),
                          "steps_per_second_first_half_median": early, "steps_per_second_second_half_median": late,
                          "throughput_drift": round(drift, 3), "passed": ok,
                          "skipped_batches": trainer.skipped_batches}},
        "samples": sampler.samples,
    })
    print(f"RSS {first['rss_mb']} -> {last['rss_mb']} MB, median steps/s {early} -> {late} "
          f"({'ok' if ok else 'FAILED'})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
