"""Run by tests/test_launch.py under `accelerate launch` with two CPU processes (through distributed_run.py, in the
same launch): checkpoints and resumes of a multi-process run. Writes `<output_dir>/facts.json` (process 0) with what
each scenario found:

- `resume`: runs with trainer-owned state (a feature projection; an EMA teacher) resume from a checkpoint and end
  where the uninterrupted run ends;
- `marker`: a checkpoint is marked complete only once every process has written its files (process 1 is made slow
  to write its RNG state);
- `skipped`: a batch skipped on process 1 only is counted in the checkpoint and in the resumed run's metrics.
"""

import json
import os
import sys
import time

import torch
from distributed_run import tiny
from transformers.trainer_utils import TrainOutput

from hf_distill import DistillationArguments, DistillationTrainer
from hf_distill.files import CHECKPOINT_MARKER, last_complete_checkpoint

NAN_TOKEN = 3


def data(nan_row=None):
    from datasets import Dataset

    g = torch.Generator().manual_seed(0)
    rows = {"input_ids": [], "labels": []}
    for i in range(16):
        n = 4 + (i * 3) % 9
        ids = torch.randint(5, 40, (n,), generator=g).tolist()
        if i == nan_row:
            ids[0] = NAN_TOKEN
        rows["input_ids"].append(ids)
        rows["labels"].append([-100 if j % 3 == 2 else (i + j) % 5 for j in range(n)])
    rows["attention_mask"] = [[1] * len(x) for x in rows["input_ids"]]
    return Dataset.from_dict(rows)


class Pad:
    def __call__(self, features):
        width = max(len(f["input_ids"]) for f in features)
        return {key: torch.tensor([f[key] + [fill] * (width - len(f[key])) for f in features])
                for key, fill in (("input_ids", 0), ("attention_mask", 0), ("labels", -100))}


def arguments(output_dir, **settings):
    return DistillationArguments(**{
        "output_dir": output_dir, "per_device_train_batch_size": 2, "max_steps": 4, "optim": "sgd",
        "learning_rate": 0.5, "train_sampling_strategy": "sequential", "report_to": "none", "use_cpu": True,
        "disable_tqdm": True, "seed": 0, "save_strategy": "steps", "save_steps": 2, "logging_steps": 1, **settings})


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model_wrapped).state_dict().items()}


def gap(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def resume(output_dir):
    """Largest weight gap between an uninterrupted run and one resumed from its step-2 checkpoint, per setting."""
    found = {}
    for name, settings, width, teacher in (("hidden", {"hidden_distill_weight": 0.5}, 16, lambda: tiny(2, 2)),
                                           ("ema", {"self_distillation": "ema"}, 32, lambda: None)):
        def make(seed, folder, name=name, settings=settings, width=width, teacher=teacher):
            return DistillationTrainer(model=tiny(1, seed, hidden=width), teacher_model=teacher(),
                                       args=arguments(folder, **settings), train_dataset=data(), data_collator=Pad())
        straight = make(1, f"{output_dir}/{name}")
        straight.train()
        resumed = make(9, f"{output_dir}/{name}-resumed")
        resumed.train(resume_from_checkpoint=f"{output_dir}/{name}/checkpoint-2")
        found[name] = gap(weights(straight), weights(resumed))
    return found


class SlowSecondProcess(DistillationTrainer):
    """Process 1 writes its RNG state late; process 0 records the checkpoint it would resume from the moment its own
    save returns (what a kill at that moment would leave)."""

    seen = []

    def _save_rng_state(self, output_dir):
        if self.args.process_index == 1:
            time.sleep(2)
        super()._save_rng_state(output_dir)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.process_index == 0:
            folder, _ = last_complete_checkpoint(self.args.output_dir)
            self.seen.append({"step": self.state.global_step, "checkpoint": os.path.basename(folder),
                              "files": sorted(os.listdir(folder))})


def marker(output_dir):
    trainer = SlowSecondProcess(model=tiny(1, 1), teacher_model=tiny(2, 2), train_dataset=data(), data_collator=Pad(),
                                args=arguments(f"{output_dir}/marker", save_total_limit=1, adversarial="pgd",
                                               adv_perturb_special_tokens=True))
    trainer.train()
    return trainer.seen


def skipped(output_dir):
    """Row 2 (process 1's half of the first batch) gets NaN teacher logits."""
    def make(folder, seed, **settings):
        trainer = DistillationTrainer(model=tiny(1, seed), teacher_model=tiny(2, 2), train_dataset=data(nan_row=2),
                                      data_collator=Pad(), args=arguments(folder, nonfinite_policy="skip", **settings))
        teacher = trainer.teacher_models[0]
        forward = teacher.forward

        def nan_forward(*args, **kwargs):
            out = forward(*args, **kwargs)
            bad = kwargs["input_ids"][:, 0] == NAN_TOKEN
            out["logits"] = out["logits"].masked_fill(bad.view(-1, 1, 1), float("nan"))
            return out
        teacher.forward = nan_forward
        return trainer

    straight: TrainOutput = make(f"{output_dir}/skipped", 1).train()
    with open(f"{output_dir}/skipped/checkpoint-2/{CHECKPOINT_MARKER}", encoding="utf-8") as handle:
        saved = json.load(handle)
    resumed = make(f"{output_dir}/skipped-resumed", 9).train(resume_from_checkpoint=f"{output_dir}/skipped/checkpoint-2")
    # The same run with no loss logged before its end: the skip lies in the steps Trainer never gathered.
    tail = make(f"{output_dir}/skipped-tail", 1, logging_steps=500, save_strategy="no").train()
    return {"straight": straight.metrics.get("skipped_batches"), "marker": saved.get("skipped_batches"),
            "resumed": resumed.metrics.get("skipped_batches"),
            "train_loss": [straight.metrics["train_loss"], tail.metrics["train_loss"]]}


def main(out):
    facts = {"world_size": int(os.environ.get("WORLD_SIZE", 1))}
    for scenario in (resume, marker, skipped):
        facts[scenario.__name__] = scenario(out)
        torch.distributed.barrier()
    if int(os.environ.get("RANK", 0)) == 0:
        with open(f"{out}/facts.json", "w") as handle:
            json.dump(facts, handle)


if __name__ == "__main__":
    main(sys.argv[1])
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as distributed_run.py: skip the interpreter's teardown
