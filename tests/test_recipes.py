"""The NER recipe end to end on tiny local models and files, and Hub failures that suggest the local way."""

import json
import logging
import os
import re
import runpy
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import pytest
import torch
from conftest import NER_LABELS, free_port, tiny_token_model
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
CONLL = """-DOCSTART- -X- O O

john NNP B-NP B-PER
lives VBZ B-VP O
in IN B-PP O
paris NNP B-NP B-LOC
. . O O

mary NNP B-NP B-PER
works VBZ B-VP O
at IN B-PP O
acme NNP B-NP B-ORG
corp NNP I-NP I-ORG
. . O O

"""


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


@pytest.fixture
def run_recipe(monkeypatch, capsys, caplog):
    """Run a recipe script in this process as `python recipes/<script> <argv>` would, offline; returns what
    `subprocess.run` would (`returncode`, `stdout`, `stderr`, with the log and any traceback in `stderr`).

    A fresh interpreter per run cost seconds of imports each; the multi-process launch tests still use one.
    """
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    caplog.set_level(logging.INFO)

    def run(script, *argv):
        monkeypatch.setattr(sys, "argv", [script, *map(str, argv)])
        capsys.readouterr()
        caplog.clear()
        returncode, error = 0, ""
        try:
            runpy.run_path(str(ROOT / "recipes" / script), run_name="__main__")
        except SystemExit as exit_:
            returncode = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            error = "" if exit_.code is None or isinstance(exit_.code, int) else str(exit_.code)
        except Exception:  # the traceback a failed run prints
            returncode, error = 1, traceback.format_exc()
        out = capsys.readouterr()
        return subprocess.CompletedProcess([script, *argv], returncode, out.out, out.err + caplog.text + error)

    return run


def _ner_teacher_and_data(tokenizer, tmp_path):
    """A tiny NER teacher saved with its tokenizer, and a small CoNLL file: `(teacher_dir, data_file)`."""
    teacher = tiny_token_model(tokenizer, layers=2, seed=3)
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    data = tmp_path / "train.txt"
    data.write_text(CONLL * 4)
    return tmp_path / "teacher", data


def test_distill_ner_recipe_end_to_end(tokenizer, tmp_path, run_recipe):
    _, data = _ner_teacher_and_data(tokenizer, tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({
        "teacher_model_name_or_path": str(tmp_path / "teacher"), "student_layers": "0",
        "train_file": str(data), "validation_file": str(data), "test_file": str(data),
        "output_dir": str(tmp_path / "student"), "max_steps": 3, "per_device_train_batch_size": 4,
        "report_to": "none", "use_cpu": True, "save_strategy": "no", "disable_tqdm": True,
    }))
    result = run_recipe("distill_ner.py", config, "--alpha", "0.7", "--do_train", "--do_eval")  # the examples' habit
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "student"
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    # As the Transformers example scripts write them: training metrics and every score, per model and split.
    results = json.loads((out / "all_results.json").read_text())
    assert {"train_loss", "student_validation_f1", "student_test_f1", "teacher_validation_f1"} <= set(results)
    teacher_size = sum(p.numel() for p in tiny_token_model(tokenizer, layers=2).parameters())
    assert results["teacher_parameters"] == teacher_size > results["student_parameters"]
    assert json.loads((out / "eval_results.json").read_text())["student_test_f1"] == results["student_test_f1"]
    saved = json.loads((out / "config.json").read_text())
    assert saved["num_hidden_layers"] == 1 and list(saved["id2label"].values()) == NER_LABELS
    card = (out / "README.md").read_text()
    # The validation file has 8 sentences: the "batch 32" latency is measured, and named, on the 8.
    assert "| alpha | 0.7 |" in card and "| validation_f1 |" in card and "speedup_batch8" in card
    assert re.search(r"\| measured on \| CPU, \d+ torch threads, torch.float32; teacher and student timed in 4 "
                     r"alternating rounds of 5 forward calls in eval mode .* on the first `validation` examples, padded "
                     r"to \d+ tokens \(batch 1\) and \d+ tokens \(batch 8\) \|", card)
    assert "train.txt (local file)" in card and "datasets:" not in card  # a local file is no Hub dataset
    for split in ("train", "validation", "test"):  # what each split was, next to the scores it gave
        assert f"| {split} | `train.txt` (local file): 8 examples |" in card
    table = result.stdout + result.stderr
    assert "teacher" in table and "latency ms, batch 8" in table and "batch 32" not in table


@pytest.mark.parametrize("name", ["some-org/no-such-teacher-xyz"])
def test_unreachable_hub_id_offline_suggests_local_files(tmp_path, name):
    code = (
        "from hf_distill.loading import load_model\n"
        f"load_model({name!r}, 'token_classification')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()
    message = "\n".join(last[-6:])
    assert "ValueError: Could not load the teacher" in message
    assert "Offline mode is on (HF_HUB_OFFLINE=1)" in result.stderr and "local directory" in result.stderr


def _text_teacher_and_data(tokenizer, tmp_path, names=False):
    """A tiny sentiment teacher saved with its tokenizer in tmp_path/teacher, and tmp_path/train.tsv (labels as
    ids, or with `names` as the teacher's label names)."""
    from conftest import tiny_sequence_model

    teacher = tiny_sequence_model(tokenizer, layers=2, seed=3, id2label={0: "negative", 1: "positive"},
                                  label2id={"negative": 0, "positive": 1})
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    label = (lambda i: ["negative", "positive"][i % 2]) if names else (lambda i: i % 2)
    rows = ["label\tsentence"] + [f"{label(i)}\t{'a good movie' if i % 2 else 'an awful plot'} {i}" for i in range(24)]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")


def _text_recipe(run_recipe, tmp_path, *flags):
    """The text-classification recipe on the files of `_text_teacher_and_data`, for 3 steps; `flags` win."""
    data = str(tmp_path / "train.tsv")
    return run_recipe(
        "distill_text_classification.py",
        "--teacher_model_name_or_path", str(tmp_path / "teacher"), "--student_layers", "1",
        "--train_file", data, "--validation_file", data, "--output_dir", str(tmp_path / "student"),
        "--max_steps", "3", "--per_device_train_batch_size", "8", "--report_to", "none", "--use_cpu", "true",
        "--save_strategy", "no", "--disable_tqdm", "true", *flags,
    )


def test_distill_text_classification_recipe_end_to_end(tokenizer, tmp_path, run_recipe, monkeypatch):
    _text_teacher_and_data(tokenizer, tmp_path, names=True)  # labels written as the teacher's names
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    result = _text_recipe(run_recipe, tmp_path, "--temperature", "3.0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list((tmp_path / "tmp").iterdir())  # the scoring scratch directory is gone
    card = (tmp_path / "student" / "README.md").read_text()
    assert "text-classification" in card and "| temperature | 3.0 |" in card and "validation_accuracy" in card
    assert "Noisy student inputs" not in card
    saved = json.loads((tmp_path / "student" / "config.json").read_text())
    assert saved["num_hidden_layers"] == 1 and saved["id2label"] == {"0": "negative", "1": "positive"}


def test_text_recipes_encode_sentence_pairs_as_two_segments(tokenizer, tmp_path, monkeypatch, run_recipe):
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    from recipe_utils import DataArguments, text_encoder

    data = DataArguments(train_file="train.tsv", validation_file="dev.tsv", text_pair_column_name="sentence2",
                         max_seq_length=32)
    encoded = text_encoder(tokenizer, data, "sentence1", "label")(
        {"sentence1": ["john lives in paris"], "sentence2": ["mary works at acme"], "label": [1]})
    assert encoded["input_ids"][0].count(tokenizer.sep_token_id) == 2 and encoded["labels"] == [1]
    assert encoded["token_type_ids"][0] == tokenizer("john lives in paris", "mary works at acme")["token_type_ids"]
    assert 1 in encoded["token_type_ids"][0]
    short = DataArguments(train_file="train.tsv", max_seq_length=8)  # --max_seq_length cuts what the recipes encode
    assert len(text_encoder(tokenizer, short, "sentence", "label")(
        {"sentence": ["john lives in paris " * 5], "label": [1]})["input_ids"][0]) == 8
    # End to end: a GLUE-style pair file (MRPC's column names) distils, with typos in both texts of the student's view
    # (the clean pair encoding is checked above; the recipe refused typos with pairs).
    _text_teacher_and_data(tokenizer, tmp_path)
    rows = ["label\tsentence1\tsentence2"] + [f"{i % 2}\ta good movie {i}\tan awful plot {i}" for i in range(24)]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    result = _text_recipe(run_recipe, tmp_path, "--text_column_name", "sentence1", "--text_pair_column_name", "sentence2",
                          "--typo_rate", "0.3", "--typo_probability", "1.0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| noise | typo_noise(rate=0.3) |" in (tmp_path / "student" / "README.md").read_text()


def test_text_recipe_typo_view_trains_the_student_on_typos_and_says_so_on_the_card(tokenizer, tmp_path, run_recipe,
                                                                                    monkeypatch):
    _text_teacher_and_data(tokenizer, tmp_path)
    from hf_distill import DistillationTrainer

    trained, train = [], DistillationTrainer.train

    def recording_train(self, *args, **kwargs):
        trained.append(self.train_dataset)
        return train(self, *args, **kwargs)

    monkeypatch.setattr(DistillationTrainer, "train", recording_train)
    import hf_distill

    seeds, add_noisy_view = [], hf_distill.add_noisy_view
    monkeypatch.setattr(hf_distill, "add_noisy_view", lambda *a, **k: seeds.append(k["seed"]) or add_noisy_view(*a, **k))
    result = _text_recipe(run_recipe, tmp_path, "--typo_rate", "1.0", "--typo_probability", "1.0",
                              "--adversarial", "fgm", "--adv_start_step", "0", "--seed", "7")
    assert result.returncode == 0, result.stderr[-3000:]
    card = (tmp_path / "student" / "README.md").read_text()
    assert "noisy view of the training text" in card and "Adversarial training" in card
    assert "| noise | typo_noise(rate=1.0) |" in card and "| probability | 1.0 |" in card and "| seed | 7 |" in card
    assert seeds == [7]  # the noise the card's seed reproduces
    # --typo_probability 1.0: every row's student text has typos (every word of it, at rate 1), the teacher's none.
    rows = trained[0]
    assert all(row["input_ids"] != row["teacher_input_ids"] for row in rows)


def test_teacher_saved_without_its_tokenizer_needs_tokenizer_name_or_path(tokenizer, tmp_path, run_recipe):
    _text_teacher_and_data(tokenizer, tmp_path)
    (tmp_path / "tokenizer").mkdir()
    for path in (tmp_path / "teacher").iterdir():  # the teacher keeps its model files only
        if path.name not in ("config.json", "model.safetensors"):
            path.rename(tmp_path / "tokenizer" / path.name)
    ran = _text_recipe(run_recipe, tmp_path, "--tokenizer_name_or_path", str(tmp_path / "tokenizer"), "--max_steps", "1")
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert len(AutoTokenizer.from_pretrained(tmp_path / "student")) == len(tokenizer)


def test_text_recipe_leaves_out_a_test_split_without_labels_and_keeps_the_student(tokenizer, tmp_path, run_recipe):
    # GLUE's test sets carry -1 for their hidden labels: scoring them after training used to crash before the save.
    _text_teacher_and_data(tokenizer, tmp_path)
    (tmp_path / "test.tsv").write_text("label\tsentence\n" + "".join(f"-1\ta good movie {i}\n" for i in range(8)))
    result = _text_recipe(run_recipe, tmp_path, "--test_file", str(tmp_path / "test.tsv"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "The test split has no labels" in result.stderr
    card = (tmp_path / "student" / "README.md").read_text()
    assert "validation_accuracy" in card and "test_accuracy" not in card
    assert (tmp_path / "student" / "model.safetensors").exists()


def test_text_recipe_resumes_from_its_last_checkpoint(tokenizer, tmp_path, run_recipe):
    _text_teacher_and_data(tokenizer, tmp_path)
    first = _text_recipe(run_recipe, tmp_path, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
                         "--logging_steps", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("{'loss'") == 2
    again = _text_recipe(run_recipe, tmp_path, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
                         "--logging_steps", "1", "--resume_from_checkpoint", "true")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("{'loss'") == 2  # steps 3 and 4 only: it went on from checkpoint-2
    assert (tmp_path / "student" / "checkpoint-4").is_dir()


def test_resume_target_reads_the_command_line_value(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    from recipe_utils import resume_target

    assert resume_target(None) is None and resume_target("false") is None
    assert resume_target("True") is True and resume_target("out/checkpoint-500") == "out/checkpoint-500"


def test_hub_labels_are_put_in_the_teachers_order(monkeypatch, caplog):
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    from datasets import ClassLabel, Dataset, Features, Sequence, Value
    from recipe_utils import align_labels

    classes = Features({"sentence": Value("string"), "label": ClassLabel(names=["positive", "negative"])})
    data = Dataset.from_dict({"sentence": ["a", "b", "c"], "label": [0, 1, -1]}, features=classes)
    aligned = align_labels(data, "label", ["NEGATIVE", "POSITIVE"], strict=False)  # names compared without case
    assert aligned["label"] == [1, 0, -1] and aligned.features["label"].names == ["NEGATIVE", "POSITIVE"]
    with caplog.at_level("WARNING"):
        kept = align_labels(data, "label", ["LABEL_0", "LABEL_1"], strict=False)
    assert kept["label"] == [0, 1, -1] and "are not labels of the teacher" in caplog.text

    tags = Features({"tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=["O", "B-PER"]))})
    ner = Dataset.from_dict({"tokens": [["john", "runs"]], "ner_tags": [[1, 0]]}, features=tags)
    assert align_labels(ner, "ner_tags", ["B-PER", "O"], strict=True)["ner_tags"] == [[0, 1]]
    assert align_labels(ner, "ner_tags", ["O", "B-PER"], strict=True) is ner
    with pytest.raises(ValueError, match=r"labels \['B-PER'\] are not labels of the teacher"):
        align_labels(ner, "ner_tags", ["O", "B-LOC"], strict=True)


def test_evaluation_splits_are_checked_before_training(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    from datasets import Dataset
    from recipe_utils import scorable_splits

    good = Dataset.from_dict({"input_ids": [[2, 3]] * 2, "labels": [0, 1]})
    hidden = Dataset.from_dict({"input_ids": [[2, 3]] * 2, "labels": [-1, -1]})
    splits = scorable_splits({"train": good, "validation": good, "test": hidden}, num_labels=2)
    assert list(splits) == ["validation"]
    with pytest.raises(ValueError, match="label 5 in row 1"):
        scorable_splits({"validation": good, "test": Dataset.from_dict({"labels": [0, 5]})}, num_labels=2)
    with pytest.raises(ValueError, match="label -1 in row 0"):  # the validation split is always scored
        scorable_splits({"validation": hidden}, num_labels=2)


def test_finetune_teacher_makes_a_teacher_the_distillation_recipe_accepts(tokenizer, tmp_path, run_recipe):
    from conftest import tiny_config
    from transformers import BertModel

    from hf_distill.loading import load_model

    BertModel(tiny_config(len(tokenizer), 2)).save_pretrained(tmp_path / "base")  # no task head yet
    tokenizer.save_pretrained(tmp_path / "tokenizer")  # saved apart: --tokenizer_name_or_path, as the advice says
    rows = ["label\tsentence"] + [f"{i % 2}\t{'a good movie' if i % 2 else 'an awful plot'} {i}" for i in range(16)]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    flags = ["--task", "text-classification", "--model_name_or_path", tmp_path / "base",
             "--train_file", tmp_path / "train.tsv", "--validation_file", tmp_path / "train.tsv",
             "--output_dir", tmp_path / "teacher", "--max_steps", "2", "--report_to", "none", "--use_cpu", "true",
             "--save_strategy", "steps", "--save_steps", "1"]
    result = run_recipe("finetune_teacher.py", *flags)
    assert result.returncode != 0 and "--tokenizer_name_or_path" in result.stderr, result.stderr[-3000:]
    flags += ["--tokenizer_name_or_path", tmp_path / "tokenizer"]
    result = run_recipe("finetune_teacher.py", *flags, "--resume_from_checkpoint", "true")
    assert result.returncode != 0 and "No complete checkpoint to resume from" in result.stderr, result.stderr[-3000:]
    result = run_recipe("finetune_teacher.py", *flags, "--test_file", tmp_path / "train.tsv")
    assert result.returncode == 0, result.stderr[-3000:]
    teacher = load_model(str(tmp_path / "teacher"), "sequence_classification", require_all_weights=True)
    assert teacher.config.id2label == {0: "0", 1: "1"} and teacher.config.label2id == {"0": 0, "1": 1}
    assert len(AutoTokenizer.from_pretrained(tmp_path / "teacher")) == len(tokenizer)
    scores = json.loads((tmp_path / "teacher" / "all_results.json").read_text())
    # the test file is scored too (it was read and tokenized, then never scored), on the same rows here
    assert scores["teacher_test_accuracy"] == scores["teacher_validation_accuracy"]
    # A save cut short (no trainer_state.json) is skipped, not resumed from: stock Trainer took the newest folder.
    (tmp_path / "teacher" / "checkpoint-2" / "trainer_state.json").unlink()
    result = run_recipe("finetune_teacher.py", *flags, "--resume_from_checkpoint", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checkpoint-2 is incomplete (interrupted while saving) and is skipped" in result.stdout + result.stderr


def test_a_negative_class_id_outside_a_test_split_is_refused(tmp_path, monkeypatch):
    # -1/0/1 sentiment labels: -1 was taken for a hidden test label in every split, so the teacher got 2 classes and
    # training crashed on the first batch ("Target -1 is out of bounds").
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    from datasets import Dataset
    from recipe_utils import DataArguments, text_label_names

    splits = {"train": Dataset.from_dict({"label": [-1, 0, 1]}), "test": Dataset.from_dict({"label": [-1, -1]})}
    data = DataArguments(train_file="train.tsv", validation_file="dev.tsv")

    def read(path):
        return splits["train"] if path == "train.tsv" else Dataset.from_dict({"label": ["0", "1"]})

    with pytest.raises(ValueError, match="train split has the label -1.*Renumber the classes from 0"):
        text_label_names(data, read, "label")
    hidden = DataArguments(train_file="dev.tsv", validation_file="dev.tsv", test_file="test.tsv")
    names, _ = text_label_names(hidden, lambda p: splits["test"] if p == "test.tsv" else read(p), "label")
    assert names == ["0", "1"]  # GLUE-style hidden test labels are still left out


def test_recipes_refuse_the_run_switches_they_do_not_read(tokenizer, tmp_path, run_recipe):
    # `--do_train false` trained anyway, over the model already in --output_dir; --do_predict wrote nothing.
    _text_teacher_and_data(tokenizer, tmp_path)
    for flags, said in ((["--do_train", "false"], "always trains"), (["--do_predict"], "writes no predictions"),
                        (["--do_eval=false"], "always scores")):
        result = _text_recipe(run_recipe, tmp_path, *flags)
        assert result.returncode != 0 and "is not supported here" in result.stderr and said in result.stderr
        assert not (tmp_path / "student").exists()


def test_born_again_generations_check_a_layer_map_against_every_generation_first(tokenizer, tmp_path, run_recipe):
    # From generation 2 on the teacher is the 1-layer generation-1 student, which has no layer 2: the run trained
    # generation 1 whole, then failed and left --output_dir empty.
    _text_teacher_and_data(tokenizer, tmp_path)
    result = _text_recipe(run_recipe, tmp_path, "--generations", "2", "--hidden_distill_weight", "1",
                          "--feature_layer_map", "1:2")
    assert result.returncode != 0 and "cannot serve every generation" in result.stderr, result.stderr[-3000:]
    assert not list(tmp_path.glob("student*"))  # refused before any training
    result = _text_recipe(run_recipe, tmp_path, "--generations", "2", "--hidden_distill_weight", "1",
                          "--feature_layer_map", "1:1")
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_new_teachers_classes_come_from_every_split_before_any_cut(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    from recipe_utils import DataArguments, text_label_names

    from hf_distill import load_text_classification_file

    def files(train, validation):
        for name, labels in (("train", train), ("validation", validation)):
            rows = ["label\tsentence"] + [f"{label}\tsentence {i}" for i, label in enumerate(labels)]
            (tmp_path / f"{name}.tsv").write_text("\n".join(rows) + "\n")
        return DataArguments(train_file=str(tmp_path / "train.tsv"), validation_file=str(tmp_path / "validation.tsv"),
                             max_train_samples=2)

    def read(path):
        return load_text_classification_file(path, label_column=None)

    # Class 2 only past the --max_train_samples cut and in validation: it still gets an id (it crashed evaluation).
    assert text_label_names(files([0, 1, 2, 2], [0, 1, 2]), read, "label") == (["0", "1", "2"], False)
    # Ids keep their meaning: 1-based ids give an unused class 0 rather than a crash on id 2.
    assert text_label_names(files([1, 2], [2, 1]), read, "label") == (["0", "1", "2"], False)
    # Names, which the recipe refused although the distillation recipe accepts them.
    assert text_label_names(files(["positive", "negative"], ["negative"]), read, "label") == (
        ["negative", "positive"], True)
    # Hidden labels (-1) only in a test split (see test_a_negative_class_id_outside_a_test_split_is_refused): the
    # validation split is always scored. Ids written as whole floats.
    with pytest.raises(ValueError, match="validation split has the label -1"):
        text_label_names(files(["positive", "negative"], [-1, -1]), read, "label")
    assert text_label_names(files([1.0, 0.0], [0.0]), read, "label") == (["0", "1"], False)
    # A blank cell turns the column into text: it must not become a class "" that shifts every id.
    with pytest.raises(ValueError, match=r"train split has an empty label"):
        text_label_names(files([0, 1, ""], [0]), read, "label")
    with pytest.raises(ValueError, match=r"mixes class ids.*'NA'"):
        text_label_names(files([0, 1, "NA"], [0]), read, "label")
    # Ids written as text (a quoted "2" in a column that is text for that reason) are ids.
    assert text_label_names(files([0, 1], ['"2"']), lambda path: read(path).map(
        lambda row: {"label": str(row["label"]).strip('"')}), "label") == (["0", "1", "2"], False)


def test_hidden_hub_labels_given_as_nulls_leave_their_split_unscored(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    from datasets import Dataset
    from recipe_utils import _label_names_to_ids

    split = _label_names_to_ids(Dataset.from_dict({"label": [None, None]}, features=None).cast_column(
        "label", __import__("datasets").Value("string")), "label", ["negative", "positive"], "some/dataset")
    assert split["label"] == [-1, -1]
    named = _label_names_to_ids(Dataset.from_dict({"label": ["positive", "negative"]}), "label",
                                ["negative", "positive"], "some/dataset")
    assert named["label"] == [1, 0]


def test_a_loading_script_dataset_gets_a_parquet_hint(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    import recipe_utils

    def script_only(*args, **kwargs):  # what datasets >= 4 raises for the Hub's script-based "conll2003"
        raise RuntimeError("Dataset scripts are no longer supported, but found conll2003.py")

    monkeypatch.setattr(recipe_utils.datasets, "load_dataset", script_only)
    with pytest.raises(ValueError, match="loading-script dataset.*--dataset_name lhoestq/conll2003"):
        recipe_utils.load_splits(recipe_utils.DataArguments(dataset_name="conll2003"), read_local=None)


def test_text_recipe_typo_arguments_are_checked(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    from distill_text_classification import NoisyViewArguments

    assert NoisyViewArguments().typo_rate == 0.0
    assert NoisyViewArguments(typo_rate=0.2).typo_probability == 0.5
    with pytest.raises(ValueError, match="no effect without typos: set `--typo_rate`"):
        NoisyViewArguments(typo_probability=1.0)
    with pytest.raises(ValueError, match="fraction of the words, in \\[0, 1\\]; got 1.5"):
        NoisyViewArguments(typo_rate=1.5)
    with pytest.raises(ValueError, match="fraction of the rows, in \\[0, 1\\]; got -0.1"):
        NoisyViewArguments(typo_rate=0.2, typo_probability=-0.1)


def test_born_again_generations_each_learn_from_the_previous_one(tokenizer, tmp_path, run_recipe, monkeypatch):
    from hf_distill import DistillationTrainer

    _, data = _ner_teacher_and_data(tokenizer, tmp_path)
    # The student refined in place (an earlier student in the output directory): generation 2's teacher is generation
    # 1's student, saved next to it, and was refused as "the teacher loaded from" the output directory.
    initial = tiny_token_model(tokenizer, layers=1, seed=5)
    initial.save_pretrained(tmp_path / "student")
    tokenizer.save_pretrained(tmp_path / "student")
    starts, train = [], DistillationTrainer.train

    def recording_train(self, *args, **kwargs):  # each generation's student weights when its training starts
        starts.append(self.model.classifier.weight.detach().clone())
        return train(self, *args, **kwargs)

    monkeypatch.setattr(DistillationTrainer, "train", recording_train)
    result = run_recipe(
        "distill_ner.py", "--teacher_model_name_or_path", tmp_path / "teacher", "--model_name_or_path",
        tmp_path / "student", "--train_file", data, "--validation_file", data, "--output_dir", tmp_path / "student", "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--report_to", "none", "--use_cpu", "true", "--save_strategy", "no",
        "--disable_tqdm", "true", "--generations", "3",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    from safetensors.torch import load_file

    # Earlier generations live next to the output directory, which push_to_hub uploads whole.
    assert not any(p.name.startswith("generation") for p in (tmp_path / "student").iterdir())
    weights = [load_file(str(tmp_path / f"student-generation-{g}" / "model.safetensors")) for g in (1, 2)]
    weights.append(load_file(str(tmp_path / "student" / "model.safetensors")))
    assert all(set(w) == set(weights[0]) for w in weights)
    key = "classifier.weight"
    assert not any(torch.equal(a[key], b[key]) for a, b in ((weights[0], weights[1]), (weights[1], weights[2])))
    assert result.stdout.count("born-again generation") + result.stderr.count("born-again generation") == 2
    # Every generation starts again from the initial student (Furlanello et al.), not from the previous generation.
    assert len(starts) == 3 and all(torch.equal(start, initial.classifier.weight) for start in starts)
    # The card names the first teacher and its size (not generation 2's), and says how the student was made.
    card = (tmp_path / "student" / "README.md").read_text()
    teacher_params = sum(p.numel() for p in tiny_token_model(tokenizer).parameters())
    assert "teacher `teacher (local folder)`" in card and f"| teacher parameters | {teacher_params:,} |" in card
    assert "| born-again generations | 3 (this is the last;" in card


def test_ner_recipe_loads_a_byte_level_tokenizer_with_add_prefix_space(byte_level_tokenizer_dir, tmp_path,
                                                                        monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    from recipe_utils import ModelArguments, load_models
    from transformers import RobertaConfig, RobertaForTokenClassification

    from hf_distill.data import keeps_word_starts

    tokenizer = AutoTokenizer.from_pretrained(byte_level_tokenizer_dir)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=70, num_labels=len(NER_LABELS))
    RobertaForTokenClassification(config).save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    args = ModelArguments(teacher_model_name_or_path=str(tmp_path / "teacher"), student_layers="0")
    _, ner_tokenizer, _ = load_models(args, "token_classification")
    assert keeps_word_starts(ner_tokenizer) and not keeps_word_starts(tokenizer)


def test_finetune_teacher_ner_reads_words_with_a_byte_level_tokenizer(byte_level_tokenizer_dir, tmp_path, run_recipe):
    from transformers import RobertaConfig, RobertaModel

    from hf_distill.data import keeps_word_starts

    tokenizer = AutoTokenizer.from_pretrained(byte_level_tokenizer_dir)  # add_prefix_space=False, as RoBERTa's
    RobertaModel(RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=70)).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    (tmp_path / "train.txt").write_text(CONLL * 2)
    result = run_recipe(
        "finetune_teacher.py", "--task", "ner", "--model_name_or_path", tmp_path / "base",
        "--train_file", tmp_path / "train.txt", "--validation_file", tmp_path / "train.txt",
        "--output_dir", tmp_path / "teacher", "--max_steps", "1", "--report_to", "none", "--use_cpu", "true",
        "--save_strategy", "no",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert keeps_word_starts(AutoTokenizer.from_pretrained(tmp_path / "teacher"))  # saved as it read the words


def test_ner_recipe_under_a_two_process_launch_scores_and_cards_the_student(tokenizer, tmp_path, run_recipe):
    _, data = _ner_teacher_and_data(tokenizer, tmp_path)
    out = tmp_path / "student"
    flags = ["--teacher_model_name_or_path", str(tmp_path / "teacher"), "--student_layers", "0",
             "--train_file", str(data), "--validation_file", str(data), "--max_steps", "2",
             "--per_device_train_batch_size", "2", "--report_to", "none", "--use_cpu", "true", "--save_strategy", "no",
             "--disable_tqdm", "true", "--robustness_epsilon", "0.45", "--robustness_typo_rate", "0.5"]
    # The torchrun-based launcher with `use_cpu` runs two MULTI_CPU processes over gloo (see tests/test_launch.py).
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
         "1", "--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no",
         str(ROOT / "recipes" / "distill_ner.py"), *flags, "--output_dir", str(out)],
        capture_output=True, text=True, env=_env(), timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    card = (out / "README.md").read_text()
    assert "| validation_f1 |" in card and "speedup_batch8" in card
    # The teacher's validation loss is the same however many processes score it (it was multiplied by 2 here).
    single = run_recipe("distill_ner.py", *flags, "--output_dir", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr[-3000:]

    def teacher_loss(output):  # the comparison scores the teacher first
        return float(re.findall(r"'validation_loss': '?([0-9.e+-]+)", output)[0])

    assert teacher_loss(result.stdout) == pytest.approx(teacher_loss(single.stdout), rel=1e-3)
    # So are its scores under attack: each process runs the embedding attack in full, and the typo split is gathered.
    scores = [json.loads((folder / "all_results.json").read_text()) for folder in (out, tmp_path / "single")]
    for key in ("teacher_validation_f1_pgd0.45", "teacher_validation_f1_typos0.5"):
        assert scores[0][key] == scores[1][key] < scores[0]["teacher_validation_f1"], key  # and both attacks bite


def test_the_speedup_is_the_teachers_time_over_the_students(tokenizer, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    import recipe_utils
    from test_trainer import ner_dataset
    from transformers import DataCollatorForTokenClassification

    from hf_distill import DistillationArguments, token_classification_metrics

    teacher, student = tiny_token_model(tokenizer, layers=2, seed=2), tiny_token_model(tokenizer, layers=1, seed=1)
    import hf_distill.speed

    monkeypatch.setattr(hf_distill.speed, "inference_latency_ms",
                        lambda model, batch, **kwargs: 10.0 if model is teacher else 5.0)
    args = DistillationArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, disable_tqdm=True)
    report = recipe_utils.compare(teacher, student, {"validation": ner_dataset(tokenizer)},
                                  DataCollatorForTokenClassification(tokenizer), token_classification_metrics(NER_LABELS),
                                  args, "f1")
    assert report["speed"]["speedup_batch1"] == 2.0  # a student twice as fast
    assert report["teacher"]["parameters"] > report["student"]["parameters"]


def test_hub_splits_get_their_columns_checked_label_names_mapped_and_a_local_validation_file(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    import recipe_utils
    from datasets import ClassLabel, Dataset, DatasetDict

    rows = {"text": ["good", "bad", "fine"], "label": ["positive", "negative", "positive"]}
    hub = DatasetDict(train=Dataset.from_dict(rows), test=Dataset.from_dict(rows))  # imdb-style: no validation
    monkeypatch.setattr(recipe_utils.datasets, "load_dataset", lambda *args, **kwargs: hub)
    local = Dataset.from_dict({"text": ["ok"], "label": [1]})
    data = recipe_utils.DataArguments(dataset_name="some/imdb-like")
    with pytest.raises(ValueError, match=r"splits \['train', 'test'\], without \['validation'\].*--validation_file"):
        recipe_utils.load_splits(data, read_local=lambda path: local)
    with_file = recipe_utils.DataArguments(dataset_name="some/imdb-like", validation_file="dev.tsv")
    with pytest.raises(ValueError, match=r"train split has no column \['sentence'\].*--text_column_name"):
        recipe_utils.load_splits(with_file, lambda path: local, columns=["sentence"], label_column="label")
    splits = recipe_utils.load_splits(with_file, lambda path: local, columns=["text"], label_column="label",
                                      label_names=["negative", "positive"])
    assert splits["validation"] is local and splits["train"]["label"] == [1, 0, 1]
    upper = recipe_utils.load_splits(with_file, lambda path: local, columns=["text"], label_column="label",
                                     label_names=["NEGATIVE", "POSITIVE"])  # a teacher's names, another case
    assert upper["train"]["label"] == [1, 0, 1] and upper["train"].features["label"].names == ["NEGATIVE", "POSITIVE"]
    assert isinstance(splits["test"].features["label"], ClassLabel)
    with pytest.raises(ValueError, match=r"labels \['negative'\] .* not among the label names"):
        recipe_utils.load_splits(with_file, lambda path: local, label_column="label", label_names=["positive", "x"])
    # --max_eval_samples cuts every evaluation split, the test split included.
    many = Dataset.from_dict({"text": ["a", "b", "c", "d"], "label": [0, 1, 0, 1]})
    cut = recipe_utils.load_splits(recipe_utils.DataArguments(train_file="t", validation_file="v", test_file="x",
                                                              max_eval_samples=2), lambda path: many)
    assert (len(cut["train"]), len(cut["validation"]), len(cut["test"])) == (4, 2, 2)
    cut = recipe_utils.load_splits(recipe_utils.DataArguments(train_file="t", validation_file="v",
                                                              max_train_samples=2), lambda path: many)
    assert (len(cut["train"]), len(cut["validation"])) == (2, 4)
    # A local --train_file replaces the Hub's train split too (it was silently ignored).
    own_train = Dataset.from_dict({"text": ["mine"], "label": [0]})
    with_train = recipe_utils.DataArguments(dataset_name="some/imdb-like", train_file="train.tsv",
                                            validation_file="dev.tsv")
    splits = recipe_utils.load_splits(with_train, lambda path: own_train if path == "train.tsv" else local)
    assert splits["train"] is own_train and splits["validation"] is local


def test_a_new_ner_teachers_tags_come_from_every_file(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    from recipe_utils import DataArguments, conll_tag_names

    (tmp_path / "train.txt").write_text("john B-PER\nlives O\n\n")
    (tmp_path / "dev.txt").write_text("john B-PER\nin O\nparis B-LOC\n\n")  # B-LOC only in the validation file
    data = DataArguments(train_file=str(tmp_path / "train.txt"), validation_file=str(tmp_path / "dev.txt"))
    assert {"O", "B-PER", "I-PER", "B-LOC", "I-LOC"} == set(conll_tag_names(data))


def test_ner_recipes_read_iob1_files_with_tag_scheme(tokenizer, tmp_path, monkeypatch, run_recipe):
    # The original CoNLL-2003 release is IOB1: an entity opens with I- unless it follows one of its own type.
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    from recipe_utils import DataArguments, conll_tag_names

    iob1 = tmp_path / "train_iob1.txt"
    iob1.write_text("john I-PER\nsmith I-PER\nmet O\nmary I-PER\n\n")
    assert conll_tag_names(DataArguments(train_file=str(iob1), tag_scheme="iob1")) == ["O", "B-PER", "I-PER"]
    with pytest.raises(ValueError, match="tag_scheme"):
        conll_tag_names(DataArguments(train_file=str(iob1)))
    with pytest.raises(ValueError, match="--tag_scheme"):
        DataArguments(train_file=str(iob1), tag_scheme="bio")

    teacher_dir, _ = _ner_teacher_and_data(tokenizer, tmp_path)
    result = run_recipe(
        "distill_ner.py", "--teacher_model_name_or_path", teacher_dir, "--train_file", iob1,
        "--validation_file", iob1, "--tag_scheme", "iob1", "--student_layers", "0",
        "--output_dir", tmp_path / "student", "--max_steps", "1", "--per_device_train_batch_size", "2",
        "--report_to", "none", "--use_cpu",
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_model_to_fine_tune_with_another_head_size_gets_a_new_head(tokenizer, tmp_path, caplog):
    from hf_distill.loading import load_model

    tiny_token_model(tokenizer, layers=1, seed=3).save_pretrained(tmp_path / "base")  # a 7-label head
    labels = {0: "O", 1: "B-LOC"}
    with caplog.at_level("WARNING"):
        model = load_model(str(tmp_path / "base"), "token_classification", role="model to fine-tune",
                           num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()})
    assert model.config.num_labels == 2 and model.classifier.out_features == 2
    assert "initialised anew" in caplog.text


def test_recipe_students_for_attention_distillation_have_no_attention_dropout(tokenizer, tmp_path, monkeypatch):
    # The trainer refuses attention distillation with a student that drops attention probabilities, and the recipes
    # give no other way to turn it off: with --attention_distill_weight they build the student without it.
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    from recipe_utils import ModelArguments, load_models

    from hf_distill import DistillationArguments, DistillationTrainer

    teacher_dir, _ = _ner_teacher_and_data(tokenizer, tmp_path)
    tiny_token_model(tokenizer, layers=1, seed=4).save_pretrained(tmp_path / "student")
    for source in ({"student_layers": "0,1"}, {"model_name_or_path": str(tmp_path / "student")}):
        args = ModelArguments(teacher_model_name_or_path=str(teacher_dir), **source)
        teacher, _, student = load_models(args, "token_classification", attention_distillation=True)
        assert teacher.config.attention_probs_dropout_prob > 0 and student.config.attention_probs_dropout_prob == 0
        dropouts = [m.p for n, m in student.named_modules() if n.endswith("attention.self.dropout")]
        assert dropouts and not any(dropouts)
        DistillationTrainer(model=student, teacher_model=teacher, processing_class=tokenizer,
                            args=DistillationArguments(output_dir=str(tmp_path / "out"), attention_distill_weight=1.0,
                                                       report_to="none", use_cpu=True))
        _, _, kept = load_models(args, "token_classification")
        assert kept.config.attention_probs_dropout_prob == teacher.config.attention_probs_dropout_prob


def test_recipes_run_ema_self_distillation_and_refuse_bad_student_layers(tokenizer, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    from recipe_utils import DataArguments, ModelArguments, distill
    from transformers import DataCollatorForTokenClassification

    from hf_distill import DistillationArguments, token_classification_metrics

    for flag in ("max_train_samples", "max_eval_samples"):
        with pytest.raises(ValueError, match=rf"--{flag} 0 keeps no rows"):
            DataArguments(train_file="train.txt", **{flag: 0})
    for bad in ("0,1,", "0;1", "0 1"):
        with pytest.raises(ValueError, match=r"--student_layers .* not a comma-separated list.*\"0,2,4\""):
            ModelArguments(teacher_model_name_or_path="t", student_layers=bad)
    # --self_distillation ema: the loaded teacher gives the student its start, the trainer gets no teacher_model.
    from test_trainer import ner_dataset

    data = ner_dataset(tokenizer)
    args = DistillationArguments(output_dir=str(tmp_path / "student"), self_distillation="ema", max_steps=2,
                                 per_device_train_batch_size=2, report_to="none", use_cpu=True, save_strategy="no",
                                 disable_tqdm=True)
    trainer = distill(tiny_token_model(tokenizer, layers=2, seed=3), tiny_token_model(tokenizer, layers=1, seed=1),
                      tokenizer, {"train": data, "validation": data}, DataCollatorForTokenClassification(tokenizer),
                      token_classification_metrics(NER_LABELS), "f1", args, DataArguments(train_file="train.txt"))
    assert trainer.state.global_step == 2 and (tmp_path / "student" / "model.safetensors").is_file()
    assert "itself (EMA teacher" in (tmp_path / "student" / "README.md").read_text()
    # --teacher_dtype casts the trainer's teacher, not the one the comparison (and the card's latency) uses.
    teacher = tiny_token_model(tokenizer, layers=2, seed=3)
    bf16_args = DistillationArguments(output_dir=str(tmp_path / "bf16"), teacher_dtype="bfloat16", max_steps=1,
                                 per_device_train_batch_size=2, report_to="none", use_cpu=True, save_strategy="no",
                                 disable_tqdm=True)
    trainer = distill(teacher, tiny_token_model(tokenizer, layers=1, seed=1), tokenizer,
                      {"train": data, "validation": data}, DataCollatorForTokenClassification(tokenizer),
                      token_classification_metrics(NER_LABELS), "f1", bf16_args, DataArguments(train_file="train.txt"))
    assert next(trainer.teacher_model.parameters()).dtype == torch.bfloat16
    assert next(teacher.parameters()).dtype == torch.float32 and "speedup_batch1" in trainer.evaluation_report["speed"]
    with pytest.raises(ValueError, match="choose one"):
        distill(tiny_token_model(tokenizer, layers=2, seed=3), None, tokenizer, {"train": data, "validation": data},
                None, None, "f1", args, DataArguments(train_file="train.txt"), generations=2)


def test_a_recipe_pushes_once_with_the_evaluation_on_the_card(tokenizer, tmp_path, monkeypatch):
    # The recipe saves before evaluating (so nothing is lost if evaluation fails), but pushes only at the end.
    import transformers.trainer
    from test_model_card import FakeHubApi
    from test_trainer import ner_dataset

    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    from recipe_utils import DataArguments, distill
    from transformers import DataCollatorForTokenClassification

    from hf_distill import DistillationArguments, token_classification_metrics

    fake = FakeHubApi()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: fake)
    data = ner_dataset(tokenizer)
    args = DistillationArguments(output_dir=str(tmp_path / "student"), max_steps=1, per_device_train_batch_size=2,
                                 report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True,
                                 push_to_hub=True, hub_model_id="tiny-student", hub_strategy="end")
    distill(tiny_token_model(tokenizer, layers=2, seed=3), tiny_token_model(tokenizer, layers=1, seed=1), tokenizer,
            {"train": data, "validation": data}, DataCollatorForTokenClassification(tokenizer),
            token_classification_metrics(NER_LABELS), "f1", args, DataArguments(train_file="train.txt"))
    assert len(fake.uploads) == 1
    assert "model.safetensors" in fake.uploads[0]["files"] and "validation_f1" in fake.uploads[0]["files"]["README.md"]


def test_born_again_generations_check_the_hub_repository_before_training(tokenizer, tmp_path, monkeypatch):
    # Only the last generation pushes, and Trainer reaches the Hub when that trainer is built: an unreachable Hub
    # failed after generation 1 had trained. The repository is created (or checked) before the first generation.
    import huggingface_hub
    from test_trainer import ner_dataset

    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    from recipe_utils import DataArguments, distill
    from transformers import DataCollatorForTokenClassification

    from hf_distill import DistillationArguments, token_classification_metrics

    def offline(repo_id, **kwargs):
        raise OSError(f"cannot reach the Hub to create {repo_id}")

    monkeypatch.setattr(huggingface_hub, "create_repo", offline)
    data = ner_dataset(tokenizer)
    args = DistillationArguments(output_dir=str(tmp_path / "student"), max_steps=1, per_device_train_batch_size=2,
                                 report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True,
                                 push_to_hub=True, hub_model_id="me/tiny-student")
    with pytest.raises(OSError, match="create me/tiny-student"):
        distill(tiny_token_model(tokenizer, layers=2, seed=3), tiny_token_model(tokenizer, layers=1, seed=1),
                tokenizer, {"train": data, "validation": data}, DataCollatorForTokenClassification(tokenizer),
                token_classification_metrics(NER_LABELS), "f1", args, DataArguments(train_file="train.txt"),
                generations=2)
    assert not (tmp_path / "student-generation-1").exists()


def test_finetune_teacher_ner_reads_a_local_file_beside_a_hub_dataset_in_the_hubs_tag_order(tokenizer, tmp_path,
                                                                                          monkeypatch, run_recipe):
    import datasets
    import transformers
    from conftest import tiny_config
    from transformers import BertModel

    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    import recipe_utils

    BertModel(tiny_config(len(tokenizer), 2)).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    hub_tags = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]  # lhoestq/conll2003
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=hub_tags))})
    hub = datasets.DatasetDict(train=datasets.Dataset.from_dict(
        {"tokens": [["john", "lives", "in", "paris"]] * 4, "ner_tags": [[1, 0, 0, 5]] * 4}, features=features))
    monkeypatch.setattr(recipe_utils.datasets, "load_dataset", lambda *args, **kwargs: hub)
    (tmp_path / "dev.txt").write_text(CONLL)  # its own tag order: B-LOC, B-ORG, B-PER, ...
    seen = {}
    init = transformers.Trainer.__init__

    def record(self, *args, **kwargs):
        seen.update(eval=kwargs["eval_dataset"], model=kwargs["model"])
        init(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "__init__", record)
    result = run_recipe(
        "finetune_teacher.py", "--task", "ner", "--model_name_or_path", tmp_path / "base",
        "--dataset_name", "lhoestq/conll2003", "--validation_file", tmp_path / "dev.txt",
        "--output_dir", tmp_path / "teacher", "--max_steps", "1", "--use_cpu", "true", "--report_to", "none",
        "--save_strategy", "no", "--disable_tqdm", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    id2label = seen["model"].config.id2label
    assert [id2label[i] for i in range(len(hub_tags))] == hub_tags
    gold = [id2label[i] for i in seen["eval"][0]["labels"] if i != -100]
    assert gold == ["B-PER", "O", "O", "B-LOC", "O"]  # john lives in paris . as the file tags it


def test_the_card_names_a_local_train_file_that_replaced_a_hub_datasets_train_split(tokenizer, tmp_path, monkeypatch,
                                                                                     run_recipe):
    import datasets

    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    import recipe_utils

    _text_teacher_and_data(tokenizer, tmp_path)
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    hub = datasets.DatasetDict(validation=datasets.Dataset.from_dict(
        {"sentence": ["a good movie", "an awful plot"] * 2, "label": [1, 0] * 2}, features=features))
    load = datasets.load_dataset  # the local file is read with load_dataset("csv", ...) too
    monkeypatch.setattr(recipe_utils.datasets, "load_dataset",
                        lambda name, *args, **kwargs: hub if name == "some-org/sst2-dev-only" else load(name, *args, **kwargs))
    result = run_recipe(
        "distill_text_classification.py", "--teacher_model_name_or_path", tmp_path / "teacher",
        "--student_layers", "1", "--dataset_name", "some-org/sst2-dev-only", "--dataset_config_name", "sst2",
        "--train_file", tmp_path / "train.tsv", "--output_dir", tmp_path / "student", "--max_steps", "1", "--use_cpu",
        "true", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    card = (tmp_path / "student" / "README.md").read_text()
    # Trained on the local file: the Hub dataset is neither the training data nor, so, in the metadata ...
    assert "on `train.tsv (local file)`." in card and "datasets:" not in card
    # ... its configuration is not the local file's, and the data table says which split came from where
    assert "| train | `train.tsv` (local file): " in card
    assert "| validation | `some-org/sst2-dev-only` (configuration `sst2`), split `validation`: 4 examples |" in card


def test_the_card_names_the_hub_datasets_configuration(tokenizer, tmp_path, monkeypatch, run_recipe):
    # `--dataset_name glue --dataset_config_name sst2` and `... mrpc` gave cards that both said "on `glue`".
    import datasets

    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    import recipe_utils

    _text_teacher_and_data(tokenizer, tmp_path)
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    split = datasets.Dataset.from_dict({"sentence": ["a good movie", "an awful plot"] * 2, "label": [1, 0] * 2},
                                       features=features)
    calls = []

    def load_dataset(*args, **kwargs):
        calls.append(args)
        return datasets.DatasetDict(train=split, validation=split)

    monkeypatch.setattr(recipe_utils.datasets, "load_dataset", load_dataset)
    result = run_recipe(
        "distill_text_classification.py", "--teacher_model_name_or_path", tmp_path / "teacher",
        "--student_layers", "1", "--dataset_name", "glue", "--dataset_config_name", "sst2",
        "--output_dir", tmp_path / "student", "--max_steps", "1", "--use_cpu", "true", "--report_to", "none",
        "--save_strategy", "no", "--disable_tqdm", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert calls == [("glue", "sst2")]
    card = (tmp_path / "student" / "README.md").read_text()
    assert "on `glue` (configuration `sst2`)." in card and "- glue" in card


def test_a_bf16_checkpoint_gives_a_student_trained_on_float32_weights(tokenizer, tmp_path, monkeypatch):
    # Transformers 5 loads a checkpoint in the dtype it was saved in, and a student cut from a bf16 teacher was bf16:
    # AdamW steps smaller than bf16's resolution were dropped, silently.
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    from recipe_utils import ModelArguments, load_models

    teacher_dir, _ = _ner_teacher_and_data(tokenizer, tmp_path)
    tiny_token_model(tokenizer, layers=2, seed=3).to(torch.bfloat16).save_pretrained(teacher_dir)
    tiny_token_model(tokenizer, layers=1, seed=4).to(torch.bfloat16).save_pretrained(tmp_path / "student")
    for source in ({"student_layers": "0"}, {"model_name_or_path": str(tmp_path / "student")}):
        teacher, _, student = load_models(ModelArguments(teacher_model_name_or_path=str(teacher_dir), **source),
                                          "token_classification")
        assert teacher.dtype == torch.bfloat16  # the frozen teacher may stay as it was saved
        assert {p.dtype for p in student.parameters()} == {torch.float32}


def test_a_student_with_the_teachers_labels_in_another_order_is_refused(tokenizer, tmp_path, monkeypatch):
    # Loading it with the teacher's id2label would only rename its trained head rows: B-PER's row would say B-LOC.
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    from recipe_utils import ModelArguments, load_models

    teacher_dir, _ = _ner_teacher_and_data(tokenizer, tmp_path)
    shuffled = NER_LABELS[::-1]
    tiny_token_model(tokenizer, labels=shuffled, layers=1).save_pretrained(tmp_path / "student")
    args = ModelArguments(teacher_model_name_or_path=str(teacher_dir), model_name_or_path=str(tmp_path / "student"))
    with pytest.raises(ValueError, match="same labels in another order.*classifier"):
        load_models(args, "token_classification")
    # A student with other (or generic) labels gets the teacher's, with a new head, as before.
    tiny_token_model(tokenizer, labels=["O", "B-X"], layers=1).save_pretrained(tmp_path / "other")
    args = ModelArguments(teacher_model_name_or_path=str(teacher_dir), model_name_or_path=str(tmp_path / "other"))
    _, _, student = load_models(args, "token_classification")
    assert list(student.config.id2label.values()) == NER_LABELS


def test_finetune_teacher_reads_a_pair_column_of_digits_as_text(tokenizer, tmp_path, run_recipe):
    # A second text such as "2004" was typed as a number (the pair column was not read as text), and the tokenizer
    # refused the integers.
    from conftest import tiny_config
    from transformers import BertModel

    BertModel(tiny_config(len(tokenizer), 2)).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    rows = ["label\tsentence1\tsentence2"] + [f"{i % 2}\ta good movie {i}\t{2000 + i}" for i in range(8)]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    result = run_recipe(
        "finetune_teacher.py", "--task", "text-classification", "--model_name_or_path", tmp_path / "base",
        "--train_file", tmp_path / "train.tsv", "--validation_file", tmp_path / "train.tsv",
        "--text_column_name", "sentence1", "--text_pair_column_name", "sentence2", "--output_dir", tmp_path / "teacher",
        "--max_steps", "1", "--report_to", "none", "--use_cpu", "true", "--save_strategy", "no",
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_ner_recipe_refuses_a_hub_dataset_with_tags_the_teacher_lacks(tokenizer, tmp_path, monkeypatch, run_recipe):
    # Tag ids the teacher does not have would be scored and distilled as other tags of the teacher.
    import datasets

    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    import recipe_utils

    _ner_teacher_and_data(tokenizer, tmp_path)  # its labels: NER_LABELS, without MISC
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=NER_LABELS + ["B-MISC"]))})
    rows = {"tokens": [["john", "lives", "in", "paris"]] * 4, "ner_tags": [[1, 0, 7, 5]] * 4}
    hub = datasets.DatasetDict(train=datasets.Dataset.from_dict(rows, features=features),
                               validation=datasets.Dataset.from_dict(rows, features=features))
    monkeypatch.setattr(recipe_utils.datasets, "load_dataset", lambda *args, **kwargs: hub)
    result = run_recipe(
        "distill_ner.py", "--teacher_model_name_or_path", tmp_path / "teacher", "--student_layers", "0",
        "--dataset_name", "some/ner-with-misc", "--output_dir", tmp_path / "student", "--max_steps", "1",
        "--report_to", "none", "--use_cpu", "true", "--save_strategy", "no", "--disable_tqdm", "true")
    assert result.returncode != 0, result.stderr[-3000:]
    assert "ValueError: The dataset's labels ['B-MISC'] are not labels of the teacher" in result.stderr, result.stderr[-3000:]


def test_ner_recipe_refuses_a_teacher_whose_tags_are_unnamed_and_says_what_to_write(tokenizer, tmp_path, run_recipe):
    # A teacher saved without id2label (LABEL_0 ... LABEL_8): the recipe stopped on the data's first tag with advice
    # (`label_names=`) that no flag of the recipe takes.
    _, data = _ner_teacher_and_data(tokenizer, tmp_path)
    tiny_token_model(tokenizer, labels=[f"LABEL_{i}" for i in range(7)], seed=3).save_pretrained(tmp_path / "teacher")
    result = run_recipe(
        "distill_ner.py", "--teacher_model_name_or_path", tmp_path / "teacher", "--student_layers", "0",
        "--train_file", data, "--validation_file", data, "--output_dir", tmp_path / "student", "--max_steps", "1",
        "--report_to", "none", "--use_cpu", "true", "--save_strategy", "no", "--disable_tqdm", "true")
    assert result.returncode != 0
    assert "names its 7 outputs LABEL_0 ... LABEL_6" in result.stderr and "`id2label`" in result.stderr


def test_a_teacher_path_under_the_home_folder_loads(tokenizer, tmp_path, monkeypatch):
    # `--teacher_model_name_or_path ~/models/teacher`, as a shell leaves it when quoted or written in a config file.
    from hf_distill.loading import LOADED_FROM, load_model, load_tokenizer

    monkeypatch.setenv("HOME", str(tmp_path))
    tiny_token_model(tokenizer, layers=2, seed=3).save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    teacher = load_model("~/teacher", "token_classification", require_all_weights=True)
    assert getattr(teacher, LOADED_FROM) == os.path.realpath(tmp_path / "teacher")
    assert len(load_tokenizer("~/teacher")) == len(tokenizer)


def test_text_recipe_scores_both_models_under_attack_and_says_how_on_the_card(tokenizer, tmp_path, run_recipe,
                                                                               monkeypatch):
    import random

    import recipe_utils
    from transformers import Trainer

    from hf_distill import typo_noise

    _text_teacher_and_data(tokenizer, tmp_path)
    pairs = [(f"a good movie {i}", f"an awful plot {i}") for i in range(24)]
    rows = ["label\tsentence1\tsentence2"] + [f"{i % 2}\t{a}\t{b}" for i, (a, b) in enumerate(pairs)]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    calls = {"pgd": [], "attack": [], "scored": []}
    pgd, attack, evaluate = recipe_utils.evaluate_robustness, recipe_utils.attack_accuracy, Trainer.evaluate

    def recording_pgd(model, data, **kwargs):
        result = pgd(model, data, **kwargs)
        calls["pgd"].append((model, kwargs, result))
        return result

    def recording_attack(predict, texts, labels, **kwargs):
        result = attack(predict, texts, labels, **kwargs)
        calls["attack"].append((texts, labels, kwargs, result))
        return result

    def recording_evaluate(self, data=None, **kwargs):
        calls["scored"].append(data)
        return evaluate(self, data, **kwargs)

    monkeypatch.setattr(recipe_utils, "evaluate_robustness", recording_pgd)
    monkeypatch.setattr(recipe_utils, "attack_accuracy", recording_attack)
    monkeypatch.setattr(Trainer, "evaluate", recording_evaluate)
    result = _text_recipe(run_recipe, tmp_path, "--text_column_name", "sentence1", "--text_pair_column_name",
                          "sentence2", "--robustness_epsilon", "0.5", "--robustness_typo_rate", "0.5",
                          "--robustness_word_attack_samples", "6", "--seed", "7")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "student" / "all_results.json").read_text())

    # Embedding PGD on each model, with the run's seed, reported under the split, metric and budget.
    assert [kwargs["epsilon"] for _, kwargs, _ in calls["pgd"]] == [0.5, 0.5]
    assert all(kwargs["seed"] == 7 and kwargs["steps"] == 3 for _, kwargs, _ in calls["pgd"])
    for role, (_, _, scores) in zip(("teacher", "student"), calls["pgd"], strict=True):
        assert results[f"{role}_validation_accuracy_pgd0.5"] == round(scores["attacked_accuracy"], 4)
    # The word attack reads the first 6 pairs as pairs of word lists, with their labels.
    texts, labels, kwargs, scores = calls["attack"][-1]
    assert texts == [(a.split(), b.split()) for a, b in pairs[:6]] and labels == [i % 2 for i in range(6)]
    assert kwargs == {"budget": 0.3, "seed": 7}
    assert results["student_validation_word_attack_accuracy"] == round(scores["attacked_accuracy"], 4)
    assert results["student_validation_word_attack_clean_accuracy"] == round(scores["clean_accuracy"], 4)
    # the card says how many examples were attacked (it gave the requested count, even past a split's end)
    card = (tmp_path / "student" / "README.md").read_text()
    assert "of the first 6 validation examples (--robustness_word_attack_samples 6)" in card
    # The typo scores come from the split encoded again with half the words of each text misspelt, seeded per row.
    noise = typo_noise(0.5)
    expected = []
    for i, (a, b) in enumerate(pairs):
        rng = random.Random(f"7:{i}")
        expected.append(tokenizer(noise(a, rng), noise(b, rng))["input_ids"])
    noisy = [data for data in calls["scored"] if data is not None and data["input_ids"] == expected]
    assert len(noisy) == 2 and expected != tokenizer([a for a, _ in pairs], [b for _, b in pairs])["input_ids"]
    assert {"teacher_validation_accuracy_typos0.5", "student_validation_accuracy_typos0.5"} <= set(results)
    card = (tmp_path / "student" / "README.md").read_text()
    assert "| validation_accuracy_pgd0.5 |" in card and "| validation_word_attack_success_rate |" in card
    assert "The scores under attack were measured as follows." in card
    assert "| embedding PGD | l2 budget 0.5 on the word embeddings, 3 steps, seed 7" in card
    assert "| typos | one character typo in 0.5 of the words of each text, seeded by 7 per row" in card


def test_ner_recipe_scores_typos_and_refuses_the_word_attack_before_training(tokenizer, tmp_path, run_recipe):
    _, data = _ner_teacher_and_data(tokenizer, tmp_path)
    flags = ["--teacher_model_name_or_path", tmp_path / "teacher", "--student_layers", "0", "--train_file", data,
             "--validation_file", data, "--output_dir", tmp_path / "student", "--max_steps", "2",
             "--per_device_train_batch_size", "4", "--report_to", "none", "--use_cpu", "true",
             "--save_strategy", "no", "--disable_tqdm", "true"]
    refused = run_recipe("distill_ner.py", *flags, "--robustness_word_attack_samples", "5")
    assert refused.returncode != 0 and "whole text; this recipe's task has none" in refused.stderr
    assert not (tmp_path / "student").exists()  # refused before any training
    result = run_recipe("distill_ner.py", *flags, "--robustness_typo_rate", "1.0", "--robustness_epsilon", "2.0")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "student" / "all_results.json").read_text())
    for role in ("teacher", "student"):
        assert 0 <= results[f"{role}_validation_f1_typos1"] <= 1 and 0 <= results[f"{role}_validation_f1_pgd2"] <= 1
    assert "validation_f1_typos1" in result.stderr  # in the logged table


def test_robustness_arguments_are_checked(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    from recipe_utils import RobustnessArguments

    assert not RobustnessArguments().enabled and RobustnessArguments(robustness_typo_rate=0.2).enabled
    for kwargs, message in (({"robustness_epsilon": 0.0}, "no budget"), ({"robustness_steps": 0}, "at least one"),
                            ({"robustness_typo_rate": 1.5}, r"fraction of the words in \(0, 1\]"),
                            ({"robustness_word_attack_samples": 0}, "attacks no example")):
        with pytest.raises(ValueError, match=message):
            RobustnessArguments(**kwargs)


def test_the_cards_data_table_says_when_a_split_was_cut_to_its_first_examples():
    # --max_eval_samples 1000 published the score on the first 1000 test sentences as the test set's.
    import datasets
    from recipe_utils import DataArguments, describe_splits

    rows = datasets.Dataset.from_dict({"x": list(range(5))})
    data = DataArguments(dataset_name="glue", dataset_config_name="sst2", max_train_samples=5, max_eval_samples=10)
    described = describe_splits(data, {"train": rows, "validation": rows})
    assert described == {
        "train": "`glue` (configuration `sst2`), split `train`: 5 examples, the first 5 kept by --max_train_samples",
        "validation": "`glue` (configuration `sst2`), split `validation`: 5 examples",  # fewer than 10: all of it
    }
