"""The teacher-logit cache: what it stores, what it serves, what it refuses, and how it resumes."""

import copy
import json

import numpy as np
import pytest
import torch
from conftest import tiny_sequence_model, tiny_token_model
from test_trainer import ner_dataset, seq_dataset
from transformers import BertTokenizerFast, DataCollatorForTokenClassification, DataCollatorWithPadding

from hf_distill.cache import CACHE_INDEX_COLUMN, TeacherLogitCache, build_teacher_cache

MAX_LENGTH = 32


def ner_teacher(tokenizer, seed=2):
    return tiny_token_model(tokenizer, layers=1, seed=seed)


def build_ner(tokenizer, path, teacher=None, dataset=None, collator=None, **kwargs):
    kwargs = {"tokenizer": tokenizer, "max_length": MAX_LENGTH, "batch_size": 2, "progress_bar": False, **kwargs}
    return build_teacher_cache(
        teacher if teacher is not None else ner_teacher(tokenizer),
        dataset if dataset is not None else ner_dataset(tokenizer),
        collator or DataCollatorForTokenClassification(tokenizer),
        path,
        **kwargs,
    )


def online_logits(teacher, rows, collator):
    """The teacher's logits for `rows` collated into one batch, and that batch."""
    batch = collator(rows)
    teacher.eval()
    with torch.no_grad():
        logits = teacher(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}).logits
    return logits, batch


def count_forwards(module):
    calls = []
    handle = module.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


# ---- what is stored --------------------------------------------------------------------------------------------


def test_token_cache_matches_online_logits_and_pads_with_zeros(tokenizer, tmp_path):
    teacher, data = ner_teacher(tokenizer), ner_dataset(tokenizer)
    cache = build_ner(tokenizer, tmp_path / "cache", teacher=teacher, dataset=data, batch_size=4)
    expected, batch = online_logits(teacher, list(data), DataCollatorForTokenClassification(tokenizer))
    got = cache.logits(torch.arange(len(data)), seq_len=expected.shape[1])
    assert (cache.task, cache.num_rows, cache.num_labels, cache.top_k) == ("token_classification", 6, 7, None)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    real = batch["attention_mask"].bool()
    assert real.sum() == sum(len(ids) for ids in data["input_ids"])
    torch.testing.assert_close(got[real], expected[real], atol=1e-2, rtol=0)
    assert torch.all(got[~real] == 0)


def test_sequence_cache_matches_online_logits(tokenizer, tmp_path):
    teacher, data = tiny_sequence_model(tokenizer, num_labels=3, layers=1, seed=2), seq_dataset(tokenizer)
    collator = DataCollatorWithPadding(tokenizer)
    teacher.train()
    cache = build_teacher_cache(teacher, data, collator, tmp_path / "cache", batch_size=4, progress_bar=False)
    assert teacher.training  # the build ran it in eval mode and gave it back in the mode it came in
    expected, _ = online_logits(teacher, list(data), collator)
    got = cache.logits(torch.arange(len(data)))
    assert cache.task == "sequence_classification" and got.shape == (6, 3)
    torch.testing.assert_close(got, expected, atol=1e-2, rtol=0)


def test_top_k_of_all_classes_is_exact(tokenizer, tmp_path):
    teacher = ner_teacher(tokenizer)
    full = build_ner(tokenizer, tmp_path / "full", teacher=teacher)
    for k in (7, 50):
        top = build_ner(tokenizer, tmp_path / f"top{k}", teacher=teacher, top_k=k)
        assert top.top_k == 7
        assert torch.equal(top.logits(torch.arange(6), seq_len=20), full.logits(torch.arange(6), seq_len=20))


def test_top_k_keeps_top_probabilities_and_tail_mass_at_temperature_one(tokenizer, tmp_path):
    teacher, data, k = ner_teacher(tokenizer), ner_dataset(tokenizer), 3
    with torch.no_grad():
        teacher.classifier.weight.mul_(30)  # a peaked, uneven distribution, so that the top-k matter
    cache = build_ner(tokenizer, tmp_path / "cache", teacher=teacher, dataset=data, top_k=k)
    expected, batch = online_logits(teacher, list(data), DataCollatorForTokenClassification(tokenizer))
    real = batch["attention_mask"].bool()
    p = expected[real].softmax(-1)
    q = cache.logits(torch.arange(6), seq_len=expected.shape[1])[real].softmax(-1)
    top = p.topk(k, dim=-1).indices
    torch.testing.assert_close(q.gather(1, top), p.gather(1, top), atol=2e-3, rtol=0)
    torch.testing.assert_close(1 - q.gather(1, top).sum(-1), 1 - p.gather(1, top).sum(-1), atol=2e-3, rtol=0)
    # The tail is spread evenly over the other classes.
    tail = torch.ones_like(q, dtype=torch.bool).scatter_(1, top, False)
    tail_q = q[tail].view(-1, 7 - k)
    torch.testing.assert_close(tail_q, tail_q[:, :1].expand_as(tail_q))
    assert tail_q.min() > 0


def test_logits_are_clamped_to_fp16_range(tokenizer, tmp_path):
    teacher = tiny_sequence_model(tokenizer, layers=1)
    with torch.no_grad():
        teacher.classifier.bias.copy_(torch.tensor([1e6, -1e6]))
    cache = build_teacher_cache(teacher, seq_dataset(tokenizer), DataCollatorWithPadding(tokenizer), tmp_path / "c",
                                progress_bar=False)
    got = cache.logits([0, 1])
    assert torch.isfinite(got).all()
    assert torch.equal(got, torch.tensor([[65504.0, -65504.0]] * 2))


# ---- serving batches -------------------------------------------------------------------------------------------


def test_attach_adds_index_and_shuffled_batches_get_their_own_rows(tokenizer, tmp_path):
    teacher, data = ner_teacher(tokenizer), ner_dataset(tokenizer)
    cache = build_ner(tokenizer, tmp_path / "cache", teacher=teacher, dataset=data)
    indexed = cache.attach(data)
    assert indexed[CACHE_INDEX_COLUMN] == list(range(6))
    assert cache.attach(indexed)[CACHE_INDEX_COLUMN] == list(range(6))  # re-attaching replaces the column
    order = [4, 1, 5, 0]
    expected, batch = online_logits(teacher, [indexed[i] for i in order], DataCollatorForTokenClassification(tokenizer))
    # DataCollatorForTokenClassification passes the int column through as a (B,) LongTensor.
    assert batch[CACHE_INDEX_COLUMN].dtype == torch.long and batch[CACHE_INDEX_COLUMN].tolist() == order
    got = cache.logits(batch[CACHE_INDEX_COLUMN], seq_len=batch["input_ids"].shape[1])
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-2, rtol=0)
    for b, i in enumerate(order):
        assert torch.equal(got[b], cache.logits([i], seq_len=got.shape[1])[0])


def test_sequence_collator_passes_the_index_through(tokenizer, tmp_path):
    data = seq_dataset(tokenizer)
    collator = DataCollatorWithPadding(tokenizer)
    cache = build_teacher_cache(tiny_sequence_model(tokenizer, layers=1), data, collator, tmp_path / "c",
                                progress_bar=False)
    batch = collator([cache.attach(data)[i] for i in (3, 0)])
    assert batch[CACHE_INDEX_COLUMN].dtype == torch.long and batch[CACHE_INDEX_COLUMN].tolist() == [3, 0]
    assert torch.equal(cache.logits(batch[CACHE_INDEX_COLUMN]), cache.logits([3, 0]))


def test_batch_shorter_than_a_cached_row_is_refused(tokenizer, tmp_path):
    cache = build_ner(tokenizer, tmp_path / "cache")
    with pytest.raises(ValueError, match="cached positions but the batch is 3 tokens long"):
        cache.logits([3], seq_len=3)
    with pytest.raises(ValueError, match=r"outside \[0, 6\)"):
        cache.logits([6], seq_len=30)


def test_left_padding_is_refused_at_build_time(tokenizer, tmp_path):
    left = copy.deepcopy(tokenizer)
    left.padding_side = "left"
    with pytest.raises(ValueError, match="right padding is required"):
        build_ner(tokenizer, tmp_path / "cache", collator=DataCollatorForTokenClassification(left))


def test_a_streaming_dataset_is_refused_with_the_reason(tokenizer, tmp_path):
    streamed = ner_dataset(tokenizer).to_iterable_dataset()
    with pytest.raises(ValueError, match=r"needs a map-style dataset .*got a IterableDataset.*streaming=True"):
        build_ner(tokenizer, tmp_path / "cache", dataset=streamed)
    cache = build_ner(tokenizer, tmp_path / "cache")
    with pytest.raises(ValueError, match=r"needs a map-style dataset"):
        cache.attach(streamed)


def test_attach_refuses_another_dataset(tokenizer, tmp_path):
    cache = build_ner(tokenizer, tmp_path / "cache")
    with pytest.raises(ValueError, match="another dataset"):
        cache.attach(ner_dataset(tokenizer, n=4))


# ---- fingerprints: stale caches are refused --------------------------------------------------------------------


@pytest.fixture
def other_tokenizer(tmp_path):
    vocab = tmp_path / "other_vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "john", "mary", "paris", "."]) + "\n")
    return BertTokenizerFast(vocab=str(vocab))


def test_load_accepts_what_the_cache_was_built_for(tokenizer, tmp_path):
    teacher = ner_teacher(tokenizer)
    built = build_ner(tokenizer, tmp_path / "cache", teacher=teacher)
    truncating = copy.deepcopy(tokenizer)
    truncating(["john lives in paris"], truncation=True, max_length=4, padding="max_length")  # backend state only
    fresh_dataset = ner_dataset(tokenizer)
    loaded = TeacherLogitCache.load(tmp_path / "cache", teacher=ner_teacher(tokenizer), dataset=fresh_dataset,
                                    tokenizer=truncating, max_length=MAX_LENGTH)
    assert loaded.fingerprint == built.fingerprint
    assert set(loaded.fingerprint) >= {"dataset", "teacher", "tokenizer", "max_length", "num_labels", "top_k", "task",
                                       "num_rows"}
    TeacherLogitCache.load(tmp_path / "cache", dataset=built.attach(fresh_dataset))  # the indexed copy is the same data
    assert torch.equal(loaded.logits(range(6), seq_len=20), built.logits(range(6), seq_len=20))


@pytest.mark.parametrize(
    ("part", "message"),
    [
        ("teacher", "built for another teacher (its weights differ)"),
        ("dataset", "built for another dataset"),
        ("tokenizer", "built with another tokenizer"),
        ("max_length", "built with max_length=32, not max_length=64"),
    ],
)
def test_load_names_the_part_that_changed(tokenizer, other_tokenizer, tmp_path, part, message):
    build_ner(tokenizer, tmp_path / "cache")
    changed = {
        "teacher": ner_teacher(tokenizer, seed=3),
        "dataset": ner_dataset(tokenizer, n=4),
        "tokenizer": other_tokenizer,
        "max_length": 64,
    }
    with pytest.raises(ValueError, match="rebuild it with `build_teacher_cache") as error:
        TeacherLogitCache.load(tmp_path / "cache", **{part: changed[part]})
    assert message in str(error.value)
    others = {"teacher": "another teacher", "dataset": "another dataset", "tokenizer": "another tokenizer",
              "max_length": "with max_length"}
    assert not any(text in str(error.value) for name, text in others.items() if name != part)


def test_sentence_pairs_with_other_segment_ids_are_another_dataset(tokenizer, tmp_path):
    # The teacher's logits depend on token_type_ids too: pairs cached without them (DistilBERT-style tokenization),
    # then re-tokenized with them, were reused as the same data, and the student learnt the segment-less logits.
    from datasets import Dataset

    pairs = tokenizer(["john lives in paris", "mary is here"], ["he is here", "she lives in paris"])
    with_segments = Dataset.from_dict({k: pairs[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
    without = with_segments.remove_columns("token_type_ids")
    assert any(any(row) for row in with_segments["token_type_ids"])
    teacher, collator = tiny_sequence_model(tokenizer, layers=1, seed=2), DataCollatorWithPadding(tokenizer)
    build_teacher_cache(teacher, without, collator, tmp_path / "cache", progress_bar=False)
    with pytest.raises(ValueError, match="built for another dataset.*other token_type_ids"):
        build_teacher_cache(teacher, with_segments, collator, tmp_path / "cache", progress_bar=False)
    # A pair cache built before segments were fingerprinted (no `dataset_segments`) is still the same data.
    build_teacher_cache(teacher, with_segments, collator, tmp_path / "pairs", progress_bar=False)
    metadata = json.loads((tmp_path / "pairs" / "metadata.json").read_text())
    del metadata["fingerprint"]["dataset_segments"]
    (tmp_path / "pairs" / "metadata.json").write_text(json.dumps(metadata))
    TeacherLogitCache.load(tmp_path / "pairs", dataset=with_segments.map(lambda row: row))
    # Single sentences carry all-zero segments: with or without the column, the same data (and the same caches).
    single = seq_dataset(tokenizer)
    build_teacher_cache(teacher, single.remove_columns("token_type_ids") if "token_type_ids" in single.column_names
                        else single, collator, tmp_path / "single", progress_bar=False)
    zeros = single if "token_type_ids" in single.column_names else single.add_column(
        "token_type_ids", [[0] * len(ids) for ids in single["input_ids"]])
    TeacherLogitCache.load(tmp_path / "single", dataset=zeros)


def test_build_on_a_different_cache_asks_for_a_new_path_or_overwrite(tokenizer, tmp_path):
    first = build_ner(tokenizer, tmp_path / "cache")
    other = ner_teacher(tokenizer, seed=3)
    with pytest.raises(ValueError, match="another teacher.*new path, or pass `overwrite=True`"):
        build_ner(tokenizer, tmp_path / "cache", teacher=other)
    with pytest.raises(ValueError, match="stores top_k=None, not top_k=3"):
        build_ner(tokenizer, tmp_path / "cache", top_k=3)
    rebuilt = build_ner(tokenizer, tmp_path / "cache", teacher=other, overwrite=True)
    assert rebuilt.fingerprint["teacher"] != first.fingerprint["teacher"]
    TeacherLogitCache.load(tmp_path / "cache", teacher=other)


def test_missing_cache_says_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no teacher-logit cache.*build_teacher_cache"):
        TeacherLogitCache.load(tmp_path / "nowhere")


# ---- resuming ----------------------------------------------------------------------------------------------------


class FailingCollator:
    """Collates `batches` batches, then fails as an interrupted build would."""

    def __init__(self, collator, batches):
        self.collator, self.left = collator, batches

    def __call__(self, rows):
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return self.collator(rows)


def test_interrupted_build_resumes_to_identical_values(tokenizer, tmp_path):
    teacher, collator = ner_teacher(tokenizer), DataCollatorForTokenClassification(tokenizer)
    # Windows of 4 rows (2 batches of 2): the interruption comes after the first window is complete.
    reference = build_ner(tokenizer, tmp_path / "reference", teacher=teacher, sort_window=4)
    with pytest.raises(KeyboardInterrupt):
        build_ner(tokenizer, tmp_path / "cache", teacher=teacher, collator=FailingCollator(collator, 2),
                  sort_window=4)
    metadata = json.loads((tmp_path / "cache" / "metadata.json").read_text())
    assert metadata["completed_rows"] == 4
    with pytest.raises(ValueError, match="incomplete.*4 of 6 rows.*resumes"):
        TeacherLogitCache.load(tmp_path / "cache")
    # The build time adds up over the runs (this one's is set large, to tell a sum from the last run alone).
    metadata["build_seconds"] = 1000.0
    (tmp_path / "cache" / "metadata.json").write_text(json.dumps(metadata))

    calls, handle = count_forwards(teacher)
    try:
        resumed = build_ner(tokenizer, tmp_path / "cache", teacher=teacher, sort_window=4)
    finally:
        handle.remove()
    assert len(calls) == 1  # only the last batch of 2 rows
    for name in ("offsets.npy", "values.npy"):
        assert np.array_equal(np.load(tmp_path / "cache" / name), np.load(tmp_path / "reference" / name))
    assert torch.equal(resumed.logits(range(6), seq_len=20), reference.logits(range(6), seq_len=20))
    assert resumed.build_seconds >= 1000.0
    assert json.loads((tmp_path / "cache" / "metadata.json").read_text())["build_seconds"] == resumed.build_seconds


def test_rows_are_batched_by_length_within_a_window(tokenizer, tmp_path):
    teacher = ner_teacher(tokenizer)

    def padded_positions(window):
        shapes = []
        handle = teacher.register_forward_pre_hook(lambda m, a, kw: shapes.append(kw["input_ids"].shape),
                                                   with_kwargs=True)
        try:
            cache = build_ner(tokenizer, tmp_path / f"w{window}", teacher=teacher, sort_window=window)
        finally:
            handle.remove()
        return sum(b * length for b, length in shapes), cache

    in_order, plain = padded_positions(2)  # a window of one batch: dataset order
    sorted_, by_length = padded_positions(6)
    assert sorted_ < in_order
    assert torch.allclose(by_length.logits(range(6), seq_len=20), plain.logits(range(6), seq_len=20), atol=1e-2)


def test_complete_cache_is_reused_without_running_the_teacher(tokenizer, tmp_path):
    teacher = ner_teacher(tokenizer)
    first = build_ner(tokenizer, tmp_path / "cache", teacher=teacher, top_k=3)
    calls, handle = count_forwards(teacher)
    try:
        again = build_ner(tokenizer, tmp_path / "cache", teacher=teacher, top_k=3)
    finally:
        handle.remove()
    assert calls == []
    assert again.build_seconds == first.build_seconds
    assert torch.equal(again.logits(range(6), seq_len=20), first.logits(range(6), seq_len=20))


def test_build_time_is_recorded(tokenizer, tmp_path):
    cache = build_ner(tokenizer, tmp_path / "cache")
    metadata = json.loads((tmp_path / "cache" / "metadata.json").read_text())
    assert cache.build_seconds > 0
    assert metadata["build_seconds"] == cache.build_seconds
    assert metadata["completed_rows"] == metadata["num_rows"] == 6


@pytest.mark.parametrize("offset, problem, top_k", [(1e4, r"fp16, in which the cache stores logits, cannot hold", None),
                                                    (float("inf"), r"infinite logits", None),
                                                    (1e4, r"fp16, in which the cache stores logits, cannot hold", 3)])
def test_logits_that_fp16_cannot_hold_are_refused_not_flattened(tokenizer, tmp_path, offset, problem, top_k):
    # Logits 10000 and 10003 both became 10000 in fp16 (its step there is 8): a confident teacher was cached as a
    # uniform one, and its argmax became a tie. An inf (an fp16 teacher's overflow) was clipped to 65504 silently.
    teacher = tiny_token_model(tokenizer, layers=1)
    with torch.no_grad():
        teacher.classifier.weight.zero_()
        teacher.classifier.bias.copy_(torch.arange(teacher.config.num_labels) * 3.0 + offset)
        if top_k is not None:  # equal logits: the top ones rounded in fp16 (to 10000) beside the tail's exact fp32
            teacher.classifier.bias.fill_(10002.0)  # log-sum-exp (the whole-row check passed: all round alike)
    with pytest.raises(ValueError, match=problem + r".*teacher_cache"):
        build_teacher_cache(teacher, ner_dataset(tokenizer), DataCollatorForTokenClassification(tokenizer),
                            str(tmp_path / "cache"), progress_bar=False, top_k=top_k)
