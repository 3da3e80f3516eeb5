"""Embedding PGD against half-precision models: does `evaluate_robustness` attack an fp16 model as hard as its fp32 copy?

    python attack_precision.py        # about 15 min on 2 CPU cores (fp16 matmuls are slow on a CPU)

Run from `benchmarks/`. The attack differentiates the model's cross-entropy with respect to the perturbation. For an
example the model gets right with confidence (CE ~1e-5), that gradient is ~1e-5 at the logits and smaller further
back: in an fp16 model it falls below fp16's normal range (6e-5) and loses its precision, or vanishes, on the way to
the embeddings, and the attack on such examples weakens or stalls. `evaluate_robustness` scales each example's CE by a
power of two into [0.5, 1) before differentiating it (the step only uses the direction of each example's gradient,
which such a factor leaves exactly as it is). This script measures what that buys, against the unscaled objective the
library used before:

- model: all-MiniLM-L6-v2 with a fresh 2-label head whose bias gives class 1 a margin `m` over class 0, on the first
  `--samples` SST-2 dev sentences all labelled 1, so that every example is confidently right (a fine-tuned classifier
  is this confident on only some of its examples; the margin sets how confident, for all of them at once);
- attack: l2 ε `--epsilon`, `--steps` steps, seed 0, batches of 32, [CLS]/[SEP]/padding untouched;
- precisions: fp32, bf16 (fp32's exponent range: no underflow), fp16 with the scaled objective (the library), and fp16
  with the unscaled summed CE (`--baseline`, the objective before the fix);
- figure: the attack's loss gain (attacked CE minus clean CE, dataset mean) relative to the fp32 copy's, per margin.

Writes `results/attack_precision.json`: per margin, each precision's clean CE, loss gain and gain relative to fp32.
"""

from __future__ import annotations

import argparse
import copy
import logging
import shlex
import sys
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from common import machine, minilm_path, setup_logging, write_results
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from hf_distill import robustness
from hf_distill.data import load_text_classification_file
from hf_distill.losses import IGNORE_INDEX

logger = logging.getLogger("benchmarks.attack_precision")
DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def unscaled_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The attack's objective before the fix: the batch's summed fp32 cross-entropy, as is."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--margins", default="6,9,12", help="class-1 logit margins of the head's bias")
    p.add_argument("--samples", type=int, default=64, help="SST-2 dev sentences attacked")
    p.add_argument("--epsilon", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args()
    setup_logging("attack_precision")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    dev = load_text_classification_file(DATA_DIR / "sst2" / "dev.tsv").select(range(args.samples))
    rows = [{**tokenizer(text, truncation=True, max_length=64), "label": 1} for text in dev["sentence"]]
    collator = DataCollatorWithPadding(tokenizer)
    torch.manual_seed(args.seed)
    base = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2, dtype=torch.float32).eval()
    results = {"runs": {}}
    for margin in [float(m) for m in args.margins.split(",")]:
        model = copy.deepcopy(base)
        with torch.no_grad():
            model.classifier.bias.copy_(torch.tensor([0.0, margin]))
        row = {}
        for name, dtype, objective in (("fp32", torch.float32, None), ("bf16", torch.bfloat16, None),
                                       ("fp16", torch.float16, None), ("fp16_unscaled", torch.float16, unscaled_loss)):
            patch = mock.patch.object(robustness, "_rescaled_loss", objective) if objective else mock.patch.dict({})
            with patch:
                scores = robustness.evaluate_robustness(copy.deepcopy(model).to(dtype), rows, epsilon=args.epsilon,
                                                        steps=args.steps, data_collator=collator, batch_size=32)
            row[f"{name}_clean_loss"] = float(f"{scores['clean_loss']:.4g}")
            row[f"{name}_gain"] = float(f"{scores['attacked_loss'] - scores['clean_loss']:.4g}")
            logger.info("margin %g %s: %s", margin, name, scores)
        for name in ("bf16", "fp16", "fp16_unscaled"):
            row[f"{name}_gain_vs_fp32"] = round(row[f"{name}_gain"] / row["fp32_gain"], 3) if row["fp32_gain"] else None
        results["runs"][f"margin_{margin:g}"] = row
    results.update(
        command="python attack_precision.py " + shlex.join(sys.argv[1:]),
        machine=machine(),
        setup={"samples": args.samples, "epsilon": args.epsilon, "steps": args.steps, "seed": args.seed,
               "model": "all-MiniLM-L6-v2, fresh 2-label head, bias (0, margin), every label 1"},
        notes="<precision>_gain is the embedding attack's loss gain (attacked minus clean mean CE) on the same model "
              "cast to that precision; <precision>_gain_vs_fp32 that gain over the fp32 copy's. fp16 is the "
              "library's attack (each example's CE scaled by a power of two before it is differentiated); "
              "fp16_unscaled the summed CE it differentiated before. The fp32 and bf16 figures are the same "
              "whichever objective is used (a power-of-two factor leaves the step directions exactly as they are).",
    )
    path = write_results("attack_precision", results)
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
