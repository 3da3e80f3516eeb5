"""DistillationTrainer reading the teacher's logits from a TeacherLogitCache instead of running the teacher."""

import os

import pytest
import torch
from conftest import tiny_sequence_model, tiny_token_model
from test_trainer import NO_DROPOUT, make_args, ner_dataset
from transformers import DataCollatorForTokenClassification

from hf_distill import DistillationTrainer, build_teacher_cache


def _setup(tokenizer, tmp_path):
    teacher = tiny_token_model(tokenizer, layers=2, seed=2, **NO_DROPOUT)
    data = ner_dataset(tokenizer)
    collator = DataCollatorForTokenClassification(tokenizer)
    cache = build_teacher_cache(teacher, data, collator, str(tmp_path / "cache"), tokenizer=tokenizer,
                                progress_bar=False)
    return teacher, data, collator, cache


def _trainer(tokenizer, tmp_path, teacher, data, collator, cache=None, **kwargs):
    return DistillationTrainer(
        model=tiny_token_model(tokenizer, layers=1, seed=1, **NO_DROPOUT), teacher_model=teacher,
        args=make_args(tmp_path, **kwargs), train_dataset=data, data_collator=collator, processing_class=tokenizer,
        teacher_cache=cache,
    )


def test_the_trainers_cache_read_refuses_a_left_padded_batch(tokenizer, tmp_path):
    # A batch collated by a plain collator (the index column, no logits): the trainer reads the rows itself, and
    # left padding would put them on other tokens.
    import copy

    _, data, collator, cache = _setup(tokenizer, tmp_path)
    trainer = _trainer(tokenizer, tmp_path, None, data, collator, cache=cache)
    left = copy.deepcopy(tokenizer)
    left.padding_side = "left"
    attached = cache.attach(data)
    batch = DataCollatorForTokenClassification(left)([attached[i] for i in range(4)])
    with pytest.raises(ValueError, match="left-padded"):
        trainer.teacher_logits(batch)


def test_token_logits_from_the_cache_follow_a_collator_that_pads_to_a_multiple(tokenizer, tmp_path):
    # pad_to_multiple_of (common with fp16) makes batches wider than their longest row: the cached logits must be as
    # wide, zeros past each row.
    _, data, _, cache = _setup(tokenizer, tmp_path)
    collator = DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=16)
    trainer = _trainer(tokenizer, tmp_path, None, data, collator, cache=cache, max_steps=2)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    assert batch["input_ids"].shape[1] == batch["teacher_logits"].shape[1] == 16
    assert batch["teacher_logits"][~batch["attention_mask"].bool()].abs().sum() == 0
    trainer.train()
    assert trainer.state.global_step == 2


def test_a_cache_over_another_number_of_labels_is_refused_at_init(tokenizer, tmp_path):
    from test_trainer import seq_dataset
    from transformers import DataCollatorWithPadding

    data, collator = seq_dataset(tokenizer), DataCollatorWithPadding(tokenizer)
    cache = build_teacher_cache(tiny_sequence_model(tokenizer, num_labels=3, seed=2), data, collator,
                                str(tmp_path / "cache"), progress_bar=False)
    with pytest.raises(ValueError, match="logits over 3 labels, but the student does sequence_classification with 2"):
        DistillationTrainer(model=tiny_sequence_model(tokenizer, num_labels=2, seed=1), args=make_args(tmp_path),
                            train_dataset=data, data_collator=collator, processing_class=tokenizer,
                            teacher_cache=cache)


def test_the_collators_tokenizer_is_saved_with_the_model_as_stock_trainer_saves_it(tokenizer, tmp_path):
    # Without processing_class, Trainer saves `data_collator.tokenizer`: the cache's and the teacher view's wrappers
    # hid it, and the saved student had no tokenizer files.
    import torch.utils.data

    teacher, data, collator, cache = _setup(tokenizer, tmp_path)

    class Rows(torch.utils.data.IterableDataset):  # an iterable set gets the teacher-view collator
        def __iter__(self):
            yield from data

    for name, kwargs in (("cached", {"teacher_cache": cache, "train_dataset": data}),
                         ("iterable", {"teacher_model": teacher, "train_dataset": Rows()})):
        trainer = DistillationTrainer(model=tiny_token_model(tokenizer, layers=1, seed=1), data_collator=collator,
                                      args=make_args(tmp_path / name, max_steps=1), **kwargs)
        trainer.train()
        trainer.save_model()
        assert "tokenizer_config.json" in os.listdir(tmp_path / name / "out"), name


def test_cached_loss_equals_online_loss_on_the_same_batch(tokenizer, tmp_path):
    teacher, data, collator, cache = _setup(tokenizer, tmp_path)
    online = _trainer(tokenizer, tmp_path, teacher, data, collator, alpha=0.6, temperature=3.0)
    cached = _trainer(tokenizer, tmp_path, None, data, collator, cache=cache, alpha=0.6, temperature=3.0)
    rows = [cache.attach(data)[i] for i in (4, 0, 2)]
    batch = collator(rows)
    assert "teacher_cache_index" in batch
    online.model.train()
    cached.model.train()
    loss_online = online.compute_loss(online.model, {k: v for k, v in batch.items() if k != "teacher_cache_index"})
    loss_cached = cached.compute_loss(cached.model, dict(batch))
    assert loss_cached.item() == pytest.approx(loss_online.item(), rel=2e-3)


def test_the_collator_reads_the_cache_and_the_loss_uses_it(tokenizer, tmp_path):
    teacher, data, collator, cache = _setup(tokenizer, tmp_path)
    cached = _trainer(tokenizer, tmp_path, None, data, collator, cache=cache, alpha=0.6, temperature=3.0)
    batch = next(iter(cached.get_train_dataloader()))
    assert torch.equal(batch["teacher_logits"], cache.logits(batch["teacher_cache_index"],
                                                             seq_len=batch["input_ids"].shape[1]))
    online = _trainer(tokenizer, tmp_path, teacher, data, collator, alpha=0.6, temperature=3.0)
    cached.model.train()
    online.model.train()
    plain = {k: v for k, v in batch.items() if k not in ("teacher_cache_index", "teacher_logits")}
    assert cached.compute_loss(cached.model, dict(batch)).item() == pytest.approx(
        online.compute_loss(online.model, plain).item(), rel=2e-3)
    # Evaluation batches carry no index, so nothing is read and nothing extra reaches the student.
    assert "teacher_logits" not in cached.data_collator([{k: v for k, v in data[0].items()}])


def test_cached_logits_keep_their_precision_where_deepspeed_casts_the_batch(tokenizer, tmp_path, monkeypatch):
    # Under DeepSpeed Trainer casts every floating tensor of a batch to the engine's dtype (bf16): the cached logits,
    # exact to fp16, reached the loss rounded to bf16. DeepSpeed is stood in for by what `_prepare_input` reads.
    from types import SimpleNamespace

    teacher, data, collator, cache = _setup(tokenizer, tmp_path)
    cached = _trainer(tokenizer, tmp_path, None, data, collator, cache=cache)
    batch = next(iter(cached.get_train_dataloader()))
    logits = batch["teacher_logits"].clone()
    cached.is_deepspeed_enabled = True
    engine = SimpleNamespace(hf_ds_config=SimpleNamespace(dtype=lambda: torch.bfloat16))
    monkeypatch.setattr(type(cached.accelerator.state), "deepspeed_plugin", engine, raising=False)
    prepared = cached._prepare_inputs(dict(batch))
    assert prepared["teacher_logits"].dtype == torch.float32 and torch.equal(prepared["teacher_logits"], logits)
    assert prepared["input_ids"].dtype == torch.long


def test_a_batch_whose_tokens_are_not_where_the_cache_put_them_is_refused(tokenizer, tmp_path):
    # The cache places each row's logits from position 0: a left-padded batch would silently shift them onto other
    # tokens (and padding), and so would an index column that names other rows.
    import copy

    teacher, data, collator, cache = _setup(tokenizer, tmp_path)
    left = copy.deepcopy(tokenizer)
    left.padding_side = "left"
    trainer = _trainer(tokenizer, tmp_path, None, data, DataCollatorForTokenClassification(left), cache=cache)
    with pytest.raises(ValueError, match=r"left-padded.*padding_side='right'"):
        next(iter(trainer.get_train_dataloader()))
    shifted = cache.attach(data).map(lambda row: {"teacher_cache_index": (row["teacher_cache_index"] + 1) % len(data)})
    with pytest.raises(ValueError, match=r"other input ids"):  # refused at init, from the cache's row hashes
        _trainer(tokenizer, tmp_path, None, shifted, collator, cache=cache)
    batch = collator([shifted[i] for i in range(4)])  # and by the collator's position check, for a batch
    with pytest.raises(ValueError, match=r"names other rows"):
        cache.logits(batch["teacher_cache_index"], seq_len=batch["input_ids"].shape[1],
                     attention_mask=batch["attention_mask"])


def test_training_from_the_cache_alone_matches_online_training(tokenizer, tmp_path):
    teacher, data, collator, cache = _setup(tokenizer, tmp_path)
    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    online = _trainer(tokenizer, tmp_path, teacher, data, collator, optim="sgd", learning_rate=0.5)
    online.train()
    n_online = len(calls)
    cached = _trainer(tokenizer, tmp_path, None, data, collator, cache=cache, optim="sgd", learning_rate=0.5)
    cached.train()
    assert len(calls) == n_online > 0  # no teacher forward in the cached run
    for key, value in online.model.state_dict().items():
        assert torch.allclose(value, cached.model.state_dict()[key], atol=2e-3), key
    logs = [h for h in cached.state.log_history if "loss" in h]
    assert all(h["kd_loss"] > 0 and h["ce_loss"] > 0 for h in logs)


def test_adversarial_training_works_from_the_cache(tokenizer, tmp_path):
    _, data, collator, cache = _setup(tokenizer, tmp_path)
    trainer = _trainer(tokenizer, tmp_path, None, data, collator, cache=cache, adversarial="fgm", max_steps=2)
    trainer.train()
    assert all(h["adv_loss"] > 0 for h in trainer.state.log_history if "loss" in h)


def test_batch_outside_the_cache_without_a_teacher_is_explained(tokenizer, tmp_path):
    _, data, collator, cache = _setup(tokenizer, tmp_path)
    trainer = _trainer(tokenizer, tmp_path, None, data, collator, cache=cache)
    trainer.model.train()
    batch = collator([data[i] for i in range(2)])  # not attached: no index column
    with pytest.raises(ValueError, match=r"no `teacher_cache_index` column.*Pass `teacher_model` too"):
        trainer.compute_loss(trainer.model, dict(batch))


def test_cache_of_another_task_is_refused(tokenizer, tmp_path):
    _, data, collator, cache = _setup(tokenizer, tmp_path)
    with pytest.raises(ValueError, match=r"cache holds token_classification logits over 7 labels"):
        DistillationTrainer(model=tiny_sequence_model(tokenizer, num_labels=2), teacher_model=None,
                            args=make_args(tmp_path), train_dataset=data, teacher_cache=cache)


def test_no_teacher_and_no_cache_is_explained(tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"`teacher_model` is required.*teacher_cache"):
        DistillationTrainer(model=tiny_token_model(tokenizer), teacher_model=None, args=make_args(tmp_path),
                            train_dataset=ner_dataset(tokenizer))


@pytest.mark.parametrize("cached", [False, True])
def test_group_by_length_batches_are_dynamically_padded_and_distilled(tokenizer, tmp_path, cached):
    teacher, data, collator, cache = _setup(tokenizer, tmp_path)
    trainer = _trainer(tokenizer, tmp_path, None if cached else teacher, data, collator, cache=cache if cached else None,
                       train_sampling_strategy="group_by_length", per_device_train_batch_size=2, max_steps=3)
    widths = [batch["input_ids"].shape[1] for batch in trainer.get_train_dataloader()]
    longest = max(len(ids) for ids in data["input_ids"])
    assert min(widths) < longest  # padded per batch, not to the longest example
    trainer.train()
    logs = [h for h in trainer.state.log_history if "kd_loss" in h]
    assert len(logs) == 3 and all(h["kd_loss"] >= 0 for h in logs)


def test_top_k_cache_is_refused_for_the_raw_logit_mse(tokenizer, tmp_path):
    # MSE compares raw logits, and a top-k cache (k < C) stands in for the tail with its shared mass: the target would
    # silently be another vector. KL (a distribution) and the full cache are fine.
    teacher = tiny_token_model(tokenizer, layers=2, seed=2, **NO_DROPOUT)
    data, collator = ner_dataset(tokenizer), DataCollatorForTokenClassification(tokenizer)
    top3 = build_teacher_cache(teacher, data, collator, str(tmp_path / "top3"), tokenizer=tokenizer, top_k=3,
                               progress_bar=False)
    with pytest.raises(ValueError, match=r"keeps only the top 3 of 7.*top_k=None"):
        _trainer(tokenizer, tmp_path, None, data, collator, cache=top3, distill_loss="mse")
    _trainer(tokenizer, tmp_path, None, data, collator, cache=top3, distill_loss="kl")
    full = build_teacher_cache(teacher, data, collator, str(tmp_path / "full"), tokenizer=tokenizer,
                               progress_bar=False)
    _trainer(tokenizer, tmp_path, None, data, collator, cache=full, distill_loss="mse")


def test_a_top_k_of_all_classes_but_one_is_exact_and_allowed_for_mse(tokenizer, tmp_path):
    # one tail class: its log-sum-exp is its own logit, so the reconstruction is the teacher's logits
    teacher, data, collator, full = _setup(tokenizer, tmp_path)
    top6 = build_teacher_cache(teacher, data, collator, str(tmp_path / "top6"), tokenizer=tokenizer, top_k=6,
                               progress_bar=False)
    assert top6.exact and full.exact
    rows = list(range(len(data)))
    assert torch.allclose(top6.logits(rows), full.logits(rows), atol=2e-2)
    trainer = _trainer(tokenizer, tmp_path, None, data, collator, cache=top6, distill_loss="mse")
    assert trainer._cache_description() == "cached: every logit (fp16)"
    top5 = build_teacher_cache(teacher, data, collator, str(tmp_path / "top5"), tokenizer=tokenizer, top_k=5,
                               progress_bar=False)
    assert not top5.exact


def test_a_teacher_dtype_without_a_teacher_to_cast_is_refused(tokenizer, tmp_path):
    # only the cache teaches: the dtype would be ignored, and the card would say the teacher ran in it
    _, data, collator, cache = _setup(tokenizer, tmp_path)
    with pytest.raises(ValueError, match=r"teacher_dtype='bfloat16'.*no teacher runs.*teacher_dtype='auto'"):
        _trainer(tokenizer, tmp_path, None, data, collator, cache=cache, teacher_dtype="bfloat16")
    _trainer(tokenizer, tmp_path, None, data, collator, cache=cache)


def test_a_teacher_model_other_than_the_caches_is_refused(tokenizer, tmp_path):
    _, data, collator, cache = _setup(tokenizer, tmp_path)
    other = tiny_token_model(tokenizer, layers=2, seed=9, **NO_DROPOUT)
    with pytest.raises(ValueError, match=r"built from another teacher .*build_teacher_cache\(\.\.\., overwrite=True\)"):
        _trainer(tokenizer, tmp_path, other, data, collator, cache=cache, adversarial="fgm")


def test_evaluation_never_reads_the_cache(tokenizer, tmp_path):
    teacher, data, collator, cache = _setup(tokenizer, tmp_path)
    validation = data.select([5, 4, 3, 2, 1, 0]).flatten_indices()
    own = build_teacher_cache(teacher, validation, collator, str(tmp_path / "validation"), tokenizer=tokenizer,
                              progress_bar=False)
    trainer = _trainer(tokenizer, tmp_path, None, data, collator, cache=cache)
    plain = trainer.evaluate(validation)["eval_loss"]
    # Another cache's index column: its rows are not the training cache's (reading them was refused, or wrong).
    assert trainer.evaluate(own.attach(validation))["eval_loss"] == pytest.approx(plain)
    assert trainer.predict(own.attach(validation)).metrics["test_loss"] == pytest.approx(plain)


def test_a_compiled_teacher_is_the_teacher_it_wraps(tokenizer):
    from hf_distill.cache import teacher_fingerprint
    from hf_distill.checks import infer_task

    teacher = tiny_token_model(tokenizer, layers=1, seed=2)
    compiled = torch.compile(teacher)  # compiles lazily: no forward runs here
    assert teacher_fingerprint(compiled) == teacher_fingerprint(teacher)
    assert infer_task(compiled, role="teacher") == "token_classification"


def test_an_index_column_made_for_other_rows_is_refused(tokenizer, tmp_path):
    teacher, data, collator, cache = _setup(tokenizer, tmp_path)
    stale = cache.attach(data).shuffle(seed=0)  # the column still names the rows of the unshuffled set
    other = build_teacher_cache(teacher, stale.remove_columns("teacher_cache_index"), collator,
                                str(tmp_path / "other"), tokenizer=tokenizer, progress_bar=False)
    with pytest.raises(ValueError, match=r"holds that row's logits for other input ids.*cache.attach\(dataset\)"):
        _trainer(tokenizer, tmp_path, None, stale, collator, cache=other)
    _trainer(tokenizer, tmp_path, None, stale, collator, cache=cache)  # its own cache: every row still matches
    beyond = cache.attach(data).map(lambda row: {"teacher_cache_index": row["teacher_cache_index"] + 100})
    with pytest.raises(ValueError, match=r"outside the cache .*\(6 rows\)"):
        _trainer(tokenizer, tmp_path, None, beyond, collator, cache=cache)
    _trainer(tokenizer, tmp_path, None, other.attach(stale.remove_columns("teacher_cache_index")), collator,
             cache=other)


def test_an_attached_set_split_with_torch_keeps_its_index(tokenizer, tmp_path):
    # A Subset (random_split's parts) has no column_names: its rows still carry the index attach() added, which must
    # be checked, not attached again (which would refuse the subset as another dataset).
    from torch.utils.data import Subset

    teacher, data, collator, cache = _setup(tokenizer, tmp_path)
    part = Subset(cache.attach(data), [4, 1, 3])
    trainer = _trainer(tokenizer, tmp_path, None, part, collator, cache=cache, max_steps=1)
    assert [row["teacher_cache_index"] for row in trainer.train_dataset] == [4, 1, 3]
    trainer.train()


def test_a_pre_padded_token_set_is_refused_when_the_cache_is_built(tokenizer, tmp_path):
    # padding="max_length" (run_ner.py --pad_to_max_length) stores pad positions in each row, which training batches,
    # padded per batch, would not line up with.
    data = ner_dataset(tokenizer).map(lambda row: tokenizer.pad(row, padding="max_length", max_length=24))
    data = data.map(lambda row: {"labels": row["labels"] + [-100] * (24 - len(row["labels"]))})
    with pytest.raises(ValueError, match=r"Row \d+ of the dataset has 24 input ids but \d+ real tokens.*without padding"):
        build_teacher_cache(tiny_token_model(tokenizer, layers=1), data, DataCollatorForTokenClassification(tokenizer),
                            str(tmp_path / "cache"), progress_bar=False)


def test_an_iterable_training_set_with_a_cache_is_refused_with_the_fix(tokenizer, tmp_path):
    # The cache's rows are checked against the training set before training, which needs a map-style dataset.
    teacher, data, collator, cache = _setup(tokenizer, tmp_path)
    with pytest.raises(ValueError, match=r"map-style dataset.*to_iterable_dataset"):
        _trainer(tokenizer, tmp_path, None, cache.attach(data).to_iterable_dataset(), collator, cache=cache)

    class Sized(torch.utils.data.IterableDataset):  # a length gives Trainer its epochs; the rows still stream
        def __iter__(self):
            return iter(cache.attach(data))

        def __len__(self):
            return len(data)

    with pytest.raises(ValueError, match=r"map-style dataset"):
        _trainer(tokenizer, tmp_path, None, Sized(), collator, cache=cache)


def test_a_pickled_cache_maps_its_files_again_instead_of_copying_them(tokenizer, tmp_path):
    # DataLoader workers started by spawn or forkserver receive the collator, and its cache, by pickle.
    import pickle

    import numpy as np

    _, data, _, cache = _setup(tokenizer, tmp_path)
    payload = pickle.dumps(cache)
    assert len(payload) < 4096 < cache._values.nbytes + 4096  # the path and metadata, not the logits
    copy = pickle.loads(payload)
    assert isinstance(copy._values, np.memmap) and isinstance(copy._offsets, np.memmap)
    assert torch.equal(copy.logits([3, 1], seq_len=12), cache.logits([3, 1], seq_len=12))


@pytest.mark.parametrize("feature", ["hidden_distill_weight", "attention_distill_weight"])
def test_a_cache_beside_feature_distillation_is_refused(tokenizer, tmp_path, feature):
    # Feature distillation runs the teacher on every batch and takes its exact logits from that forward: the cache
    # was read and thrown away, while the model card said the logits were cached (top-k: approximate).
    teacher, data, collator, cache = _setup(tokenizer, tmp_path)
    with pytest.raises(ValueError, match=r"runs the online teacher on every batch.*drop `teacher_cache`"):
        _trainer(tokenizer, tmp_path, teacher, data, collator, cache=cache, **{feature: 1.0})


def test_a_cache_beside_augmentation_is_refused(tokenizer, tmp_path):
    # Every augmented batch is labelled online: the cache was never read, while the model card said it was.
    teacher, data, collator, cache = _setup(tokenizer, tmp_path)
    with pytest.raises(ValueError, match=r"changes every training batch.*drop `teacher_cache`"):
        _trainer(tokenizer, tmp_path, teacher, data, collator, cache=cache, augment_mask_prob=0.2)


def test_data_from_another_tokenizer_is_refused_with_the_tokenizer_named(tokenizer, tmp_path, vocab_file):
    # The trainer's refusal said "another dataset" when the data was the same text tokenized with another tokenizer,
    # which it is given as processing_class and which the cache recorded.
    from transformers import BertTokenizerFast

    teacher, _, collator, cache = _setup(tokenizer, tmp_path)
    words = open(vocab_file, encoding="utf-8").read().split()
    reordered = tmp_path / "vocab.txt"
    reordered.write_text("\n".join(words[:5] + words[5:][::-1]) + "\n", encoding="utf-8")  # specials first
    other = BertTokenizerFast(vocab=str(reordered), do_lower_case=True)
    with pytest.raises(ValueError, match=r"for another dataset .* The tokenizer given as `processing_class` is not the "
                                         r"one the cache was built with"):
        DistillationTrainer(model=tiny_token_model(other, layers=1, seed=1), args=make_args(tmp_path),
                            train_dataset=ner_dataset(other), data_collator=DataCollatorForTokenClassification(other),
                            processing_class=other, teacher_cache=cache)
    with pytest.raises(ValueError, match=r"for another dataset") as same_tokenizer:
        _trainer(tokenizer, tmp_path, None, ner_dataset(tokenizer).select([1, 0, 2, 3]), collator, cache)
    assert "processing_class" not in str(same_tokenizer.value)  # the same tokenizer: the rows themselves changed


def test_a_cached_run_resumes_with_its_teacher_online_but_not_with_another_teachers_cache(tokenizer, tmp_path):
    # The checkpoint records the fingerprint of the teacher the cache was built from: the same teacher run online
    # continues the run; a cache built from another teacher would change the targets mid-run, silently.
    from test_reliability import StopAt

    teacher, data, collator, cache = _setup(tokenizer, tmp_path)
    settings = dict(max_steps=4, save_steps=2, save_strategy="steps")
    first = _trainer(tokenizer, tmp_path, None, data, collator, cache, **settings)
    first.add_callback(StopAt(2))
    first.train()
    online = _trainer(tokenizer, tmp_path, teacher, data, collator, **settings)
    online.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert online.state.global_step == 4
    other = build_teacher_cache(tiny_token_model(tokenizer, layers=2, seed=9, **NO_DROPOUT), data, collator,
                                str(tmp_path / "other"), tokenizer=tokenizer, progress_bar=False)
    with pytest.raises(ValueError, match=r"checkpoint-2 was trained with another teacher than this run's"):
        _trainer(tokenizer, tmp_path, None, data, collator, other, **settings).train(
            resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
