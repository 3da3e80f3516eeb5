"""Tests for hf_distill.data: CoNLL reading, label alignment to sub-words, text classification files."""

import logging
import warnings
from pathlib import Path

import datasets
import pytest
from conftest import NER_LABELS
from transformers import BertTokenizerFast, BertTokenizerLegacy, DataCollatorForTokenClassification

from hf_distill.data import conll_label_names, load_text_classification_file, read_conll, tokenize_and_align_labels

CONLL_4_COLUMNS = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER


BRUSSELS NNP B-NP B-LOC
"""

CONLL_2_COLUMNS = "John B-PER\nlives O\nin O\nLondon B-LOC\n\nMary B-PER\n"

LABEL_IDS = {name: index for index, name in enumerate(NER_LABELS)}


def write(tmp_path: Path, text: str, name: str = "data.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def wordpiece_tokenizer(vocab_file):
    """A fast tokenizer that really uses conftest's vocab (loaded from its folder, so the word pieces apply)."""
    tokenizer = BertTokenizerFast.from_pretrained(str(Path(vocab_file).parent))
    assert tokenizer.tokenize("Londons") == ["london", "##s"]
    return tokenizer


def test_conll_label_names_lists_o_then_both_tags_of_each_sorted_type():
    assert conll_label_names(["B-PER", "O", "I-LOC", "B-PER"]) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def test_conll_label_names_rejects_non_iob2_tag():
    with pytest.raises(ValueError, match=r"'E-PER' is not an IOB2 tag"):
        conll_label_names(["O", "E-PER"])


def test_read_conll_four_columns_skips_docstart_and_derives_labels(tmp_path):
    dataset = read_conll(write(tmp_path, CONLL_4_COLUMNS))

    names = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert dataset.features["ner_tags"].feature.names == names
    assert dataset.features["id"] == datasets.Value("string")
    assert dataset["id"] == ["0", "1", "2"]
    assert dataset["tokens"] == [["EU", "rejects", "German"], ["Peter", "Blackburn"], ["BRUSSELS"]]
    assert dataset["ner_tags"] == [[5, 0, 3], [7, 8], [1]]


def test_read_conll_two_columns_with_given_label_names(tmp_path):
    dataset = read_conll(write(tmp_path, CONLL_2_COLUMNS), label_names=NER_LABELS)

    assert dataset.features["ner_tags"].feature.names == NER_LABELS
    assert dataset["tokens"] == [["John", "lives", "in", "London"], ["Mary"]]
    assert dataset["ner_tags"] == [[1, 0, 0, 5], [1]]


def test_read_conll_real_train_file_if_present():
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003" / "train.txt"
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    dataset = read_conll(path)
    assert len(dataset) == 14041
    assert dataset.features["ner_tags"].feature.names == [
        "O",
        "B-LOC",
        "I-LOC",
        "B-MISC",
        "I-MISC",
        "B-ORG",
        "I-ORG",
        "B-PER",
        "I-PER",
    ]


def test_read_conll_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_conll(tmp_path / "missing.txt")


@pytest.mark.parametrize("text", ["", "\n\n"])
def test_read_conll_empty_file(tmp_path, text):
    with pytest.raises(ValueError, match="is empty"):
        read_conll(write(tmp_path, text))


def test_read_conll_docstart_only_has_no_sentences(tmp_path):
    with pytest.raises(ValueError, match="has no sentences"):
        read_conll(write(tmp_path, "-DOCSTART- -X- -X- O\n\n"))


def test_read_conll_ragged_columns_names_the_line(tmp_path):
    path = write(tmp_path, "EU NNP B-NP B-ORG\nrejects VBZ O\n")
    with pytest.raises(ValueError, match=r"data\.txt, line 2: ragged columns, found 3 columns .* has 4"):
        read_conll(path)


def test_read_conll_single_column_names_the_line(tmp_path):
    path = write(tmp_path, "John B-PER\n\nlives\n")
    with pytest.raises(ValueError, match=r"line 3: found a single column \('lives'\)"):
        read_conll(path)


def test_read_conll_unknown_tag_lists_known_labels(tmp_path):
    path = write(tmp_path, "John B-PER\nAcme B-COMPANY\n")
    with pytest.raises(ValueError, match=r"line 2: tag 'B-COMPANY' is not one of the known labels \['O', 'B-PER'"):
        read_conll(path, label_names=NER_LABELS)


def test_read_conll_non_iob2_tag_names_the_line(tmp_path):
    path = write(tmp_path, "John B-PER\n\nParis S-LOC\n")
    with pytest.raises(ValueError, match=r"line 3: tag 'S-LOC' is not an IOB2 tag"):
        read_conll(path)


def test_an_unknown_iob1_tag_is_named_as_written_in_the_file(tmp_path):
    # With tag_scheme="iob1" the error named the converted tag ('B-MISC'), which a search of the file cannot find.
    path = write(tmp_path, "Paris I-LOC\nberlin I-MISC\n")
    with pytest.raises(ValueError, match=r"line 2: tag 'I-MISC' \(B-MISC once converted from IOB1\) is not one of"):
        read_conll(path, label_names=NER_LABELS, tag_scheme="iob1")


def test_read_conll_rejects_duplicate_label_names(tmp_path):
    with pytest.raises(ValueError, match=r"lists \['O'\] more than once"):
        read_conll(write(tmp_path, CONLL_2_COLUMNS), label_names=["O", *NER_LABELS])


def test_align_labels_first_subword_gets_the_label(wordpiece_tokenizer):
    words = ["John", "lives", "in", "Londons", "."]
    tags = [LABEL_IDS[t] for t in ["B-PER", "O", "O", "B-LOC", "O"]]

    encoding = tokenize_and_align_labels({"tokens": [words], "ner_tags": [tags]}, wordpiece_tokenizer)

    assert wordpiece_tokenizer.convert_ids_to_tokens(encoding["input_ids"][0]) == [
        "[CLS]",
        "john",
        "lives",
        "in",
        "london",
        "##s",
        ".",
        "[SEP]",
    ]
    assert encoding["labels"] == [[-100, 1, 0, 0, 5, -100, 0, -100]]


def test_align_labels_truncates_to_max_length(wordpiece_tokenizer):
    words = ["Mary", "visited", "Paris", "and", "Berlin"]
    tags = [LABEL_IDS[t] for t in ["B-PER", "O", "B-LOC", "O", "B-LOC"]]

    encoding = tokenize_and_align_labels({"tokens": [words], "ner_tags": [tags]}, wordpiece_tokenizer, max_length=5)

    assert len(encoding["input_ids"][0]) == 5
    assert encoding["labels"] == [[-100, 1, 0, 5, -100]]


def test_a_word_with_no_sub_word_keeps_its_tag_as_the_unknown_token(wordpiece_tokenizer, caplog):
    # The normaliser strips a zero-width space or a soft hyphen to nothing: without a stand-in, the word would have
    # no position, and its entity would vanish from training and from the references.
    words = ["John", "\u200b", "lives", "\u00ad"]
    tags = [LABEL_IDS[t] for t in ["O", "B-PER", "O", "B-LOC"]]
    with caplog.at_level("WARNING", logger="hf_distill.data"):
        encoding = tokenize_and_align_labels({"tokens": [words], "ner_tags": [tags]}, wordpiece_tokenizer)
    assert wordpiece_tokenizer.convert_ids_to_tokens(encoding["input_ids"][0]) == [
        "[CLS]", "john", "[UNK]", "lives", "[UNK]", "[SEP]"]
    assert encoding["labels"] == [[-100, 0, 1, 0, 5, -100]]
    assert "2 word(s) in this batch tokenize to no sub-word" in caplog.text
    # A sentence that fills max_length exactly was not cut: its last, vanished word is still found (and, once it is
    # [UNK], it no longer fits: it is truncated like any word past the limit, with the warning that says so).
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_distill.data"):
        encoding = tokenize_and_align_labels({"tokens": [["john", "went", "\u200b"]], "ner_tags": [[0, 0, 1]]},
                                             wordpiece_tokenizer, max_length=4)
    assert encoding["labels"] == [[-100, 0, 0, -100]]
    assert "1 word(s) in this batch tokenize to no sub-word" in caplog.text and "truncated" in caplog.text


def test_align_labels_without_tags_returns_encoding_only(wordpiece_tokenizer):
    encoding = tokenize_and_align_labels({"tokens": [["John", "went"]]}, wordpiece_tokenizer)
    assert "labels" not in encoding
    assert len(encoding["input_ids"][0]) == 4


def test_align_labels_with_dataset_map_and_collator(tmp_path, wordpiece_tokenizer):
    dataset = read_conll(write(tmp_path, CONLL_2_COLUMNS), label_names=NER_LABELS)
    tokenized = dataset.map(
        tokenize_and_align_labels,
        batched=True,
        fn_kwargs={"tokenizer": wordpiece_tokenizer},
        remove_columns=dataset.column_names,
    )
    batch = DataCollatorForTokenClassification(wordpiece_tokenizer)([tokenized[0], tokenized[1]])

    assert batch["labels"].tolist() == [[-100, 1, 0, 0, 5, -100], [-100, 1, -100, -100, -100, -100]]
    assert batch["attention_mask"].tolist()[1] == [1, 1, 1, 0, 0, 0]


def test_align_labels_requires_fast_tokenizer(vocab_file):
    slow = BertTokenizerLegacy(vocab_file=vocab_file)
    assert not slow.is_fast
    with pytest.raises(ValueError, match=r"not a fast tokenizer.*use_fast=True"):
        tokenize_and_align_labels({"tokens": [["john"]], "ner_tags": [[1]]}, slow)


def test_align_labels_rejects_tag_strings(wordpiece_tokenizer):
    with pytest.raises(ValueError, match="holds tag strings"):
        tokenize_and_align_labels({"tokens": [["john"]], "ner_tags": [["B-PER"]]}, wordpiece_tokenizer)


def test_align_labels_missing_tokens_column_lists_columns(wordpiece_tokenizer):
    with pytest.raises(ValueError, match=r"Column 'tokens' is missing; found columns \['words'\]"):
        tokenize_and_align_labels({"words": [["john"]]}, wordpiece_tokenizer)


def test_align_labels_given_a_whole_dataset_says_to_map_it(wordpiece_tokenizer):
    # It failed inside its own error message (sorting the dataset's rows, which are dicts).
    from datasets import Dataset

    rows = Dataset.from_dict({"tokens": [["john"]], "ner_tags": [[1]]})
    with pytest.raises(ValueError, match=r"a whole Dataset; .* takes a batch of rows. Map it .*batched=True"):
        tokenize_and_align_labels(rows, wordpiece_tokenizer)


SST_TSV = 'label\tsentence\n1\ta "great" movie\n0\tNA\n'


def test_load_tsv_keeps_quotes_and_na_text(tmp_path):
    dataset = load_text_classification_file(write(tmp_path, SST_TSV, "train.tsv"))
    assert dataset.column_names == ["label", "sentence"]
    assert dataset["sentence"] == ['a "great" movie', "NA"]
    assert dataset["label"] == [1, 0]


def test_load_tsv_reads_quotes_at_either_end_of_a_text_as_characters(tmp_path):
    # Quote processing would merge the rows between an opening and a closing quote into one text, silently.
    rows = "label\tsentence\n1\t\"great\" , he said\n0\t\" bad\n1\tgood film\n0\tdull \"\n1\tfine\n"
    dataset = load_text_classification_file(write(tmp_path, rows, "train.tsv"))
    assert dataset["sentence"] == ['"great" , he said', '" bad', "good film", 'dull "', "fine"]
    assert dataset["label"] == [1, 0, 1, 0, 1]


def test_a_docstart_line_ends_the_sentence_before_it(tmp_path):
    text = "-DOCSTART- -X- O O\n\nJohn B-PER\nleft O\n-DOCSTART- -X- O O\nParis B-LOC\nwins O\n"
    assert read_conll(write(tmp_path, text))["tokens"] == [["John", "left"], ["Paris", "wins"]]


@pytest.mark.parametrize("text, names, tags", [
    ("John PER\nSmith PER\nwent O\nto O\nParis LOC\n\nAnn PER\nleft O\n", ["O", "PER", "LOC"],
     [[1, 1, 0, 0, 2], [1, 0]]),  # IO tagging, as the IOB2 error advises: name every tag
    ("John B-PER\nSmith E-PER\nin O\nParis S-LOC\n", ["O", "S-PER", "B-PER", "I-PER", "E-PER", "S-LOC"],
     [[2, 4, 0, 5]]),  # IOBES
])
def test_tags_of_another_scheme_are_read_by_their_label_names(tmp_path, text, names, tags):
    assert read_conll(write(tmp_path, text), label_names=names)["ner_tags"] == tags


def test_load_csv_with_custom_columns_and_jsonl(tmp_path):
    csv_dataset = load_text_classification_file(
        write(tmp_path, "text,y\ngood film,1\nbad film,0\n", "train.csv"), text_column="text", label_column="y"
    )
    assert csv_dataset["text"] == ["good film", "bad film"]
    json_dataset = load_text_classification_file(
        write(tmp_path, '{"sentence": "good", "label": 1}\n{"sentence": "bad", "label": 0}\n', "train.jsonl")
    )
    assert json_dataset["label"] == [1, 0]


def test_texts_of_digits_stay_text_and_numbers_in_json_become_text(tmp_path):
    tsv = load_text_classification_file(write(tmp_path, "label\tsentence\n1\t007\n0\t42\n", "codes.tsv"))
    assert tsv["sentence"] == ["007", "42"]
    jsonl = load_text_classification_file(write(tmp_path, '{"sentence": 7, "label": 1}\n', "codes.jsonl"))
    assert jsonl["sentence"] == ["7"]
    mixed = write(tmp_path, '{"sentence": 7, "label": 1}\n{"sentence": "ok", "label": 0}\n', "mixed.jsonl")
    with pytest.raises(ValueError, match=r"holds .* values, not texts .*in quotes"):
        load_text_classification_file(mixed)


@pytest.mark.parametrize("name,content", [("blank.csv", "sentence,label\ngood film,1\n,0\n"),
                                          ("spaces.tsv", "label\tsentence\n1\tgood\n0\t   \n"),
                                          ("empty.jsonl", '{"sentence": "good", "label": 1}\n{"sentence": "", "label": 0}\n')])
def test_a_blank_text_is_refused_with_its_row(tmp_path, name, content):
    with pytest.raises(ValueError, match=r"row 1 .* no text in the text column 'sentence'.*Fill in the text"):
        load_text_classification_file(write(tmp_path, content, name))


def test_a_pairs_second_text_is_read_and_checked_as_the_first_is(tmp_path):
    pairs = write(tmp_path, "label\tsentence1\tsentence2\n1\tgood\t007\n0\tbad\t42\n", "pairs.tsv")
    data = load_text_classification_file(pairs, text_column="sentence1", text_pair_column="sentence2")
    assert data["sentence2"] == ["007", "42"]  # digits stay text
    missing = write(tmp_path, '{"sentence1": "good", "sentence2": "fine", "label": 1}\n'
                              '{"sentence1": "bad", "sentence2": null, "label": 0}\n', "pairs.jsonl")
    with pytest.raises(ValueError, match=r"row 1 .* no text in the text column 'sentence2'"):
        load_text_classification_file(missing, text_column="sentence1", text_pair_column="sentence2")
    with pytest.raises(ValueError, match=r"no text column 'hypothesis'.*--text_pair_column_name"):
        load_text_classification_file(pairs, text_column="sentence1", text_pair_column="hypothesis")


def test_load_unlabeled_file_with_label_column_none(tmp_path):
    dataset = load_text_classification_file(write(tmp_path, "sentence\ngood film\n", "test.tsv"), label_column=None)
    assert dataset["sentence"] == ["good film"]


def test_load_missing_label_column_suggests_flag(tmp_path):
    path = write(tmp_path, "sentence\ngood film\n", "test.tsv")
    with pytest.raises(
        ValueError, match=r"no label column 'label'; found columns \['sentence'\].*--label_column_name"
    ):
        load_text_classification_file(path)


def test_load_missing_text_column_lists_columns(tmp_path):
    path = write(tmp_path, SST_TSV, "train.tsv")
    with pytest.raises(ValueError, match=r"no text column 'text'; found columns \['label', 'sentence'\]"):
        load_text_classification_file(path, text_column="text")


def test_load_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_text_classification_file(tmp_path / "missing.tsv")
    with pytest.raises(ValueError, match=r"unsupported extension '\.parquet'"):
        load_text_classification_file(write(tmp_path, "x", "data.parquet"))


def test_read_conll_ignores_a_byte_order_mark(tmp_path):
    # Files saved by some Windows tools start with U+FEFF: it must not turn "-DOCSTART-" into a one-token sentence.
    path = tmp_path / "bom.txt"
    path.write_text(CONLL_4_COLUMNS, encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_conll(path)["tokens"] == read_conll(write(tmp_path, CONLL_4_COLUMNS))["tokens"]


def test_a_blank_label_is_named_by_its_row_when_label_names_are_given(tmp_path):
    # The recipes always pass the teacher's label names: one blank cell made the column text, and the first valid
    # id ('0') was blamed as an unknown name. Ids written as text in JSON were blamed the same way.
    path = write(tmp_path, "label\tsentence\n0\tan awful plot\n1\ta good movie\n\tanother one\n", "blank.tsv")
    with pytest.raises(ValueError, match=r"row 2 \(`dataset\[2\]`\) has an empty label.*-100"):
        load_text_classification_file(path, label_names=["negative", "positive"])
    quoted = write(tmp_path, '{"sentence": "good", "label": "1"}\n{"sentence": "bad", "label": "0"}\n', "ids.jsonl")
    with pytest.raises(ValueError, match=r"holds '1' in row 0.*a quoted number: write 1"):
        load_text_classification_file(quoted, label_names=["negative", "positive"])
    named = write(tmp_path, '{"sentence": "good", "label": "1"}\n{"sentence": "bad", "label": "0"}\n', "names.jsonl")
    assert load_text_classification_file(named, label_names=["0", "1"])["label"] == [1, 0]  # digits as names


def test_read_conll_keeps_a_token_that_is_or_holds_a_unicode_space(tmp_path):
    # str.split() cut at no-break and ideographic spaces: valid files were refused, blaming the wrong line.
    text = "Paris\u00a0Nord B-LOC\n\u00a0\tO\n\u3000 O\nLondon B-LOC\n"
    data = read_conll(write(tmp_path, text), label_names=NER_LABELS)
    assert data["tokens"] == [["Paris\u00a0Nord", "\u00a0", "\u3000", "London"]]
    with pytest.raises(ValueError, match="line 2"):  # a line of one column is still named
        read_conll(write(tmp_path, "Paris B-LOC\nLondon\n"), label_names=NER_LABELS)


def test_left_truncation_warns_of_the_opening_words_and_invents_no_vanished_words(wordpiece_tokenizer, caplog):
    # The checks assumed the tail was cut: with truncation_side="left" the cut opening words were "words with no
    # sub-word" (and became [UNK]), and the truncation warning never came.
    wordpiece_tokenizer.truncation_side = "left"
    try:
        words = ["Mary", "visited", "Paris", "and", "Berlin"]
        tags = [LABEL_IDS[t] for t in ["B-PER", "O", "B-LOC", "O", "B-LOC"]]
        with caplog.at_level("WARNING", logger="hf_distill.data"):
            encoding = tokenize_and_align_labels({"tokens": [words], "ner_tags": [tags]}, wordpiece_tokenizer,
                                                 max_length=5)
    finally:
        wordpiece_tokenizer.truncation_side = "right"
    assert wordpiece_tokenizer.convert_ids_to_tokens(encoding["input_ids"][0]) == [
        "[CLS]", "paris", "and", "berlin", "[SEP]"]
    assert encoding["labels"] == [[-100, 5, 0, 5, -100]]
    assert "no sub-word" not in caplog.text
    assert "keeps 3 of its 5 words): the words before the limit get no label" in caplog.text


def test_a_row_without_a_label_is_minus_100_in_a_file_of_label_names_too(tmp_path):
    # The blank-label error advises -100 for an unlabelled row: a file of class names (as the recipes read them, with
    # the teacher's names) must take it as a file of ids does, written as text or as a JSON number.
    names = ["negative", "positive"]
    tsv = write(tmp_path, "sentence\tlabel\na great movie\tPOSITIVE\nan awful plot\t-100\nbad\tnegative\n", "u.tsv")
    assert load_text_classification_file(tsv, label_names=names)["label"] == [1, -100, 0]
    jsonl = write(tmp_path, '{"sentence": "good", "label": "positive"}\n{"sentence": "meh", "label": -100}\n', "u.jsonl")
    assert load_text_classification_file(jsonl, label_names=names)["label"] == [1, -100]


def test_a_number_among_label_names_is_named_as_not_one_of_them(tmp_path):
    # A JSON number among names: the error named a valid name ('negative') and asked for the label_names given.
    path = write(tmp_path, '{"sentence": "a", "label": "negative"}\n{"sentence": "b", "label": 1}\n', "mixed.jsonl")
    with pytest.raises(ValueError, match=r"row 1 \(`dataset\[1\]`\) has the label 1, which is not one of `label_names`"):
        load_text_classification_file(path, label_names=["negative", "positive"])


def test_digit_label_names_map_the_same_whatever_the_format(tmp_path, caplog):
    # A teacher whose classes are named "1", "2", "3" (star ratings): "1" in a jsonl maps by name to id 0, and so must
    # 1 in a tsv (read as an integer), not stay id 1 silently. Values that can only be ids (a 0) stay ids.
    names = ["1", "2", "3"]
    tsv = write(tmp_path, "sentence\tlabel\ngood\t3\nbad\t1\n", "stars.tsv")
    jsonl = write(tmp_path, '{"sentence": "good", "label": "3"}\n{"sentence": "bad", "label": "1"}\n', "stars.jsonl")
    assert load_text_classification_file(tsv, label_names=names)["label"] == [2, 0]
    assert load_text_classification_file(jsonl, label_names=names)["label"] == [2, 0]
    floats = write(tmp_path, "sentence,label\ngood,3.0\nbad,1.0\n", "stars.csv")  # as pandas writes a float column
    assert load_text_classification_file(floats, label_names=names)["label"] == [2, 0]
    mixed = write(tmp_path, '{"sentence": "good", "label": 3}\n{"sentence": "bad", "label": "1"}\n', "mixed.jsonl")
    assert load_text_classification_file(mixed, label_names=names)["label"] == [2, 0]
    ids = write(tmp_path, "sentence\tlabel\ngood\t2\nbad\t0\n", "ids.tsv")
    assert load_text_classification_file(ids, label_names=names)["label"] == [2, 0]
    # Both readings possible (no 0, no 3): the names are taken, as in a jsonl, and the log says so.
    both = write(tmp_path, "sentence\tlabel\ngood\t2\nbad\t1\n", "both.tsv")
    with caplog.at_level("WARNING"):
        assert load_text_classification_file(both, label_names=names)["label"] == [1, 0]
    assert "read as the label names" in caplog.text and "ids 0..2" in caplog.text
    # -100 still marks an unlabelled row among digit names.
    unlabelled = write(tmp_path, "sentence,label\nbad,1\nunknown,-100\ngood,3\n", "unlabelled.csv")
    assert load_text_classification_file(unlabelled, label_names=names)["label"] == [0, -100, 2]


def test_left_truncation_through_a_word_labels_none_of_its_pieces(wordpiece_tokenizer, caplog):
    # "Londons" lost its first piece to the cut: "##s" is no word start, so it must not carry B-LOC, and the sentence
    # keeps 1 whole word, not 2.
    wordpiece_tokenizer.truncation_side = "left"
    try:
        words, tags = ["Mary", "visited", "Londons", "."], [LABEL_IDS[t] for t in ["B-PER", "O", "B-LOC", "O"]]
        with caplog.at_level("WARNING", logger="hf_distill.data"):
            encoding = tokenize_and_align_labels({"tokens": [words], "ner_tags": [tags]}, wordpiece_tokenizer,
                                                 max_length=4)
    finally:
        wordpiece_tokenizer.truncation_side = "right"
    assert wordpiece_tokenizer.convert_ids_to_tokens(encoding["input_ids"][0]) == ["[CLS]", "##s", ".", "[SEP]"]
    assert encoding["labels"] == [[-100, -100, 0, -100]]
    assert "keeps 1 of its 4 words" in caplog.text


@pytest.mark.parametrize("max_length", [None, 5])
def test_a_percent_sign_in_a_truncated_sentence_is_quoted_in_the_warning(vocab_file, caplog, max_length):
    # The sentence was put into a %-format string: "5 %" raised a TypeError (default limit) or broke the log record.
    tokenizer = BertTokenizerFast.from_pretrained(str(Path(vocab_file).parent), model_max_length=5)  # not warned yet
    transformers_messages = []
    handler = logging.Handler()
    handler.emit = lambda record: transformers_messages.append(record.getMessage())
    logging.getLogger("transformers").addHandler(handler)
    words, tags = ["Mary", "%", "Paris", "and", "Berlin"], [LABEL_IDS[t] for t in ["B-PER", "O", "B-LOC", "O", "B-LOC"]]
    try:
        with caplog.at_level("WARNING", logger="hf_distill.data"), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            encoding = tokenize_and_align_labels({"tokens": [words], "ner_tags": [tags]}, tokenizer,
                                                 max_length=max_length)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert encoding["labels"] == [[-100, 1, 0, 5, -100]]
    shown = caplog.text + " ".join(str(w.message) for w in caught)
    assert "'Mary % Paris and Berlin'" in shown and "keeps 3 of its 5 words" in shown and "5 sub-words" in shown
    # checking whether the sentence was cut does not set off Transformers' "indexing errors" warning
    assert not any("indexing errors" in m for m in transformers_messages)


def test_special_tokens_a_tokenizer_file_marks_but_does_not_name_are_never_words(tmp_path):
    # A `tokenizers` file whose post-processor adds <s> ... </s>, loaded with only pad and mask named: all_subwords
    # distilled <s> and </s>, and augmentation replaced them.
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from hf_distill.data import word_free_special_ids

    vocab = {token: i for i, token in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", "mary", "works"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    backend.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0),
                                                                                                  ("</s>", 2)])
    backend.save(str(tmp_path / "tokenizer.json"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"), pad_token="<pad>",
                                        mask_token="<mask>", unk_token="<unk>")
    assert 0 not in tokenizer.all_special_ids  # the case: <s> is special in the file, named by no attribute
    assert sorted(word_free_special_ids(tokenizer)) == [0, 1, 2]  # <s>, <pad>, </s>: not <unk>, not <mask>


def test_pre_split_words_need_add_prefix_space_on_a_byte_level_tokenizer(byte_level_tokenizer_dir, tokenizer,
                                                                        vocab_file):
    from transformers import AutoTokenizer

    from hf_distill.data import keeps_word_starts

    batch = {"tokens": [["john", "went", "to", "london"]], "ner_tags": [[1, 0, 0, 5]]}
    plain = AutoTokenizer.from_pretrained(byte_level_tokenizer_dir)  # add_prefix_space=False, RoBERTa's default
    assert not keeps_word_starts(plain)
    with pytest.raises(ValueError, match=r"add_prefix_space=True"):
        tokenize_and_align_labels(batch, plain, max_length=32)

    assert keeps_word_starts(BertTokenizerLegacy(vocab_file=vocab_file))  # slow: left to the fast check
    spaced = AutoTokenizer.from_pretrained(byte_level_tokenizer_dir, add_prefix_space=True)
    assert keeps_word_starts(spaced) and keeps_word_starts(tokenizer)
    encoding = tokenize_and_align_labels(batch, spaced, max_length=32)
    pieces = spaced.convert_ids_to_tokens(encoding["input_ids"][0])
    running = spaced("john went to london")
    after_first = [t for t, w in zip(running["input_ids"], running.word_ids(), strict=True) if w is not None and w > 0]
    assert encoding["input_ids"][0][-1 - len(after_first):-1] == after_first  # words 2-4 as in the running text
    labelled = [(p, label) for p, label in zip(pieces, encoding["labels"][0], strict=True) if label != -100]
    assert [label for _, label in labelled] == [1, 0, 0, 5] and labelled[1][0] == "Ġwent"


def _byte_level_backend_dir(folder, pre_tokenizer):
    """A BPE tokenizer trained with `pre_tokenizer` that ships only a tokenizer.json (as ModernBERT's), which AutoTokenizer loads as the generic
    TokenizersBackend: it ignores `add_prefix_space=True`."""
    import json

    from tokenizers import Tokenizer, decoders, models, trainers
    from tokenizers import pre_tokenizers as pt

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["john went to london", "mary lives in paris"] * 5, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["[CLS]", "[SEP]", "[PAD]", "[UNK]"], initial_alphabet=pt.ByteLevel.alphabet()))
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
        "unk_token": "[UNK]", "model_max_length": 64}))
    return folder


def test_add_prefix_space_switches_a_tokenizer_that_ignores_the_argument(tmp_path):
    from tokenizers import pre_tokenizers as pt
    from transformers import AutoTokenizer

    from hf_distill import add_prefix_space
    from hf_distill.data import keeps_word_starts
    from hf_distill.loading import load_tokenizer

    batch = {"tokens": [["john", "went", "to", "london"]], "ner_tags": [[1, 0, 0, 5]]}
    for name, pre_tokenizer in (("plain", pt.ByteLevel(add_prefix_space=False)),
                                ("sequence", pt.Sequence([pt.Digits(), pt.ByteLevel(add_prefix_space=False)]))):
        folder = _byte_level_backend_dir(tmp_path / name, pre_tokenizer)
        ignored = AutoTokenizer.from_pretrained(folder, add_prefix_space=True)
        assert not keeps_word_starts(ignored)  # the argument changed nothing
        with pytest.raises(ValueError, match=r"hf_distill.add_prefix_space\(tokenizer\)"):
            tokenize_and_align_labels(batch, ignored, max_length=32)
        assert add_prefix_space(ignored) is ignored and keeps_word_starts(ignored)
        running = ignored("john went to london", add_special_tokens=False)["input_ids"]
        assert tokenize_and_align_labels(batch, ignored)["input_ids"][0] == running  # words as in the running text
        ignored.save_pretrained(tmp_path / f"{name}-saved")
        assert keeps_word_starts(AutoTokenizer.from_pretrained(tmp_path / f"{name}-saved"))
        assert keeps_word_starts(load_tokenizer(str(folder), pre_split_words=True))  # the recipes' loading


def test_add_prefix_space_refuses_a_tokenizer_without_a_byte_level_part(tmp_path):
    from tokenizers import pre_tokenizers as pt
    from transformers import AutoTokenizer

    from hf_distill import add_prefix_space

    folder = _byte_level_backend_dir(tmp_path / "metaspace", pt.Metaspace(prepend_scheme="never"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"no byte-level part.*Tokenize running text"):
        add_prefix_space(tokenizer)
