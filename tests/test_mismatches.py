"""Models, folders and data that do not fit together: each is refused before training, with the fix, instead of
training on scrambled labels, overwriting a checkpoint or failing deep inside torch."""

import json
import re

import pytest
import torch
from conftest import NER_LABELS, tiny_sequence_model, tiny_token_model
from datasets import Dataset
from test_trainer import make_args, ner_dataset, seq_dataset
from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

from hf_distill import (
    DistillationTrainer,
    add_noisy_view,
    build_teacher_cache,
    create_student,
    mix_unlabeled,
    typo_noise,
)
from hf_distill.loading import load_model


def _token_trainer(tokenizer, tmp_path, **kwargs):
    defaults = dict(model=tiny_token_model(tokenizer, layers=1, seed=1),
                    teacher_model=tiny_token_model(tokenizer, layers=2, seed=2), args=make_args(tmp_path),
                    train_dataset=ner_dataset(tokenizer), data_collator=DataCollatorForTokenClassification(tokenizer),
                    processing_class=tokenizer)
    return DistillationTrainer(**{**defaults, **kwargs})


def test_an_output_dir_that_holds_the_teacher_is_refused(tokenizer, tmp_path):
    # Saving the student there would overwrite the teacher's weights, checkpoint rotation would delete a teacher
    # kept as checkpoint-N, and push_to_hub would upload it.
    for where in ("run", "run/checkpoint-500"):
        tiny_token_model(tokenizer, layers=2, seed=2).save_pretrained(tmp_path / where)
        teacher = load_model(str(tmp_path / where), "token_classification", require_all_weights=True)
        with pytest.raises(ValueError, match=r"output_dir.*holds the teacher.*another `output_dir`"):
            _token_trainer(tokenizer, tmp_path, teacher_model=teacher,
                           args=make_args(tmp_path, output_dir=str(tmp_path / "run")))
    _token_trainer(tokenizer, tmp_path, teacher_model=teacher, args=make_args(tmp_path, output_dir=str(tmp_path / "s")))
    # Another subfolder is safe unless the folder is pushed.
    tiny_token_model(tokenizer, layers=2, seed=2).save_pretrained(tmp_path / "exp" / "teacher")
    teacher = load_model(str(tmp_path / "exp" / "teacher"), "token_classification", require_all_weights=True)
    _token_trainer(tokenizer, tmp_path, teacher_model=teacher, args=make_args(tmp_path, output_dir=str(tmp_path / "exp")))
    with pytest.raises(ValueError, match=r"push_to_hub.*publish it"):
        _token_trainer(tokenizer, tmp_path, teacher_model=teacher,
                       args=make_args(tmp_path, output_dir=str(tmp_path / "exp"), push_to_hub=True,
                                      hub_model_id="tiny-student"))


def test_an_output_dir_that_holds_a_peft_adapter_teacher_is_refused(tokenizer, tmp_path):
    # A teacher loaded from a LoRA adapter folder names its base model in `_name_or_path`: the guard looked only there,
    # and the student's save replaced the adapter (or rotation deleted the checkpoint-N that held it).
    peft = pytest.importorskip("peft")
    tiny_token_model(tokenizer, layers=2, seed=2).save_pretrained(tmp_path / "base")
    for where in ("run", "run/checkpoint-4"):
        base = load_model(str(tmp_path / "base"), "token_classification")
        lora = peft.LoraConfig(task_type=peft.TaskType.TOKEN_CLS, r=2, target_modules=["query", "value"])
        peft.get_peft_model(base, lora).save_pretrained(tmp_path / where)
        teacher = load_model(str(tmp_path / where), "token_classification", require_all_weights=True)
        assert (tmp_path / where / "adapter_config.json").is_file()
        with pytest.raises(ValueError, match=rf"output_dir.*holds the teacher loaded from .*{where}"):
            _token_trainer(tokenizer, tmp_path, teacher_model=teacher,
                           args=make_args(tmp_path, output_dir=str(tmp_path / "run")))


def test_a_teacher_that_shares_weights_with_the_student_is_refused(tokenizer, tmp_path):
    student = tiny_token_model(tokenizer, layers=1, seed=1)
    teacher = tiny_token_model(tokenizer, layers=2, seed=2)
    teacher.bert.embeddings = student.bert.embeddings  # freezing the teacher would freeze the student's too
    with pytest.raises(ValueError, match=r"shares .* parameters with the student.*copy\.deepcopy"):
        _token_trainer(tokenizer, tmp_path, model=student, teacher_model=teacher)
    student.bert.embeddings.requires_grad_(False)  # shared and frozen in the student too: nothing stops training
    _token_trainer(tokenizer, tmp_path, model=student, teacher_model=teacher)
    # ... unless the teacher is cast: that would cast the student's shared weights in place.
    with pytest.raises(ValueError, match=r"shares .* parameters"):
        _token_trainer(tokenizer, tmp_path, model=student, teacher_model=teacher,
                       args=make_args(tmp_path, teacher_dtype="bfloat16"))
    assert all(p.dtype == torch.float32 for p in student.parameters())


def test_a_cache_remembers_its_teachers_labels_and_a_student_in_another_order_is_refused(tokenizer, tmp_path):
    teacher = tiny_token_model(tokenizer, layers=2, seed=2)
    data, collator = ner_dataset(tokenizer), DataCollatorForTokenClassification(tokenizer)
    cache = build_teacher_cache(teacher, data, collator, str(tmp_path / "cache"), progress_bar=False)
    assert cache.label_names == NER_LABELS
    reversed_student = tiny_token_model(tokenizer, labels=NER_LABELS[::-1], layers=1, seed=1)
    with pytest.raises(ValueError, match=r"same labels in a different order"):
        _token_trainer(tokenizer, tmp_path, model=reversed_student, teacher_model=None, teacher_cache=cache)


def test_students_without_a_teacher_model_are_checked_too(tokenizer, tmp_path):
    # With a cache or an EMA teacher there is no teacher model to compare with, but a one-label (regression) student
    # would still distil nothing: the KL over one class is 0.
    one_label = tiny_sequence_model(tokenizer, num_labels=1)
    with pytest.raises(ValueError, match=r"student is configured for regression"):
        DistillationTrainer(model=one_label, teacher_model=None,
                            args=make_args(tmp_path, self_distillation="ema"), train_dataset=seq_dataset(tokenizer),
                            data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)


def test_token_labels_not_aligned_to_the_sub_words_are_refused(tokenizer, tmp_path):
    # Word-level tags never aligned to sub-words: the collator pads them with -100, [CLS] gets the first word's tag.
    rows = ner_dataset(tokenizer)
    word_tags = rows.map(lambda row: {"labels": row["labels"][1:-1]})
    with pytest.raises(ValueError, match=r"row 0 has \d+ labels for \d+ input ids.*tokenize_and_align_labels"):
        _token_trainer(tokenizer, tmp_path, train_dataset=word_tags)


def test_token_tags_under_label_are_refused_with_the_rename(tokenizer, tmp_path):
    renamed = ner_dataset(tokenizer).rename_column("labels", "label")
    with pytest.raises(ValueError, match=r"`label` column.*rename_column\(\"label\", \"labels\"\)"):
        _token_trainer(tokenizer, tmp_path, train_dataset=renamed)


def test_a_sequence_checkpoint_is_not_loaded_as_a_token_teacher(tokenizer, tmp_path):
    tiny_sequence_model(tokenizer, num_labels=len(NER_LABELS)).save_pretrained(tmp_path / "sentiment")
    with pytest.raises(ValueError, match=r"sequence classification.*BertForSequenceClassification"):
        load_model(str(tmp_path / "sentiment"), "token_classification", require_all_weights=True)


def test_overwrite_replaces_a_cache_whose_metadata_cannot_be_read(tokenizer, tmp_path):
    teacher = tiny_token_model(tokenizer, layers=1, seed=2)
    data, collator = ner_dataset(tokenizer), DataCollatorForTokenClassification(tokenizer)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "metadata.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"overwrite=True"):
        build_teacher_cache(teacher, data, collator, str(tmp_path / "cache"), progress_bar=False)
    cache = build_teacher_cache(teacher, data, collator, str(tmp_path / "cache"), progress_bar=False, overwrite=True)
    assert cache.num_rows == len(data)
    assert json.loads((tmp_path / "cache" / "metadata.json").read_text())["completed_rows"] == len(data)


def test_small_tools_refuse_inputs_they_cannot_use(tokenizer):
    raw = Dataset.from_dict({"sentence": ["a good film", None], "label": [1, 0]})
    with pytest.raises(ValueError, match=r"Row 1 of `sentence` is None.*text"):
        add_noisy_view(raw, tokenizer, text_column="sentence", noise=typo_noise(0.2))
    teacher = tiny_token_model(tokenizer, layers=2, seed=2)
    compiled_student = create_student(torch.compile(teacher), [0])
    assert compiled_student.config.num_hidden_layers == 1
    labeled = ner_dataset(tokenizer)
    with pytest.raises(ValueError, match=r"`unlabeled` is empty"):
        mix_unlabeled(labeled, labeled.select([]).remove_columns("labels"))


def test_data_that_does_not_fit_the_embedding_tables_is_refused(tokenizer, tmp_path):
    rows = ner_dataset(tokenizer)
    vocab = len(tokenizer)  # the tiny models' vocab_size
    too_big = rows.map(lambda row: {"input_ids": [*row["input_ids"][:-1], vocab]})  # one past the last row
    with pytest.raises(ValueError, match=rf"token id {vocab}, but the student's vocab_size is {vocab}"):
        _token_trainer(tokenizer, tmp_path, train_dataset=too_big)
    _token_trainer(tokenizer, tmp_path, train_dataset=rows.map(
        lambda row: {"input_ids": [*row["input_ids"][:-1], vocab - 1]}))  # the last row fits
    # A teacher with fewer positions than the data's longest row (the student has enough).
    short = tiny_token_model(tokenizer, layers=2, seed=2)
    short.config.max_position_embeddings = 8  # as a checkpoint saved with 8 positions would say
    with pytest.raises(ValueError, match=r"Row \d+ of the data has \d+ tokens, but the teacher has positions for 8.*"
                                         r"truncation=True, max_length=8"):
        _token_trainer(tokenizer, tmp_path, teacher_model=short)
    with pytest.raises(ValueError, match=r"the teacher has positions for 8"):
        build_teacher_cache(short, rows, DataCollatorForTokenClassification(tokenizer), str(tmp_path / "c"),
                            progress_bar=False)
    with pytest.raises(ValueError, match=r"token_type_id 2, but the student has type_vocab_size 2"):
        _token_trainer(tokenizer, tmp_path, train_dataset=rows.map(
            lambda row: {"token_type_ids": [2] * len(row["input_ids"])}))


def test_a_model_without_segments_takes_the_tokenizers_zero_type_ids(tokenizer):
    # DeBERTa has type_vocab_size 0 and ignores token_type_ids, which its tokenizer still returns (all 0).
    from transformers import DebertaV2Config, DebertaV2ForTokenClassification

    from hf_distill.checks import check_inputs_fit

    model = DebertaV2ForTokenClassification(DebertaV2Config(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
        type_vocab_size=0, num_labels=len(NER_LABELS)))
    rows = ner_dataset(tokenizer).map(lambda row: {"token_type_ids": [0] * len(row["input_ids"])})
    check_inputs_fit(rows, [("student", model)])


def test_a_list_of_labels_per_row_for_a_sequence_classifier_is_refused_at_init(tokenizer, tmp_path):
    # Multi-hot rows passed the range check (it flattened every list) and failed in the loss on a batch-size mismatch.
    enc = tokenizer(["the cat sat", "a dog ran"])
    data = Dataset.from_dict({**enc, "labels": [[1, 0], [0, 1]]})
    with pytest.raises(ValueError, match=r"'labels' holds a list per row"):
        DistillationTrainer(model=tiny_sequence_model(tokenizer), teacher_model=tiny_sequence_model(tokenizer, seed=2),
                            args=make_args(tmp_path), train_dataset=data, processing_class=tokenizer)


def test_a_class_label_column_in_another_order_than_the_models_is_warned_of_with_both_fixes(tokenizer, tmp_path,
                                                                                           caplog):
    # GLUE/MNLI's ClassLabel is [entailment, neutral, contradiction]; roberta-large-mnli's id2label is
    # [CONTRADICTION, NEUTRAL, ENTAILMENT]: ids 0 and 2 trained each class as the other, with no warning. Not an
    # error: run_glue.py re-encodes the ids with `map`, which keeps the column's (then stale) ClassLabel.
    import datasets

    names = ["CONTRADICTION", "NEUTRAL", "ENTAILMENT"]
    config = dict(num_labels=3, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    enc = tokenizer(["the cat sat", "a dog ran", "the dog sat"])
    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32")),
                                  "token_type_ids": datasets.Sequence(datasets.Value("int8")),
                                  "attention_mask": datasets.Sequence(datasets.Value("int8")),
                                  "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"])})
    data = Dataset.from_dict({**enc, "label": [0, 1, 2]}, features=features)

    def warning(train):
        caplog.clear()
        with caplog.at_level("WARNING", logger="hf_distill.trainer"):
            DistillationTrainer(model=tiny_sequence_model(tokenizer, **config),
                                teacher_model=tiny_sequence_model(tokenizer, seed=2, **config),
                                args=make_args(tmp_path), train_dataset=train, processing_class=tokenizer)
        return caplog.text

    assert re.search(r"'label' is a ClassLabel .*\['entailment', 'neutral', 'contradiction'\].*another order.*"
                     r"align_labels_with_mapping\(teacher\.config\.label2id, 'label'\).*cast_column", warning(data))
    aligned = data.align_labels_with_mapping(config["label2id"], "label")  # the first fix: ids re-encoded
    assert aligned["label"] == [2, 1, 0] and "ClassLabel" not in warning(aligned)
    # run_glue's way: ids mapped by hand, names left stale; the second fix records the names and keeps the ids
    remapped = data.map(lambda row: {"label": 2 - row["label"]})
    assert remapped.features["label"].names[0] == "entailment" and "ClassLabel" in warning(remapped)
    renamed = remapped.cast_column("label", datasets.ClassLabel(names=names))
    assert renamed["label"] == [2, 1, 0] and "ClassLabel" not in warning(renamed)


def test_the_label_order_warning_for_token_labels_names_a_moved_class_and_a_cast_that_works(tokenizer):
    # Its advice was written for one label per row: the ClassLabel cast failed on a list column, and its example
    # ("id 0 trains 'O' as 'O'") named a class that had not moved.
    import datasets

    from hf_distill.checks import label_order_mismatch

    model_labels = ["O", "B-PER", "I-PER", "B-LOC"]
    data = Dataset.from_dict({"labels": [[0, 1, 2], [3, 0]]}, features=datasets.Features(
        {"labels": datasets.Sequence(datasets.ClassLabel(names=["O", "B-LOC", "B-PER", "I-PER"]))}))
    message = label_order_mismatch(data, model_labels)
    assert "id 1 trains 'B-LOC' as 'B-PER'" in message and "datasets.Sequence(datasets.ClassLabel(" in message
    renamed = data.cast_column("labels", datasets.Sequence(datasets.ClassLabel(names=model_labels)))  # the advice
    assert renamed["labels"] == data["labels"] and label_order_mismatch(renamed, model_labels) is None
