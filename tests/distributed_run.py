"""Run by tests/test_launch.py, once in the test's own process and once under `accelerate launch` with two processes:

    python distributed_run.py OUTPUT_DIR PER_DEVICE_BATCH [RESUME_OUTPUT_DIR]

(with RESUME_OUTPUT_DIR, the same launch then runs distributed_resume.py's scenarios into it: a launch costs seconds
of imports per process).

Trains a tiny student against a tiny teacher with the same *global* batch either way, twice: with hidden-state
distillation (into `<output_dir>/hidden`) and with FGM adversarial distillation (into `<output_dir>/fgm`). Each run
checks how each model was wrapped, and saves the student's weights and those facts to its folder.
"""

import json
import os
import sys

import torch
from datasets import Dataset
from transformers import BertConfig, BertForTokenClassification

from hf_distill import DistillationArguments, DistillationTrainer

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def tiny(layers, seed, hidden=32):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=40, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=len(LABELS),
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    return BertForTokenClassification(config)


def data():
    g = torch.Generator().manual_seed(0)
    rows = {"input_ids": [], "labels": []}
    for i in range(16):
        n = 4 + (i * 3) % 9  # different lengths, so processes see different token counts
        rows["input_ids"].append(torch.randint(5, 40, (n,), generator=g).tolist())
        rows["labels"].append([-100 if j % 3 == 2 else (i + j) % len(LABELS) for j in range(n)])
    rows["attention_mask"] = [[1] * len(x) for x in rows["input_ids"]]
    return Dataset.from_dict(rows)


RUNS = {
    # The student is narrower than the teacher, so hidden-state distillation trains a projection that lives outside
    # the DDP-wrapped student: its gradients must be averaged across processes too.
    "hidden": ({"hidden_distill_weight": 0.5}, 16),
    # Two passes per step: the clean backward must not all-reduce (no_sync), the adversarial one must.
    # Synthetic ids without special tokens: every position may be perturbed.
    "fgm": ({"adversarial": "fgm", "adv_epsilon": 0.5, "adv_objective": "both", "adv_perturb_special_tokens": True}, 32),
}


def main(output_dir, per_device_batch):
    for name, (settings, width) in RUNS.items():
        run(f"{output_dir}/{name}", per_device_batch, settings, width)


def run(output_dir, per_device_batch, settings, width):
    args = DistillationArguments(
        output_dir=output_dir, per_device_train_batch_size=per_device_batch, max_steps=4, optim="sgd",
        learning_rate=0.5, lr_scheduler_type="constant", max_grad_norm=0.0, train_sampling_strategy="sequential",
        report_to="none", save_strategy="no", use_cpu=True, logging_steps=1, disable_tqdm=True, seed=0,
        alpha=0.5, temperature=2.0, **settings,
    )

    class Pad:
        def __call__(self, features):
            width = max(len(f["input_ids"]) for f in features)
            out = {}
            for key, fill in (("input_ids", 0), ("attention_mask", 0), ("labels", -100)):
                out[key] = torch.tensor([f[key] + [fill] * (width - len(f[key])) for f in features])
            return out

    trainer = DistillationTrainer(model=tiny(1, 1, hidden=width), teacher_model=tiny(2, 2), args=args,
                                  train_dataset=data(), data_collator=Pad())
    teacher_before = {k: v.clone() for k, v in trainer.teacher_model.state_dict().items()}
    trainer.train()
    ddp = torch.nn.parallel.DistributedDataParallel
    facts = {
        "world_size": args.world_size,
        "student_wrapped_in_ddp": isinstance(trainer.model_wrapped, ddp),
        "teacher_wrapped_in_ddp": isinstance(trainer.teacher_model, ddp),
        "teacher_requires_grad": any(p.requires_grad for p in trainer.teacher_model.parameters()),
        "teacher_unchanged": all(torch.equal(teacher_before[k], v) for k, v in trainer.teacher_model.state_dict().items()),
        "logged": [h for h in trainer.state.log_history if "loss" in h],
        "projector": ({k: v.tolist() for k, v in trainer.feature_projector.state_dict().items()}
                      if trainer.feature_projector is not None else {}),
    }
    if trainer.is_world_process_zero():
        trainer.save_model(output_dir)
        with open(f"{output_dir}/facts.json", "w") as handle:
            json.dump(facts, handle)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
    if len(sys.argv) > 3:
        import distributed_resume

        torch.distributed.barrier()
        distributed_resume.main(sys.argv[3])
    if torch.distributed.is_initialized():
        # Leave together, then skip the interpreter's teardown: on a loaded machine a rank sometimes aborted there
        # ("terminate called without an active exception", exit code -6) after every result was written and the
        # process group destroyed, which failed the launch for nothing the test checks.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
