"""Fine-tune a teacher for a user who does not have one yet (plain `transformers.Trainer`, no distillation).

    python recipes/finetune_teacher.py recipes/configs/ner_quick_teacher.yaml --model_name_or_path /path/to/bert
    python recipes/finetune_teacher.py --task ner --model_name_or_path bert-base-cased --dataset_name lhoestq/conll2003 \
        --output_dir bert-base-cased-conll03 --num_train_epochs 3

The output directory (model + tokenizer) is what the distillation recipes take as --teacher_model_name_or_path.
"""

import logging
from dataclasses import dataclass, field

from datasets import ClassLabel
from recipe_utils import (
    RUN_SWITCHES,
    DataArguments,
    align_labels,
    conll_tag_names,
    load_splits,
    resume_target,
    save_results,
    scorable_splits,
    text_encoder,
    text_label_names,
    trainable_in_fp32,
)
from transformers import (
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)

from hf_distill import (
    load_text_classification_file,
    read_conll,
    sequence_classification_metrics,
    token_classification_metrics,
    tokenize_and_align_labels,
)
from hf_distill.cli import parse_args
from hf_distill.files import checkpoint_to_resume
from hf_distill.loading import load_model, load_tokenizer

logger = logging.getLogger("recipes.finetune_teacher")
TASKS = {"ner": "token_classification", "text-classification": "sequence_classification"}


@dataclass
class TeacherArguments:
    model_name_or_path: str = field(default=None, metadata={"help": "The pretrained model to fine-tune."})
    tokenizer_name_or_path: str = field(
        default=None, metadata={"help": "The tokenizer, if not saved with --model_name_or_path."})
    task: str = field(default="ner", metadata={"help": "'ner' or 'text-classification'.", "choices": list(TASKS)})


def main():
    teacher_args, data_args, args = parse_args([TeacherArguments, DataArguments, TrainingArguments],
                                               fixed_switches=RUN_SWITCHES)
    logging.basicConfig(level=logging.INFO if args.should_log else logging.WARNING, format="%(message)s")
    if teacher_args.model_name_or_path is None:
        raise ValueError("Pass --model_name_or_path: the pretrained model to fine-tune (local directory or Hub id).")
    set_seed(args.seed)
    tokenizer = load_tokenizer(teacher_args.tokenizer_name_or_path or teacher_args.model_name_or_path,
                               pre_split_words=teacher_args.task == "ner")
    if teacher_args.task == "ner":
        columns = {"tokens_column": data_args.text_column_name or "tokens",
                   "tags_column": data_args.label_column_name or "ner_tags"}
        label_names = conll_tag_names(data_args) if data_args.dataset_name is None else None
        splits = load_splits(data_args,
                             lambda path: read_conll(path, label_names=label_names, tag_scheme=data_args.tag_scheme),
                             columns=[columns["tokens_column"]], label_column=columns["tags_column"])
        tags = splits["train"].features[columns["tags_column"]]
        if not isinstance(getattr(tags, "feature", None), ClassLabel):
            raise ValueError(
                f"The {columns['tags_column']!r} column holds {tags}, not tag names: entity F1 and the teacher's "
                "id2label need them (B-PER, I-PER, ...). Use a copy of the dataset whose tags are a "
                "Sequence(ClassLabel), or local CoNLL files (--train_file, --validation_file)."
            )
        label_names = tags.feature.names
        # A local file beside a Hub dataset numbers its tags in its own order: every split in the train split's.
        splits = {name: align_labels(d, columns["tags_column"], label_names, strict=True) for name, d in splits.items()}
        tokenized = {
            name: d.map(tokenize_and_align_labels, batched=True, remove_columns=d.column_names,
                        fn_kwargs={"tokenizer": tokenizer, "max_length": data_args.max_seq_length, **columns})
            for name, d in splits.items()
        }
        collator = DataCollatorForTokenClassification(tokenizer)
        metrics, metric = token_classification_metrics(label_names), "f1"
    else:
        text_column = data_args.text_column_name or "sentence"
        label_column = data_args.label_column_name or "label"
        pair_column = data_args.text_pair_column_name  # read as text too ("2004" is no number here)
        label_names, by_name = text_label_names(data_args, lambda path: load_text_classification_file(
            path, text_column=text_column, label_column=None, text_pair_column=pair_column), label_column)
        splits = load_splits(data_args, lambda path: load_text_classification_file(
            path, text_column=text_column, label_column=label_column, label_names=label_names if by_name else None,
            text_pair_column=pair_column),
            columns=[text_column, data_args.text_pair_column_name], label_column=label_column,
            label_names=label_names if by_name else None)
        encode = text_encoder(tokenizer, data_args, text_column, label_column)
        tokenized = {name: d.map(encode, batched=True, remove_columns=d.column_names) for name, d in splits.items()}
        collator = DataCollatorWithPadding(tokenizer)
        metrics, metric = sequence_classification_metrics(len(label_names)), "accuracy"

    id2label = dict(enumerate(label_names))
    model = load_model(
        teacher_args.model_name_or_path, TASKS[teacher_args.task], role="model to fine-tune",
        num_labels=len(label_names), id2label=id2label, label2id={v: k for k, v in id2label.items()},
    )
    model = trainable_in_fp32(model, "model to fine-tune")
    evaluation = scorable_splits(tokenized, len(label_names))  # checked now, scored after training
    trainer = Trainer(model=model, args=args, train_dataset=tokenized["train"], eval_dataset=tokenized["validation"],
                      data_collator=collator, processing_class=tokenizer, compute_metrics=metrics)
    resume = resume_target(args.resume_from_checkpoint)
    if resume is True:  # stock Trainer would take the newest checkpoint folder, even one a crash cut short
        resume, incomplete = checkpoint_to_resume(args.output_dir)
        for skipped in incomplete:
            logger.warning("%s is incomplete (interrupted while saving) and is skipped.", skipped)
    train_output = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()  # before the evaluation, so that nothing after training can lose the teacher
    tokenizer.save_pretrained(args.output_dir)
    result = {}
    for name, split in evaluation.items():  # every labelled split but train, as the distillation recipes score
        result.update(trainer.evaluate(split, metric_key_prefix=name))
        logger.info("teacher %s %s: %.4f", name, metric, result[f"{name}_{metric}"])
    save_results(trainer, train_output.metrics, {"teacher": result})


if __name__ == "__main__":
    main()
