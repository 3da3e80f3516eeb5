"""Distil a fine-tuned text-classification teacher (SST-2, GLUE-style) into a smaller student.

    python recipes/distill_text_classification.py recipes/configs/sst2_quick.yaml
    python recipes/distill_text_classification.py --teacher_model_name_or_path my-sst2-teacher \
        --dataset_name glue --dataset_config_name sst2 --output_dir sst2-student

Any field of the config file can be overridden on the command line; `--help` lists them.
"""

import logging
import os

from recipe_utils import DataArguments, ModelArguments, compare, load_models, load_splits
from transformers import DataCollatorWithPadding, set_seed

from hf_distill import (
    DistillationArguments,
    DistillationTrainer,
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

    collator = DataCollatorWithPadding(tokenizer)
    metrics = sequence_classification_metrics(teacher.config.num_labels)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"], data_collator=collator, processing_class=tokenizer,
        compute_metrics=metrics,
    )
    trainer.dataset_name = data_args.dataset_name or os.path.basename(data_args.train_file)
    trainer.train()
    evaluation = {k: v for k, v in tokenized.items() if k != "train"}
    if trainer.is_world_process_zero():
        trainer.evaluation_report = compare(teacher, trainer.model, evaluation, collator, metrics, args, "accuracy")
    trainer.save_model()
    tokenizer.save_pretrained(args.output_dir)
    if args.push_to_hub:
        trainer.push_to_hub(dataset=data_args.dataset_name)


if __name__ == "__main__":
    main()
