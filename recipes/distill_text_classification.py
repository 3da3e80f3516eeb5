"""Distil a fine-tuned text-classification teacher (SST-2, GLUE-style) into a smaller student.

    python recipes/distill_text_classification.py recipes/configs/sst2_quick.yaml
    python recipes/distill_text_classification.py --teacher_model_name_or_path my-sst2-teacher \
        --dataset_name glue --dataset_config_name sst2 --output_dir sst2-student

Any field of the config file can be overridden on the command line; `--help` lists them.
"""

import logging

from recipe_utils import DataArguments, ModelArguments, distill, load_models, load_splits
from transformers import DataCollatorWithPadding, set_seed

from hf_distill import (
    DistillationArguments,
    load_text_classification_file,
    sequence_classification_metrics,
)
from hf_distill.cli import parse_args

logger = logging.getLogger("recipes.distill_text_classification")


def main():
    model_args, data_args, args = parse_args([ModelArguments, DataArguments, DistillationArguments])
    logging.basicConfig(level=logging.INFO if args.should_log else logging.WARNING, format="%(message)s")
    set_seed(args.seed)
    teacher, tokenizer, student = load_models(model_args, "sequence_classification")

    text_column = data_args.text_column_name or "sentence"
    label_column = data_args.label_column_name or "label"
    splits = load_splits(
        data_args, lambda path: load_text_classification_file(path, text_column=text_column, label_column=label_column)
    )

    def encode(batch):
        encoded = tokenizer(batch[text_column], truncation=True, max_length=data_args.max_seq_length)
        encoded["labels"] = batch[label_column]
        return encoded

    with args.main_process_first(desc="tokenization"):
        tokenized = {name: d.map(encode, batched=True, remove_columns=d.column_names) for name, d in splits.items()}

    metrics = sequence_classification_metrics(teacher.config.num_labels)
    distill(teacher, student, tokenizer, tokenized, DataCollatorWithPadding(tokenizer), metrics, "accuracy", args,
            data_args, generations=model_args.generations)


if __name__ == "__main__":
    main()
