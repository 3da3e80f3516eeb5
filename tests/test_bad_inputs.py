"""Malformed inputs: each must fail early with an error that names the problem and the fix.

The corpus is data-driven. A file case is a file under ``tests/bad_inputs/`` plus a row of ``FILE_CASES``: the reader
to call, its keyword arguments, the exception, a pattern for the problem and a pattern for the hint, both of which
must occur in the message. A case that needs objects rather than a file (a model, a tokenizer, an in-memory
dataset) is a row of ``OBJECT_CASES`` naming a small function that builds the bad input and calls the check.
The tests after the tables check that the fixes the messages suggest do work.
"""

import re
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import NER_LABELS, WORDS, tiny_config
from datasets import Dataset, DatasetDict
from transformers import (
    AutoTokenizer,
    BertForSequenceClassification,
    BertModel,
    BertTokenizerFast,
    BertTokenizerLegacy,
)

from hf_distill.checks import (
    check_label_range,
    check_teacher_student,
    check_tokenizer,
    check_train_dataset,
    infer_task,
)
from hf_distill.data import iob1_to_iob2, load_text_classification_file, read_conll, tokenize_and_align_labels
from hf_distill.loading import load_model, load_tokenizer

BAD_INPUTS = Path(__file__).parent / "bad_inputs"


def load_then_check_two_labels(path: Path) -> None:
    """Load a file whose labels are integers, then check them against a two-class model."""
    check_label_range(load_text_classification_file(path), num_labels=2, label_column="label")


def case(name, reader, error, problem, hint, *, id=None, **kwargs):
    return pytest.param(name, reader, kwargs, error, problem, hint, id=id or name)


conll, text = read_conll, load_text_classification_file
IOB1_HINT = r"looks like IOB1 .*`tag_scheme='iob1'` .*iob1_to_iob2"

FILE_CASES = [
    # ---- CoNLL files ---------------------------------------------------------------------------------------------
    case("conll_empty.txt", conll, ValueError, r"conll_empty\.txt is empty:", r"blank lines between sentences"),
    case("conll_whitespace_only.txt", conll, ValueError, r"is empty \(it holds only whitespace\)", r"`token \.\.\."),
    case("conll_docstart_only.txt", conll, ValueError, r"has no sentences \(only -DOCSTART-", r"right file"),
    case("conll_ragged_columns.txt", conll, ValueError, r"line 2: ragged columns, found 3 .* 4", r"missing column"),
    case("conll_single_column.txt", conll, ValueError, r"line 3: found a single column \('lives'\)", r"Add the tag"),
    case(
        "conll_unknown_tag.txt", conll, ValueError, r"line 2: tag 'B-COMPANY' is not one of the known labels",
        r"Pass `label_names` that include it", label_names=NER_LABELS,
    ),
    case("conll_bare_type_tag.txt", conll, ValueError, r"line 1: tag 'PER' is not an IOB2 tag", r"become 'B-PER'"),
    case("conll_bad_prefix_tag.txt", conll, ValueError, r"tag 'X-LOC' is not an IOB2 tag", r"Fix the tag, or pass"),
    case("conll_iobes_tag.txt", conll, ValueError, r"line 3: tag 'S-LOC' is not an IOB2 tag", r"IOBES/BILOU.*'S-'"),
    # Under tag_scheme="iob1" the shapes are checked before the conversion, which would lose the line.
    case("conll_iob1_iobes_tag.txt", conll, ValueError, r"conll_iob1_iobes_tag\.txt, line 7: tag 'S-MISC'",
         r"IOBES/BILOU", tag_scheme="iob1"),
    case(
        "conll_iob1_sentence_start.txt", conll, ValueError,
        r"line 1: tag 'I-PER' opens an entity \(at the start of a sentence\)", IOB1_HINT,
    ),
    case("conll_iob1_after_o.txt", conll, ValueError, r"line 4: tag 'I-LOC' opens an entity \(after 'O'\)", IOB1_HINT),
    case(
        "conll_iob1_after_o.txt", conll, ValueError, r"1 of 2 entities in the file open with 'I-'", IOB1_HINT,
        id="conll_iob1_after_o.txt-given-label-names", label_names=NER_LABELS,
    ),
    case(
        "conll_iob1_type_change.txt", conll, ValueError, r"line 2: tag 'I-LOC' opens an entity \(after 'B-ORG'\)",
        IOB1_HINT,
    ),
    case(
        "conll_directory/train.txt", conll, ValueError, r"`tag_scheme` .*, got 'bilou'",
        r"must be one of \['iob2', 'iob1'\]", id="conll-unknown-tag-scheme", tag_scheme="bilou",
    ),
    case("conll_not_utf8.txt", conll, ValueError, r"is not UTF-8 text: line 4 has the byte 0xfc", r"iconv -f latin1"),
    case(
        "conll_directory", conll, ValueError, r"conll_directory' is a directory, not a file", r"directory/train\.txt"
    ),
    case("conll_missing.txt", conll, FileNotFoundError, r"'.*conll_missing\.txt' does not exist", r"Check the path"),
    # ---- csv / tsv / json files ----------------------------------------------------------------------------------
    case("empty.tsv", text, ValueError, r"empty\.tsv is empty:", r"header row naming the columns"),
    case("empty.csv", text, ValueError, r"empty\.csv is empty:", r"`sentence,label`"),
    case("empty.json", text, ValueError, r"empty\.json is empty:", r"one JSON object per line"),
    case("whitespace_only.tsv", text, ValueError, r"is empty \(it holds only whitespace\)", r"header row"),
    case("header_only.csv", text, ValueError, r"a header row \('sentence,label'\) but no data rows", r"completely"),
    case("header_only.tsv", text, ValueError, r"has a header row .* but no data rows", r"split you meant"),
    case(
        "missing_label_column.tsv", text, ValueError, r"no label column 'label'; found columns \['sentence'\]",
        r"--label_column_name .*`label_column=None`",
    ),
    case(
        "missing_text_column.csv", text, ValueError, r"no text column 'sentence'; found columns \['text', 'label'\]",
        r"--text_column_name",
    ),
    case(
        "comma_separated.tsv", text, ValueError, r"found columns \['sentence,label'\]",
        r"looks comma-separated.*rename the file to \.csv, or pass `delimiter=','`",
    ),
    case(
        "no_header.tsv", text, ValueError, r"no text column 'sentence'; found columns \['1', 'good film'\]",
        r"looks like data, not a header",
    ),
    case(
        "label_not_integer.csv", text, ValueError, r"label column 'label' holds 'neg' in row 1 .*not an integer",
        r"pass `label_names=\[\.\.\.\]`",
    ),
    case(
        "label_name_unknown.csv", text, ValueError, r"has the label 'neutral', which is not one of `label_names`",
        r"Add it to `label_names`", label_names=["negative", "positive"],
    ),
    case("label_quoted_number.jsonl", text, ValueError, r"holds '1' in row 0", r"a quoted number: write 1"),
    case("label_fraction.csv", text, ValueError, r"holds 0\.5 in row 1 .*not an integer class id", r"write the ids"),
    case("label_missing_in_row.jsonl", text, ValueError, r"row 1 .* no value in the label column", r"drop the row"),
    case("text_missing_in_row.jsonl", text, ValueError, r"row 1 .* no text in the text column", r"Fill in the text"),
    case("invalid.json", text, ValueError, r"invalid JSON at line 3, column \d+: Expecting ','", r"JSON Lines"),
    case("invalid_line.jsonl", text, ValueError, r"invalid JSON at line 2, column \d+", r"Dataset\.to_json"),
    case("empty_list.json", text, ValueError, r"it is an empty list, with no rows", r"one object per line"),
    case("ragged_row.csv", text, ValueError, r"not be parsed as csv: .*Expected 2 fields in line 3", r"quote a text"),
    case("not_utf8.csv", text, ValueError, r"is not UTF-8 text: line 2 has the byte 0xe9", r"Re-save the file"),
    case("unsupported.xlsx", text, ValueError, r"unsupported extension '\.xlsx'", r"Export a spreadsheet as csv"),
    case("text_directory", text, ValueError, r"is a directory, not a file", r"text_directory/train\.tsv"),
    case("missing.tsv", text, FileNotFoundError, r"'.*missing\.tsv' does not exist", r"relative paths start from"),
    case(
        "labels_out_of_range.tsv", load_then_check_two_labels, ValueError,
        r"label 2 in row 1 .*outside the 2 classes", r"`config\.label2id`",
    ),
    case(
        "labels_negative.tsv", load_then_check_two_labels, ValueError,
        r"label -1 in row 1 .*-100 marks positions to skip", r"`num_labels` covering",
    ),
]


@pytest.mark.parametrize(("name", "reader", "kwargs", "error", "problem", "hint"), FILE_CASES)
def test_bad_file(name, reader, kwargs, error, problem, hint):
    path = BAD_INPUTS / name
    assert path.exists() or error is FileNotFoundError, f"add the case's file {path}"
    with pytest.raises(error, match=problem) as excinfo:
        reader(path, **kwargs)
    excinfo.match(hint)


def test_every_bad_input_file_has_a_case():
    used = {name.split("/")[0] for name, *_ in (param.values for param in FILE_CASES)}
    assert sorted(entry.name for entry in BAD_INPUTS.iterdir() if entry.name not in used) == []


# ---- inputs that are objects ---------------------------------------------------------------------------------------


def slow_tokenizer(ctx):
    slow = BertTokenizerLegacy(vocab_file=ctx.vocab_file)
    tokenize_and_align_labels({"tokens": [["john"]], "ner_tags": [[1]]}, slow)


def string_tag_dataset(ctx):
    data = Dataset.from_dict({"tokens": [["John", "lives"]], "ner_tags": [["B-PER", "O"]]})
    data.map(tokenize_and_align_labels, batched=True, fn_kwargs={"tokenizer": ctx.tokenizer})


def fewer_tags_than_words(ctx):
    tokenize_and_align_labels({"tokens": [["john", "lives", "in", "paris"]], "ner_tags": [[1, 0, 0]]}, ctx.tokenizer)


def more_tags_than_words(ctx):
    tokenize_and_align_labels({"tokens": [["john", "went", "to", "paris"]], "ner_tags": [[0, 1, 0, 0, 2]]},
                              ctx.tokenizer)


def unsplit_sentences(ctx):
    tokenize_and_align_labels({"tokens": ["john lives in paris"], "ner_tags": [[1, 0, 0, 5]]}, ctx.tokenizer)


def zero_max_length(ctx):
    tokenize_and_align_labels({"tokens": [["john"]]}, ctx.tokenizer, max_length=0)


def max_length_within_the_special_tokens(ctx):
    # Below [CLS] + [SEP] the tokenizer does not truncate at all (and says nothing): ids longer than max_length.
    tokenize_and_align_labels({"tokens": [["john", "lives", "in", "paris"]]}, ctx.tokenizer, max_length=1)


def max_length_of_the_special_tokens_alone(ctx):
    # [CLS] [SEP] and nothing between: every word truncated away, every label -100.
    tokenize_and_align_labels({"tokens": [["john", "lives", "in", "paris"]]}, ctx.tokenizer, max_length=2)


def base_model_teacher(ctx):
    infer_task(BertModel(tiny_config(len(ctx.tokenizer), 2)), "teacher")


def other_models_tokenizer(ctx):
    check_tokenizer(ctx.tokenizer, BertForSequenceClassification(tiny_config(vocab_size=10, num_labels=2)))


def tokenizer_without_vocabulary(ctx):
    # What `AutoTokenizer.from_pretrained` builds from a directory that holds a model but no tokenizer files.
    teacher = BertForSequenceClassification(tiny_config(len(ctx.tokenizer), 2))
    with tempfile.TemporaryDirectory() as folder:
        teacher.save_pretrained(folder)
        special_only = AutoTokenizer.from_pretrained(folder)
    check_tokenizer(special_only, teacher)


def tokenizer_loaded_from_a_model_only_folder(ctx):
    with tempfile.TemporaryDirectory() as folder:
        BertForSequenceClassification(tiny_config(len(ctx.tokenizer), 2)).save_pretrained(folder)
        load_tokenizer(folder)


def base_checkpoint_as_teacher(ctx):
    # A base model (no task head) named as the teacher: its classifier would be random.
    with tempfile.TemporaryDirectory() as folder:
        BertModel(tiny_config(len(ctx.tokenizer), 2)).save_pretrained(folder)
        load_model(folder, "token_classification", role="teacher", require_all_weights=True)


def dataset_dict_as_split(ctx):
    split = Dataset.from_dict({"input_ids": [[2, 7, 3]], "labels": [1]})
    check_train_dataset(DatasetDict({"train": split, "validation": split}), needs_labels=True)


def empty_after_filtering(ctx):
    data = Dataset.from_dict({"input_ids": [[2, 7, 3], [2, 8, 9, 3]], "labels": [1, 0]})
    check_train_dataset(data.filter(lambda row: len(row["input_ids"]) > 16), needs_labels=True)


def token_label_out_of_range(ctx):
    data = Dataset.from_dict({"labels": [[-100, 1, 0, -100], [-100, 6, 9, -100]]})
    check_label_range(data, num_labels=len(NER_LABELS))


def label_names_instead_of_ids(ctx):
    check_label_range(Dataset.from_dict({"labels": ["positive", "negative"]}), num_labels=2)


def float_labels(ctx):
    check_label_range(Dataset.from_dict({"labels": [1.0, 0.0, 0.5]}), num_labels=2)


def boolean_labels(ctx):
    check_label_range(Dataset.from_dict({"labels": [True, False, True]}), num_labels=2)


def class_lists_for_a_sequence_classifier(ctx):  # go_emotions' shape: several classes per text
    check_label_range(Dataset.from_dict({"labels": [[0, 2], [1], [2]]}), num_labels=3, per_token=False)


def missing_labels(ctx):
    check_label_range(Dataset.from_dict({"labels": [[-100, 1, -100], [-100, None, 0]]}), num_labels=2)


def regression_student(ctx):
    check_teacher_student(BertForSequenceClassification(tiny_config(len(ctx.tokenizer), 1)),
                          BertForSequenceClassification(tiny_config(len(ctx.tokenizer), 1)))


def multi_label_teacher(ctx):
    multi = tiny_config(len(ctx.tokenizer), 3, problem_type="multi_label_classification")
    check_teacher_student(BertForSequenceClassification(multi),
                          BertForSequenceClassification(tiny_config(len(ctx.tokenizer), 3)))


OBJECT_CASES = [
    (slow_tokenizer, ValueError, r"BertTokenizerLegacy is not a fast tokenizer", r"AutoTokenizer\.from_pretrained"),
    (string_tag_dataset, ValueError, r"'ner_tags' holds tag strings \(e\.g\. 'B-PER'\)", r"`read_conll`.*label2id"),
    (fewer_tags_than_words, ValueError, r"Example 0 of the batch has 4 words but 3 tags", r"exactly one tag"),
    (more_tags_than_words, ValueError, r"Example 0 of the batch has 4 words but 5 tags", r"exactly one tag"),
    (unsplit_sentences, ValueError, r"'tokens' holds whole strings", r"Split the text into words"),
    (zero_max_length, ValueError, r"`max_length` must be at least 3 sub-words .*got 0", r"or None"),
    (max_length_within_the_special_tokens, ValueError, r"`max_length` must be at least 3 sub-words \(the "
     r"tokenizer's 2 special tokens and one more\), got 1", r"or None"),
    (max_length_of_the_special_tokens_alone, ValueError, r"`max_length` must be at least 3 sub-words .*got 2",
     r"or None"),
    (base_model_teacher, ValueError, r"teacher is a BertModel, which has no .* head", r"AutoModelForSequenceClass"),
    (other_models_tokenizer, ValueError, r"has \d+ tokens but the teacher's vocab_size is 10", r"processing_class="),
    (tokenizer_without_vocabulary, ValueError, r"has no vocabulary, only its \d+ special tokens",
     r"tokenizer\.save_pretrained\(<teacher dir>\)"),
    (tokenizer_loaded_from_a_model_only_folder, ValueError, r"holds no tokenizer files", r"--tokenizer_name_or_path"),
    (base_checkpoint_as_teacher, ValueError,
     r"is not a fine-tuned token classification model: its checkpoint has no classifier\.bias, classifier\.weight",
     r"recipes/finetune_teacher\.py"),
    (dataset_dict_as_split, ValueError, r"DatasetDict with splits \['train', 'validation'\]", r"`dataset\['train'\]`"),
    (empty_after_filtering, ValueError, r"training dataset is empty \(after filtering\?\)", r"`filter`/`select`"),
    (token_label_out_of_range, ValueError, r"label 9 in row 1 .*7 classes.*1 of 4 labels", r"`config\.label2id`"),
    (label_names_instead_of_ids, ValueError, r"'labels' holds strings \(e\.g\. 'positive'\)", r"label_names=\.\.\."),
    (missing_labels, ValueError, r"'labels' has 1 missing \(None\) label, the first in row 1", r"with -100.*mix_unlabeled"),
    (float_labels, ValueError, r"'labels' holds floats \(e\.g\. 1\.0\).*regression", r"cast_column\('labels'"),
    (boolean_labels, ValueError, r"'labels' holds booleans \(e\.g\. True\)", r"cast_column\('labels', datasets\.Value"
     r"\('int64'\)\).*label2id"),
    (class_lists_for_a_sequence_classifier, ValueError, r"'labels' holds a list per row \(e\.g\. \[0, 2\]\).*one class "
     r"id per row", r"multi-label.*not supported"),
    (regression_student, ValueError, r"teacher is configured for regression \(num_labels=1\)", r"`num_labels` >= 2"),
    (multi_label_teacher, ValueError, r"teacher is configured for multi-label classification", r"problem_type"),
]


@pytest.fixture(scope="module")
def ctx(tokenizer, vocab_file):
    return SimpleNamespace(tokenizer=tokenizer, vocab_file=vocab_file)


@pytest.mark.parametrize(
    ("make_bad_input", "error", "problem", "hint"), OBJECT_CASES, ids=[row[0].__name__ for row in OBJECT_CASES]
)
def test_bad_object(ctx, make_bad_input, error, problem, hint):
    with pytest.raises(error, match=problem) as excinfo:
        make_bad_input(ctx)
    excinfo.match(hint)


def test_a_base_checkpoint_still_loads_as_a_student_or_a_model_to_fine_tune(ctx, tmp_path):
    BertModel(tiny_config(len(ctx.tokenizer), 2)).save_pretrained(tmp_path)
    model = load_model(str(tmp_path), "token_classification", role="student", num_labels=3)
    assert model.classifier.out_features == 3


def test_trainer_refuses_a_base_checkpoint_named_as_the_teacher(ctx, tmp_path):
    from hf_distill import DistillationArguments, DistillationTrainer

    BertModel(tiny_config(len(ctx.tokenizer), 2)).save_pretrained(tmp_path / "base")
    student = BertForSequenceClassification(tiny_config(len(ctx.tokenizer), 2))
    args = DistillationArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="teach noise"):
        DistillationTrainer(model=student, teacher_model=str(tmp_path / "base"), args=args)


# ---- long sentences: truncated with a warning, never a crash --------------------------------------------------------


def test_long_sentence_is_truncated_to_model_max_length_with_a_warning(vocab_file):
    tokenizer = BertTokenizerFast(vocab=vocab_file, do_lower_case=True, model_max_length=16)
    words = list(WORDS[:30])  # every word is in the vocab: one sub-word each, 32 with [CLS] and [SEP]
    batch = {"tokens": [words, words[:3]], "ner_tags": [[0] * 30, [1, 0, 0]]}

    expected = r"1 of 2 sentences .* longer than the tokenizer's model_max_length=16"
    batch = {"tokens": [words[:3], words], "ner_tags": [[1, 0, 0], [0] * 30]}  # the long one second in the batch
    with pytest.warns(UserWarning, match=expected) as record:
        encoding = tokenize_and_align_labels(batch, tokenizer)

    # The sentence is named by its words (a position in the map() batch would not find it in the dataset).
    assert re.search(r"the sentence 'the a of and to in \.\.\.' keeps 14 of its 30 words.*Split long sentences",
                     str(record[0].message))
    assert [len(ids) for ids in encoding["input_ids"]] == [5, 16]
    batch = {"tokens": [words, words[:3]], "ner_tags": [[0] * 30, [1, 0, 0]]}
    with pytest.warns(UserWarning, match=expected):
        encoding = tokenize_and_align_labels(batch, tokenizer)
    assert [len(ids) for ids in encoding["input_ids"]] == [16, 5]
    assert encoding["labels"][0] == [-100] + [0] * 14 + [-100]


def test_sentence_within_the_limit_does_not_warn(vocab_file):
    tokenizer = BertTokenizerFast(vocab=vocab_file, model_max_length=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoding = tokenize_and_align_labels({"tokens": [list(WORDS[:14])], "ner_tags": [[0] * 14]}, tokenizer)
    assert len(encoding["input_ids"][0]) == 16


# ---- the fixes the messages suggest ---------------------------------------------------------------------------------


def test_iob1_to_iob2_opens_every_entity_with_b():
    assert iob1_to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == [
        "B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG",
    ]
    assert iob1_to_iob2(["B-PER", "I-PER", "O"]) == ["B-PER", "I-PER", "O"]


def test_read_conll_converts_iob1_when_asked():
    dataset = read_conll(BAD_INPUTS / "conll_iob1_type_change.txt", NER_LABELS, tag_scheme="iob1")
    names = dataset.features["ner_tags"].feature.names
    assert [[names[i] for i in tags] for tags in dataset["ner_tags"]] == [["B-ORG", "B-LOC", "O"]]


def test_label_names_map_label_strings_to_ids(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("sentence,label\ngood film,positive\nbad film,negative\n")
    dataset = load_text_classification_file(path, label_names=["negative", "positive"])
    assert dataset["label"] == [1, 0]
    check_label_range(dataset, num_labels=2, label_column="label")
    # A teacher named NEGATIVE/POSITIVE (distilbert-sst2) reads the same file: names match without case, as a Hub
    # dataset's label names do, and keep the teacher's spelling.
    upper = load_text_classification_file(path, label_names=["NEGATIVE", "POSITIVE"])
    assert upper["label"] == [1, 0] and upper.features["label"].names == ["NEGATIVE", "POSITIVE"]
    path.write_text("sentence,label\ngood film,Pos\nbad film,pos\n")  # two names that differ only in case: exact only
    assert load_text_classification_file(path, label_names=["pos", "Pos"])["label"] == [1, 0]
    with pytest.raises(ValueError, match=r"has the label 'POS', which is not one of `label_names`"):
        path.write_text("sentence,label\ngood film,POS\n")
        load_text_classification_file(path, label_names=["pos", "Pos"])


def test_label_names_that_are_placeholders_say_to_write_ids_or_name_the_classes(tmp_path):
    # A teacher saved without label names has id2label LABEL_0, LABEL_1: the recipes pass those as `label_names`.
    path = tmp_path / "train.csv"
    path.write_text("sentence,label\ngood film,positive\n")
    with pytest.raises(ValueError, match=r"'positive', which is not one of `label_names` \['LABEL_0', 'LABEL_1'\]"
                                         r".*placeholders.*write the labels as ids.*id2label") as raised:
        load_text_classification_file(path, label_names=["LABEL_0", "LABEL_1"])
    assert "Add it to" not in str(raised.value)


@pytest.mark.parametrize("bad, shown", [("", "''"), ("positive", "'positive'"), ("1.5", "1.5")])
@pytest.mark.parametrize("label_column", ["label", None])
def test_a_bad_label_past_the_first_chunk_is_named_by_its_row(tmp_path, bad, shown, label_column):
    # The csv reader infers a column's type from its first 10,000 rows; a bad label after them failed the cast with
    # a message about the number of fields, and no row.
    rows = [f"{i % 2}\tfilm {i}" for i in range(12_000)]
    rows[11_000] = f"{bad}\tfilm 11000"
    path = tmp_path / "train.tsv"
    path.write_text("label\tsentence\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=rf"'label' holds {re.escape(shown)} in row 11000 \(`dataset\[11000\]`\)"):
        load_text_classification_file(path, label_column=label_column)


@pytest.mark.parametrize("name, text", [("train.csv", "sentence,label\ngood, really good,1\nbad, really bad,0\n"),
                                        ("train.tsv", "label\tsentence\n1\tgood\tfilm\n0\tdull and slow\n")])
def test_a_first_row_with_one_field_too_many_is_refused_by_its_row(tmp_path, name, text):
    # pandas takes a first data row with one field more than the header as having an index column: the texts were
    # silently cut (csv), or a later, correct row was blamed (tsv).
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=r"row 0 \(line 2\) has 3 fields, but the header has 2"):
        load_text_classification_file(path)


def test_label_range_ignores_minus_100_and_filtered_rows():
    data = Dataset.from_dict({"labels": [[-100, 6, 0, -100], [-100, 9]]}).select([0])
    check_label_range(data, num_labels=len(NER_LABELS))
    check_train_dataset(data, needs_labels=True)


@pytest.mark.parametrize("family, limit", [("albert", 16), ("mpnet", 14), ("deberta-v2", 16), ("deberta-v2-relative",
                                                                                                  None)])
def test_rows_past_the_positions_are_refused_for_every_family_with_learned_positions(family, limit):
    # ALBERT, MPNet (positions from pad_token_id + 1) and DeBERTa with position_biased_input passed init and failed in
    # the first long batch: the check must know their limit, which a forward at that length reaches and one past fails.
    import torch
    from transformers import AutoConfig, AutoModel

    from hf_distill.checks import check_inputs_fit

    extra = {"deberta-v2": {"position_biased_input": True}, "deberta-v2-relative": {"position_biased_input": False,
                                                                                     "relative_attention": True}}
    config = AutoConfig.for_model(family.removesuffix("-relative"), vocab_size=50, hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=37, max_position_embeddings=16,
                                  pad_token_id=1, **extra.get(family, {}))
    model = AutoModel.from_config(config).eval()
    longest = limit or 20
    with torch.no_grad():
        model(input_ids=torch.full((1, longest), 5))  # the longest row the check lets through runs
    check_inputs_fit(Dataset.from_dict({"input_ids": [[5] * longest]}), [("student", model)])
    if limit is not None:
        with pytest.raises(ValueError, match=rf"Row 0 of the data has {limit + 1} tokens, but the student has "
                                             rf"positions for {limit}"):
            check_inputs_fit(Dataset.from_dict({"input_ids": [[5] * (limit + 1)]}), [("student", model)])
