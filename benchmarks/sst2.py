"""SST-2 sentiment: a 3-layer student distilled from a fine-tuned 6-layer MiniLM teacher.

    python benchmarks/sst2.py                       # full run (train subsample, see --max_train_samples)
    python benchmarks/sst2.py --quick               # a minute-long smoke run
    python benchmarks/sst2.py --runs student_kd     # re-run one student; other runs in the JSON are kept

Same runs as benchmarks/ner_conll2003.py (teacher, student_plain, student_naive_kd, student_kd), scored by
accuracy on the SST-2 dev and (labelled) test splits. Writes benchmarks/results/sst2.json and RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import logging

from common import (
    DATA_DIR,
    DEFAULT_SEED,
    add_suite_args,
    minilm_path,
    promote_best_kd,
    run_suite,
    setup_logging,
    write_results,
    write_seed_means,
)
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from hf_distill import load_text_classification_file, sequence_classification_metrics

logger = logging.getLogger("benchmarks.sst2")
KD_SETTINGS = {"alpha": 0.8, "temperature": 2.0, "distill_loss": "kl"}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny smoke run; writes results/sst2_quick.json")
    p.add_argument("--max_train_samples", type=int, default=12000, help="seeded subsample of the 67k phrases")
    add_suite_args(p, teacher_epochs=2, epochs=2, max_length=64)
    return p.parse_args()


def main():
    args = parse_args()
    name = "sst2_quick" if args.quick else "sst2"
    setup_logging(name)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())

    n_train = 300 if args.quick else args.max_train_samples
    # The subsample is the suite's whatever --seed says: a seed replica varies the training's randomness, not the
    # data (and the cached teacher was fine-tuned on this subsample).
    data = load_data(tokenizer, args.max_length, n_train, DEFAULT_SEED, quick=args.quick)
    tokenized = data
    labels = {"num_labels": 2, "id2label": {0: "negative", 1: "positive"}, "label2id": {"negative": 0, "positive": 1}}
    results = run_suite(
        name, args, AutoModelForSequenceClassification, labels, tokenizer, tokenized["train"], tokenized["dev"],
        tokenized["test"], data["collator"], data["metrics"], "accuracy",
        {**KD_SETTINGS, **json.loads(args.kd)},
    )
    if "setup" in results:  # a seed replica keeps the suite's setup, which already records the subsample
        results["setup"]["max_train_samples"] = n_train
    path = write_results(name, results)
    promote_best_kd(name, "accuracy")
    write_seed_means(name, "accuracy")
    logger.info("wrote %s", path)


def load_data(tokenizer, max_length, n_train, seed, quick=False):
    """SST-2 splits (raw sentences kept for text-level attacks) and their tokenized forms; the training split is a
    subsample of `n_train` rows drawn with `seed`."""
    splits = {s: load_text_classification_file(DATA_DIR / "sst2" / f"{s}.tsv") for s in ("train", "dev", "test")}
    if n_train and n_train < len(splits["train"]):
        splits["train"] = splits["train"].shuffle(seed=seed).select(range(n_train))
    if quick:
        splits["dev"], splits["test"] = splits["dev"].select(range(100)), splits["test"].select(range(100))
    tokenized = {s: tokenize(d, tokenizer, max_length) for s, d in splits.items()}
    return {**tokenized, "raw": splits, "collator": DataCollatorWithPadding(tokenizer),
            "metrics": sequence_classification_metrics(2)}


def tokenize(dataset, tokenizer, max_length):
    def encode(batch):
        return tokenizer(batch["sentence"], truncation=True, max_length=max_length)

    return dataset.map(encode, batched=True, remove_columns=["sentence"])


if __name__ == "__main__":
    main()
