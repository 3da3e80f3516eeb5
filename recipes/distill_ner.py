"""Distil a fine-tuned NER teacher into a smaller student.

    # offline, local CoNLL files and a local teacher (see recipes/quickstart_ner.sh)
    python recipes/distill_ner.py recipes/configs/ner_quick.yaml

    # with the network: a bert-base-cased teacher fine-tuned on the Hub's CoNLL-2003
    python recipes/distill_ner.py recipes/configs/ner_bert_base.yaml

    # several processes or GPUs
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/distill_ner.py recipes/configs/ner_bert_base.yaml

Any field of the config file can be overridden on the command line (`--num_train_epochs 5`); `--help` lists them.
"""

import logging
import random

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
)
from transformers import DataCollatorForTokenClassification, set_seed

from hf_distill import (
    DistillationArguments,
    read_conll,
    token_classification_metrics,
    tokenize_and_align_labels,
)
from hf_distill.checks import is_placeholder_label
from hf_distill.cli import parse_args
from hf_distill.text_attacks import perturb_characters

logger = logging.getLogger("recipes.distill_ner")


def main():
    model_args, data_args, robustness_args, args = parse_args(
        [ModelArguments, DataArguments, RobustnessArguments, DistillationArguments], fixed_switches=RUN_SWITCHES)
    logging.basicConfig(level=logging.INFO if args.should_log else logging.WARNING, format="%(message)s")
    set_seed(args.seed)

    teacher, tokenizer, student = load_models(model_args, "token_classification",
                                              attention_distillation=args.attention_distill_weight > 0)
    label_names = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)]
    if all(is_placeholder_label(name) for name in label_names):
        raise ValueError(
            f"The teacher {model_args.teacher_model_name_or_path!s} names its {len(label_names)} outputs "
            f"{label_names[0]} ... {label_names[-1]}: its config does not say which tag each one predicts, so the "
            "data's tags cannot be put in its order. Give the teacher's config.json the `id2label` (and `label2id`) "
            'it was fine-tuned with, e.g. "id2label": {"0": "O", "1": "B-PER", ...} (recipes/finetune_teacher.py '
            "writes them)."
        )

    # ---- data: tags encoded in the teacher's label order ------------------------------------------------------
    tokens_column = data_args.text_column_name or "tokens"
    tags_column = data_args.label_column_name or "ner_tags"

    def read(path):
        return read_conll(path, label_names=label_names, tag_scheme=data_args.tag_scheme)

    splits = load_splits(data_args, read, columns=[tokens_column], label_column=tags_column)
    splits = {name: align_labels(data, tags_column, label_names, strict=True) for name, data in splits.items()}

    def encode(data):
        return data.map(
            tokenize_and_align_labels, batched=True, remove_columns=data.column_names,
            fn_kwargs={"tokenizer": tokenizer, "max_length": data_args.max_seq_length,
                       "tokens_column": tokens_column, "tags_column": tags_column},
        )

    with args.main_process_first(desc="tokenization"):
        tokenized = {name: encode(data) for name, data in splits.items()}

    def typo_split(name, rate, seed):
        """An evaluation split encoded again after typos in its tokens (one word each, so the tags still fit)."""
        def add_typos(row, index):
            return {tokens_column: perturb_characters(row[tokens_column], rate, random.Random(f"{seed}:{index}"))}

        return encode(splits[name].map(add_typos, with_indices=True))

    # ---- training, teacher vs student, save, push ----------------------------------------------------------------
    collator = DataCollatorForTokenClassification(tokenizer)
    distill(teacher, student, tokenizer, tokenized, collator, token_classification_metrics(label_names), "f1", args,
            data_args, generations=model_args.generations, robustness=RobustnessProbe(robustness_args, typo_split))


if __name__ == "__main__":
    main()
