"""Distil a fine-tuned text-classification teacher (SST-2, GLUE-style) into a smaller student.

    python recipes/distill_text_classification.py recipes/configs/sst2_quick.yaml
    python recipes/distill_text_classification.py --teacher_model_name_or_path my-sst2-teacher \
        --dataset_name glue --dataset_config_name sst2 --output_dir sst2-student
    python recipes/distill_text_classification.py --teacher_model_name_or_path my-mrpc-teacher \
        --dataset_name glue --dataset_config_name mrpc --text_column_name sentence1 \
        --text_pair_column_name sentence2 --output_dir mrpc-student     # sentence pairs
    python recipes/distill_text_classification.py recipes/configs/sst2_quick.yaml \
        --adversarial freelb --adv_epsilon 0.5 --adv_step_size 0.15 --adv_steps 2 --adv_init_scale 0.05 \
        --adv_start_step 50 --typo_rate 0.2 --typo_probability 1.0
                      # a typo-robust student: FreeLB plus typos in the student's text (benchmarks/robustness.py)

Any field of the config file can be overridden on the command line; `--help` lists them.
"""

import logging
import random
from dataclasses import dataclass, field

from recipe_utils import (
    RUN_SWITCHES,
    DataArguments,
    ModelArguments,
    RobustnessArguments,
    RobustnessProbe,
    align_labels,
    distill,
    load_models,
    load_splits,
    text_encoder,
)
from transformers import DataCollatorWithPadding, set_seed

from hf_distill import (
    DistillationArguments,
    add_noisy_view,
    load_text_classification_file,
    sequence_classification_metrics,
    typo_noise,
)
from hf_distill.cli import parse_args

logger = logging.getLogger("recipes.distill_text_classification")


@dataclass
class NoisyViewArguments:
    """Typo-robust distillation: the student trains on text with typos while the teacher reads the clean text."""

    typo_rate: float = field(
        default=0.0,
        metadata={"help": "Put one character typo (swap, delete, insert, keyboard neighbour) into this fraction of the "
                  "words of the student's training text; the teacher labels the clean text (hf_distill.add_noisy_view). "
                  "0, the default, trains on clean text only."},
    )
    typo_probability: float | None = field(
        default=None,
        metadata={"help": "With --typo_rate: the fraction of training rows whose student text gets typos (default "
                  "0.5). benchmarks/robustness.py chose 1.0 (with FreeLB) on SST-2 dev."},
    )

    def __post_init__(self):
        if not 0.0 <= self.typo_rate <= 1.0:
            raise ValueError(f"`typo_rate` is a fraction of the words, in [0, 1]; got {self.typo_rate}.")
        if self.typo_probability is not None and self.typo_rate == 0.0:
            raise ValueError(f"`typo_probability={self.typo_probability}` has no effect without typos: set "
                             "`--typo_rate` (e.g. 0.2) as well, or leave `--typo_probability` out.")
        if self.typo_probability is None:
            self.typo_probability = 0.5
        if not 0.0 <= self.typo_probability <= 1.0:
            raise ValueError(f"`typo_probability` is a fraction of the rows, in [0, 1]; got {self.typo_probability}.")


def main():
    model_args, data_args, noise_args, robustness_args, args = parse_args(
        [ModelArguments, DataArguments, NoisyViewArguments, RobustnessArguments, DistillationArguments],
        fixed_switches=RUN_SWITCHES)
    logging.basicConfig(level=logging.INFO if args.should_log else logging.WARNING, format="%(message)s")
    set_seed(args.seed)
    teacher, tokenizer, student = load_models(model_args, "sequence_classification",
                                              attention_distillation=args.attention_distill_weight > 0)

    text_column = data_args.text_column_name or "sentence"
    label_column = data_args.label_column_name or "label"
    label_names = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)]
    splits = load_splits(  # labels may be ids or the teacher's label names ("negative", "positive")
        data_args, lambda path: load_text_classification_file(path, text_column=text_column, label_column=label_column,
                                                              label_names=label_names,
                                                              text_pair_column=data_args.text_pair_column_name),
        columns=[text_column, data_args.text_pair_column_name], label_column=label_column, label_names=label_names,
    )
    splits = {name: align_labels(data, label_column, label_names, strict=False) for name, data in splits.items()}

    encode = text_encoder(tokenizer, data_args, text_column, label_column)
    noisy_view = None
    pair_column = data_args.text_pair_column_name
    if noise_args.typo_rate > 0:
        noisy_view = {"noise": f"typo_noise(rate={noise_args.typo_rate})",
                      "probability": noise_args.typo_probability, "seed": args.seed}

    def encode_train(train):
        """The training split: plain, or with the student's text noised and a clean teacher view (--typo_rate)."""
        if noisy_view is None:
            return train.map(encode, batched=True, remove_columns=train.column_names)
        train = train.select_columns([c for c in (text_column, pair_column, label_column) if c])
        if label_column != "labels":
            train = train.rename_column(label_column, "labels")
        return add_noisy_view(train, tokenizer, text_column=text_column, text_pair_column=pair_column,
                              noise=typo_noise(noise_args.typo_rate), probability=noise_args.typo_probability,
                              seed=args.seed, max_length=data_args.max_seq_length)

    with args.main_process_first(desc="tokenization"):
        tokenized = {name: encode_train(d) if name == "train" else d.map(encode, batched=True,
                                                                         remove_columns=d.column_names)
                     for name, d in splits.items()}

    text_columns = [c for c in (text_column, pair_column) if c]

    def typo_split(name, rate, seed):
        """An evaluation split encoded again after typos in its text (both texts of a pair), seeded per row."""
        noise = typo_noise(rate)

        def add_typos(row, index):
            rng = random.Random(f"{seed}:{index}")
            return {column: noise(row[column], rng) for column in text_columns}

        noisy = splits[name].map(add_typos, with_indices=True)
        return noisy.map(encode, batched=True, remove_columns=noisy.column_names)

    def attack_texts(name, n):
        """The first `n` texts of a split as lists of words (pairs of them for a sentence-pair task) and labels."""
        rows = splits[name].select(range(min(n, len(splits[name]))))
        texts = [[row[c].split() for c in text_columns] for row in rows]
        return [tuple(t) if pair_column else t[0] for t in texts], list(rows[label_column])

    probe = RobustnessProbe(robustness_args, typo_split, attack_texts, tokenizer, data_args.max_seq_length)
    metrics = sequence_classification_metrics(teacher.config.num_labels)
    distill(teacher, student, tokenizer, tokenized, DataCollatorWithPadding(tokenizer), metrics, "accuracy", args,
            data_args, generations=model_args.generations, noisy_view=noisy_view, robustness=probe)


if __name__ == "__main__":
    main()
