"""Teacher views: the student trains on noisy text while the teacher reads the clean text (`hf_distill.views`)."""

import random

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_sequence_model
from datasets import Dataset
from test_trainer import NO_DROPOUT, SENTENCES, make_args, ner_dataset
from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

from hf_distill import DistillationTrainer, TeacherViewCollator, add_noisy_view, build_model_card, soft_kl, typo_noise
from hf_distill.views import teacher_view_inputs


def prefix_noise(text, rng):
    """A noise whose effect is known exactly: one extra word, drawn from the row's generator."""
    return rng.choice(["awful", "great"]) + " " + text


def raw_sentences(n=6):
    return Dataset.from_dict({"sentence": [SENTENCES[i % len(SENTENCES)] for i in range(n)],
                              "label": [i % 2 for i in range(n)]})


def noisy_dataset(tokenizer, **kwargs):
    return add_noisy_view(raw_sentences(), tokenizer, text_column="sentence",
                          **{"noise": prefix_noise, "probability": 1.0, "seed": 3, **kwargs})


# ---- building the views ----------------------------------------------------------------------------------------


def test_student_view_is_noisy_and_teacher_view_is_clean(tokenizer):
    data = noisy_dataset(tokenizer)
    assert set(data.column_names) == {"label", "input_ids", "token_type_ids", "attention_mask", "teacher_input_ids",
                                      "teacher_token_type_ids", "teacher_attention_mask"}
    for i, row in enumerate(data):
        clean = tokenizer(SENTENCES[i])["input_ids"]
        assert row["teacher_input_ids"] == clean
        # The student's text is the clean text with one word in front, drawn from the row's own generator.
        rng = random.Random(f"3:{i}")
        rng.random()  # the draw that decided the row is noisy
        assert row["input_ids"] == tokenizer(prefix_noise(SENTENCES[i], rng))["input_ids"]
        assert len(row["input_ids"]) == len(clean) + 1


def test_probability_picks_a_seeded_share_of_rows(tokenizer):
    def noisy_rows(seed, probability):
        data = add_noisy_view(raw_sentences(60), tokenizer, text_column="sentence", noise=prefix_noise,
                              probability=probability, seed=seed)
        return [i for i, row in enumerate(data) if row["input_ids"] != row["teacher_input_ids"]]

    half = noisy_rows(0, 0.5)
    assert half == noisy_rows(0, 0.5)  # reproducible
    assert half != noisy_rows(1, 0.5)  # and seeded
    assert 15 < len(half) < 45
    assert noisy_rows(0, 0.0) == []
    assert len(noisy_rows(0, 1.0)) == 60


def test_typo_noise_is_seeded_and_changes_the_requested_share_of_words():
    noise = typo_noise(0.5)
    text = "the movie was great and the plot was awful"
    assert noise(text, random.Random(7)) == noise(text, random.Random(7))
    changed = [a != b for a, b in zip(text.split(), noise(text, random.Random(7)).split(), strict=True)]
    assert sum(changed) == 5  # half of the 9 words (each has two letters or more), rounded half up
    with pytest.raises(ValueError, match="rate"):
        typo_noise(1.5)


def test_pairs_get_noise_in_both_texts(tokenizer):
    raw = Dataset.from_dict({"a": ["john lives in paris ."], "b": ["mary works"], "label": [1]})
    row = add_noisy_view(raw, tokenizer, text_column="a", text_pair_column="b", noise=prefix_noise,
                         probability=1.0)[0]
    assert row["teacher_input_ids"] == tokenizer("john lives in paris .", "mary works")["input_ids"]
    assert len(row["input_ids"]) == len(row["teacher_input_ids"]) + 2
    assert row["token_type_ids"].count(1) == row["teacher_token_type_ids"].count(1) + 1
    short = add_noisy_view(raw, tokenizer, text_column="a", text_pair_column="b", noise=prefix_noise,
                           probability=1.0, max_length=6)[0]  # both views, both texts, cut to max_length
    assert len(short["input_ids"]) == len(short["teacher_input_ids"]) == 6


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"text_column": "text"}, r"`text` is not a column.*\['sentence', 'label'\]"),
        ({"probability": 1.5}, r"`probability` must be in \[0, 1\], got 1.5"),
    ],
)
def test_add_noisy_view_errors(tokenizer, kwargs, match):
    with pytest.raises(ValueError, match=match):
        add_noisy_view(raw_sentences(), tokenizer, **{"text_column": "sentence", "noise": prefix_noise, **kwargs})


def test_add_noisy_view_refuses_tokenized_data(tokenizer):
    tokenized = raw_sentences().map(lambda b: tokenizer(b["sentence"]), batched=True)
    with pytest.raises(ValueError, match="already tokenized"):
        add_noisy_view(tokenized, tokenizer, text_column="sentence", noise=prefix_noise)


def test_collator_pads_each_view_on_its_own(tokenizer):
    data = noisy_dataset(tokenizer)
    batch = TeacherViewCollator(DataCollatorWithPadding(tokenizer), tokenizer)([data[0], data[3]])
    assert batch["input_ids"].shape == (2, max(len(data[0]["input_ids"]), len(data[3]["input_ids"])))
    assert batch["teacher_input_ids"].shape == (2, max(len(data[0]["teacher_input_ids"]),
                                                      len(data[3]["teacher_input_ids"])))
    assert batch["teacher_input_ids"][0, : len(data[0]["teacher_input_ids"])].tolist() == data[0]["teacher_input_ids"]
    assert batch["teacher_attention_mask"].sum(1).tolist() == [len(data[0]["teacher_input_ids"]),
                                                               len(data[3]["teacher_input_ids"])]
    # Without a teacher view the wrapped collator's batch comes through untouched.
    plain = TeacherViewCollator(DataCollatorWithPadding(tokenizer), tokenizer)([tokenizer(SENTENCES[0])])
    assert set(plain) == {"input_ids", "token_type_ids", "attention_mask"}


def test_rows_without_a_view_among_rows_with_one_give_the_teacher_their_own_text(tokenizer):
    # interleave_datasets of a noisy-view stream and a plain one fills the plain rows' teacher columns with None:
    # the collator padded None ("object of type 'NoneType' has no len()"). Such a row is its own clean text.
    data = noisy_dataset(tokenizer)
    plain = {**tokenizer(SENTENCES[1]), "label": 0}
    mixed = {**plain, **{key: None for key in ("teacher_input_ids", "teacher_attention_mask", "teacher_token_type_ids")}}
    collator = TeacherViewCollator(DataCollatorWithPadding(tokenizer), tokenizer)
    batch = collator([data[0], mixed])
    length = len(plain["input_ids"])
    assert batch["teacher_input_ids"][1, :length].tolist() == plain["input_ids"]
    assert batch["teacher_attention_mask"][1].sum() == length
    assert batch["teacher_input_ids"][0, : len(data[0]["teacher_input_ids"])].tolist() == data[0]["teacher_input_ids"]
    # A batch of such rows only has no view to pad: the wrapped collator's batch, without the None columns.
    alone = collator([mixed, mixed])
    assert set(alone) == {"input_ids", "token_type_ids", "attention_mask", "labels"}


def test_a_noisy_view_set_interleaved_with_a_plain_one_trains(tokenizer, tmp_path):
    # The init checks of the teacher view measured the null views' lengths as NaN ("cannot convert float NaN").
    from datasets import interleave_datasets

    plain = raw_sentences().map(lambda batch: tokenizer(batch["sentence"]), batched=True, remove_columns=["sentence"])
    mixed = interleave_datasets([plain, noisy_dataset(tokenizer)], seed=0)
    assert mixed[0]["teacher_input_ids"] is None
    trainer = DistillationTrainer(model=tiny_sequence_model(tokenizer, seed=1), teacher_model=tiny_sequence_model(
        tokenizer, seed=2), args=make_args(tmp_path, max_steps=2), train_dataset=mixed, processing_class=tokenizer)
    trainer.train()
    assert trainer.state.global_step == 2


def test_teacher_view_inputs_renames_the_view_and_keeps_the_rest():
    ids, view = torch.tensor([[1]]), torch.tensor([[2]])
    out = teacher_view_inputs({"input_ids": ids, "attention_mask": ids, "teacher_input_ids": view,
                               "teacher_attention_mask": view, "labels": ids})
    assert out["input_ids"] is view and out["attention_mask"] is view and out["labels"] is ids
    plain = {"input_ids": ids}
    assert teacher_view_inputs(plain) is plain
    # The student's mask and segments never stand in for a view that has none of its own.
    out = teacher_view_inputs({"input_ids": ids, "attention_mask": ids, "token_type_ids": ids, "teacher_input_ids": view})
    assert "attention_mask" not in out and "token_type_ids" not in out and out["input_ids"] is view


# ---- the trainer ----------------------------------------------------------------------------------------------


def view_trainer(tokenizer, tmp_path, data=None, **kwargs):
    student = tiny_sequence_model(tokenizer, seed=1, **NO_DROPOUT)
    # A wide initialisation, so that the teacher's logits depend visibly on its input.
    teacher = tiny_sequence_model(tokenizer, seed=2, initializer_range=0.5, **NO_DROPOUT)
    return DistillationTrainer(
        model=student, teacher_model=teacher, args=make_args(tmp_path, **{"alpha": 0.7, **kwargs}),
        train_dataset=data if data is not None else noisy_dataset(tokenizer),
        data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
    )


def test_a_clean_view_longer_than_the_teachers_positions_is_refused_at_init(tokenizer, tmp_path):
    # The noise shortens each text to its first word, so the student's view fits any model; the teacher reads the
    # clean view, which it has no positions for. It crashed in the first forward.
    data = add_noisy_view(raw_sentences(), tokenizer, text_column="sentence", noise=lambda text, rng: text.split()[0],
                          probability=1.0, seed=3)
    longest = max(len(row) for row in data["teacher_input_ids"])
    assert max(len(row) for row in data["input_ids"]) < 4 < longest
    teacher = tiny_sequence_model(tokenizer, seed=2)
    teacher.config.max_position_embeddings = 4  # as a checkpoint saved with 4 positions would say
    with pytest.raises(ValueError, match=rf"teacher_input_ids.*{longest} tokens, but the teacher has positions for 4"):
        DistillationTrainer(model=tiny_sequence_model(tokenizer, seed=1), teacher_model=teacher,
                            args=make_args(tmp_path), train_dataset=data,
                            data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)


def test_loss_compares_student_on_noise_with_teacher_on_clean_text(tokenizer, tmp_path):
    trainer = view_trainer(tokenizer, tmp_path)
    data = noisy_dataset(tokenizer)
    batch = trainer.data_collator([data[i] for i in range(3)])
    batch["labels"] = batch.pop("label") if "label" in batch else batch["labels"]
    student, teacher = trainer.model, trainer.teacher_model
    student.train()
    loss = trainer.compute_loss(student, dict(batch))
    with torch.no_grad():
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    token_type_ids=batch["token_type_ids"]).logits
        t = teacher(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"],
                    token_type_ids=batch["teacher_token_type_ids"]).logits
        t_noisy = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = 0.7 * soft_kl(s, t, 2.0).mean() + 0.3 * F.cross_entropy(s, batch["labels"])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    wrong = 0.7 * soft_kl(s, t_noisy, 2.0).mean() + 0.3 * F.cross_entropy(s, batch["labels"])
    assert abs(wrong.item() - expected.item()) > 1e-4  # the check above can tell the two views apart


@pytest.mark.parametrize("settings", [{}, {"adversarial": "fgm", "adv_epsilon": 0.5}, {"augment_mask_prob": 0.5}])
def test_training_feeds_the_teacher_the_clean_view_only(tokenizer, tmp_path, settings):
    # Augmentation too changes the student's input only: the teacher labels its own clean view.
    trainer = view_trainer(tokenizer, tmp_path, **settings)
    seen = []
    trainer.teacher_model.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(kwargs["input_ids"].clone()), with_kwargs=True)
    teacher_before = {k: v.clone() for k, v in trainer.teacher_model.state_dict().items()}
    student_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    clean = {tuple(tokenizer(s)["input_ids"]) for s in SENTENCES}
    assert len(seen) == 3
    for ids in seen:
        for row in ids.tolist():
            assert tuple(t for t in row if t != tokenizer.pad_token_id) in clean
    assert all(torch.equal(v, trainer.teacher_model.state_dict()[k]) for k, v in teacher_before.items())
    assert any(not torch.equal(v, trainer.model.state_dict()[k]) for k, v in student_before.items())
    assert all("kd_loss" in h for h in trainer.state.log_history if "loss" in h)


def test_a_torch_subset_of_a_noisy_view_keeps_the_teacher_on_the_clean_text(tokenizer, tmp_path):
    # A Subset (random_split's parts) has no column_names: the view must be found in its rows, or the teacher would
    # silently read the student's noisy text.
    from torch.utils.data import Subset

    trainer = view_trainer(tokenizer, tmp_path, data=Subset(noisy_dataset(tokenizer), [0, 1, 2, 3]), max_steps=2)
    seen = []
    trainer.teacher_model.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(kwargs["input_ids"].clone()), with_kwargs=True)
    assert trainer.teacher_view
    trainer.train()
    clean = {tuple(tokenizer(s)["input_ids"]) for s in SENTENCES}
    assert seen and all(tuple(t for t in row if t != tokenizer.pad_token_id) in clean
                        for ids in seen for row in ids.tolist())


def test_a_noisy_view_given_after_init_keeps_the_teacher_on_the_clean_text(tokenizer, tmp_path):
    # `trainer.train_dataset = ...` (a stock Trainer habit): the view was set up at init only, so its columns were
    # dropped and the teacher read the student's noisy text, silently.
    plain = raw_sentences().map(lambda batch: tokenizer(batch["sentence"]), batched=True, remove_columns=["sentence"])
    trainer = view_trainer(tokenizer, tmp_path, data=plain, max_steps=2)
    assert not trainer.teacher_view
    trainer.train_dataset = noisy_dataset(tokenizer)
    seen = []
    trainer.teacher_model.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(kwargs["input_ids"].clone()), with_kwargs=True)
    trainer.train()
    clean = {tuple(tokenizer(s)["input_ids"]) for s in SENTENCES}
    assert seen and all(tuple(t for t in row if t != tokenizer.pad_token_id) in clean
                        for ids in seen for row in ids.tolist())
    assert trainer.teacher_view  # and the model card says the student read noisy text


def test_add_noisy_view_names_the_split_a_dataset_dict_needs(tokenizer):
    from datasets import DatasetDict

    with pytest.raises(ValueError, match=r"DatasetDict with splits \['train'\].*dataset\['train'\]"):
        add_noisy_view(DatasetDict({"train": raw_sentences()}), tokenizer, text_column="sentence", noise=prefix_noise)


def test_evaluation_on_a_dataset_with_a_teacher_view_scores_the_student_view(tokenizer, tmp_path):
    trainer = view_trainer(tokenizer, tmp_path)
    data = noisy_dataset(tokenizer)
    metrics = trainer.evaluate(data)
    batch = DataCollatorWithPadding(tokenizer)([{k: v for k, v in r.items() if not k.startswith("teacher_")}
                                                for r in data])
    trainer.model.eval()
    with torch.no_grad():
        expected = F.cross_entropy(trainer.model(**{k: v for k, v in batch.items() if k != "labels"}).logits,
                                   batch["labels"])
    assert metrics["eval_loss"] == pytest.approx(expected.item(), rel=1e-5)


def test_error_teacher_view_with_token_classification(tokenizer, tmp_path):
    from conftest import tiny_token_model

    data = ner_dataset(tokenizer).add_column("teacher_input_ids", ner_dataset(tokenizer)["input_ids"])
    with pytest.raises(ValueError, match="token classification.*augment_mask_prob"):
        DistillationTrainer(model=tiny_token_model(tokenizer), teacher_model=tiny_token_model(tokenizer),
                            args=make_args(tmp_path), train_dataset=data,
                            data_collator=DataCollatorForTokenClassification(tokenizer), processing_class=tokenizer)


def test_error_teacher_view_with_feature_distillation(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="hidden_distill_weight=0"):
        view_trainer(tokenizer, tmp_path, hidden_distill_weight=1.0)


def test_error_teacher_view_without_tokenizer(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="processing_class=tokenizer"):
        DistillationTrainer(model=tiny_sequence_model(tokenizer), teacher_model=tiny_sequence_model(tokenizer),
                            args=make_args(tmp_path), train_dataset=noisy_dataset(tokenizer),
                            data_collator=DataCollatorWithPadding(tokenizer))


def test_model_card_says_the_student_read_noisy_text(tokenizer, tmp_path):
    trainer = view_trainer(tokenizer, tmp_path)
    trainer.save_model(str(tmp_path / "export"))
    text = (tmp_path / "export" / "README.md").read_text()
    assert "noisy view of the training text" in text and "| noise |" not in text
    trainer.noisy_view = {"noise": "prefix_noise", "probability": 1.0}
    trainer.save_model(str(tmp_path / "export"))
    assert "| noise | prefix_noise |\n| probability | 1.0 |" in (tmp_path / "export" / "README.md").read_text()
    card = str(build_model_card(task="sequence_classification", teacher="t", args=make_args(tmp_path)))
    assert "Noisy student inputs" not in card


def test_predict_on_unlabeled_data_with_a_teacher_view_reads_the_student_view(tokenizer, tmp_path):
    # With no labels the stock prediction step calls the model itself: the teacher's columns must not reach it (a
    # forward that takes **kwargs would accept them silently and pass them on).
    trainer = view_trainer(tokenizer, tmp_path)
    data = noisy_dataset(tokenizer).remove_columns("label")
    seen = []
    hook = trainer.model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(set(kwargs)), with_kwargs=True)
    logits = trainer.predict(data).predictions
    hook.remove()
    assert seen and not any(key.startswith("teacher_") for keys in seen for key in keys), seen
    batch = DataCollatorWithPadding(tokenizer)([{k: v for k, v in r.items() if not k.startswith("teacher_")}
                                                for r in data])
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(**batch).logits
    torch.testing.assert_close(torch.as_tensor(logits), expected, rtol=1e-5, atol=1e-6)


class _Rows(torch.utils.data.IterableDataset):
    """An iterable training set (as streaming gives): no column names to read before training."""

    def __init__(self, rows):
        self.rows = list(rows)

    def __iter__(self):
        return iter(self.rows)


@pytest.mark.parametrize("remove_unused_columns", [True, False])
def test_an_iterable_training_set_with_a_teacher_view_keeps_the_teacher_on_the_clean_text(
        tokenizer, tmp_path, remove_unused_columns):
    data = _Rows(noisy_dataset(tokenizer))
    trainer = view_trainer(tokenizer, tmp_path, data=data, max_steps=2, remove_unused_columns=remove_unused_columns)
    seen = []
    trainer.teacher_model.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(kwargs["input_ids"].clone()), with_kwargs=True)
    trainer.train()
    clean = {tuple(tokenizer(s)["input_ids"]) for s in SENTENCES}
    assert len(seen) == 2 and all(tuple(t for t in row if t != tokenizer.pad_token_id) in clean
                                  for ids in seen for row in ids.tolist())
    assert trainer.teacher_view  # found in the first batch: the model card says the student read noisy text


def test_an_iterable_token_set_with_a_teacher_view_is_refused_at_its_first_batch(tokenizer, tmp_path):
    from conftest import tiny_token_model

    rows = ner_dataset(tokenizer).add_column("teacher_input_ids", ner_dataset(tokenizer)["input_ids"])
    trainer = DistillationTrainer(model=tiny_token_model(tokenizer), teacher_model=tiny_token_model(tokenizer),
                                  args=make_args(tmp_path), train_dataset=_Rows(rows),
                                  data_collator=DataCollatorForTokenClassification(tokenizer),
                                  processing_class=tokenizer)
    with pytest.raises(ValueError, match="token classification.*augment_mask_prob"):
        trainer.train()


def test_an_evaluation_set_with_a_teacher_view_next_to_a_clean_training_set(tokenizer, tmp_path):
    # Only the training set's view is padded for the teacher: an evaluation set's view columns are dropped with the
    # other columns the student does not take.
    clean = raw_sentences().map(lambda batch: tokenizer(batch["sentence"]), batched=True, remove_columns=["sentence"])
    for train in (clean, None):
        trainer = view_trainer(tokenizer, tmp_path, data=train)
        assert "eval_loss" in trainer.evaluate(noisy_dataset(tokenizer))


def test_add_noisy_view_on_a_stream_reads_no_row_until_iterated(tokenizer):
    from datasets import IterableDataset

    pulled = []

    def rows(sentences):
        for i, sentence in enumerate(sentences):
            pulled.append(i)
            yield {"sentence": sentence, "label": i % 2}

    def view(sentences):
        stream = IterableDataset.from_generator(rows, gen_kwargs={"sentences": sentences})
        return add_noisy_view(stream, tokenizer, text_column="sentence", noise=prefix_noise, probability=1.0, seed=3)

    data = view(SENTENCES[:3])
    assert pulled == []  # a large (or endless) stream is not read through before training
    first = next(iter(data))
    assert first["teacher_input_ids"] == tokenizer(SENTENCES[0])["input_ids"] and first["label"] == 0
    rng = random.Random(f"3:{SENTENCES[0]}")  # a stream's row is seeded by its text
    rng.random()
    assert first["input_ids"] == tokenizer(prefix_noise(SENTENCES[0], rng))["input_ids"]
    with pytest.raises(ValueError, match="Row 3 of `sentence` is None, not a text"):  # checked as it is read
        list(view([*SENTENCES[:3], None]))


def test_mixing_unlabeled_rows_into_a_noisy_view_keeps_the_teacher_on_clean_text(tokenizer):
    from hf_distill import mix_unlabeled

    labeled = Dataset.from_dict(dict(tokenizer(SENTENCES[:2]), labels=[0, 1]))
    unlabeled = noisy_dataset(tokenizer).remove_columns("label")
    mixed = mix_unlabeled(labeled, unlabeled)
    assert {"teacher_input_ids", "teacher_attention_mask", "teacher_token_type_ids"} <= set(mixed.column_names)
    for row in mixed.select(range(2)):  # labelled rows: the teacher reads their own (clean) text
        assert row["teacher_input_ids"] == row["input_ids"] and row["labels"] in (0, 1)
    for i, row in enumerate(mixed.select(range(2, len(mixed)))):  # unlabelled rows keep their clean view
        assert row["teacher_input_ids"] == tokenizer(SENTENCES[i])["input_ids"] != row["input_ids"]
        assert row["labels"] == -100
    # The other way round too: a labelled noisy view and plain unlabelled rows.
    plain = Dataset.from_dict(dict(tokenizer(SENTENCES[:2])))
    mixed = mix_unlabeled(noisy_dataset(tokenizer).rename_column("label", "labels"), plain)
    assert mixed[-1]["teacher_input_ids"] == mixed[-1]["input_ids"] == tokenizer(SENTENCES[1])["input_ids"]


def test_a_streamed_noisy_view_is_the_same_whatever_the_number_of_dataloader_workers(tokenizer):
    # A stream's `map` numbers rows per worker, so row seeds restarted at 0 in each worker: the k-th row of every
    # worker drew the same noise, and the worker count changed which rows were noisy.
    from torch.utils.data import DataLoader

    texts = [f"{SENTENCES[i % len(SENTENCES)]} {' '.join(['good'] * (i // len(SENTENCES)))}" for i in range(24)]
    stream = Dataset.from_dict({"sentence": texts, "label": [0] * 24}).to_iterable_dataset(num_shards=2)
    view = add_noisy_view(stream, tokenizer, text_column="sentence", noise=prefix_noise, probability=0.5, seed=3)

    def student_rows(workers):
        rows = DataLoader(view, batch_size=None, num_workers=workers)
        return {tuple(row["teacher_input_ids"]): tuple(row["input_ids"]) for row in rows}

    alone = student_rows(0)
    assert len(alone) == 24 and 0 < sum(k != v for k, v in alone.items()) < 24
    assert student_rows(2) == alone
