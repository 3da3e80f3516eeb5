"""Tests for hf_distill.metrics against hand-computed scores."""

import numpy as np
import pytest
from conftest import NER_LABELS
from transformers import EvalPrediction

from hf_distill.metrics import Seqeval, sequence_classification_metrics, token_classification_metrics

LABEL_IDS = {name: index for index, name in enumerate(NER_LABELS)}


def one_hot_logits(tag_rows: list[list[str]]) -> np.ndarray:
    """Logits (N, L, C) whose argmax is the given tags."""
    ids = np.array([[LABEL_IDS[tag] for tag in row] for row in tag_rows])
    return np.eye(len(NER_LABELS), dtype=np.float32)[ids] * 5.0


def test_seqeval_one_wrong_entity_type():
    # Reference entities: PER (John Smith), LOC (Paris), ORG (Acme). The prediction tags Acme as LOC, so
    # 2 of 3 predicted entities are right and 2 of 3 reference entities are found: P = R = F1 = 2/3.
    references = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predictions = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O"]]

    scores = Seqeval(keep_in_memory=True).compute(predictions=predictions, references=references)

    assert scores["overall_precision"] == pytest.approx(2 / 3)
    assert scores["overall_recall"] == pytest.approx(2 / 3)
    assert scores["overall_f1"] == pytest.approx(2 / 3)
    assert scores["overall_accuracy"] == pytest.approx(5 / 6)
    assert scores["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "number": 1}
    # LOC: 2 predicted, 1 right, 1 in the reference -> P = 1/2, R = 1, F1 = 2/3.
    assert scores["LOC"]["precision"] == pytest.approx(0.5)
    assert scores["LOC"]["recall"] == pytest.approx(1.0)
    assert scores["LOC"]["f1"] == pytest.approx(2 / 3)
    assert scores["LOC"]["number"] == 1
    assert scores["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "number": 1}


def test_seqeval_partial_span_is_wrong():
    # Predicting only "John" of "John Smith" is a different span: P = 0/1, R = 0/1.
    scores = Seqeval(keep_in_memory=True).compute(predictions=[["B-PER", "O"]], references=[["B-PER", "I-PER"]])
    assert scores["overall_f1"] == 0.0
    assert scores["overall_accuracy"] == pytest.approx(0.5)


def test_seqeval_strict_iob2_rejects_entity_starting_with_i():
    # Default (conlleval) matching reads a lone I-PER as an entity; strict IOB2 does not.
    references = [["I-PER", "O"]]
    lenient = Seqeval(keep_in_memory=True).compute(predictions=references, references=references)
    strict = Seqeval(keep_in_memory=True).compute(
        predictions=references, references=references, scheme="IOB2", mode="strict"
    )
    assert lenient["overall_f1"] == 1.0
    assert strict["overall_f1"] == 0.0


def test_seqeval_unknown_scheme():
    with pytest.raises(ValueError, match=r"`scheme` must be one of .*got 'BIO'"):
        Seqeval(keep_in_memory=True).compute(predictions=[["O"]], references=[["O"]], scheme="BIO")


def test_seqeval_scheme_without_strict_mode_is_refused():
    # seqeval reads `scheme` only in strict mode: without it the lenient match would score I-PER as an entity.
    with pytest.raises(ValueError, match=r"mode='strict'"):
        Seqeval(keep_in_memory=True).compute(predictions=[["I-PER"]], references=[["I-PER"]], scheme="IOB2")


def test_token_classification_metrics_with_a_scheme_scores_strictly():
    # BILOU tags: two single-word entities predicted as one two-word entity. Lenient matching cannot read L-/U-, so
    # a scheme is required, and strict BILOU finds no correct entity.
    names = ["O", "B-PER", "I-PER", "L-PER", "U-PER"]
    with pytest.raises(ValueError, match=r"scheme='BILOU'"):
        token_classification_metrics(names)
    metrics = token_classification_metrics(names, scheme="BILOU")
    logits = np.eye(len(names), dtype=np.float32)[np.array([[1, 3]])]
    scores = metrics(EvalPrediction(predictions=logits, label_ids=np.array([[4, 4]])))
    assert scores["f1"] == 0.0 and scores["PER_f1"] == 0.0
    right = metrics(EvalPrediction(predictions=np.eye(5, dtype=np.float32)[np.array([[4, 4]])],
                                   label_ids=np.array([[4, 4]])))
    assert right["f1"] == 1.0


def test_token_classification_metrics_refuse_tags_without_a_prefix():
    # IO tags named by type alone ("PER") would be read by seqeval as prefix "P" and type "ER".
    with pytest.raises(ValueError, match=r"'PER'.*type 'ER'.*I-PER"):
        token_classification_metrics(["O", "PER", "LOC"])
    with pytest.raises(ValueError, match=r"scheme 'IOB2' \(e\.g\. 'B-PER'"):  # I-PER would score nothing under IOB2
        token_classification_metrics(["O", "PER", "LOC"], scheme="IOB2")
    with pytest.raises(ValueError, match=r"'LABEL_0' is a placeholder.*id2label"):
        token_classification_metrics(["LABEL_0", "LABEL_1"])
    with pytest.raises(ValueError, match=r"`scheme` must be one of"):
        token_classification_metrics(NER_LABELS, scheme="BIO")
    # A scheme that cannot read the tags is refused when the metric is built, not at the first evaluation.
    with pytest.raises(ValueError, match=r"'L-PER'.*scheme='IOB2'"):
        token_classification_metrics(["O", "B-PER", "I-PER", "L-PER", "U-PER"], scheme="IOB2")
    token_classification_metrics(["O", "B-PER", "I-PER", "E-PER", "S-PER"], scheme="IOBES")


def test_token_classification_metrics_drops_ignored_positions():
    # Row 1: [CLS] John Smith lives in Paris [SEP]; row 2: [CLS] Acme works [SEP] [PAD] [PAD] [PAD].
    label_tags = [["O", "B-PER", "I-PER", "O", "O", "B-LOC", "O"], ["O", "B-ORG", "O", "O", "O", "O", "O"]]
    label_ids = np.array([[LABEL_IDS[t] for t in row] for row in label_tags])
    label_ids[:, 0] = -100
    label_ids[0, 6] = -100
    label_ids[1, 3:] = -100
    # Predictions at ignored positions are nonsense on purpose; they must not count. Acme is predicted as LOC.
    predicted = [
        ["B-ORG", "B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC"],
        ["B-PER", "B-LOC", "O", "B-PER", "I-PER", "O", "O"],
    ]
    compute_metrics = token_classification_metrics(NER_LABELS)

    results = compute_metrics(EvalPrediction(predictions=one_hot_logits(predicted), label_ids=label_ids))

    assert results.keys() == {"precision", "recall", "f1", "accuracy", "PER_f1", "LOC_f1", "ORG_f1"}
    assert results["precision"] == pytest.approx(2 / 3)
    assert results["recall"] == pytest.approx(2 / 3)
    assert results["f1"] == pytest.approx(2 / 3)
    assert results["accuracy"] == pytest.approx(6 / 7)  # 7 scored tokens, Acme wrong
    assert results["PER_f1"] == 1.0
    assert results["LOC_f1"] == pytest.approx(2 / 3)
    assert results["ORG_f1"] == 0.0


def test_token_classification_metrics_accepts_tuple_and_argmaxed_ids():
    label_ids = np.array([[-100, LABEL_IDS["B-PER"], LABEL_IDS["O"], -100]])
    logits = one_hot_logits([["O", "B-PER", "O", "O"]])
    compute_metrics = token_classification_metrics(NER_LABELS)

    from_tuple = compute_metrics(EvalPrediction(predictions=(logits, np.zeros(1)), label_ids=label_ids))
    from_ids = compute_metrics(EvalPrediction(predictions=logits.argmax(-1), label_ids=label_ids))

    assert from_tuple == from_ids == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "accuracy": 1.0, "PER_f1": 1.0}


def test_token_classification_metrics_with_nothing_labelled_scores_zero():
    compute_metrics = token_classification_metrics(NER_LABELS)
    nothing = EvalPrediction(predictions=one_hot_logits([["O", "B-PER", "O"]]), label_ids=np.full((1, 3), -100))
    assert compute_metrics(nothing) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.0}


def test_token_classification_metrics_too_few_label_names():
    compute_metrics = token_classification_metrics(["O", "B-PER"])
    with pytest.raises(ValueError, match="has only 2 entries"):
        compute_metrics(EvalPrediction(predictions=one_hot_logits([["B-LOC"]]), label_ids=np.array([[0]])))
    # One name short, the common slip: id 2 for two names.
    with pytest.raises(ValueError, match="A predicted id is 2, but `label_names` has only 2 entries"):
        compute_metrics(EvalPrediction(predictions=np.array([[2]]), label_ids=np.array([[0]])))


def test_sequence_classification_binary_f1_of_class_one():
    # labels 1 1 0 0 1, predictions 1 0 0 1 1: TP = 2, FP = 1, FN = 1 -> F1 = 4 / 6.
    labels = np.array([1, 1, 0, 0, 1])
    logits = np.eye(2)[[1, 0, 0, 1, 1]]

    results = sequence_classification_metrics(2)(EvalPrediction(predictions=logits, label_ids=labels))

    assert results["accuracy"] == pytest.approx(3 / 5)
    assert results["f1"] == pytest.approx(2 / 3)


def test_sequence_classification_macro_f1():
    # Class 0: TP 1, FP 1, FN 1 -> 1/2. Class 1: TP 1, FP 1, FN 0 -> 2/3. Class 2: TP 0, FP 0, FN 1 -> 0.
    labels = np.array([0, 0, 1, 2])
    predictions = np.array([0, 1, 1, 0])
    logits = np.eye(3)[predictions]

    results = sequence_classification_metrics(3)(EvalPrediction(predictions=logits, label_ids=labels))

    assert results["accuracy"] == pytest.approx(0.5)
    assert results["f1"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    # A class that is predicted but never the label is a class of the macro mean too (F1 0), as in sklearn.
    # Class 0: TP 1, FP 0, FN 1 -> 2/3. Class 1: 1. Class 2: TP 0, FP 1 -> 0.
    results = sequence_classification_metrics(3)(EvalPrediction(predictions=np.eye(3)[[0, 2, 1, 1]],
                                                                label_ids=np.array([0, 0, 1, 1])))
    assert results["f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_sequence_classification_metrics_leave_out_unlabelled_rows():
    # -100 marks a row without a label (mix_unlabeled): it is neither right nor wrong, nor a class.
    logits = np.eye(3, dtype=np.float32)[[1, 0, 2, 0, 1]]
    scores = sequence_classification_metrics(3)(EvalPrediction(predictions=logits,
                                                               label_ids=np.array([1, 0, 2, -100, -100])))
    assert scores == {"accuracy": 1.0, "f1": 1.0}
    binary = sequence_classification_metrics(2)(EvalPrediction(predictions=np.eye(2, dtype=np.float32)[[1, 0, 0]],
                                                               label_ids=np.array([1, 0, -100])))
    assert binary == {"accuracy": 1.0, "f1": 1.0}


def test_sequence_classification_metrics_refuse_another_number_of_classes():
    # Built with the default num_labels=2 for a 3-class model, "f1" would silently be class 1's F1 alone.
    logits = np.eye(3)[[0, 1, 2, 1]]
    with pytest.raises(ValueError, match="logits over 3 classes.*num_labels=2.*num_labels=model.config.num_labels"):
        sequence_classification_metrics()(EvalPrediction(predictions=logits, label_ids=np.array([0, 1, 2, 2])))
    with pytest.raises(ValueError, match="label id 2 is outside \\[0, 2\\)"):  # ids instead of logits
        sequence_classification_metrics()(EvalPrediction(predictions=np.array([0, 1, 1]),
                                                          label_ids=np.array([0, 1, 2])))
    with pytest.raises(ValueError, match="predicted class id 3 is outside \\[0, 3\\)"):
        sequence_classification_metrics(3)(EvalPrediction(predictions=np.array([0, 3]), label_ids=np.array([0, 1])))


def test_sequence_classification_rejects_one_label():
    with pytest.raises(ValueError, match="at least 2"):
        sequence_classification_metrics(1)


def test_metrics_score_per_batch_outputs_as_the_concatenated_ones():
    """`eval_do_concat_batches=False`: Trainer passes lists of per-batch arrays, of different widths for tokens."""
    label_tags = [["O", "B-PER", "I-PER", "O"], ["B-LOC", "O", "O", "B-ORG"], ["B-PER", "O"]]
    predicted = [["O", "B-PER", "O", "O"], ["B-LOC", "O", "O", "B-LOC"], ["B-PER", "O"]]
    labels = [np.array([[LABEL_IDS[t] for t in row] for row in label_tags[:2]]),
              np.array([[LABEL_IDS[t] for t in label_tags[2]]])]
    logits = [one_hot_logits(predicted[:2]), one_hot_logits(predicted[2:])]
    padded_labels = np.full((3, 4), -100)
    padded_logits = np.zeros((3, 4, len(NER_LABELS)), dtype=np.float32)
    for i, (row, tags) in enumerate(zip(label_tags, predicted, strict=True)):
        padded_labels[i, :len(row)] = [LABEL_IDS[t] for t in row]
        padded_logits[i, :len(tags)] = one_hot_logits([tags])[0]
    compute = token_classification_metrics(NER_LABELS)
    whole = compute(EvalPrediction(predictions=padded_logits, label_ids=padded_labels))
    assert whole["f1"] == pytest.approx(2 / 4) and whole["accuracy"] == pytest.approx(8 / 10)
    assert compute(EvalPrediction(predictions=logits, label_ids=labels)) == whole
    with_extras = [(batch, np.zeros(1)) for batch in logits]  # a model with extra outputs: (logits, ...) per batch
    assert compute(EvalPrediction(predictions=with_extras, label_ids=labels)) == whole

    sequence = sequence_classification_metrics(2)
    batches = [np.eye(2, dtype=np.float32)[[1, 0]], np.eye(2, dtype=np.float32)[[1]]]
    assert sequence(EvalPrediction(predictions=batches, label_ids=[np.array([1, 1]), np.array([0])])) == sequence(
        EvalPrediction(predictions=np.concatenate(batches), label_ids=np.array([1, 1, 0])))
    with pytest.raises(ValueError, match=r"3 batches of predictions for 2 batches of labels"):
        sequence(EvalPrediction(predictions=batches + batches[:1], label_ids=[np.array([1, 1]), np.array([0])]))


def test_token_classification_metrics_take_id2label_as_it_is():
    names = dict(enumerate(NER_LABELS))
    shuffled = {i: names[i] for i in reversed(range(len(NER_LABELS)))}  # key order is not id order
    label_ids = np.array([[LABEL_IDS["B-PER"], LABEL_IDS["O"], LABEL_IDS["B-LOC"]]])
    logits = one_hot_logits([["B-PER", "O", "B-ORG"]])
    expected = token_classification_metrics(NER_LABELS)(EvalPrediction(predictions=logits, label_ids=label_ids))
    for mapping in (names, shuffled, {str(i): n for i, n in names.items()}):  # a config read from JSON has str keys
        got = token_classification_metrics(mapping)(EvalPrediction(predictions=logits, label_ids=label_ids))
        assert got == expected
    with pytest.raises(ValueError, match=r"ids 0 to 2.*got \[0, 1, 5\]"):
        token_classification_metrics({0: "O", 1: "B-PER", 5: "I-PER"})


def test_evaluate_without_concatenating_batches_scores_as_with(tokenizer, tmp_path):
    from conftest import tiny_token_model
    from datasets import Dataset
    from transformers import DataCollatorForTokenClassification

    from hf_distill import DistillationArguments, DistillationTrainer

    rows = Dataset.from_dict({"input_ids": [tokenizer("john lives in london")["input_ids"],
                                            tokenizer("paris")["input_ids"], tokenizer("mary went to paris")["input_ids"]]})
    rows = rows.map(lambda row, i: {"labels": [-100] + [(i + j) % len(NER_LABELS) for j in range(len(row["input_ids"]) - 2)]
                                    + [-100]}, with_indices=True)
    scores = {}
    for concat in (True, False):
        args = DistillationArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to="none",
                                     use_cpu=True, eval_do_concat_batches=concat)
        trainer = DistillationTrainer(model=tiny_token_model(tokenizer), teacher_model=tiny_token_model(tokenizer, seed=1),
                                      args=args, eval_dataset=rows, compute_metrics=token_classification_metrics(NER_LABELS),
                                      data_collator=DataCollatorForTokenClassification(tokenizer))
        scores[concat] = {k: v for k, v in trainer.evaluate().items() if k.startswith(("eval_f1", "eval_accuracy"))}
    assert scores[True] == scores[False] and set(scores[True]) == {"eval_f1", "eval_accuracy"}
