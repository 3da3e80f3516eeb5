"""Operations dispatched per training step: where a distillation step's fixed cost over plain fine-tuning comes from.

    python step_ops.py        # 1 min on 2 CPU cores: CoNLL-2003 batches, all-MiniLM-L6-v2 and its 3-layer student

Run from `benchmarks/`. On a fast GPU a small student's step is launch-bound: the device finishes each kernel before
the host has queued the next, so a step costs about (operations dispatched) x (host time per operation), whatever the
tensor sizes. The GPU throughput ratios of `throughput.py` (`throughput_gpu*.json`) can then be read against a
figure any machine measures exactly: the number of ATen operations each method dispatches per optimizer step that
would launch a kernel (views and other metadata-only operations are counted apart), and the number of times the host
reads a value off the device (a synchronisation that drains the device's queue). This script counts them (a `TorchDispatchMode`) for the methods of `throughput.py`, on the same student and the same
CoNLL-2003 batches, at the same settings:

- plain: stock `transformers.Trainer` on the labels;
- naive: `common.NaiveKDTrainer`, the blog-post `compute_loss` override;
- online: `hf_distill.DistillationTrainer` with the teacher (`ner_conll2003.KD_SETTINGS`);
- cached: the same with `teacher_model=None` and a teacher-logit cache.

Counted per optimizer step: everything from Trainer's `on_step_begin` to its `on_step_end` (forward, loss, backward,
gradient clipping, optimizer and scheduler step), plus the batch counting of `get_batch_samples` (which Trainer runs
before the step); not the collation of the batch (host work on lists, the same for every method but cached, whose
collator reads the cache) nor the logging every `logging_steps`. The weights do not change the count: the teacher is
all-MiniLM-L6-v2 with an untrained 9-label head and the student its layers 0, 2, 4 (`hf_distill.create_student`).
A CPU run dispatches no autocast casts; a bf16 GPU run adds some to every method.

Writes `results/step_ops.json`: per method the kernel-launching operations per step (`ops_per_step`; those of the
teacher's forward apart too), the view operations and the host synchronisations per step, every operation's
count (`op_counts`), and `ratios.<method>_vs_plain_launch_bound`: plain's count over the method's, the throughput ratio a purely
launch-bound step would have (an estimate, not a speed measurement).
"""

from __future__ import annotations

import argparse
import collections
import logging
import shlex
import sys
import tempfile
from pathlib import Path

import torch
from common import NaiveKDTrainer, machine, minilm_path, setup_logging, write_results
from ner_conll2003 import KD_SETTINGS, load_data
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import (
    AutoModelForTokenClassification,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from hf_distill import DistillationArguments, DistillationTrainer, build_teacher_cache, create_student

logger = logging.getLogger("benchmarks.step_ops")
METHODS = ["plain", "naive", "online", "cached"]
LAYERS = [0, 2, 4]


# Operations that launch no device kernel: views (`OpOverload.is_view`) plus these, which only relabel a tensor's
# metadata or wrap a Python number as a host scalar.
NO_KERNEL = {"aten._unsafe_view", "aten.scalar_tensor"}
HOST_SYNC = "aten._local_scalar_dense"  # `.item()`, `bool(tensor)`: the host waits for the device


class OpCounter(TorchDispatchMode):
    """Counts the ATen operations dispatched while active: `counts` those that would launch a device kernel, by
    name; `views` the rest; `syncs` the reads of a tensor's value on the host."""

    def __init__(self):
        super().__init__()
        self.counts, self.views, self.syncs = collections.Counter(), 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if func.is_view or name in NO_KERNEL or (name == "aten.dropout" and not args[2]):
            # (dropout reaches the dispatcher whole only under inference mode; in eval mode it returns its input)
            self.views += 1
        elif name == HOST_SYNC:
            self.syncs += 1
        else:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


class CountSteps(TrainerCallback):
    """Counts the operations of every optimizer step after the first `skip` (whose lazy set-up is not a step's cost)."""

    def __init__(self, skip: int):
        self.skip, self.counter, self.active = skip, OpCounter(), False

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step >= self.skip:
            self.counter.__enter__()
            self.active = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.active:
            self.counter.__exit__(None, None, None)
            self.active = False


def count_method(trainer: Trainer, steps: int, skip: int) -> dict:
    """Train `skip + steps` optimizer steps and count the operations of the last `steps`."""
    callback = CountSteps(skip)
    trainer.add_callback(callback)
    batch_counter = OpCounter()
    fetch = trainer.get_batch_samples

    def get_batch_samples(epoch_iterator, num_batches, device):
        batches = []  # collated outside the count: only the counting of the fetched batches is measured
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        if trainer.state.global_step < skip:
            return fetch(iter(batches), num_batches, device)
        with batch_counter:
            return fetch(iter(batches), num_batches, device)

    trainer.get_batch_samples = get_batch_samples
    teacher_counter = OpCounter()

    def counted(forward):
        def teacher_forward(*args, **kwargs):  # nested inside the step's count: counted by both
            if not callback.active:  # a warm-up step, which the step's count leaves out too
                return forward(*args, **kwargs)
            with teacher_counter:
                return forward(*args, **kwargs)
        return teacher_forward

    if isinstance(trainer, DistillationTrainer) and trainer.teacher_model is not None:
        trainer._teacher_forward = counted(trainer._teacher_forward)
    elif isinstance(trainer, NaiveKDTrainer):  # its compute_loss calls the teacher module itself
        trainer.teacher.forward = counted(trainer.teacher.forward)
    trainer.args.max_steps = skip + steps
    set_seed(trainer.args.seed)
    try:
        trainer.train()
    finally:
        if isinstance(trainer, NaiveKDTrainer):  # the teacher module is shared with the next method
            del trainer.teacher.forward
    step = sum(callback.counter.counts.values()) / steps
    batch = sum(batch_counter.counts.values()) / steps
    return {
        "ops_per_step": round(step + batch, 1),
        "step_ops": round(step, 1),
        "batch_count_ops": round(batch, 1),
        "teacher_forward_ops": round(sum(teacher_counter.counts.values()) / steps, 1),
        "view_ops": round((callback.counter.views + batch_counter.views) / steps, 1),
        "host_syncs": round((callback.counter.syncs + batch_counter.syncs) / steps, 1),
        "op_counts": {name: round(n / steps, 1) for name, n in callback.counter.counts.most_common()},
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4, help="optimizer steps counted per method")
    p.add_argument("--skip", type=int, default=2, help="optimizer steps trained before counting")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args()
    setup_logging("step_ops")
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    data = load_data(tokenizer, args.max_length, quick=True)  # a few hundred sentences: enough batches to count
    labels = dict(num_labels=len(data["label_names"]), id2label=data["id2label"], label2id=data["label2id"])
    set_seed(args.seed)
    teacher = AutoModelForTokenClassification.from_pretrained(minilm_path(), **labels).eval()
    set_seed(args.seed)
    student = create_student(teacher, LAYERS)
    results = {"runs": {}, "ratios": {}}
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(output_dir=tmp, per_device_train_batch_size=args.batch_size, learning_rate=1e-4, warmup_steps=0.1,
                      weight_decay=0.01, seed=args.seed, data_seed=args.seed,
                      train_sampling_strategy="group_by_length", logging_steps=50, save_strategy="no",
                      report_to="none", disable_tqdm=True, use_cpu=True)
        trainer_data = dict(train_dataset=data["train"], data_collator=data["collator"])
        cache = build_teacher_cache(teacher, data["train"], data["collator"], Path(tmp) / "teacher_logits",
                                    tokenizer=tokenizer, max_length=args.max_length, progress_bar=False)
        for method in METHODS:
            model = create_student(teacher, LAYERS)
            model.load_state_dict(student.state_dict())
            if method == "plain":
                trainer = Trainer(model=model, args=TrainingArguments(**common), **trainer_data)
            elif method == "naive":
                trainer = NaiveKDTrainer(model=model, teacher=teacher, args=TrainingArguments(**common),
                                         temperature=KD_SETTINGS["temperature"], alpha=KD_SETTINGS["alpha"],
                                         **trainer_data)
            else:
                trainer = DistillationTrainer(
                    model=model, teacher_model=teacher if method == "online" else None,
                    teacher_cache=cache if method == "cached" else None,
                    args=DistillationArguments(**common, **KD_SETTINGS), processing_class=tokenizer, **trainer_data)
            results["runs"][method] = count_method(trainer, args.steps, args.skip)
            logger.info("%s %s", method, {k: v for k, v in results["runs"][method].items() if k != "op_counts"})
    plain = results["runs"]["plain"]["ops_per_step"]
    for method in METHODS[1:]:
        results["ratios"][f"{method}_vs_plain_launch_bound"] = round(plain / results["runs"][method]["ops_per_step"], 3)
    results["ratios"]["online_vs_naive_launch_bound"] = round(
        results["runs"]["naive"]["ops_per_step"] / results["runs"]["online"]["ops_per_step"], 3)
    results.update(
        command="python step_ops.py " + shlex.join(sys.argv[1:]),
        machine=machine(),
        setup={"steps": args.steps, "skip": args.skip, "batch_size": args.batch_size, "max_length": args.max_length,
               "seed": args.seed, "student_layers": LAYERS, "kd_settings": KD_SETTINGS},
        notes="ATen operations dispatched per optimizer step (see the script's docstring for what is counted), on "
              "this CPU in fp32. `<method>_vs_plain_launch_bound` is plain's count over the method's: the throughput "
              "ratio of a step whose cost is all per-operation host overhead, an estimate to read next to the "
              "measured GPU ratios in throughput_gpu*.json, not a speed measurement. The GPU throughput files were measured before the "
              "loss path lost 7 operations per step (commit bd34e69; this script at commit b27df40, before it, counted "
              "cached 342 and online 435 with plain 289: launch-bound cached_vs_plain 0.845, next to the measured "
              "GPU 0.842). On 2026-12-03 the step lost 10 more (the loss log folds its sums every 32 micro-batches "
              "instead of stacking them at each, a 2-operation finite check of the loss, no stack-and-sum of the "
              "counts of a lone micro-batch, and no second masking of KL and MSE rows that are already exactly 0; "
              "the loss and its gradient are bit-identical): cached 335 -> 325, online 428 -> 418. "
              "teacher_forward_ops counted the warm-up steps' teacher forwards too before that day (138 for 92), "
              "and left out the naive method's teacher (0 for about 100).",
    )
    # Each method's operations by name, kept in the json (RESULTS.md shows the totals).
    results["op_counts"] = {m: r.pop("op_counts") for m, r in results["runs"].items()}
    path = write_results("step_ops", results)
    logger.info("wrote %s: %s", path, results["ratios"])


if __name__ == "__main__":
    main()
