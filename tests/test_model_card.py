"""The model card written with every save, and push_to_hub's upload path without a network."""

import os
from types import SimpleNamespace

import pytest
import torch
import transformers.trainer
from conftest import tiny_token_model
from test_trainer import make_args, ner_dataset, ner_trainer

from hf_distill import DistillationArguments
from hf_distill.model_card import build_model_card


def test_card_records_method_data_metrics_and_versions():
    args = DistillationArguments(output_dir="unused", report_to="none", use_cpu=True, temperature=4.0,
                                 final_temperature=1.0, temperature_schedule="cosine", alpha=0.7)
    card = build_model_card(
        task="token_classification", teacher="dslim/bert-base-NER", args=args, model_name="tiny-ner-student",
        dataset="conll2003", student_params=1000, teacher_params=4000,
        evaluation={"teacher": {"validation_f1": 0.91}, "student": {"validation_f1": 0.88},
                    "speed": {"speedup_batch32": 2.0}},
    )
    text = str(card)
    assert card.data.tags == ["distillation", "hf-distill", "token-classification"]
    assert card.data.datasets == ["conll2003"]
    # base_model is where the student's weights came from: the teacher only gave targets, and nothing says more here
    assert card.data.base_model is None
    assert card.data.license is None  # no license claimed for the user: it follows from the teacher's and the data's
    licensed = build_model_card(task="token_classification", teacher="t", args=args, license="cc-by-nc-4.0")
    assert licensed.data.license == "cc-by-nc-4.0" and "license: cc-by-nc-4.0" in str(licensed)
    assert "# tiny-ner-student" in text and "T²·KL" in text
    assert "| temperature | 4.0 |" in text and "| final_temperature | 1.0 |" in text
    assert "| temperature_schedule | cosine |" in text and "| alpha | 0.7 |" in text
    assert "| validation_f1 | 0.91 | 0.88 |" in text
    assert "| student / teacher | 0.25 |" in text and "speedup_batch32" in text
    assert "- transformers " in text and "- torch " in text
    assert "label_smoothing_factor" not in text  # off: not listed
    smoothed = DistillationArguments(output_dir="unused", report_to="none", use_cpu=True, label_smoothing_factor=0.1)
    assert "| label_smoothing_factor | 0.1 |" in str(build_model_card(task="token_classification", teacher="t",
                                                                       args=smoothed))


def test_a_card_names_every_dataset_of_a_mixed_run_with_its_configuration():
    # The card named only the first of several datasets (labelled data mixed with an unlabelled set, say).
    args = DistillationArguments(output_dir="unused", report_to="none", use_cpu=True)
    card = build_model_card(task="token_classification", teacher="t", args=args,
                            dataset=["conll2003", "unlabelled.txt", "wikiann"], dataset_config=[None, None, "en"])
    assert "on `conll2003`, `unlabelled.txt` and `wikiann` (configuration `en`)." in str(card)
    assert card.data.datasets == ["conll2003", "wikiann"]  # the Hub ids; a local file is no Hub dataset
    two = build_model_card(task="token_classification", teacher="t", args=args, dataset=["glue", "imdb"],
                           dataset_config=["sst2", None])
    assert "on `glue` (configuration `sst2`) and `imdb`." in str(two)
    with pytest.raises(ValueError, match=r"names 2 dataset\(s\).*1 configuration\(s\).*one per dataset"):
        build_model_card(task="token_classification", teacher="t", args=args, dataset=["glue", "imdb"],
                         dataset_config="sst2")


def test_a_run_bounded_by_max_steps_says_so_instead_of_its_epochs():
    args = DistillationArguments(output_dir="unused", report_to="none", use_cpu=True, max_steps=2)
    text = str(build_model_card(task="token_classification", teacher="t", args=args))
    assert "| max_steps | 2 |" in text and "num_train_epochs" not in text
    by_epochs = DistillationArguments(output_dir="unused", report_to="none", use_cpu=True, num_train_epochs=2)
    assert "| num_train_epochs | 2 |" in str(build_model_card(task="token_classification", teacher="t",
                                                                args=by_epochs))


def test_a_multi_process_runs_card_gives_its_processes_and_total_batch(monkeypatch):
    # Without them a card from 2 processes read like a run with half the batch.
    args = DistillationArguments(output_dir="unused", report_to="none", use_cpu=True, per_device_train_batch_size=8,
                                 gradient_accumulation_steps=2)
    assert "processes" not in str(build_model_card(task="token_classification", teacher="t", args=args))
    monkeypatch.setattr(DistillationArguments, "world_size", property(lambda self: 4))
    text = str(build_model_card(task="token_classification", teacher="t", args=args))
    assert "| processes | 4 |" in text and "| total train batch size | 64 |" in text


def test_push_to_hubs_dataset_args_name_the_datasets_configuration(tokenizer, tmp_path, monkeypatch):
    # Trainer.push_to_hub(dataset=..., dataset_args=...) passes the configuration as `dataset_args`.
    trainer, fake = _trained_for_the_hub(tokenizer, tmp_path, monkeypatch)
    trainer.push_to_hub(dataset="glue", dataset_args="mrpc")
    assert "on `glue` (configuration `mrpc`)." in fake.uploads[-1]["files"]["README.md"]
    trainer.dataset_name, trainer.dataset_config_name = "glue", "sst2"  # as the recipes set them
    trainer.push_to_hub()
    assert "on `glue` (configuration `sst2`)." in fake.uploads[-1]["files"]["README.md"]
    trainer.push_to_hub(dataset="conll2003")  # another dataset given here: the recipe's configuration is not its
    assert "on `conll2003`." in fake.uploads[-1]["files"]["README.md"]
    trainer.push_to_hub(dataset=["glue", "imdb"], dataset_args=["sst2", None])  # as Trainer pairs them
    assert "on `glue` (configuration `sst2`) and `imdb`." in fake.uploads[-1]["files"]["README.md"]


@pytest.mark.usefixtures("skip_gc_collect")
def test_the_card_gives_the_batch_size_auto_find_batch_size_trained_with(tokenizer, tmp_path):
    # The card read the requested per-device batch (4) although every step ran with the 2 that fitted.
    from transformers import DataCollatorForTokenClassification

    from hf_distill import DistillationTrainer

    class FitsTwo(DistillationTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training and inputs["input_ids"].shape[0] > 2:
                raise RuntimeError("DefaultCPUAllocator: can't allocate memory")  # an out-of-memory error
            return super().compute_loss(model, inputs, *args, **kwargs)

    trainer = FitsTwo(model=tiny_token_model(tokenizer, layers=1, seed=1),
                      teacher_model=tiny_token_model(tokenizer, layers=2, seed=2),
                      args=make_args(tmp_path, per_device_train_batch_size=4, auto_find_batch_size=True, max_steps=1),
                      train_dataset=ner_dataset(tokenizer), data_collator=DataCollatorForTokenClassification(tokenizer),
                      processing_class=tokenizer)
    trainer.train()
    trainer.save_model()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| per_device_train_batch_size | 2 (auto_find_batch_size, from 4) |" in card


def test_an_evaluation_report_from_evaluate_is_the_students_and_another_shape_is_refused(tokenizer, tmp_path):
    # `trainer.evaluation_report = trainer.evaluate()` gave an empty, malformed table: only the
    # {"student", "teacher", "speed"} layout was read, and anything else was dropped without a word.
    trainer = ner_trainer(tokenizer, tmp_path, max_steps=1)
    trainer.train()
    trainer.evaluation_report = trainer.evaluate(ner_dataset(tokenizer))
    trainer.save_model()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| metric | student |" in card and "| eval_loss |" in card
    # how the evaluation ran (its time, its speed, the epoch) is not a score of the model
    for figure in ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "| epoch |"):
        assert figure not in card
    for bad in ({"student": 0.9}, {"student": {"f1": 0.9}, "validation": {"f1": 0.8}}, {"notes": "good"}):
        with pytest.raises(ValueError, match="evaluation report has keys"):
            trainer.evaluation_report = bad
    assert "eval_loss" in trainer.evaluation_report["student"]  # a refused report leaves the last good one


def test_scores_under_attack_come_with_how_they_were_measured():
    args = DistillationArguments(output_dir="unused", report_to="none", use_cpu=True)
    card = str(build_model_card(
        task="sequence_classification", teacher="t", args=args,
        evaluation={"teacher": {"validation_accuracy": 0.9, "validation_accuracy_pgd0.5": 0.4},
                    "student": {"validation_accuracy": 0.88, "validation_accuracy_pgd0.5": 0.6},
                    "robustness": {"embedding PGD": "l2 budget 0.5, 3 steps"}},
    ))
    assert "| validation_accuracy_pgd0.5 | 0.4 | 0.6 |" in card
    assert card.index("measured as follows") < card.index("| embedding PGD | l2 budget 0.5, 3 steps |")
    with pytest.raises(ValueError, match="how it was measured"):
        build_model_card(task="sequence_classification", teacher="t", args=args,
                         evaluation={"student": {"f1": 0.9}, "robustness": "pgd"})


def test_local_paths_are_not_claimed_as_hub_ids():
    args = DistillationArguments(output_dir="unused", report_to="none", use_cpu=True)
    card = build_model_card(task="sequence_classification", teacher="/tmp/my-teacher", args=args,
                            dataset="train.tsv")
    assert card.data.base_model is None and card.data.datasets is None
    assert "text-classification" in card.data.tags


def test_hub_ids_with_a_version_dot_are_hub_ids():
    from hf_distill.model_card import _is_hub_id

    assert _is_hub_id("Qwen/Qwen2.5-0.5B") and _is_hub_id("EleutherAI/pythia-1.4b") and _is_hub_id("bert-base-cased")
    assert not _is_hub_id("train.tsv") and not _is_hub_id("data/train.jsonl") and not _is_hub_id("a/b/c")


def test_an_ensembles_card_counts_every_teacher(tokenizer, tmp_path):
    small, big = tiny_token_model(tokenizer, layers=1, seed=2), tiny_token_model(tokenizer, layers=4, seed=3)
    trainer = ner_trainer(tokenizer, tmp_path, teacher=[small, big])
    trainer.create_model_card(output_dir=str(tmp_path))
    total = sum(p.numel() for m in (small, big) for p in m.parameters())
    assert f"| teacher parameters | {total:,} |" in (tmp_path / "README.md").read_text()


def test_card_lists_the_strategies_in_use_and_only_those():
    plain = DistillationArguments(output_dir="unused", report_to="none", use_cpu=True)
    assert "Other distillation strategies" not in str(build_model_card(task="token_classification", teacher="t",
                                                                        args=plain))
    args = DistillationArguments(output_dir="unused", report_to="none", use_cpu=True, hidden_distill_weight=0.5,
                                 hidden_distill_loss="cosine", teacher_ensemble="weighted", teacher_weights=[2.0, 1.0],
                                 augment_mask_prob=0.1)
    text = str(build_model_card(task="token_classification", teacher="an ensemble", args=args))
    assert "### Other distillation strategies" in text
    for row in ("| hidden_distill_weight | 0.5 |", "| hidden_distill_loss | cosine |", "| teacher_ensemble | weighted |",
                "| teacher_weights | [2.0, 1.0] |", "| augment_mask_prob | 0.1 |"):
        assert row in text
    assert "ema_decay" not in text and "attention_distill_weight" not in text


def test_ema_card_names_the_student_as_its_own_teacher(tokenizer, tmp_path):
    from test_trainer import make_args
    from transformers import DataCollatorForTokenClassification

    from hf_distill import DistillationTrainer

    trainer = DistillationTrainer(model=tiny_token_model(tokenizer, layers=1), processing_class=tokenizer,
                                  args=make_args(tmp_path, self_distillation="ema", ema_decay=0.99),
                                  train_dataset=ner_dataset(tokenizer),
                                  data_collator=DataCollatorForTokenClassification(tokenizer))
    trainer.create_model_card(output_dir=str(tmp_path))
    text = (tmp_path / "README.md").read_text()
    assert "EMA teacher, decay 0.99" in text and "| self_distillation | ema |" in text
    assert "moving average of the student, updated after every optimizer step" in text
    assert "frozen and never updated" not in text  # true of a separate teacher, not of an EMA one
    # The recipes cut the student from a loaded model and score that model as "teacher": the card named the EMA
    # teacher only, and gave the other model's figures under its name.
    start = tiny_token_model(tokenizer, layers=2)
    start.config._name_or_path = "my-org/ner-teacher"
    trainer.original_teacher = start
    trainer.evaluation_report = {"teacher": {"validation_f1": 0.9}, "student": {"validation_f1": 0.8}}
    trainer.create_model_card(output_dir=str(tmp_path))
    text = (tmp_path / "README.md").read_text()
    # The student may not have started from that model (a recipe's --model_name_or_path, or a cut from a pretrained
    # base of the same depth), which the card cannot tell: it must not say it did.
    assert "started from" not in text
    assert "my-org/ner-teacher is the teacher of the size and evaluation tables" in text
    assert f"| teacher parameters | {sum(p.numel() for p in start.parameters()):,} |" in text


def test_finetuned_from_names_the_teacher_over_the_teachers_own_path(tokenizer, tmp_path):
    # Trainer.create_model_card(finetuned_from=...) is the caller's word on where the model came from.
    teacher = tiny_token_model(tokenizer, layers=2, seed=2)
    teacher.config._name_or_path = "org/teacher"
    trainer = ner_trainer(tokenizer, tmp_path, teacher=teacher)
    trainer.create_model_card(output_dir=str(tmp_path))
    assert "org/teacher" in (tmp_path / "README.md").read_text()
    trainer.create_model_card(finetuned_from="my-org/override", output_dir=str(tmp_path))
    text = (tmp_path / "README.md").read_text()
    assert "my-org/override" in text and "org/teacher" not in text


def test_the_card_records_a_teacher_run_in_another_precision():
    args = DistillationArguments(output_dir="unused", report_to="none", use_cpu=True, teacher_dtype="bfloat16")
    assert "| teacher_dtype | bfloat16 |" in str(build_model_card(task="token_classification", teacher="t", args=args))
    default = DistillationArguments(output_dir="unused", report_to="none", use_cpu=True)
    assert "teacher_dtype" not in str(build_model_card(task="token_classification", teacher="t", args=default))


def test_every_save_writes_the_card(tokenizer, tmp_path):
    trainer = ner_trainer(tokenizer, tmp_path, max_steps=2, save_strategy="steps", save_steps=1)
    trainer.dataset_name = "conll2003"
    trainer.train()
    for directory in ("checkpoint-1", "checkpoint-2"):
        text = (tmp_path / "out" / directory / "README.md").read_text()
        assert "hf-distill" in text and "conll2003" in text


class FakeHubApi:
    """Records what Trainer.push_to_hub would send to the Hub."""

    def __init__(self):
        self.created, self.uploads = [], []

    def create_repo(self, repo_id, token=None, private=None, exist_ok=False, **_):
        self.created.append(repo_id)
        return SimpleNamespace(repo_id=f"me/{repo_id.split('/')[-1]}")

    def upload_folder(self, repo_id, folder_path, **options):
        from pathlib import Path

        files = {p.name: p.read_text() if p.name == "README.md" else p.stat().st_size
                 for p in Path(folder_path).iterdir() if p.is_file()}
        self.uploads.append({"repo_id": repo_id, "files": files, **options})
        # A finished upload, as a plain result or as the future Trainer's checkpoint pushes wait on.
        return SimpleNamespace(commit_url="https://example.invalid/commit", done=lambda: True, cancel=lambda: None)


def _trained_for_the_hub(tokenizer, tmp_path, monkeypatch):
    """A one-step trainer with `push_to_hub` set, and the fake Hub its uploads go to."""
    fake = FakeHubApi()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: fake)
    trainer = ner_trainer(tokenizer, tmp_path, max_steps=1, push_to_hub=True, hub_model_id="tiny-student",
                          hub_strategy="end")
    trainer.train()
    return trainer, fake


def test_push_to_hub_uploads_student_and_card(tokenizer, tmp_path, monkeypatch):
    trainer, fake = _trained_for_the_hub(tokenizer, tmp_path, monkeypatch)
    trainer.push_to_hub(dataset="conll2003")
    assert fake.created == ["tiny-student"]
    upload = fake.uploads[-1]
    assert upload["repo_id"] == "me/tiny-student"
    assert "model.safetensors" in upload["files"] and "config.json" in upload["files"]
    card = upload["files"]["README.md"]
    assert "distillation" in card and "conll2003" in card and "tiny-student" in card
    # Only the student: the uploaded weights are the student's size, not the teacher's.
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(weights) == set(tiny_token_model(tokenizer, layers=1).state_dict())
    assert len(ner_dataset(tokenizer)) > 0


def test_a_pushed_checkpoint_holds_the_state_a_resume_needs(tokenizer, tmp_path, monkeypatch):
    from hf_distill.files import CHECKPOINT_MARKER
    from hf_distill.trainer import PROJECTOR_FILE

    fake = FakeHubApi()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: fake)
    trainer = ner_trainer(tokenizer, tmp_path, student=tiny_token_model(tokenizer, layers=1, seed=1, hidden=16),
                          max_steps=1, save_strategy="steps", save_steps=1, push_to_hub=True,
                          hub_model_id="tiny-student", hub_strategy="checkpoint", hidden_distill_weight=1.0,
                          feature_layer_map="0:0")
    trainer.train()
    pushed = [u for u in fake.uploads if u.get("path_in_repo") == "last-checkpoint"]
    assert pushed and PROJECTOR_FILE in pushed[0]["files"]  # written before Trainer's upload, not after
    # the completion marker too (it carries the skipped batches' count), which was written after the upload
    assert CHECKPOINT_MARKER in pushed[0]["files"]


def test_every_save_pushes_the_checkpoints_card_with_its_weights(tokenizer, tmp_path, monkeypatch):
    # Trainer copies only the weights, config and tokenizer of a checkpoint into the folder it uploads: the repo held
    # a student with no card until the end of training (and none at all if the run died first).
    fake = FakeHubApi()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: fake)
    trainer = ner_trainer(tokenizer, tmp_path, max_steps=4, save_strategy="steps", save_steps=2, push_to_hub=True,
                          hub_model_id="tiny-student", hub_strategy="every_save", temperature=4.0,
                          final_temperature=1.0, temperature_schedule="linear")
    trainer.train()
    pushes = [u for u in fake.uploads if u.get("commit_message", "").startswith("Training in progress")]
    assert len(pushes) == 2 and all("model.safetensors" in u["files"] for u in pushes)
    first = pushes[0]["files"]["README.md"]
    assert "| optimizer steps behind these weights | 2 of 4 planned |" in first
    assert first == (tmp_path / "out" / "checkpoint-2" / "README.md").read_text()


def test_a_cached_teachers_card_says_how_its_soft_targets_were_stored(tokenizer, tmp_path):
    from transformers import DataCollatorForTokenClassification

    from hf_distill import DistillationTrainer, build_teacher_cache

    collator, data = DataCollatorForTokenClassification(tokenizer), ner_dataset(tokenizer)
    teacher = tiny_token_model(tokenizer, layers=1, seed=2)
    for top_k, expected in ((None, "every logit (fp16)"), (2, "the top 2 of 7 logits and the tail mass")):
        cache = build_teacher_cache(teacher, data, collator, str(tmp_path / f"cache{top_k}"), top_k=top_k,
                                    progress_bar=False)
        trainer = DistillationTrainer(model=tiny_token_model(tokenizer, layers=1, seed=1), teacher_cache=cache,
                                      args=DistillationArguments(output_dir=str(tmp_path / "out"), report_to="none",
                                                                 use_cpu=True, adversarial="fgm",
                                                                 adv_perturb_special_tokens=True),
                                      train_dataset=data, data_collator=collator, processing_class=tokenizer)
        trainer.state.global_step = 3  # as after training: before any step, no step was attacked
        trainer.create_model_card()
        text = (tmp_path / "out" / "README.md").read_text()
        assert f"| teacher logits | cached: {expected}" in text and str(tmp_path) not in text
        assert "| adv_perturb_special_tokens | True |" in text
        # an unnamed teacher: the cache's folder; its size, recorded by the cache, on the card all the same
        assert f"teacher `cached logits (cache{top_k})`" in text
        assert f"| teacher parameters | {sum(p.numel() for p in teacher.parameters()):,} |" in text
    # a named teacher is named on the card of a student distilled from its cache, which recorded the name
    teacher.config._name_or_path = "acme/ner-teacher"
    trainer.teacher_cache = build_teacher_cache(teacher, data, collator, str(tmp_path / "named"), progress_bar=False)
    trainer.create_model_card()
    assert "teacher `acme/ner-teacher, its logits read from a cache`" in (tmp_path / "out" / "README.md").read_text()


def test_save_model_with_push_to_hub_keeps_the_weights_and_uploads_them_once(tokenizer, tmp_path, monkeypatch):
    # Trainer.save_model pushes when args.push_to_hub is set, and its push saves again: the student's files must end
    # up both in output_dir and in the one upload.
    from transformers import AutoModelForTokenClassification

    trainer, fake = _trained_for_the_hub(tokenizer, tmp_path, monkeypatch)
    fake.uploads.clear()
    trainer.save_model()
    assert "model.safetensors" in os.listdir(tmp_path / "out")
    AutoModelForTokenClassification.from_pretrained(tmp_path / "out")
    assert len(fake.uploads) == 1 and "model.safetensors" in fake.uploads[0]["files"]
    assert "hf-distill" in fake.uploads[0]["files"]["README.md"]


def test_a_teacher_cache_inside_the_pushed_folder_is_refused(tokenizer, tmp_path):
    from transformers import DataCollatorForTokenClassification

    from hf_distill import DistillationTrainer, build_teacher_cache

    collator, data = DataCollatorForTokenClassification(tokenizer), ner_dataset(tokenizer)
    cache = build_teacher_cache(tiny_token_model(tokenizer, layers=1, seed=2), data, collator,
                                str(tmp_path / "out" / "teacher_cache"), progress_bar=False)
    with pytest.raises(ValueError, match=r"inside `output_dir`.*outside it"):
        DistillationTrainer(model=tiny_token_model(tokenizer, layers=1), teacher_model=None, teacher_cache=cache,
                            args=make_args(tmp_path, push_to_hub=True, hub_model_id="tiny-student"),
                            train_dataset=data, data_collator=collator, processing_class=tokenizer)
    # Pushed by a direct call, without args.push_to_hub: refused before anything is uploaded.
    trainer = DistillationTrainer(model=tiny_token_model(tokenizer, layers=1), teacher_model=None, teacher_cache=cache,
                                  args=make_args(tmp_path, hub_model_id="tiny-student"), train_dataset=data,
                                  data_collator=collator, processing_class=tokenizer)
    with pytest.raises(ValueError, match=r"inside `output_dir`"):
        trainer.push_to_hub()


def _card(**kwargs):
    steps = kwargs.pop("steps_trained", None)
    task = kwargs.pop("task", "token_classification")
    args = DistillationArguments(output_dir="unused", report_to="none", use_cpu=True, **kwargs)
    return str(build_model_card(task=task, teacher="t", args=args, steps_trained=steps))


def test_the_card_shows_the_attack_settings_its_method_reads_and_the_loss_it_trained_on():
    fgm = _card(adversarial="fgm", adv_epsilon=0.3, steps_trained=10)
    assert "| adv_weight | 1.0 |" in fgm and "adv_steps" not in fgm and "adv_step_size" not in fgm
    assert "adv_init_scale" not in fgm and "added 1.0 × the distillation term" in fgm
    freelb = _card(adversarial="freelb", adv_epsilon=0.5, adv_steps=2, steps_trained=10)
    assert "| adv_steps | 2 |" in freelb and "adv_weight" not in freelb
    # FreeLB with the kd objective trains on the distillation term alone, in place of the alpha-mixed loss.
    assert "in place of the loss above" in freelb and "no label term" in freelb
    pgd = _card(adversarial="pgd", adv_steps=2, adv_objective="ce", steps_trained=10)
    assert "| adv_steps | 2 |" in pgd and "cross-entropy on the labels of the perturbed inputs" in pgd


def test_a_born_again_card_says_so_from_two_generations():
    args = DistillationArguments(output_dir="unused", report_to="none", use_cpu=True)
    card = str(build_model_card(task="token_classification", teacher="t", args=args, generations=2))
    assert "| born-again generations | 2 (this is the last;" in card
    assert "born-again" not in str(build_model_card(task="token_classification", teacher="t", args=args))


def test_the_card_says_when_the_attack_never_started():
    card = _card(adversarial="fgm", adv_start_step=50, steps_trained=20)
    assert "saved at step 20, no step had been attacked" in card and "| adv_epsilon |" not in card
    at_start = _card(adversarial="fgm", adv_start_step=20, steps_trained=20)  # step 21 would be the first attacked
    assert "no step had been attacked" in at_start and "| adv_epsilon |" not in at_start
    after = _card(adversarial="fgm", adv_start_step=20, steps_trained=21)
    assert "no step had been attacked" not in after and "| adv_epsilon |" in after


def test_the_card_gives_the_layer_map_of_an_attention_only_run():
    card = _card(attention_distill_weight=0.5, feature_layer_map="1:2")
    assert "| feature_layer_map | 1:2 |" in card and "hidden_distill_loss" not in card


def test_the_card_of_the_best_checkpoint_describes_that_checkpoints_training(tokenizer, tmp_path):
    # load_best_model_at_end: the saved weights are those of the best checkpoint, here one saved before the attack.
    from transformers import DataCollatorForTokenClassification, TrainerCallback

    from hf_distill import DistillationTrainer

    args = make_args(tmp_path, adversarial="fgm", adv_start_step=2, max_steps=4, eval_strategy="steps", eval_steps=1,
                     save_strategy="steps", save_steps=1, load_best_model_at_end=True, metric_for_best_model="loss",
                     greater_is_better=True, temperature=4.0, final_temperature=1.0, temperature_schedule="linear")
    trainer = DistillationTrainer(model=tiny_token_model(tokenizer, layers=1, seed=1),
                                  teacher_model=tiny_token_model(tokenizer, layers=2, seed=2), args=args,
                                  train_dataset=ner_dataset(tokenizer), eval_dataset=ner_dataset(tokenizer),
                                  data_collator=DataCollatorForTokenClassification(tokenizer),
                                  processing_class=tokenizer)

    class WorstLater(TrainerCallback):  # make step 1 the best checkpoint
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            metrics["eval_loss"] = -float(state.global_step)

    trainer.add_callback(WorstLater())
    trainer.train()
    assert trainer.state.best_global_step == 1
    trainer.save_model()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "saved at step 1, no step had been attacked" in card
    # The planned schedule, and how much of it these weights saw: step 1 trained at the start temperature.
    assert "| temperature_schedule | linear |" in card and "| optimizer steps behind these weights | 1 of 4 planned |" in card
    assert "| temperature at that last step | 4.0 |" in card


def test_a_checkpoint_card_gives_the_scheduled_values_of_its_last_step():
    args = DistillationArguments(output_dir="unused", report_to="none", use_cpu=True, alpha=0.9, final_alpha=0.1,
                                 alpha_schedule="linear", temperature=3.0)
    card = str(build_model_card(task="token_classification", teacher="t", args=args, steps_trained=3,
                                planned_steps=5))
    # Its last step was step 3 (progress 2/5): alpha 0.9 - 0.8 * 0.4. The constant temperature gets no row.
    assert "| optimizer steps behind these weights | 3 of 5 planned |" in card and "| alpha at that last step | 0.58 |" in card
    assert "temperature at that last step" not in card
    finished = str(build_model_card(task="token_classification", teacher="t", args=args, steps_trained=5,
                                    planned_steps=5))
    assert "planned" not in finished  # the whole run: nothing to add


def test_the_card_leaves_out_distill_positions_for_sequence_classification():
    assert "distill_positions" not in _card(task="sequence_classification")
    assert "| distill_positions | first_subword |" in _card()


def test_a_method_without_a_temperature_lists_none():
    for settings in ({"distill_loss": "mse"}, {"teacher_labels": "hard"}):
        card = _card(temperature=4.0, **settings)
        assert "temperature" not in card, settings
    assert "| temperature | 4.0 |" in _card(temperature=4.0)


def test_hard_teacher_labels_list_no_distill_loss_that_never_ran():
    # teacher_labels="hard" trains a cross-entropy on the teacher's argmax whatever distill_loss says: the card's
    # "| distill_loss | kl |" row named a loss that never ran, under a sentence saying which one did.
    for loss in ("kl", "soft_ce"):
        card = _card(teacher_labels="hard", distill_loss=loss)
        assert "| distill_loss |" not in card and "| teacher_labels | hard |" in card
    assert "| distill_loss | soft_ce |" in _card(distill_loss="soft_ce")


def test_a_teacher_loaded_from_an_adapter_folder_is_named_by_that_folder(tokenizer, tmp_path):
    # A LoRA teacher's config names only its base model: the card called the untuned base "the teacher" (and, for a
    # Hub base, published it as base_model). The folder load_model read is what taught.
    peft = pytest.importorskip("peft")
    from hf_distill.loading import load_model

    tiny_token_model(tokenizer, layers=2, seed=2).save_pretrained(tmp_path / "base")
    base = load_model(str(tmp_path / "base"), "token_classification")
    lora = peft.LoraConfig(task_type=peft.TaskType.TOKEN_CLS, r=2, target_modules=["query", "value"])
    peft.get_peft_model(base, lora).save_pretrained(tmp_path / "lora-teacher")
    teacher = load_model(str(tmp_path / "lora-teacher"), "token_classification", require_all_weights=True)
    trainer = ner_trainer(tokenizer, tmp_path, teacher=teacher, output_dir=str(tmp_path / "out"))
    trainer.create_model_card()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "teacher `lora-teacher (local folder)`" in card and "`base" not in card
    assert str(tmp_path) not in card  # a path on the training machine is not published


def test_a_later_save_keeps_the_metadata_given_to_push_to_hub(tokenizer, tmp_path, monkeypatch):
    # Every save rewrites the card: the license, language, tags and datasets given to push_to_hub were dropped by the
    # next save, and a later push (a checkpoint's, or save_model's with push_to_hub set) published a card without them.
    trainer, fake = _trained_for_the_hub(tokenizer, tmp_path, monkeypatch)
    trainer.push_to_hub(license="apache-2.0", language="en", tags=["ner"], dataset_tags="conll2003",
                        dataset="CoNLL-2003 (English)")
    trainer.save_model()
    card = fake.uploads[-1]["files"]["README.md"]
    assert card == (tmp_path / "out" / "README.md").read_text()
    for line in ("license: apache-2.0", "language: en", "- ner", "datasets:\n- conll2003"):
        assert line in card
    assert "on `CoNLL-2003 (English)`." in card and "# tiny-student" in card


def test_the_title_is_the_repositorys_name_on_every_card(tokenizer, tmp_path):
    trainer = ner_trainer(tokenizer, tmp_path, hub_model_id="my-org/ner-student")
    trainer.create_model_card()
    assert "# ner-student\n" in (tmp_path / "out" / "README.md").read_text()  # as Trainer.push_to_hub names it


def test_dataset_tags_are_the_hub_datasets_and_the_dataset_the_words_for_them():
    # The Transformers example scripts push with dataset_tags="glue", dataset_args="sst2", dataset="GLUE SST2".
    args = DistillationArguments(output_dir="unused", report_to="none", use_cpu=True)
    card = build_model_card(task="sequence_classification", teacher="t", args=args, dataset="GLUE SST2",
                            dataset_config="sst2", dataset_tags="glue")
    assert card.data.datasets == ["glue"] and "on `GLUE SST2` (configuration `sst2`)." in str(card)
    tags_only = build_model_card(task="sequence_classification", teacher="t", args=args, dataset_tags=["glue"])
    assert tags_only.data.datasets == ["glue"] and "on `glue`." in str(tags_only)


def test_base_model_is_where_the_students_weights_came_from():
    # The teacher only supplied targets: a student started from another checkpoint was published as a fine-tune of
    # the teacher, and where it did start was nowhere on the card.
    args = DistillationArguments(output_dir="unused", report_to="none", use_cpu=True)
    loaded = build_model_card(task="sequence_classification", teacher="acme/bert-base-sst2", args=args,
                              student_start="google/bert_uncased_L-2_H-128_A-2")
    assert loaded.data.base_model == "google/bert_uncased_L-2_H-128_A-2"
    assert "from the teacher `acme/bert-base-sst2`. The student started from `google/bert_uncased_L-2_H-128_A-2`." \
        in str(loaded)
    cut = build_model_card(task="sequence_classification", teacher="acme/bert-base-sst2", args=args,
                           cut_from=("acme/bert-base-sst2", [0, 2, 4], 6))
    assert cut.data.base_model == "acme/bert-base-sst2"
    assert "started as 3 of the 6 layers ([0, 2, 4]) of `acme/bert-base-sst2`, cut by `hf_distill.create_student`." \
        in str(cut)
    local = build_model_card(task="sequence_classification", teacher="t", args=args, student_start="/data/run/base")
    assert local.data.base_model is None and "started from `base (local folder)`." in str(local)
    unnamed = build_model_card(task="sequence_classification", teacher="t", args=args, cut_from=("", [1], 2))
    assert unnamed.data.base_model is None and "started as 1 of the 2 layers ([1]) of an unnamed model" in str(unnamed)
    adapter = build_model_card(task="sequence_classification", teacher="t", args=args, adapter_of="org/base",
                               student_start="org/base")
    assert adapter.data.base_model == "org/base"


def test_the_trainers_card_says_where_the_student_started_and_names_local_models_by_their_folder(tokenizer,
                                                                                                 tmp_path):
    from hf_distill import create_student

    teacher = tiny_token_model(tokenizer, layers=2, seed=2)
    teacher.config._name_or_path = "acme/ner-teacher"
    trainer = ner_trainer(tokenizer, tmp_path, student=create_student(teacher, [1]), teacher=teacher)
    trainer.create_model_card()
    text = (tmp_path / "out" / "README.md").read_text()
    assert "base_model: acme/ner-teacher" in text and "started as 1 of the 2 layers ([1]) of `acme/ner-teacher`" in text
    # A student loaded from a folder, taught by a teacher loaded from another: named by the folders, not the paths.
    teacher.config._name_or_path = str(tmp_path / "runs" / "my-teacher")
    student = tiny_token_model(tokenizer, layers=1, seed=1)
    student.config._name_or_path = str(tmp_path / "runs" / "small-start")
    trainer = ner_trainer(tokenizer, tmp_path, student=student, teacher=teacher)
    trainer.create_model_card()
    text = (tmp_path / "out" / "README.md").read_text()
    assert "teacher `my-teacher (local folder)`" in text and "started from `small-start (local folder)`" in text
    assert str(tmp_path) not in text and "base_model" not in text


def test_the_card_gives_the_learning_rate_of_an_optimizer_passed_to_the_trainer(tokenizer, tmp_path):
    # The card gave args.learning_rate (1e-3 here) while the optimizer the user passed trained at its own rate.
    student = tiny_token_model(tokenizer, layers=1, seed=1)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    trainer = ner_trainer(tokenizer, tmp_path, student=student, max_steps=1)
    trainer.optimizer = optimizer  # as `optimizers=(optimizer, None)` sets it
    trainer.train()
    trainer.create_model_card()
    text = (tmp_path / "out" / "README.md").read_text()
    assert "| learning_rate | 0.1 (set by the SGD optimizer; `learning_rate` 0.001 was not used) |" in text
    plain = ner_trainer(tokenizer, tmp_path, max_steps=1)
    plain.train()
    plain.create_model_card()
    assert "| learning_rate | 0.001 |" in (tmp_path / "out" / "README.md").read_text()


def test_the_card_tables_what_each_split_was():
    args = DistillationArguments(output_dir="unused", report_to="none", use_cpu=True)
    text = str(build_model_card(task="token_classification", teacher="t", args=args,
                                data_splits={"train": "`train.txt` (local file), its first 3000 examples",
                                             "validation": "`dev.txt` (local file)"}))
    assert "## Data\n\n| | |\n|---|---|\n| train | `train.txt` (local file), its first 3000 examples |" in text
    assert "## Data" not in str(build_model_card(task="token_classification", teacher="t", args=args))
