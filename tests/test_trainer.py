"""DistillationTrainer behaviour on tiny offline models: what it trains, what it leaves alone, what it refuses."""

import copy
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import NER_LABELS, tiny_sequence_model, tiny_token_model
from datasets import Dataset, DatasetDict
from torch import nn
from transformers import (
    AutoModelForTokenClassification,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from hf_distill import DistillationArguments, DistillationTrainer, build_teacher_cache, soft_kl

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
SENTENCES = [
    "john lives in paris .",
    "mary works at acme corp in london .",
    "he went to the city",
    "she visited berlin and the river bank with john .",
    "acme corp",
    "the movie was great , the plot was awful !",
]


def ner_dataset(tokenizer, n=None):
    """Sentences of different lengths; a label on each word's first sub-word, -100 elsewhere."""
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for i, sentence in enumerate(SENTENCES[:n] if n else SENTENCES):
        enc = tokenizer(sentence.split(), is_split_into_words=True)
        previous, labels = None, []
        for word in enc.word_ids():
            labels.append(-100 if word is None or word == previous else (i + word) % len(NER_LABELS))
            previous = word
        rows["input_ids"].append(enc["input_ids"])
        rows["attention_mask"].append(enc["attention_mask"])
        rows["labels"].append(labels)
    return Dataset.from_dict(rows)


def seq_dataset(tokenizer, labels=True):
    enc = tokenizer(SENTENCES)
    rows = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if labels:
        rows["labels"] = [i % 2 for i in range(len(SENTENCES))]
    return Dataset.from_dict(rows)


def make_args(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=3, learning_rate=1e-3,
        report_to="none", use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True,
        train_sampling_strategy="sequential", seed=0,
    )
    defaults.update(kwargs)
    return DistillationArguments(**defaults)


def ner_trainer(tokenizer, tmp_path, student=None, teacher=None, dataset=None, **kwargs):
    return DistillationTrainer(
        model=student or tiny_token_model(tokenizer, layers=1, seed=1),
        teacher_model=teacher if teacher is not None else tiny_token_model(tokenizer, layers=2, seed=2),
        args=make_args(tmp_path, **kwargs),
        train_dataset=dataset if dataset is not None else ner_dataset(tokenizer),
        data_collator=DataCollatorForTokenClassification(tokenizer),
        processing_class=tokenizer,
    )


def test_teacher_is_frozen_and_unchanged_while_student_learns(tokenizer, tmp_path):
    teacher = tiny_token_model(tokenizer, layers=2, seed=2)
    student = tiny_token_model(tokenizer, layers=1, seed=1)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = ner_trainer(tokenizer, tmp_path, student=student, teacher=teacher)
    trainer.train()
    assert all(torch.equal(teacher_before[k], v) for k, v in trainer.teacher_model.state_dict().items())
    assert not any(p.requires_grad for p in trainer.teacher_model.parameters())
    assert not trainer.teacher_model.training
    assert any(not torch.equal(student_before[k], v) for k, v in student.state_dict().items())
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in trainer.teacher_model.parameters()}
    assert not isinstance(trainer.teacher_model, torch.nn.parallel.DistributedDataParallel)


def test_compute_loss_matches_hand_computation(tokenizer, tmp_path):
    trainer = ner_trainer(tokenizer, tmp_path, student=tiny_token_model(tokenizer, layers=1, **NO_DROPOUT),
                          alpha=0.3, temperature=3.0)
    batch = DataCollatorForTokenClassification(tokenizer)([ner_dataset(tokenizer)[i] for i in range(3)])
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        s = trainer.model(**inputs).logits
        t = trainer.teacher_model(**inputs).logits
    mask = batch["labels"].ne(-100)
    kd = soft_kl(s[mask], t[mask], 3.0).mean()
    ce = torch.nn.functional.cross_entropy(s[mask], batch["labels"][mask])
    assert loss.item() == pytest.approx((0.3 * kd + 0.7 * ce).item(), rel=1e-5)


def _final_params_after_one_step(tokenizer, tmp_path, batch, accumulation, **kwargs):
    trainer = ner_trainer(
        tokenizer, tmp_path,
        student=tiny_token_model(tokenizer, layers=1, seed=1, **NO_DROPOUT),
        teacher=tiny_token_model(tokenizer, layers=2, seed=2, **NO_DROPOUT),
        dataset=ner_dataset(tokenizer, n=4), per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation, max_steps=1, optim="sgd", learning_rate=1.0, max_grad_norm=0.0,
        warmup_steps=0, lr_scheduler_type="constant", **kwargs,
    )
    trainer.train()
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("positions", ["first_subword", "all_subwords"])
def test_gradient_accumulation_matches_full_batch_token_weighted(tokenizer, tmp_path, positions):
    data = ner_dataset(tokenizer, n=4)
    first, second = sum(x != -100 for r in data["labels"][:2] for x in r), sum(
        x != -100 for r in data["labels"][2:] for x in r)
    assert first != second  # micro-batches hold different numbers of labelled tokens
    full = _final_params_after_one_step(tokenizer, tmp_path, 4, 1, distill_positions=positions)
    accumulated = _final_params_after_one_step(tokenizer, tmp_path, 2, 2, distill_positions=positions)
    initial = tiny_token_model(tokenizer, layers=1, seed=1, **NO_DROPOUT).state_dict()
    moved = [k for k in full if not torch.equal(full[k], initial[k])]
    assert moved  # the step did something
    for k in full:
        assert torch.allclose(full[k], accumulated[k], atol=1e-6), k


def test_trainers_own_label_count_is_not_computed(tokenizer, tmp_path, monkeypatch):
    # get_batch_samples counts distilled and labelled positions itself; Trainer's label count (a gather across
    # processes under DDP) would be computed and thrown away on every step.
    def refuse(*args, **kwargs):
        raise AssertionError("Trainer._get_num_items_in_batch was called")

    trainer = ner_trainer(tokenizer, tmp_path, gradient_accumulation_steps=2, max_steps=2)
    monkeypatch.setattr(trainer, "_get_num_items_in_batch", refuse)
    trainer.train()
    assert trainer.state.global_step == 2


def test_a_compute_loss_override_gets_the_documented_counts(tokenizer, tmp_path):
    # The class docstring promises [distilled, labelled, tokens] over the whole accumulated batch.
    seen = []

    class Recording(DistillationTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            seen.append((num_items_in_batch.clone(), inputs["labels"].ne(-100).sum()))
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    data = ner_dataset(tokenizer)
    trainer = Recording(model=tiny_token_model(tokenizer, layers=1, seed=1),
                        teacher_model=tiny_token_model(tokenizer, layers=2, seed=2),
                        args=make_args(tmp_path, gradient_accumulation_steps=2, max_steps=1,
                                       per_device_train_batch_size=2),
                        train_dataset=data, data_collator=DataCollatorForTokenClassification(tokenizer),
                        processing_class=tokenizer)
    trainer.train()
    assert len(seen) == 2 and seen[0][0].shape == (3,) and torch.equal(seen[0][0], seen[1][0])
    labelled = int(seen[0][1] + seen[1][1])
    assert int(seen[0][0][1]) == labelled  # first-subword distillation: the distilled positions are the labelled ones
    assert int(seen[0][0][0]) == labelled and int(seen[0][0][2]) == 0  # no feature distillation: no token count


def test_logs_components_and_schedules_per_window(tokenizer, tmp_path):
    trainer = ner_trainer(tokenizer, tmp_path, max_steps=4, logging_steps=2, temperature=4.0, final_temperature=1.0,
                          temperature_schedule="linear", alpha=0.2, final_alpha=0.6, alpha_schedule="linear")
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for entry in logs:
        assert entry["kd_loss"] > 0 and entry["ce_loss"] > 0
    # Steps 1 and 2 run at progress 0 and 1/4, steps 3 and 4 at 2/4 and 3/4: the window averages.
    assert logs[0]["temperature"] == pytest.approx((4.0 + 3.25) / 2)
    assert logs[1]["temperature"] == pytest.approx((2.5 + 1.75) / 2)
    assert logs[0]["alpha"] == pytest.approx((0.2 + 0.3) / 2)
    assert logs[1]["alpha"] == pytest.approx((0.4 + 0.5) / 2)
    # The logged total is the alpha-weighted sum of the components (one step per window micro-batch here).
    assert all(set(entry) >= {"loss", "kd_loss", "ce_loss", "temperature", "alpha"} for entry in logs)


def test_evaluation_scores_the_student_without_running_the_teacher(tokenizer, tmp_path):
    trainer = ner_trainer(tokenizer, tmp_path)
    calls = []
    trainer.teacher_model.register_forward_hook(lambda *a: calls.append(1))
    data = ner_dataset(tokenizer)
    metrics = trainer.evaluate(data)
    assert calls == []
    batch = DataCollatorForTokenClassification(tokenizer)(list(data))
    with torch.no_grad():
        trainer.model.eval()
        expected = trainer.model(**batch).loss
    assert metrics["eval_loss"] == pytest.approx(expected.item(), rel=1e-5)
    trainer.train()
    assert calls  # training does use it


def test_an_evaluation_before_training_prepares_the_student_as_trainer_does(tokenizer, tmp_path):
    # Trainer's evaluation loop prepares the model (here: bf16 autocast) only while Accelerate tracks no model yet.
    student = tiny_token_model(tokenizer, layers=1, seed=1)
    stock = Trainer(model=copy.deepcopy(student), args=TrainingArguments(str(tmp_path / "stock"), report_to="none",
                                                                          use_cpu=True, bf16=True),
                    data_collator=DataCollatorForTokenClassification(tokenizer))
    trainer = ner_trainer(tokenizer, tmp_path, student=student, bf16=True)
    data = ner_dataset(tokenizer)
    expected, metrics = stock.evaluate(data), trainer.evaluate(data)
    assert "eval_model_preparation_time" in metrics
    assert metrics["eval_loss"] == expected["eval_loss"]


def test_saved_checkpoint_holds_the_student_alone(tokenizer, tmp_path):
    student = tiny_token_model(tokenizer, layers=1, seed=1)
    trainer = ner_trainer(tokenizer, tmp_path, student=student, max_steps=2, save_strategy="steps", save_steps=2)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    from safetensors.torch import load_file

    for directory in (tmp_path / "out" / "checkpoint-2", tmp_path / "final"):
        weights = load_file(str(directory / "model.safetensors"))
        assert set(weights) == set(student.state_dict())
    reloaded = AutoModelForTokenClassification.from_pretrained(tmp_path / "final").eval()
    batch = DataCollatorForTokenClassification(tokenizer)(list(ner_dataset(tokenizer)))
    batch.pop("labels")
    student.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, student(**batch).logits, atol=1e-6)
    assert reloaded.config.num_hidden_layers == 1


def test_sequence_classification_with_alpha_one_needs_no_labels(tokenizer, tmp_path):
    trainer = DistillationTrainer(
        model=tiny_sequence_model(tokenizer, layers=1, seed=1), teacher_model=tiny_sequence_model(tokenizer, seed=2),
        args=make_args(tmp_path, alpha=1.0), train_dataset=seq_dataset(tokenizer, labels=False),
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all("ce_loss" not in h and h["kd_loss"] > 0 for h in logs)


def test_unlabeled_token_data_distils_all_subwords(tokenizer, tmp_path):
    data = ner_dataset(tokenizer).remove_columns("labels")
    trainer = ner_trainer(tokenizer, tmp_path, dataset=data, alpha=1.0, distill_positions="all_subwords")
    trainer.train()
    assert all(h["kd_loss"] > 0 for h in trainer.state.log_history if "loss" in h)


def test_all_subwords_mask_excludes_padding_and_specials(tokenizer, tmp_path):
    trainer = ner_trainer(tokenizer, tmp_path, distill_positions="all_subwords")
    batch = DataCollatorForTokenClassification(tokenizer)(list(ner_dataset(tokenizer, n=2)))
    mask = trainer.distill_mask(batch)
    real = batch["attention_mask"].sum(1) - 2  # minus [CLS] and [SEP]
    assert mask.sum(1).tolist() == real.tolist()
    assert not mask[:, 0].any()


def test_all_subwords_distils_unknown_tokens_as_first_subword_does(tokenizer, tmp_path):
    # [UNK] is in the tokenizer's all_special_ids, but it stands for a word: distilled (and attacked) like any other.
    batch = DataCollatorForTokenClassification(tokenizer)(list(ner_dataset(tokenizer, n=2)))
    batch["input_ids"][:, 1] = tokenizer.unk_token_id  # the first word of each sentence, which carries a label
    first = ner_trainer(tokenizer, tmp_path, distill_positions="first_subword").distill_mask(batch)
    every = ner_trainer(tokenizer, tmp_path, distill_positions="all_subwords").distill_mask(batch)
    assert first[:, 1].all() and every[:, 1].all() and not (first & ~every).any()


@pytest.mark.parametrize("spelling", ["str", "Path", "relative Path"])
def test_teacher_given_as_a_path_is_loaded_with_the_students_head(tokenizer, tmp_path, monkeypatch, spelling):
    teacher = tiny_token_model(tokenizer, layers=2, seed=2)
    teacher.save_pretrained(tmp_path / "teacher")
    monkeypatch.chdir(tmp_path)
    path = {"str": str(tmp_path / "teacher"), "Path": tmp_path / "teacher", "relative Path": Path("teacher")}[spelling]
    trainer = DistillationTrainer(
        model=tiny_token_model(tokenizer, layers=1), teacher_model=path,
        args=make_args(tmp_path), train_dataset=ner_dataset(tokenizer),
        data_collator=DataCollatorForTokenClassification(tokenizer),
    )
    assert type(trainer.teacher_model).__name__ == "BertForTokenClassification"
    assert not any(p.requires_grad for p in trainer.teacher_model.parameters())
    with pytest.raises(FileNotFoundError, match=r"directory 'missing' does not exist"):  # a Path is never a Hub id
        _init(tokenizer, tmp_path, tiny_token_model(tokenizer, layers=1), Path("missing"))


# ---- errors at init ---------------------------------------------------------------------------------------------


def _init(tokenizer, tmp_path, student, teacher, dataset=None, args=None, **kwargs):
    return DistillationTrainer(
        model=student, teacher_model=teacher, args=args or make_args(tmp_path, **kwargs),
        train_dataset=dataset if dataset is not None else ner_dataset(tokenizer),
        data_collator=DataCollatorForTokenClassification(tokenizer), processing_class=tokenizer,
    )


def test_the_trainer_takes_trainers_positional_order_and_names_a_teacher_passed_in_args_place(tokenizer, tmp_path):
    # Stock Trainer's order is (model, args, data_collator, train_dataset, ...), as blog posts call it: the teacher
    # in args' place failed as "got multiple values for argument 'teacher_model'" or as a teacher with no head.
    student, teacher = tiny_token_model(tokenizer, layers=1, seed=1), tiny_token_model(tokenizer, layers=2, seed=2)
    args, collator = make_args(tmp_path), DataCollatorForTokenClassification(tokenizer)
    trainer = DistillationTrainer(student, args, collator, ner_dataset(tokenizer), teacher_model=teacher)
    assert trainer.args is args and trainer.data_collator is collator and trainer.teacher_models == [teacher]
    with pytest.raises(ValueError, match=r"`args` is a BertForTokenClassification.*teacher_model="):
        DistillationTrainer(student, teacher, train_dataset=ner_dataset(tokenizer))
    with pytest.raises(ValueError, match=r"`data_collator` is a DistillationArguments.*teacher_model="):
        DistillationTrainer(student, teacher, args)
    with pytest.raises(ValueError, match=r"`data_collator` is a DistillationArguments.*teacher_model="):
        DistillationTrainer(student, None, args)  # no online teacher (a cache, EMA) in the old order
    with pytest.raises(ValueError, match=r"teacher is wrapped in DataParallel.*`teacher.module`"):
        DistillationTrainer(student, args, teacher_model=torch.nn.DataParallel(teacher))


def test_vocab_sizes_that_differ_are_accepted_with_a_warning_while_the_tokenizer_fits_both(tokenizer, tmp_path, caplog):
    # A shared tokenizer under tables of different sizes (XLM-R teacher, multilingual MiniLM student; a table padded by
    # resize_token_embeddings) is a pair that works: every id fits both. A tokenizer past either table is refused.
    student = tiny_token_model(tokenizer)
    teacher = tiny_token_model(tokenizer)
    teacher.resize_token_embeddings(len(tokenizer) + 7)
    with caplog.at_level("WARNING"):
        _init(tokenizer, tmp_path, student, teacher).train()
    assert re.search(r"teacher's vocab_size is \d+ but the student's is \d+.*share a tokenizer", caplog.text)
    student.resize_token_embeddings(len(tokenizer) - 2)
    with pytest.raises(ValueError, match=r"tokenizer has \d+ tokens but the student's vocab_size is \d+"):
        _init(tokenizer, tmp_path, student, teacher)


def test_error_label_count_mismatch(tokenizer, tmp_path):
    teacher, student = tiny_token_model(tokenizer), tiny_token_model(tokenizer, labels=NER_LABELS[:5])
    with pytest.raises(ValueError, match=r"teacher predicts 7 labels but the student predicts 5") as refusal:
        _init(tokenizer, tmp_path, student, teacher)
    # The advice works as written (without ignore_mismatched_sizes, from_pretrained refuses the 5-row head).
    student.save_pretrained(tmp_path / "student")
    advice = str(refusal.value)
    assert "ignore_mismatched_sizes=True" in advice
    from transformers import BertForTokenClassification

    student = BertForTokenClassification.from_pretrained(
        tmp_path / "student", num_labels=teacher.config.num_labels, id2label=teacher.config.id2label,
        label2id=teacher.config.label2id, ignore_mismatched_sizes=True)
    _init(tokenizer, tmp_path, student, teacher)


def test_error_label_order_mismatch(tokenizer, tmp_path):
    shuffled = NER_LABELS[1:] + NER_LABELS[:1]
    with pytest.raises(ValueError, match=r"same labels in a different order.*id2label=teacher.config.id2label"):
        _init(tokenizer, tmp_path, tiny_token_model(tokenizer), tiny_token_model(tokenizer, labels=shuffled))


def test_error_label_set_mismatch(tokenizer, tmp_path):
    other = ["O", "B-X", "I-X", "B-Y", "I-Y", "B-Z", "I-Z"]
    with pytest.raises(ValueError, match=r"different label sets"):
        _init(tokenizer, tmp_path, tiny_token_model(tokenizer), tiny_token_model(tokenizer, labels=other))


def test_error_head_mismatch(tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"teacher has a sequence classification head but the student has a token"):
        _init(tokenizer, tmp_path, tiny_token_model(tokenizer), tiny_sequence_model(tokenizer, num_labels=7))


def test_error_model_without_classification_head(tokenizer, tmp_path):
    from conftest import tiny_config
    from transformers import BertModel

    with pytest.raises(ValueError, match=r"BertModel, which has no sequence- or token-classification head"):
        _init(tokenizer, tmp_path, tiny_token_model(tokenizer), BertModel(tiny_config(len(tokenizer), 7)))


class _BagOfEmbeddings(nn.Module):
    """A non-Transformers student (Tang et al. 2019 distil BERT into small non-attention networks)."""

    def __init__(self, vocab_size, num_labels=2):
        from transformers import PretrainedConfig

        super().__init__()
        self.config = PretrainedConfig(num_labels=num_labels)
        self.embed, self.out = nn.Embedding(vocab_size, 16), nn.Linear(16, num_labels)

    def forward(self, input_ids, attention_mask, labels=None):
        from transformers.modeling_outputs import SequenceClassifierOutput

        mask = attention_mask.unsqueeze(-1).float()
        return SequenceClassifierOutput(logits=self.out((self.embed(input_ids) * mask).sum(1) / mask.sum(1)))


class BagOfEmbeddingsForSequenceClassification(_BagOfEmbeddings):
    pass


def test_a_custom_student_is_distilled_when_it_names_its_head_and_told_how_when_it_does_not(tokenizer, tmp_path):
    from transformers import DataCollatorWithPadding

    teacher, data = tiny_sequence_model(tokenizer, seed=2), seq_dataset(tokenizer)
    with pytest.raises(ValueError, match=r"_BagOfEmbeddings, which has no .*class name ends in "
                                         r"`ForSequenceClassification`.*`config` with `num_labels`"):
        DistillationTrainer(model=_BagOfEmbeddings(len(tokenizer)), teacher_model=teacher, args=make_args(tmp_path),
                            train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer))
    student = BagOfEmbeddingsForSequenceClassification(len(tokenizer))
    before = student.out.weight.detach().clone()
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path, alpha=1.0),
                                  train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer))
    trainer.train()
    assert not torch.equal(before, student.out.weight)  # trained on the teacher's logits alone (alpha 1)
    assert trainer.state.log_history[0]["kd_loss"] > 0


def test_a_student_with_placeholder_class_names_takes_the_teachers_and_saves_them(tokenizer, tmp_path):
    # `from_pretrained(base, num_labels=2)` names the classes LABEL_0, LABEL_1: the saved student's pipeline answered
    # LABEL_1 where its teacher says positive.
    import json

    from transformers import DataCollatorWithPadding

    teacher = tiny_sequence_model(tokenizer, seed=2, id2label={0: "negative", 1: "positive"},
                                  label2id={"negative": 0, "positive": 1})
    student = tiny_sequence_model(tokenizer, layers=1)
    assert student.config.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path),
                                  train_dataset=seq_dataset(tokenizer), data_collator=DataCollatorWithPadding(tokenizer))
    trainer.save_model()
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["id2label"] == {"0": "negative", "1": "positive"} and saved["label2id"] == {"negative": 0, "positive": 1}
    # named classes are the student's own: checked against the teacher's, never renamed
    named = tiny_sequence_model(tokenizer, layers=1, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    with pytest.raises(ValueError, match="different label sets"):
        DistillationTrainer(model=named, teacher_model=teacher, args=make_args(tmp_path),
                            train_dataset=seq_dataset(tokenizer), data_collator=DataCollatorWithPadding(tokenizer))


def test_a_process_of_a_multi_process_launch_that_would_train_alone_is_refused(tokenizer, tmp_path, monkeypatch):
    # `accelerate launch` of two CPU processes without use_cpu: each trained alone on all the data, and they raced on
    # the same output_dir.
    args = make_args(tmp_path)
    assert args.world_size == 1  # the arguments' device set-up, done before the launcher's variable is seen
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"one of 2 \(WORLD_SIZE=2.* each process would train alone.*`use_cpu=True`"):
        DistillationTrainer(model=tiny_token_model(tokenizer, layers=1), teacher_model=tiny_token_model(tokenizer),
                            args=args, train_dataset=ner_dataset(tokenizer),
                            data_collator=DataCollatorForTokenClassification(tokenizer))


def test_error_no_labels_with_alpha_below_one(tokenizer, tmp_path):
    data = ner_dataset(tokenizer).remove_columns("labels")
    with pytest.raises(ValueError, match=r"no labels column \(found columns: \['input_ids', 'attention_mask'\]\)"):
        _init(tokenizer, tmp_path, tiny_token_model(tokenizer), tiny_token_model(tokenizer), dataset=data)


@pytest.mark.parametrize("column", ["labels", "label"])
def test_error_label_outside_the_classes_whatever_the_label_columns_name(tokenizer, tmp_path, column):
    # `label` is the usual Hub name (and what load_text_classification_file gives); the Trainer takes it as labels.
    data = seq_dataset(tokenizer)
    data = data.rename_column("labels", column) if column != "labels" else data
    data = data.map(lambda row, i: {column: 5 if i == 1 else row[column]}, with_indices=True)
    with pytest.raises(ValueError, match=rf"Column '{column}' has the label 5 in row 1 .*outside the 2 classes"):
        _init(tokenizer, tmp_path, tiny_sequence_model(tokenizer), tiny_sequence_model(tokenizer), dataset=data)


def test_error_dataset_dict_instead_of_split(tokenizer, tmp_path):
    data = DatasetDict({"train": ner_dataset(tokenizer)})
    with pytest.raises(ValueError, match=r"Did you mean `dataset\['train'\]`"):
        _init(tokenizer, tmp_path, tiny_token_model(tokenizer), tiny_token_model(tokenizer), dataset=data)


def test_error_plain_training_arguments(tokenizer, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match=r"needs `hf_distill.DistillationArguments`"):
        _init(tokenizer, tmp_path, tiny_token_model(tokenizer), tiny_token_model(tokenizer), args=args)


def test_error_tokenizer_not_the_teachers(tokenizer, tmp_path):
    small = tiny_token_model(tokenizer)
    small.resize_token_embeddings(10)
    student = tiny_token_model(tokenizer)
    student.resize_token_embeddings(10)
    with pytest.raises(ValueError, match=r"tokenizer has \d+ tokens but the teacher's vocab_size is 10"):
        _init(tokenizer, tmp_path, student, small)


def test_error_all_subwords_without_tokenizer(tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"pass `processing_class=tokenizer`"):
        DistillationTrainer(model=tiny_token_model(tokenizer), teacher_model=tiny_token_model(tokenizer),
                            args=make_args(tmp_path, distill_positions="all_subwords"),
                            train_dataset=ner_dataset(tokenizer))


def test_error_teacher_path_that_does_not_exist(tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"teacher directory .*no-such-teacher' does not exist"):
        _init(tokenizer, tmp_path, tiny_token_model(tokenizer), str(tmp_path / "no-such-teacher"))


def test_error_teacher_directory_without_a_model(tokenizer, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"(?s)Could not load the teacher .*local directory that holds a checkpoint"):
        _init(tokenizer, tmp_path, tiny_token_model(tokenizer), str(tmp_path / "empty"))


def test_teacher_dtype_casts_the_teacher_and_keeps_the_loss_in_fp32(tokenizer, tmp_path):
    teacher = tiny_token_model(tokenizer, layers=2, seed=2, **NO_DROPOUT)
    reference = ner_trainer(tokenizer, tmp_path, student=tiny_token_model(tokenizer, layers=1, **NO_DROPOUT),
                            teacher=teacher, alpha=1.0)
    batch = dict(DataCollatorForTokenClassification(tokenizer)([ner_dataset(tokenizer)[i] for i in range(3)]))
    reference.model.train()
    fp32_loss = reference.compute_loss(reference.model, batch)
    trainer = ner_trainer(tokenizer, tmp_path, student=tiny_token_model(tokenizer, layers=1, **NO_DROPOUT),
                          teacher=tiny_token_model(tokenizer, layers=2, seed=2, **NO_DROPOUT), alpha=1.0,
                          teacher_dtype="bfloat16")
    assert {p.dtype for p in trainer.teacher_model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(fp32_loss.item(), rel=0.05)  # bf16 teacher: close, not identical
    assert loss.item() != fp32_loss.item()


@pytest.mark.parametrize("adversarial", ["none", "fgm"])
def test_a_float16_teacher_runs_in_float16_under_the_students_bfloat16_autocast(tokenizer, tmp_path, adversarial):
    # bf16=True on a CPU ran the fp16 teacher inside the student's bf16 autocast: its LayerNorm got bf16 activations
    # and fp16 weights ("mixed dtype (CPU)") at the first step. teacher_dtype says the precision the teacher runs in.
    seen = []
    teacher = tiny_token_model(tokenizer, layers=2, seed=2, **NO_DROPOUT)
    teacher.register_forward_hook(lambda module, args, out: seen.append(out.logits.dtype))
    trainer = ner_trainer(tokenizer, tmp_path, teacher=teacher, teacher_dtype="float16", bf16=True, max_steps=2,
                          adversarial=adversarial)
    trainer.train()
    assert seen and set(seen) == {torch.float16}
    logs = [h for h in trainer.state.log_history if "kd_loss" in h]
    assert logs and all(math.isfinite(h["kd_loss"]) for h in logs)


def test_teacher_dtype_float32_runs_the_teacher_in_full_precision_under_the_students_autocast(tokenizer, tmp_path):
    # teacher_dtype="float32" forces full precision (a teacher whose logits would overflow fp16): its weights were fp32
    # but it still ran inside the run's bf16 autocast, its matmuls in bf16. "auto" keeps the stock behaviour.
    def logits_dtypes(teacher_dtype):
        seen = []
        teacher = tiny_token_model(tokenizer, layers=2, seed=2, **NO_DROPOUT)
        teacher.classifier.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
        ner_trainer(tokenizer, tmp_path, teacher=teacher, teacher_dtype=teacher_dtype, bf16=True, max_steps=1).train()
        return set(seen)

    assert logits_dtypes("float32") == {torch.float32}
    assert logits_dtypes("auto") == {torch.bfloat16}


@pytest.mark.parametrize("teacher_dtype, kept", [("float16", True), ("bfloat16", False)])
def test_teacher_dtype_keeps_the_modules_transformers_keeps_in_float32(tokenizer, tmp_path, teacher_dtype, kept):
    # T5 keeps its feed-forward output (`wo`, `_keep_in_fp32_modules`) in fp32 under fp16, where it overflows:
    # teacher_dtype="float16" cast it anyway, as from_pretrained(dtype=torch.float16) does not.
    from transformers import T5Config, T5ForSequenceClassification

    config = T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1,
                      num_heads=2, num_labels=2, decoder_start_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    teacher, student = T5ForSequenceClassification(config), T5ForSequenceClassification(config)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, train_dataset=seq_dataset(tokenizer),
                                  args=make_args(tmp_path, teacher_dtype=teacher_dtype), processing_class=tokenizer)
    dtypes = {name: p.dtype for name, p in trainer._unwrap(trainer.teacher_model).named_parameters()}
    wo = {dtype for name, dtype in dtypes.items() if ".wo." in name}
    assert wo == ({torch.float32} if kept else {getattr(torch, teacher_dtype)})
    assert {dtype for name, dtype in dtypes.items() if ".wi." in name} == {getattr(torch, teacher_dtype)}


def test_a_compiled_half_precision_teacher_keeps_its_compiled_forward(tokenizer, tmp_path):
    # Taking Accelerate's autocast wrapper off an fp16 teacher under bf16 replaced a compiled wrapper's forward with
    # the eager one (hasattr saw the inner model's `_original_forward` through the wrapper): nothing was compiled.
    trainer = ner_trainer(tokenizer, tmp_path, teacher_dtype="float16", bf16=True, torch_compile=True)
    prepared = trainer.teacher_model  # compiled lazily: nothing compiles at init
    assert hasattr(prepared, "_orig_mod")
    inner = prepared._orig_mod
    assert vars(inner)["forward"] == vars(inner)["_original_forward"]  # the autocast wrapper is off the inner model
    assert vars(prepared)["forward"] != vars(inner)["_original_forward"]  # and the wrapper's compiled forward stays


def test_error_unknown_teacher_dtype(tmp_path):
    with pytest.raises(ValueError, match="`teacher_dtype` must be one of 'auto', 'float32', 'bfloat16'"):
        make_args(tmp_path, teacher_dtype="fp8")


def test_torch_compile_keeps_the_teachers_inputs(tokenizer, tmp_path):
    # Accelerate wraps both models in torch.compile, whose forward takes only *args/**kwargs; the teacher must still
    # receive input_ids and attention_mask. The "eager" backend traces with dynamo but compiles nothing (fast on CPU).
    trainer = ner_trainer(tokenizer, tmp_path, torch_compile=True, torch_compile_backend="eager", max_steps=1)
    assert {"input_ids", "attention_mask"} <= trainer._teacher_inputs[0]
    trainer.train()
    assert trainer.state.global_step == 1


def test_label_smoothing_factor_smooths_the_label_term_as_transformers_does(tokenizer, tmp_path):
    """`label_smoothing_factor` is a TrainingArguments field: the label cross-entropy must honour it, not drop it."""
    from transformers import DataCollatorForTokenClassification
    from transformers.trainer_pt_utils import LabelSmoother

    student = tiny_token_model(tokenizer, layers=1, seed=1, **NO_DROPOUT)
    trainer = ner_trainer(tokenizer, tmp_path, student=student, alpha=0.0, label_smoothing_factor=0.1)
    batch = dict(DataCollatorForTokenClassification(tokenizer)([ner_dataset(tokenizer)[i] for i in range(3)]))
    loss = trainer.compute_loss(trainer.model, dict(batch))
    with torch.no_grad():
        outputs = student(**{k: v for k, v in batch.items() if k != "labels"})
    expected = LabelSmoother(epsilon=0.1)(outputs, batch["labels"])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    plain = ner_trainer(tokenizer, tmp_path, student=student, alpha=0.0).compute_loss(student, dict(batch))
    assert abs(plain.item() - loss.item()) > 1e-4  # (a near-uniform tiny model: smoothing moves the loss a little)


def test_fsdp_places_the_teacher_on_the_training_device(tokenizer, tmp_path, monkeypatch):
    # accelerate's prepare_model places no model under FSDP (FSDP moves what it wraps, and a teacher prepared for
    # evaluation is not wrapped): the trainer must move the teacher itself, or its forward meets inputs on the GPU.
    from accelerate.utils import DistributedType

    trainer = ner_trainer(tokenizer, tmp_path)
    placed = {}
    for kind in (DistributedType.NO, DistributedType.FSDP):
        monkeypatch.setattr(trainer.accelerator.state, "distributed_type", kind)
        teacher = tiny_token_model(tokenizer, layers=2, seed=2)
        moves = []
        teacher.to = lambda *a, _t=teacher, _moves=moves, **k: _moves.append(a or k) or torch.nn.Module.to(_t, *a, **k)
        trainer._prepare_teacher(teacher)
        placed[kind] = moves
    assert placed[DistributedType.NO] == placed[DistributedType.FSDP] == [(trainer.args.device,)]


def test_fsdp_with_sharded_state_dicts_still_saves_the_whole_student(tokenizer, tmp_path, monkeypatch):
    # Trainer.save_model writes FSDP weights only for FULL_STATE_DICT; recipes/accelerate/fsdp.yaml shards its
    # checkpoints, so the final save must gather the student whole (FSDP itself cannot run on CPU: the plugin and the
    # gather are stood in for), and leave the plugin's setting as it was.
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import StateDictType

    trainer = ner_trainer(tokenizer, tmp_path)
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="SHARDED_STATE_DICT")  # as fsdp.yaml
    sharded_config = plugin.state_dict_config
    seen = []

    def gather(model):
        seen.append(plugin.state_dict_type)
        return trainer._unwrap(model).state_dict()

    monkeypatch.setattr(trainer, "is_fsdp_enabled", True)
    monkeypatch.setattr(trainer.accelerator.state, "fsdp_plugin", plugin, raising=False)
    monkeypatch.setattr(trainer.accelerator, "get_state_dict", gather)
    trainer.save_model(str(tmp_path / "final"))
    assert seen == [StateDictType.FULL_STATE_DICT]
    assert (tmp_path / "final" / "model.safetensors").is_file() and (tmp_path / "final" / "config.json").is_file()
    assert plugin.state_dict_type == StateDictType.SHARDED_STATE_DICT and plugin.state_dict_config is sharded_config


def test_token_data_without_labels_needs_all_subwords_even_when_no_hard_label_loss_is_trained(tokenizer, tmp_path):
    # alpha=1 trains no hard-label loss, but first_subword finds word starts by their labels: refuse at init, not at
    # the first batch.
    data = ner_dataset(tokenizer).remove_columns("labels")
    with pytest.raises(ValueError, match=r"first_subword' finds each word's first sub-word by its label.*all_subwords"):
        ner_trainer(tokenizer, tmp_path, dataset=data, alpha=1.0)
    ner_trainer(tokenizer, tmp_path, dataset=data, alpha=1.0, distill_positions="all_subwords")


@pytest.mark.parametrize("remove_unused_columns", [True, False])
def test_a_teacher_gets_the_inputs_only_it_takes(tokenizer, tmp_path, remove_unused_columns):
    # A DistilBERT student takes no token_type_ids, a BERT teacher does: on sentence pairs, Trainer's column removal
    # (by the student's forward) must not leave the teacher reading every token as the first sentence, and the
    # student must not be handed the teacher's extra input.
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(1)
    student = DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=len(tokenizer), dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_position_embeddings=64))
    teacher = tiny_sequence_model(tokenizer, seed=2)
    pairs = Dataset.from_dict({"a": SENTENCES[:4], "b": SENTENCES[1:5], "label": [0, 1, 0, 1]}).map(
        lambda batch: tokenizer(batch["a"], batch["b"]), batched=True, remove_columns=["a", "b"])
    seen = []
    teacher.register_forward_hook(lambda module, args, kwargs, out: seen.append(kwargs.get("token_type_ids")),
                                  with_kwargs=True)
    trainer = DistillationTrainer(model=student, teacher_model=teacher,
                                  args=make_args(tmp_path, max_steps=1, remove_unused_columns=remove_unused_columns),
                                  train_dataset=pairs, data_collator=DataCollatorWithPadding(tokenizer),
                                  processing_class=tokenizer)
    trainer.train()
    assert seen and seen[0] is not None and seen[0].max().item() == 1  # the second sentence's segment
    assert "eval_loss" in trainer.evaluate(pairs)  # the student alone, without token_type_ids


@pytest.mark.parametrize("name, match", [("model_init", "Pass the student as `model`"),
                                         ("compute_loss_func", "override `compute_loss`")])
def test_trainer_arguments_that_would_bypass_distillation_are_refused_with_the_way_round(tokenizer, tmp_path, name,
                                                                                         match):
    with pytest.raises(ValueError, match=match):
        DistillationTrainer(model=tiny_token_model(tokenizer), teacher_model=tiny_token_model(tokenizer),
                            args=make_args(tmp_path), train_dataset=ner_dataset(tokenizer), **{name: lambda *a: None})


def test_pairs_without_the_segment_ids_the_teacher_takes_are_warned_of(tokenizer, tmp_path, caplog):
    # Pairs tokenized with a DistilBERT student's tokenizer carry no token_type_ids: the BERT teacher, fine-tuned with
    # them, read every token as the first sentence, silently.
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    def trainer(pairs):
        student = DistilBertForSequenceClassification(DistilBertConfig(
            vocab_size=len(tokenizer), dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_position_embeddings=64))
        return DistillationTrainer(model=student, teacher_model=tiny_sequence_model(tokenizer, seed=2),
                                   args=make_args(tmp_path), train_dataset=pairs, processing_class=tokenizer)

    raw = Dataset.from_dict({"a": SENTENCES[:4], "b": SENTENCES[1:5], "label": [0, 1, 0, 1]})
    without = raw.map(lambda batch: tokenizer(batch["a"], batch["b"], return_token_type_ids=False), batched=True,
                      remove_columns=["a", "b"])
    with caplog.at_level("WARNING", logger="hf_distill.trainer"):
        trainer(without)
    assert re.search(r"two separator tokens, as sentence pairs do, but no token_type_ids.*teacher .*type_vocab_size=2"
                     r".*return_token_type_ids=True", caplog.text)
    caplog.clear()
    # The tokenizer given only in the collator names the separator too; and a cache built from such pairs is warned
    # of where it is built, the one place that sees the teacher (a trainer on the cache alone has none to ask).
    with caplog.at_level("WARNING"):
        DistillationTrainer(model=tiny_sequence_model(tokenizer, seed=1), teacher_model=tiny_sequence_model(
            tokenizer, seed=2), args=make_args(tmp_path), train_dataset=without,
            data_collator=DataCollatorWithPadding(tokenizer))
        build_teacher_cache(tiny_sequence_model(tokenizer, seed=2), without, DataCollatorWithPadding(tokenizer),
                            tmp_path / "cache", tokenizer=tokenizer, progress_bar=False)
    assert caplog.text.count("two separator tokens, as sentence pairs do") == 2, caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_distill.trainer"):  # with the segments, or single sentences: nothing
        trainer(raw.map(lambda batch: tokenizer(batch["a"], batch["b"]), batched=True, remove_columns=["a", "b"]))
        trainer(raw.map(lambda batch: tokenizer(batch["a"], return_token_type_ids=False), batched=True,
                        remove_columns=["a", "b"]))
    assert "token_type_ids" not in caplog.text


def test_hyperparameter_search_says_at_once_how_to_search_without_it(tokenizer, tmp_path):
    # Trainer's own check asked for the `model_init` that DistillationTrainer refuses: two failures to the advice.
    trainer = ner_trainer(tokenizer, tmp_path)
    with pytest.raises(RuntimeError, match=r"not supported by DistillationTrainer.*new DistillationTrainer.*"
                                                  r"per trial"):
        trainer.hyperparameter_search(n_trials=2)


@pytest.mark.parametrize("settings", [{}, {"adversarial": "fgm"}, {"hidden_distill_weight": 1.0}])
def test_models_that_return_tuples_train_as_those_that_return_outputs(tokenizer, tmp_path, settings):
    # `return_dict=False` (a model saved with torchscript=True, say) gives tuples, which stock Trainer trains on.
    def weights(return_dict):
        student = tiny_token_model(tokenizer, layers=1, seed=1, return_dict=return_dict)
        teacher = tiny_token_model(tokenizer, layers=2, seed=2, return_dict=return_dict)
        trainer = ner_trainer(tokenizer, tmp_path, student=student, teacher=teacher, max_steps=2,
                              output_dir=str(tmp_path / str(return_dict)), **settings)
        trainer.train()
        return student.state_dict()

    as_tuples, as_outputs = weights(False), weights(True)
    assert all(torch.equal(as_tuples[k], v) for k, v in as_outputs.items())
