"""evaluate_robustness on tiny offline models: exact at epsilon 0, a higher loss under attack, and no side effects."""

import copy

import pytest
import torch
from conftest import NER_LABELS, tiny_sequence_model, tiny_token_model
from datasets import DatasetDict
from test_trainer import NO_DROPOUT
from test_trainer import SENTENCES as TRAINER_SENTENCES
from test_trainer import ner_dataset as trainer_ner_dataset
from torch import nn
from transformers import DataCollatorForTokenClassification

from hf_distill.metrics import sequence_classification_metrics, token_classification_metrics
from hf_distill.robustness import evaluate_robustness

SENTENCES = TRAINER_SENTENCES[:5]


def ner_dataset(tokenizer):
    """test_trainer's NER rows plus a text column that must be dropped before collation."""
    return trainer_ner_dataset(tokenizer, n=len(SENTENCES)).add_column("tokens", [s.split() for s in SENTENCES])


def sequence_rows(tokenizer):
    """A list of equal-length feature dicts with a `label` per example."""
    enc = tokenizer(SENTENCES, padding="max_length", max_length=14)
    return [
        {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "label": i % 2}
        for i, (ids, mask, types) in enumerate(
            zip(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], strict=True)
        )
    ]


def test_zero_epsilon_gives_clean_results_exactly(tokenizer):
    model = tiny_token_model(tokenizer, layers=1, **NO_DROPOUT)
    results = evaluate_robustness(
        model,
        ner_dataset(tokenizer),
        epsilon=0.0,
        steps=2,
        data_collator=DataCollatorForTokenClassification(tokenizer),
        compute_metrics=token_classification_metrics(NER_LABELS),
        batch_size=2,
    )
    assert {"clean_loss", "attacked_loss", "clean_f1", "attacked_f1", "clean_accuracy"} <= set(results)
    for key, value in results.items():
        if key.startswith("clean_"):
            assert results["attacked_" + key[len("clean_") :]] == value, key


def test_clean_loss_is_the_mean_over_labelled_tokens(tokenizer):
    model = tiny_token_model(tokenizer, layers=1, **NO_DROPOUT).eval()
    dataset = ner_dataset(tokenizer)
    total, count = 0.0, 0
    with torch.no_grad():
        for row in dataset:
            labels = torch.tensor([row["labels"]])
            logits = model(input_ids=torch.tensor([row["input_ids"]])).logits
            total += nn.functional.cross_entropy(logits[0], labels[0], ignore_index=-100, reduction="sum").item()
            count += int(labels.ne(-100).sum())
    results = evaluate_robustness(
        model, dataset, epsilon=0.0, steps=1, data_collator=DataCollatorForTokenClassification(tokenizer), batch_size=3
    )
    assert results["clean_loss"] == pytest.approx(total / count, rel=1e-5)


def test_token_metrics_do_not_depend_on_how_the_rows_were_batched(tokenizer):
    # Batches of different widths are padded to one width before scoring: the padding must be -100 in the labels
    # (never scored), not a class that the padded logits' argmax would then get right.
    model = tiny_token_model(tokenizer, layers=1, **NO_DROPOUT)
    settings = dict(epsilon=0.0, steps=1, data_collator=DataCollatorForTokenClassification(tokenizer),
                    compute_metrics=token_classification_metrics(NER_LABELS))
    one_by_one = evaluate_robustness(model, ner_dataset(tokenizer), batch_size=1, **settings)
    together = evaluate_robustness(model, ner_dataset(tokenizer), batch_size=len(SENTENCES), **settings)
    assert one_by_one.keys() == together.keys()
    for key, value in together.items():
        assert one_by_one[key] == pytest.approx(value, rel=1e-6), key


def test_the_attack_runs_the_same_under_a_callers_inference_mode(tokenizer):
    # Evaluation code is often wrapped in torch.inference_mode(), where the attack's gradient was refused
    # ("element 0 of tensors does not require grad"); no_grad was already lifted.
    model = tiny_token_model(tokenizer, layers=1, **NO_DROPOUT)
    settings = dict(epsilon=1.0, steps=2, data_collator=DataCollatorForTokenClassification(tokenizer), batch_size=3)
    plain = evaluate_robustness(model, ner_dataset(tokenizer), **settings)
    with torch.inference_mode():
        inside = evaluate_robustness(model, ner_dataset(tokenizer), **settings)
    assert inside == plain and plain["attacked_loss"] > plain["clean_loss"]


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_attack_raises_the_token_classification_loss(tokenizer, norm):
    model = tiny_token_model(tokenizer, layers=1, **NO_DROPOUT)
    epsilon = 1.0 if norm == "l2" else 0.05
    results = evaluate_robustness(
        model,
        ner_dataset(tokenizer),
        epsilon=epsilon,
        steps=3,
        norm=norm,
        data_collator=DataCollatorForTokenClassification(tokenizer),
        batch_size=2,
    )
    assert results["attacked_loss"] > results["clean_loss"] + 1e-3


def test_attack_raises_the_sequence_classification_loss_and_reports_metrics(tokenizer):
    model = tiny_sequence_model(tokenizer, layers=1, **NO_DROPOUT)
    results = evaluate_robustness(
        model,
        sequence_rows(tokenizer),
        epsilon=1.0,
        steps=3,
        compute_metrics=sequence_classification_metrics(2),
    )
    assert results["attacked_loss"] > results["clean_loss"] + 1e-3
    assert set(results) == {
        "clean_loss",
        "attacked_loss",
        "clean_accuracy",
        "attacked_accuracy",
        "clean_f1",
        "attacked_f1",
    }
    assert results["attacked_accuracy"] <= results["clean_accuracy"]


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_the_attack_is_plain_pgd_on_the_summed_cross_entropy_bit_for_bit(tokenizer, norm):
    # evaluate_robustness rescales each example's loss by a power of two (for fp16 models); in fp32 that must leave
    # the attack exactly the textbook one: seeded start, then K steps along each example's normalised gradient.
    from hf_distill.adversarial import ascent_step, init_delta, perturbation_mask, project

    model = tiny_sequence_model(tokenizer, layers=2, **NO_DROPOUT).eval()
    with torch.no_grad():  # losses from ~0.02 (label 0) to ~4 (label 1): factors from 2^6 to 2^-2
        model.classifier.bias.copy_(torch.tensor([4.0, 0.0]))
    rows = sequence_rows(tokenizer)
    epsilon, steps, step_size = (1.0, 3, 0.6) if norm == "l2" else (0.05, 3, 0.03)
    results = evaluate_robustness(model, rows, epsilon=epsilon, steps=steps, step_size=step_size, norm=norm,
                                  batch_size=len(rows), special_token_ids=[], seed=7)

    batch = {key: torch.tensor([row[key] for row in rows]) for key in rows[0]}
    labels, extra = batch.pop("label"), {k: batch[k] for k in ("attention_mask", "token_type_ids")}
    embeds = model.get_input_embeddings()(batch["input_ids"]).detach()
    mask = perturbation_mask(batch["input_ids"], batch["attention_mask"], torch.tensor([], dtype=torch.long))
    generator = torch.Generator().manual_seed(7)
    delta = project(init_delta(embeds, mask, init_scale=epsilon, norm=norm, generator=generator), mask,
                    epsilon=epsilon, norm=norm)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(inputs_embeds=embeds + delta, **extra).logits, labels,
                                           reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
        delta = project(ascent_step(delta.detach(), grad, mask, step_size=step_size, norm=norm), mask,
                        epsilon=epsilon, norm=norm)
    with torch.no_grad():
        attacked = nn.functional.cross_entropy(model(inputs_embeds=embeds + delta, **extra).logits, labels,
                                               reduction="sum")
    assert results["attacked_loss"] == float(attacked) / len(rows)
    assert results["attacked_loss"] > results["clean_loss"] + 1e-3


def test_an_fp16_model_is_attacked_as_hard_as_its_fp32_copy_when_confident(tokenizer):
    # Clean loss ~2e-6: the cross-entropy's gradient falls below fp16's normal range on its way back through an fp16
    # model. Unscaled, the fp16 attack stalled (its loss gain was ~0, against the fp32 copy's 2.4e-7).
    model = tiny_sequence_model(tokenizer, layers=2, **NO_DROPOUT).eval()
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([13.0, 0.0]))  # class 0 wins every row by a wide margin
    rows = [dict(row, label=0) for row in sequence_rows(tokenizer)]
    gains = {}
    for dtype in (torch.float32, torch.float16):
        results = evaluate_robustness(copy.deepcopy(model).to(dtype), rows, epsilon=0.5, steps=3,
                                      batch_size=len(rows), special_token_ids=[])
        assert results["clean_loss"] < 1e-5
        gains[dtype] = results["attacked_loss"] - results["clean_loss"]
    assert gains[torch.float32] > 0
    assert gains[torch.float16] == pytest.approx(gains[torch.float32], rel=0.05), gains


def test_model_is_left_exactly_as_it_was(tokenizer):
    model = tiny_token_model(tokenizer, layers=1)  # with dropout: eval mode must switch it off during the attack
    model.train()
    model.classifier.requires_grad_(False)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    evaluate_robustness(
        model,
        ner_dataset(tokenizer),
        epsilon=1.0,
        steps=2,
        data_collator=DataCollatorForTokenClassification(tokenizer),
    )
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert model.training
    # Dropout is off during the evaluation: a model handed over in train mode scores as in eval mode.
    settings = dict(epsilon=1.0, steps=2, data_collator=DataCollatorForTokenClassification(tokenizer))
    in_train_mode = evaluate_robustness(model, ner_dataset(tokenizer), **settings)
    assert in_train_mode == evaluate_robustness(model.eval(), ner_dataset(tokenizer), **settings)


def test_the_attack_stays_inside_epsilon_and_takes_the_documented_default_step(tokenizer):
    model = tiny_sequence_model(tokenizer, layers=1, **NO_DROPOUT)
    rows = sequence_rows(tokenizer)
    seen = []

    def record(module, args, kwargs):
        if kwargs.get("inputs_embeds") is not None:
            delta = kwargs["inputs_embeds"] - module.get_input_embeddings()(kwargs["inputs_embeds"].new_zeros(
                kwargs["inputs_embeds"].shape[:2], dtype=torch.long) + torch.tensor([r["input_ids"] for r in rows]))
            seen.append(delta.detach().flatten(1).norm(dim=1))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:  # a step of 1.0 per iteration against epsilon 0.1: only the projection holds the attack to its budget
        evaluate_robustness(model, rows, epsilon=0.1, steps=3, step_size=1.0, batch_size=len(rows),
                            special_token_ids=[])
    finally:
        handle.remove()
    assert len(seen) == 6 and all((norms <= 0.1 * (1 + 1e-5)).all() for norms in seen), seen
    assert seen[-1] == pytest.approx([0.1] * len(rows), rel=1e-4)  # and it reaches the edge
    # Without step_size: 2.5 * epsilon / steps.
    default = evaluate_robustness(model, rows, epsilon=0.5, steps=2)
    assert default == evaluate_robustness(model, rows, epsilon=0.5, steps=2, step_size=0.625)
    assert default != evaluate_robustness(model, rows, epsilon=0.5, steps=2, step_size=0.25)


def test_results_are_seeded(tokenizer):
    model = tiny_sequence_model(tokenizer, layers=1, **NO_DROPOUT)
    rows = sequence_rows(tokenizer)
    first = evaluate_robustness(model, rows, epsilon=0.5, steps=1, step_size=0.0, seed=3)
    again = evaluate_robustness(model, rows, epsilon=0.5, steps=1, step_size=0.0, seed=3)
    other = evaluate_robustness(model, rows, epsilon=0.5, steps=1, step_size=0.0, seed=4)
    assert first == again
    assert first["attacked_loss"] != other["attacked_loss"]  # only the random start differs


def test_ragged_examples_without_a_collator_are_refused(tokenizer):
    model = tiny_token_model(tokenizer, layers=1)
    with pytest.raises(ValueError, match="different lengths .*DataCollatorForTokenClassification"):
        evaluate_robustness(model, ner_dataset(tokenizer), epsilon=1.0, steps=1)


def test_dataset_dict_and_missing_labels_are_refused(tokenizer):
    model = tiny_token_model(tokenizer, layers=1)
    dataset = ner_dataset(tokenizer)
    with pytest.raises(ValueError, match=r"pass one split, e.g. dataset\['validation'\]"):
        evaluate_robustness(model, DatasetDict(validation=dataset), epsilon=1.0, steps=1)
    with pytest.raises(ValueError, match="needs `input_ids` and `labels`"):
        evaluate_robustness(model, dataset.remove_columns("labels"), epsilon=1.0, steps=1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epsilon": -1.0}, "`epsilon` must be a finite number >= 0, got -1.0"),
        ({"steps": 0}, "`steps` must be an integer >= 1, got 0"),
        ({"norm": "l1"}, "`norm` must be one of"),
        ({"batch_size": 0}, "`batch_size` must be an integer >= 1"),
        ({"step_size": -0.1}, "`step_size` must be a finite number >= 0"),
    ],
)
def test_settings_are_validated(tokenizer, kwargs, message):
    settings = {"epsilon": 1.0, "steps": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        evaluate_robustness(tiny_sequence_model(tokenizer, layers=1), sequence_rows(tokenizer), **settings)


def _perturbation_at(model, tokenizer, **kwargs):
    """|δ| per position of the attacked forward passes, summed over passes and the hidden axis: (B, L)."""
    data = ner_dataset(tokenizer)
    seen = []

    def hook(module, args, kw):
        if kw.get("inputs_embeds") is not None:
            seen.append(kw["inputs_embeds"].detach())

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        evaluate_robustness(model, data, epsilon=1.0, steps=2, batch_size=len(data), **kwargs)
    finally:
        handle.remove()
    batch = DataCollatorForTokenClassification(tokenizer)([{k: data[i][k] for k in ("input_ids", "attention_mask")}
                                                           for i in range(len(data))])
    clean = model.get_input_embeddings()(batch["input_ids"])
    delta = sum((embeds - clean).abs().sum(-1) for embeds in seen[1:])  # seen[0] is the clean pass
    return delta, batch


def test_special_tokens_are_not_attacked_unless_asked(tokenizer):
    # As in training (adv_perturb_special_tokens=False): [CLS] and [SEP] are not text an attacker can edit.
    model = tiny_token_model(tokenizer, seed=3, **NO_DROPOUT)
    special = torch.tensor(tokenizer.all_special_ids)
    delta, batch = _perturbation_at(model, tokenizer, data_collator=DataCollatorForTokenClassification(tokenizer))
    is_special = torch.isin(batch["input_ids"], special)
    real = batch["attention_mask"].bool()
    assert (delta[is_special] == 0).all() and (delta[real & ~is_special] > 0).all()
    delta, _ = _perturbation_at(model, tokenizer, data_collator=DataCollatorForTokenClassification(tokenizer),
                                special_token_ids=[])
    assert (delta[is_special & real] > 0).all() and (delta[~real] == 0).all()  # padding never


def test_submodule_modes_tuple_outputs_label_columns_and_int32_labels(tokenizer):
    # A model in train mode with frozen-BN-style eval submodules gets every module's own mode back; a model built
    # with return_dict=False is read like any other; a token set whose collated labels stay under `label`, and
    # int32 labels, are attacked as `labels`.
    model = tiny_token_model(tokenizer, layers=1, **NO_DROPOUT)
    model.train()
    model.bert.embeddings.eval()
    collator = DataCollatorForTokenClassification(tokenizer)
    reference = evaluate_robustness(model, ner_dataset(tokenizer), epsilon=0.5, steps=1, data_collator=collator)
    assert model.training and not model.bert.embeddings.training
    model.config.return_dict = False
    assert evaluate_robustness(model, ner_dataset(tokenizer), epsilon=0.5, steps=1,
                               data_collator=collator) == reference
    model.config.return_dict = True
    renamed = ner_dataset(tokenizer).rename_column("labels", "label")
    assert evaluate_robustness(model, renamed, epsilon=0.5, steps=1, data_collator=collator) == reference
    as_int32 = ner_dataset(tokenizer).with_format("numpy")
    rows = [{**row, "labels": row["labels"].astype("int32")} for row in as_int32.remove_columns("tokens")]
    for ids in (torch.tensor(tokenizer.all_special_ids), set(tokenizer.all_special_ids)):
        assert evaluate_robustness(model, rows, epsilon=0.5, steps=1, data_collator=collator,
                                   special_token_ids=ids) is not None


def test_an_iterable_dataset_is_refused_with_the_fix(tokenizer):
    with pytest.raises(ValueError, match=r"map-style dataset.*list\("):
        evaluate_robustness(tiny_token_model(tokenizer, layers=1), ner_dataset(tokenizer).to_iterable_dataset(),
                            epsilon=0.5, steps=1, data_collator=DataCollatorForTokenClassification(tokenizer))


def test_labels_of_the_other_task_or_outside_the_classes_are_refused_before_the_attack(tokenizer):
    # The attack failed inside the loss: "Expected input batch_size (512) to match target batch_size (8)",
    # "Target 5 is out of bounds", naming neither the model nor the data.
    from datasets import Dataset

    collator = DataCollatorForTokenClassification(tokenizer)
    with pytest.raises(ValueError, match=r"model is a sequence classifier .* labels are a list per example \(token "
                                         r"labels\), e.g. \[-100, "):
        evaluate_robustness(tiny_sequence_model(tokenizer, num_labels=7), ner_dataset(tokenizer), epsilon=0.5,
                            steps=1, data_collator=collator)
    rows = sequence_rows(tokenizer)
    with pytest.raises(ValueError, match=r"model is a token classifier .* labels are one per example"):
        evaluate_robustness(tiny_token_model(tokenizer, layers=1), rows, epsilon=0.5, steps=1)
    hidden = Dataset.from_list([{**row, "label": -1} for row in rows])  # GLUE's test splits
    with pytest.raises(ValueError, match=r"the label -1 in row 0 .*how GLUE's test splits hide theirs: use a split with labels"):
        evaluate_robustness(tiny_sequence_model(tokenizer), hidden, epsilon=0.5, steps=1)
    long = Dataset.from_list(rows)
    with pytest.raises(ValueError, match=r"has 14 tokens, but the model has positions for 8"):
        evaluate_robustness(tiny_sequence_model(tokenizer, max_position_embeddings=8), long, epsilon=0.5, steps=1)
    # a numpy integer is an integer
    import numpy as np

    assert evaluate_robustness(tiny_sequence_model(tokenizer), rows, epsilon=0.5, steps=np.int64(1),
                               batch_size=np.int64(2))["clean_loss"] > 0
