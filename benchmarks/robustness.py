"""What adversarial distillation buys: clean and attacked scores of teacher and students on CoNLL-2003 and SST-2.

    python benchmarks/ner_conll2003.py && python benchmarks/sst2.py     # first: the teacher and students it reuses
    python benchmarks/robustness.py                                   # both tasks
    python benchmarks/robustness.py --tasks ner --methods fgm         # a subset
    python benchmarks/robustness.py --quick                           # smoke run on the --quick benchmark models
    python benchmarks/robustness.py --tasks sst2 --overhead_only      # only the step-time overhead of each method
    python benchmarks/robustness.py --tasks sst2 --methods fgm,freelb,fgm_typo,freelb_typo   # with typo views
    python benchmarks/robustness.py --tasks sst2 --methods freelb_typo_all_3ep --controls student_kd_x1.5

Models: `teacher`, `student_plain`, `student_kd` (from the core benchmarks' cache) and `student_adv_kd`, the best on
dev of the adversarial candidates (`--methods`), each trained like `student_kd` (same initialisation from the
teacher, same KD settings and epochs unless its `epochs_factor` says otherwise; without hidden-state/attention terms,
which hf-distill does not combine with adversarial training) plus embedding-space adversarial distillation
(`adv_objective="kd"`). The `*_typo*` candidates (sequence classification) also train the student on typo-noised text
(half of the rows, or all of them for `*_all*`) while the teacher labels the clean text (`hf_distill.add_noisy_view`,
noise seeded apart from the evaluation's).
The candidate with the highest mean of dev embedding PGD at the smaller epsilon and dev typos is chosen, among those
whose clean dev score is within 1 point of `student_kd`'s. A `--controls` model is `student_kd`'s training with one
candidate setting changed (more epochs) and no adversary or typo views: measured like the models, never chosen, it
shows how much of a gain that setting alone gives. Embedding PGD is run on a seeded subset (`--pgd_samples`) of dev
and test to fit a CPU budget; the other measurements use the whole split.

Measured on test for each model: the clean score; embedding-space PGD against the model itself at two epsilons
(`hf_distill.evaluate_robustness`, on the words' tokens: [CLS] and [SEP] are left alone, as in training); character typos on 20% of the words; for NER, entity swaps (mentions replaced by
other training mentions of the same type) and typos in the context only; for SST-2, a greedy black-box word attack
(30% word budget) on a seeded sample of the test set; with `--perturbation_draws N`, each text perturbation is also
drawn N times with different seeds and averaged (`<perturbation>_mean<N>`, and the dev typos that choose the
candidate). Also the training step time of each adversarial method relative to `student_kd`, measured interleaved
in one run.

Writes benchmarks/results/robustness.json and benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shlex
import sys
import tempfile
import time

import ner_conll2003
import sst2
import torch
from common import (
    CACHE_DIR,
    DEFAULT_SEED,
    LAYERS,
    interleaved_rates,
    machine,
    median,
    minilm_path,
    own_teacher,
    setup_logging,
    write_results,
)
from datasets import Dataset, concatenate_datasets
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from hf_distill import (
    DistillationArguments,
    DistillationTrainer,
    add_noisy_view,
    create_student,
    evaluate_robustness,
    typo_noise,
)
from hf_distill.adversarial import AttackSettings
from hf_distill.text_attacks import (
    _how_many,
    attack_accuracy,
    collect_entity_pool,
    is_typo_eligible,
    model_predict_proba,
    perturb_characters,
    perturb_context,
    swap_entities,
    typo,
)

logger = logging.getLogger("benchmarks.robustness")

# Adversarial settings of each candidate, K kept small for CPU. MiniLM's word embeddings have a per-token norm of
# about 1.1, and an SST-2 phrase hinges on one or two words: a per-example budget of 1.0 (the usual BERT-base value)
# can erase the decisive word, and FGM at ε = 1.0 collapsed the SST-2 student to chance. Budgets are scaled down.
# A `noisy_view` candidate (sequence classification only) also trains the student on typo-noised text while the
# teacher reads the clean text (`hf_distill.add_noisy_view`): embedding-space noise does not reach the sub-word
# changes that a typo makes.
_FREELB = {"adversarial": "freelb", "adv_epsilon": 0.5, "adv_step_size": 0.15, "adv_steps": 2, "adv_init_scale": 0.05}
_FGM = {"adversarial": "fgm", "adv_epsilon": 0.3}
METHODS = {
    "fgm": _FGM,
    "pgd": {"adversarial": "pgd", "adv_epsilon": 0.3, "adv_step_size": 0.15, "adv_steps": 2},
    "freelb": _FREELB,
    "fgm_typo": {**_FGM, "noisy_view": {"typo_rate": 0.2, "probability": 0.5}},
    "freelb_typo": {**_FREELB, "noisy_view": {"typo_rate": 0.2, "probability": 0.5}},
    "freelb_typo_all": {**_FREELB, "noisy_view": {"typo_rate": 0.2, "probability": 1.0}},
    # Heavier training typos than the 20% that is evaluated, and a lighter embedding budget that leaves more of the
    # student's capacity to the typos (the embedding-PGD margin is far above its target).
    "freelb_typo30_all": {**_FREELB, "noisy_view": {"typo_rate": 0.3, "probability": 1.0}},
    "freelb_typo40_all": {**_FREELB, "noisy_view": {"typo_rate": 0.4, "probability": 1.0}},
    "freelb_light_typo30_all": {**_FREELB, "adv_epsilon": 0.25, "adv_step_size": 0.08,
                                "noisy_view": {"typo_rate": 0.3, "probability": 1.0}},
    # Fresh typos on every pass instead of the same ones each epoch: `copies` noisy views of the training set (each
    # with its own noise seed) are concatenated and trained for student_epochs / copies epochs, so the optimizer takes
    # as many steps as every other candidate and each row is seen as often, but never twice with the same typos.
    "freelb_typo_all_fresh": {**_FREELB, "noisy_view": {"typo_rate": 0.2, "probability": 1.0, "copies": 2}},
    "freelb_typo_fresh": {**_FREELB, "noisy_view": {"typo_rate": 0.2, "probability": 0.5, "copies": 2}},
    # Typos placed where they hurt: with probability `focus`, each of a row's typos goes to the most important word
    # not yet hit (importance as in the word attack: how much deleting the word lowers the teacher's probability of
    # the gold class), else to a random one; as many typos per row as the random views make. The discrete analogue
    # of the embedding attack: the student practises on the typos that flip predictions.
    "freelb_salient_typo_all": {**_FREELB, "noisy_view": {"typo_rate": 0.2, "probability": 1.0, "focus": 0.5}},
    # Word-piece dropout on top of the typos (the WordPiece analogue of BPE-dropout, Provilkov et al. 2020, whose
    # models read misspelled input better): in the student's view each piece of two or more characters is split, with
    # this probability, into two pieces of the vocabulary at a random point ("movie" -> "mo", "##vie"), so the student
    # learns to read words from fragments, which is what a typo leaves of a word. The teacher still reads clean text.
    "freelb_typo_all_wpdrop10": {**_FREELB, "noisy_view": {"typo_rate": 0.2, "probability": 1.0,
                                                           "wordpiece_dropout": 0.1}},
    "freelb_typo_all_wpdrop25": {**_FREELB, "noisy_view": {"typo_rate": 0.2, "probability": 1.0,
                                                           "wordpiece_dropout": 0.25}},
    # Longer training: a student that reads only typo'd text has a harder task than student_kd's, and the typos each
    # row gets stay fixed across epochs, so 1.5 and 2 times the epochs (`epochs_factor`: more optimizer steps).
    "freelb_typo_all_3ep": {**_FREELB, "noisy_view": {"typo_rate": 0.2, "probability": 1.0}, "epochs_factor": 1.5},
    "freelb_typo_all_4ep": {**_FREELB, "noisy_view": {"typo_rate": 0.2, "probability": 1.0}, "epochs_factor": 2.0},
    # Tail weight averaging (SWA/SWAD, Izmailov et al. 2018, Cha et al. 2021: flatter minima hold up better under a
    # shift of the input distribution, which typos are): the saved student is the uniform mean of its weights taken
    # every `every` optimizer steps over the last `tail` fraction of training (`TailWeightAverage`).
    "freelb_typo_all_swa": {**_FREELB, "noisy_view": {"typo_rate": 0.2, "probability": 1.0},
                            "weight_average": {"tail": 0.5, "every": 25}},
}
# Candidate keys that are benchmark settings (data, schedule, averaging), not `DistillationArguments` fields.
BENCHMARK_KEYS = ("noisy_view", "epochs_factor", "weight_average")
# Controls (`--controls`): student_kd's own training (no adversary, no typo views) with one candidate setting changed.
# They are measured on dev and test next to the models but are never candidates: they show how much of a candidate's
# gain that setting alone would give student_kd.
CONTROLS = {
    "student_kd_x1.5": {"epochs_factor": 1.5},
    "student_kd_x2": {"epochs_factor": 2.0},
}
SELECTION_RULE = ("among the candidates whose dev clean score is within 1 point of student_kd's, the best mean of dev "
                  "embedding PGD (smaller epsilon) and dev typos (averaged over --perturbation_draws draws)")
NOISY_VIEW_SEED = 1000  # the training noise's seed; the evaluation typos are seeded from --seed
DRAW_SEED_STRIDE = 1_000_000  # draw k of a test perturbation seeds sentence i with --seed + k * stride + i
FEATURE_FIELDS = ("hidden_distill_weight", "hidden_distill_loss", "attention_distill_weight", "feature_layer_map")
COMMON_ADV = {"adv_objective": "kd", "adv_weight": 1.0, "adv_start_step": 50}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="ner,sst2")
    p.add_argument("--methods", default="fgm,freelb", help="candidates trained and compared on dev")
    p.add_argument("--controls", default="", help=f"student_kd controls also trained and measured ({', '.join(CONTROLS)})")
    p.add_argument("--overhead_methods", default="fgm,pgd,freelb")
    p.add_argument("--pgd_samples", type=int, default=1000, help="seeded subset of dev/test for embedding PGD")
    p.add_argument("--epsilons", default="0.25,0.5", help="two embedding-PGD radii (per-example l2)")
    p.add_argument("--pgd_steps", type=int, default=3)
    p.add_argument("--typo_rate", type=float, default=0.2)
    p.add_argument("--word_attack_samples", type=int, default=500)
    p.add_argument("--perturbation_draws", type=int, default=1,
                   help="draw each text perturbation (typos, entity swaps) this many times with different seeds: the "
                        "candidates' dev typos are averaged over the draws, and each test row also gets "
                        "<perturbation>_mean<N> (the first draw is the one reported under the plain name)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--overhead_only", action="store_true",
                   help="measure only the step-time overhead (on the first of --tasks), without the candidates and "
                        "their scores; the teacher is the cached one, or all-MiniLM-L6-v2 with a fresh head (the "
                        "cost of a step does not depend on the weights)")
    p.add_argument("--overhead_rounds", type=int, default=5)
    args = p.parse_args()
    if args.perturbation_draws < 1:
        p.error(f"--perturbation_draws {args.perturbation_draws}: give 1 (one draw, the default) or more")
    return args


def eval_args(seed):
    return TrainingArguments(output_dir=tempfile.mkdtemp(prefix="robustness_eval_"), per_device_eval_batch_size=64,
                             report_to="none", use_cpu=True, disable_tqdm=True, seed=seed)


def score(model, dataset, data, metric, seed):
    trainer = Trainer(model=model, args=eval_args(seed), data_collator=data["collator"],
                      compute_metrics=data["metrics"])
    return round(100 * trainer.evaluate(dataset)[f"eval_{metric}"], 2)


def subset(dataset, n, seed):
    """A seeded subset of `n` rows (all rows when n is 0 or larger than the set)."""
    if not n or n >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(n))


def pgd(model, dataset, data, metric, epsilon, steps, seed):
    result = evaluate_robustness(model, dataset, epsilon=epsilon, steps=steps, data_collator=data["collator"],
                                 compute_metrics=data["metrics"], batch_size=64, seed=seed)
    return round(100 * result[f"attacked_{metric}"], 2)


# ---- text-level perturbations of the test split ---------------------------------------------------------------

def ner_perturbed_sets(data, tokenizer, max_length, typo_rate, seed, split="test"):
    """Copies of `split` with typos everywhere, typos in the context only, and entity swaps (all seeded)."""
    names = data["label_names"]
    test = data["raw"][split]
    pool = collect_entity_pool(data["raw"]["train"], label_names=names)
    to_id = {n: i for i, n in enumerate(names)}
    variants = {"typos": [], "context_typos": [], "entity_swap": []}
    for i, row in enumerate(test):
        tokens, tags = row["tokens"], [names[t] for t in row["ner_tags"]]
        variants["typos"].append((perturb_characters(tokens, typo_rate, seed + i), tags))
        variants["context_typos"].append(perturb_context(tokens, tags, typo_rate, seed + i))
        variants["entity_swap"].append(swap_entities(tokens, tags, pool, seed + i))
    sets = {}
    for name, rows in variants.items():
        raw = Dataset.from_dict({"tokens": [list(t) for t, _ in rows],
                                 "ner_tags": [[to_id[g] for g in tags] for _, tags in rows]})
        sets[name] = ner_conll2003.tokenize(raw, tokenizer, max_length)
    return sets


def sst2_perturbed_sets(data, tokenizer, max_length, typo_rate, seed, split="test"):
    """A copy of `split` with typos (seeded)."""
    test = data["raw"][split]
    sentences = [" ".join(perturb_characters(s.split(), typo_rate, seed + i)) for i, s in enumerate(test["sentence"])]
    raw = Dataset.from_dict({"sentence": sentences, "label": test["label"]})
    return {"typos": sst2.tokenize(raw, tokenizer, max_length)}


def word_attack(model, tokenizer, data, samples, seed, max_length):
    test = data["raw"]["test"]
    rng = random.Random(seed)
    idx = sorted(rng.sample(range(len(test)), min(samples, len(test))))
    examples = [test[i]["sentence"].split() for i in idx]
    labels = [test[i]["label"] for i in idx]
    predict = model_predict_proba(model, tokenizer, batch_size=64, max_length=max_length)
    result = attack_accuracy(predict, examples, labels, budget=0.3, seed=seed)
    return {k: round(100 * v, 2) for k, v in result.items()}


# ---- training the adversarial candidates --------------------------------------------------------------------------

def settings_of(method):
    """The settings of a candidate (`METHODS`) or of a control (`CONTROLS`)."""
    if method in METHODS:
        return METHODS[method]
    if method in CONTROLS:
        return CONTROLS[method]
    raise SystemExit(f"unknown candidate or control {method!r}: candidates are {', '.join(METHODS)}; controls are "
                     f"{', '.join(CONTROLS)}")


def adv_settings(method):
    """A candidate's `DistillationArguments` fields (its `BENCHMARK_KEYS` left out; a control has none)."""
    return {k: v for k, v in settings_of(method).items() if k not in BENCHMARK_KEYS}


def word_importance(teacher, tokenizer, raw, max_length, path):
    """For every row of `raw` (sentence, label), how much deleting each word lowers the teacher's probability of the
    gold class (the word attack's ranking), keyed by sentence; cached in `path`."""
    if path.exists():
        return json.loads(path.read_text())
    predict = model_predict_proba(teacher, tokenizer, batch_size=128, max_length=max_length)
    importance = {}
    rows = list(zip(raw["sentence"], raw["label"], strict=True))
    for start in range(0, len(rows), 256):
        chunk = rows[start:start + 256]
        texts, spans = [], []
        for sentence, _ in chunk:
            words = sentence.split()
            spans.append((len(texts), len(words)))
            texts += [words] + [words[:i] + words[i + 1:] for i in range(len(words))]
        probabilities = predict(texts)
        for (sentence, label), (at, n) in zip(chunk, spans, strict=True):
            full = probabilities[at, label]
            importance.setdefault(sentence, [round(float(full - probabilities[at + 1 + i, label]), 5)
                                             for i in range(n)])
        if start % 2560 == 0:
            logger.info("word importance: %d of %d rows", start + len(chunk), len(rows))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(importance))
    return importance


def salient_typo_noise(importance, rate, focus):
    """A `TextNoise` with as many typos per text as `typo_noise(rate)`, each placed with probability `focus` on the
    most important word not yet hit (`importance[text]`) and otherwise on a random eligible word."""
    def noise(text, rng):
        words = text.split()
        scores = importance[text]
        eligible = [i for i, w in enumerate(words) if is_typo_eligible(w)]
        ranked = sorted(eligible, key=lambda i: -scores[i])
        chosen = []
        for _ in range(_how_many(rate, len(eligible))):
            left = [i for i in eligible if i not in chosen]
            chosen.append(next(i for i in ranked if i not in chosen) if rng.random() < focus else rng.choice(left))
        return " ".join(typo(w, rng) if i in chosen else w for i, w in enumerate(words))

    return noise


def candidate_train_set(task, method, data, tokenizer, max_length, teacher=None, cache=None):
    """The training set of a candidate: the core benchmark's, or for a `noisy_view` candidate the same raw rows
    with typos in the student's view of some or all of them (its `probability`) and the clean text in the teacher's."""
    view = settings_of(method).get("noisy_view")
    if view is None:
        return data["train"]
    if task == "ner":
        raise SystemExit(f"`{method}` trains on a noisy teacher view, which is for sequence classification only; "
                         "leave it out of --methods for ner.")
    noise = typo_noise(view["typo_rate"])
    if "focus" in view:
        importance = word_importance(teacher, tokenizer, data["raw"]["train"], max_length,
                                     cache / "train_word_importance.json")
        noise = salient_typo_noise(importance, view["typo_rate"], view["focus"])
    views = [add_noisy_view(data["raw"]["train"], tokenizer, text_column="sentence",
                            noise=noise, probability=view["probability"],
                            seed=NOISY_VIEW_SEED + copy, max_length=max_length)
             for copy in range(view.get("copies", 1))]
    if "wordpiece_dropout" in view:
        views = [wordpiece_dropout(v, tokenizer, view["wordpiece_dropout"], NOISY_VIEW_SEED + copy, max_length)
                 for copy, v in enumerate(views)]
    return views[0] if len(views) == 1 else concatenate_datasets(views)


def split_piece(piece, vocab, rng):
    """`piece` split at a random point into two pieces that are both in `vocab` (the second one a "##" continuation),
    or `[piece]` when it is shorter than two characters or no cut gives two vocabulary pieces."""
    prefix = "##" if piece.startswith("##") else ""
    body = piece[len(prefix):]
    cuts = list(range(1, len(body)))
    rng.shuffle(cuts)
    for k in cuts:
        left, right = prefix + body[:k], "##" + body[k:]
        if left in vocab and right in vocab:
            return [left, right]
    return [piece]


def wordpiece_dropout(dataset, tokenizer, probability, seed, max_length):
    """The student view of `dataset` (`input_ids`) with each word piece split in two (`split_piece`) with
    `probability`, seeded per row; special tokens are kept, the row is cut back to `max_length` before its last
    token, and the mask and type ids follow. The teacher view is untouched."""
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_ids)

    def build(row, i):
        if any(row.get("token_type_ids", ())):
            raise SystemExit("word-piece dropout re-cuts single texts; this row is a text pair")
        rng = random.Random(f"{seed}:wordpiece:{i}")
        ids = []
        for token in row["input_ids"]:
            if token in special or rng.random() >= probability:
                ids.append(token)
            else:
                ids.extend(tokenizer.convert_tokens_to_ids(split_piece(tokenizer.convert_ids_to_tokens(token), vocab,
                                                                       rng)))
        if max_length is not None and len(ids) > max_length:
            ids = ids[:max_length - 1] + ids[-1:]
        out = {"input_ids": ids, "attention_mask": [1] * len(ids)}
        if "token_type_ids" in row:
            out["token_type_ids"] = [0] * len(ids)
        return out

    return dataset.map(build, with_indices=True)


def candidate_epochs(method, student_epochs):
    """Epochs over a candidate's training set: the core students' epochs, divided by the number of noisy copies the
    set holds (so that every candidate takes the same number of optimizer steps), times its `epochs_factor`."""
    settings = settings_of(method)
    return student_epochs * settings.get("epochs_factor", 1) / settings.get("noisy_view", {}).get("copies", 1)


class TailWeightAverage(TrainerCallback):
    """Replaces the model's parameters, at the end of training, by their uniform mean over the snapshots taken every
    `every` optimizer steps from step `tail` x max_steps on (the last step always included). Means are kept in fp32."""

    def __init__(self, model, tail, every):
        if not 0.0 < tail <= 1.0 or every < 1:
            raise ValueError(f"weight_average needs 0 < tail <= 1 and every >= 1, got tail={tail}, every={every}")
        self.model, self.tail, self.every = model, tail, every
        self.mean, self.count = None, 0

    def _snapshot(self):
        params = {n: p.detach().float() for n, p in self.model.named_parameters()}
        if self.mean is None:
            self.mean = {n: p.clone() for n, p in params.items()}
        else:
            for n, p in params.items():
                self.mean[n] += (p - self.mean[n]) / (self.count + 1)
        self.count += 1

    def on_step_end(self, args, state, control, **kwargs):
        first = state.max_steps - int(self.tail * state.max_steps)
        last = state.global_step == state.max_steps
        if state.global_step >= first and ((state.global_step - first) % self.every == 0 or last):
            self._snapshot()

    def on_train_end(self, args, state, control, **kwargs):
        if self.mean is None:
            raise RuntimeError("TailWeightAverage took no snapshot: training ended before its tail began")
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                p.copy_(self.mean[n].to(p.dtype))
        logger.info("weights averaged over %d snapshots (last %.0f%% of %d steps, every %d)", self.count,
                    100 * self.tail, state.max_steps, self.every)


def train_candidate(task_name, method, teacher, train_set, data, tokenizer, kd_settings, setup, seed, quick):
    out = CACHE_DIR / task_name / (f"control_{method}" if method in CONTROLS else f"adv_{method}")
    adversarial = {} if method in CONTROLS else {**COMMON_ADV, **adv_settings(method)}
    auto = AutoModelForTokenClassification if "ner" in task_name else AutoModelForSequenceClassification
    # Everything that decides the candidate's training: a cached one trained otherwise (other adversarial settings,
    # another --seed, other epochs, or before these were recorded) is not today's candidate.
    trained_with = {"settings": {**settings_of(method), **adversarial}, "kd_settings": kd_settings, "seed": seed,
                    "setup": {k: setup[k] for k in ("student_epochs", "learning_rate", "batch_size")}, "quick": quick}
    if (out / "config.json").exists():
        record = json.loads((out / "train_record.json").read_text())
        if all(record.get(key) == value for key, value in trained_with.items()):
            logger.info("reusing %s", out)
            return auto.from_pretrained(out), record
        logger.info("retraining %s: cached with %s, wanted %s", out,
                    {key: record.get(key) for key in trained_with}, trained_with)
    set_seed(seed)
    # The chosen student_kd settings may carry their own learning rate; they win over the suite's, as in the core run.
    args = DistillationArguments(**{
        **dict(output_dir=str(out), num_train_epochs=candidate_epochs(method, setup["student_epochs"]),
               learning_rate=setup["learning_rate"], per_device_train_batch_size=setup["batch_size"],
               per_device_eval_batch_size=64, warmup_steps=0.1, weight_decay=0.01, seed=seed, data_seed=seed,
               train_sampling_strategy="group_by_length", logging_steps=50, save_strategy="no", eval_strategy="no",
               report_to="none", disable_tqdm=True, use_cpu=True),
        **kd_settings, **adversarial, **({"adv_start_step": 2} if quick and adversarial else {}),
    })
    student = create_student(teacher, LAYERS)
    average = settings_of(method).get("weight_average")
    trainer = DistillationTrainer(model=student, teacher_model=own_teacher(teacher, kd_settings), args=args,
                                  train_dataset=train_set, data_collator=data["collator"],
                                  processing_class=tokenizer,
                                  callbacks=[TailWeightAverage(student, **average)] if average else None)
    start = time.perf_counter()
    metrics = trainer.train().metrics
    record = {"train_seconds": round(time.perf_counter() - start, 1),
              "train_samples_per_second": round(metrics["train_samples_per_second"], 2), **trained_with}
    trainer.save_model(str(out))
    (out / "train_record.json").write_text(json.dumps(record))
    return trainer.model, record


def step_overhead(teacher, data, tokenizer, kd_settings, setup, methods, seed, steps, rounds):
    """Seconds per optimizer step of each adversarial method over plain KD, interleaved so noise falls alike."""
    trainers = {}
    for name in ["kd", *methods]:
        adv = {**COMMON_ADV, **adv_settings(name), "adv_start_step": 0} if name != "kd" else {}
        args = DistillationArguments(**{
            **dict(output_dir=tempfile.mkdtemp(prefix=f"overhead_{name}_"), max_steps=steps,
                   per_device_train_batch_size=setup["batch_size"], learning_rate=setup["learning_rate"], seed=seed,
                   data_seed=seed, train_sampling_strategy="group_by_length", save_strategy="no", report_to="none",
                   disable_tqdm=True, use_cpu=True, logging_steps=1000),
            **kd_settings, **adv,
        })
        trainers[name] = DistillationTrainer(model=create_student(teacher, LAYERS),
                                             teacher_model=own_teacher(teacher, kd_settings), args=args,
                                             train_dataset=data["train"], data_collator=data["collator"],
                                             processing_class=tokenizer)
    # Steps alone are timed (not each train() call's set-up), after an untimed warm-up, every run on the same batches,
    # the order alternating between rounds; a method's overhead is the median of its per-round ratios to kd.
    rates = interleaved_rates(trainers, steps, rounds, warmup_steps=steps)
    per_step = {name: [setup["batch_size"] / rate for rate in values] for name, values in rates.items()}
    ratios = {m: round(median([a / b for a, b in zip(per_step[m], per_step["kd"], strict=True)]), 3) for m in methods}
    return ratios, {name: median(values) for name, values in per_step.items()}


# ---- one task -------------------------------------------------------------------------------------------------

def run_task(task, args, tokenizer):
    quick = args.quick
    if task == "ner":
        name, metric, auto = ("ner_conll2003_quick" if quick else "ner_conll2003"), "f1", AutoModelForTokenClassification
        results_file = CACHE_DIR.parent / "results" / f"{name}.json"
        max_length = 128
        data = ner_conll2003.load_data(tokenizer, max_length, quick=quick)
        kd_settings = ner_conll2003.KD_SETTINGS
    else:
        name, metric, auto = ("sst2_quick" if quick else "sst2"), "accuracy", AutoModelForSequenceClassification
        results_file = CACHE_DIR.parent / "results" / f"{name}.json"
        max_length = 64
        core = json.loads(results_file.read_text())
        data = sst2.load_data(tokenizer, max_length, core["setup"]["max_train_samples"], DEFAULT_SEED, quick=quick)
        kd_settings = sst2.KD_SETTINGS
    core = json.loads(results_file.read_text())
    kd_settings = core["runs"].get("student_kd", {}).get("settings", kd_settings)
    # hf-distill does not combine adversarial training with feature distillation: the candidates take student_kd's
    # logit settings, without its hidden-state/attention terms if it has them (the selection records what was used).
    kd_settings = {k: v for k, v in kd_settings.items() if k not in FEATURE_FIELDS}
    setup = core["setup"]
    models = {}
    for role in ("teacher", "student_plain", "student_kd"):
        path = CACHE_DIR / name / role
        if not (path / "config.json").exists():
            raise SystemExit(f"{path} is missing: run benchmarks/{'ner_conll2003' if task == 'ner' else 'sst2'}.py "
                             f"{'--quick ' if quick else ''}first.")
        models[role] = auto.from_pretrained(path).eval()
    eps = [float(e) for e in args.epsilons.split(",")]
    steps = args.pgd_steps
    n_pgd = 100 if quick else args.pgd_samples
    dev_pgd, test_pgd = subset(data["dev"], n_pgd, args.seed), subset(data["test"], n_pgd, args.seed)

    # ---- candidates, chosen on dev ----
    methods = args.methods.split(",")
    perturb = ner_perturbed_sets if task == "ner" else sst2_perturbed_sets
    dev_typos = [perturb(data, tokenizer, max_length, args.typo_rate, args.seed + k * DRAW_SEED_STRIDE,
                         split="dev")["typos"] for k in range(args.perturbation_draws)]

    def dev_scores(model):
        typos = [score(model, dataset, data, metric, args.seed) for dataset in dev_typos]
        return {"dev_clean": score(model, data["dev"], data, metric, args.seed),
                "dev_pgd": pgd(model, dev_pgd, data, metric, eps[0], steps, args.seed),
                "dev_typos": round(sum(typos) / len(typos), 2)}

    selection = {"student_kd": dev_scores(models["student_kd"])}
    candidates = {}
    for method in methods:
        train_set = candidate_train_set(task, method, data, tokenizer, max_length, models["teacher"], CACHE_DIR / name)
        model, record = train_candidate(name, method, models["teacher"], train_set, data, tokenizer, kd_settings,
                                        setup, args.seed, quick)
        candidates[method] = model.eval()
        selection[method] = {**dev_scores(model), "train_samples_per_second": record["train_samples_per_second"]}
        logger.info("%s %s candidate %s: %s", task, method, record, selection[method])
    floor = selection["student_kd"]["dev_clean"] - 1.0
    eligible = [m for m in methods if selection[m]["dev_clean"] >= floor] or methods
    best = max(eligible, key=lambda m: selection[m]["dev_pgd"] + selection[m]["dev_typos"])
    models["student_adv_kd"] = candidates[best]
    selection["chosen"] = best
    selection["candidate_kd_settings"] = kd_settings
    selection["rule"] = SELECTION_RULE
    # Controls are trained after the choice, which they play no part in, and measured on test with the models.
    for control in [c for c in args.controls.split(",") if c]:
        model, record = train_candidate(name, control, models["teacher"], data["train"], data, tokenizer, kd_settings,
                                        setup, args.seed, quick)
        selection[control] = {**dev_scores(model.eval()), "train_samples_per_second": record["train_samples_per_second"],
                              "control": True}
        logger.info("%s %s control %s: %s", task, control, record, selection[control])
        models[control] = model

    # ---- test ----
    draws = [perturb(data, tokenizer, max_length, args.typo_rate, args.seed + k * DRAW_SEED_STRIDE)
             for k in range(args.perturbation_draws)]
    perturbed = draws[0]
    table = {}
    for role, model in models.items():
        row = {"clean": score(model, data["test"], data, metric, args.seed)}
        for e in eps:
            row[f"pgd_eps{e:g}"] = pgd(model, test_pgd, data, metric, e, steps, args.seed)
        for variant, dataset in perturbed.items():
            row[variant] = score(model, dataset, data, metric, args.seed)
            if len(draws) > 1:
                values = [row[variant]] + [score(model, d[variant], data, metric, args.seed) for d in draws[1:]]
                row[f"{variant}_mean{len(draws)}"] = round(sum(values) / len(values), 2)
        if task == "sst2":
            attack = word_attack(model, tokenizer, data, 50 if quick else args.word_attack_samples, args.seed,
                                 max_length)
            row["word_attack_accuracy"] = attack["attacked_accuracy"]
            row["word_attack_success_rate"] = attack["attack_success_rate"]
            row["word_attack_clean_accuracy"] = attack["clean_accuracy"]
        table[role] = row
        logger.info("%s %s: %s", task, role, row)
    table["student_adv_kd"]["method"] = best
    return table, selection, (models["teacher"], data, kd_settings, setup)


def overhead_only_inputs(task, args, tokenizer):
    """`(teacher, data, kd_settings, setup)` for `step_overhead` alone, as `run_task` would give them: the task's data
    and student_kd settings from the core results file, and its cached teacher, or all-MiniLM-L6-v2 with a fresh head
    of the task's labels when the cache is gone (a step costs the same whatever the weights)."""
    name = f"{'ner_conll2003' if task == 'ner' else 'sst2'}{'_quick' if args.quick else ''}"
    core = json.loads((CACHE_DIR.parent / "results" / f"{name}.json").read_text())
    if task == "ner":
        data, auto, labels = ner_conll2003.load_data(tokenizer, 128, quick=args.quick), \
            AutoModelForTokenClassification, {"num_labels": 9}
    else:
        data = sst2.load_data(tokenizer, 64, core["setup"]["max_train_samples"], DEFAULT_SEED, quick=args.quick)
        auto, labels = AutoModelForSequenceClassification, {"num_labels": 2}
    kd_settings = core["runs"].get("student_kd", {}).get("settings", {})
    kd_settings = {k: v for k, v in kd_settings.items() if k not in FEATURE_FIELDS}
    cached = CACHE_DIR / name / "teacher"
    teacher = auto.from_pretrained(cached if (cached / "config.json").exists() else minilm_path(),
                                   **({} if (cached / "config.json").exists() else labels)).eval()
    logger.info("overhead teacher: %s", cached if (cached / "config.json").exists() else "all-MiniLM-L6-v2, fresh head")
    return teacher, data, kd_settings, core["setup"]


def main():
    args = parse_args()
    setup_logging("robustness_quick" if args.quick else "robustness")
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    payload = {} if args.overhead_only else {"runs": {}, "selection": {}}
    overhead_inputs = overhead_only_inputs(args.tasks.split(",")[0], args, tokenizer) if args.overhead_only else None
    for task in [] if args.overhead_only else args.tasks.split(","):
        table, selection, inputs = run_task(task, args, tokenizer)
        payload["runs"][task] = table
        payload["selection"][task] = selection
        overhead_inputs = overhead_inputs or inputs
    teacher, data, kd_settings, setup = overhead_inputs
    methods = [m for m in args.overhead_methods.split(",") if m]
    if methods:
        steps, rounds = (3, 1) if args.quick else (10, args.overhead_rounds)
        ratios, seconds = step_overhead(teacher, data, tokenizer, kd_settings, setup, methods, args.seed, steps,
                                        rounds)
        payload["overhead"] = ratios
        payload["overhead_seconds_per_step"] = {k: round(v, 4) for k, v in seconds.items()}
        payload["passes"] = {m: AttackSettings(method=METHODS[m]["adversarial"], epsilon=1.0, step_size=METHODS[m].get("adv_step_size", 0.3),
                                               steps=METHODS[m].get("adv_steps", 1)).passes for m in methods}
        payload["overhead_task"] = args.tasks.split(",")[0]
    if not args.overhead_only:
        payload[f"setup_{args.tasks.replace(',', '_')}"] = {"epsilons": args.epsilons, "pgd_steps": args.pgd_steps, "pgd_samples": args.pgd_samples,
                            "typo_rate": args.typo_rate, "word_attack_samples": args.word_attack_samples,
                            "perturbation_draws": args.perturbation_draws,
                            "candidates": args.methods, "candidate_settings": METHODS, "common_adv": COMMON_ADV}
    payload["command"] = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    payload["machine"] = machine()
    path = write_results("robustness_quick" if args.quick else "robustness", payload)
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
