"""Run by tests/test_reliability.py: a small distillation run that checkpoints every 4 steps.

    python kill_run.py OUTPUT_DIR [slow] [resume]

`slow` sleeps after each step so that the test can SIGKILL the process mid-run; `resume` continues from the last
complete checkpoint. The final student is saved to OUTPUT_DIR/final.
"""

import sys
import time

from transformers import TrainerCallback

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from distributed_run import data, tiny  # noqa: E402

from hf_distill import DistillationArguments, DistillationTrainer  # noqa: E402


class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(0.15)


def main(output_dir, slow, resume):
    args = DistillationArguments(
        output_dir=output_dir, per_device_train_batch_size=2, max_steps=24, save_steps=4, learning_rate=1e-3,
        report_to="none", use_cpu=True, logging_steps=4, disable_tqdm=True, seed=0, temperature=4.0,
        final_temperature=1.0, temperature_schedule="linear", adversarial="pgd", adv_init_scale=0.2, adv_steps=2,
        adv_perturb_special_tokens=True,  # synthetic ids without special tokens (and no tokenizer to name them)
    )
    trainer = DistillationTrainer(model=tiny(1, 1), teacher_model=tiny(2, 2), args=args, train_dataset=data(),
                                  data_collator=_pad, callbacks=[Slow()] if slow else None)
    trainer.train(resume_from_checkpoint=True if resume else None)
    trainer.save_model(f"{output_dir}/final")


def _pad(features):
    import torch

    width = max(len(f["input_ids"]) for f in features)
    return {key: torch.tensor([f[key] + [fill] * (width - len(f[key])) for f in features])
            for key, fill in (("input_ids", 0), ("attention_mask", 0), ("labels", -100))}


if __name__ == "__main__":
    main(sys.argv[1], "slow" in sys.argv[2:], "resume" in sys.argv[2:])
