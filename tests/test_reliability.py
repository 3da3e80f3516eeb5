"""Exact resume, a real SIGKILL mid-run, incomplete checkpoints, and NaN/inf that is caught and named."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_token_model
from safetensors.torch import load_file
from test_trainer import ner_dataset, ner_trainer
from transformers import TrainerCallback

from hf_distill.files import CHECKPOINT_MARKER

HERE = Path(__file__).resolve().parent


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def _resumable(tokenizer, tmp_path, out, callbacks=None):
    # Everything random a resume must restore: the sampler, dropout, PGD's random start, the token augmentation.
    trainer = ner_trainer(
        tokenizer, tmp_path, student=tiny_token_model(tokenizer, layers=1, seed=1), output_dir=str(tmp_path / out),
        max_steps=6, save_steps=3, save_strategy="steps", logging_steps=1, train_sampling_strategy="random",
        temperature=4.0, final_temperature=1.0, temperature_schedule="cosine", adversarial="pgd", adv_steps=2,
        adv_init_scale=0.3, augment_mask_prob=0.3,
    )
    for callback in callbacks or []:
        trainer.add_callback(callback)
    return trainer


def test_interrupted_and_resumed_run_ends_like_the_uninterrupted_one(tokenizer, tmp_path):
    full = _resumable(tokenizer, tmp_path, "full")
    full.train()
    cut = _resumable(tokenizer, tmp_path, "cut", callbacks=[StopAt(3)])
    cut.train()
    assert cut.state.global_step == 3 and (tmp_path / "cut" / "checkpoint-3" / CHECKPOINT_MARKER).is_file()
    resumed = _resumable(tokenizer, tmp_path, "cut")
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 6
    for key, value in full.model.state_dict().items():
        assert torch.allclose(value, resumed.model.state_dict()[key], atol=1e-6), key

    def schedule(trainer):
        return {h["step"]: h["temperature"] for h in trainer.state.log_history if "temperature" in h}

    assert schedule(resumed) == schedule(full)  # same logged schedule values, the resumed half included
    assert set(schedule(full)) == set(range(1, 7))


def test_resume_skips_an_incomplete_checkpoint(tokenizer, tmp_path, caplog):
    cut = _resumable(tokenizer, tmp_path, "run", callbacks=[StopAt(3)])
    cut.train()
    broken = tmp_path / "run" / "checkpoint-5"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"half-written")
    resumed = _resumable(tokenizer, tmp_path, "run")
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 6
    assert "checkpoint-5 is incomplete" in caplog.text
    with pytest.raises(ValueError, match=r"incomplete checkpoint .*Resume from .*checkpoint-(3|6)"):
        _resumable(tokenizer, tmp_path, "run").train(resume_from_checkpoint=str(broken))


def test_resume_with_no_complete_checkpoint_says_so(tokenizer, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"No complete checkpoint to resume from"):
        _resumable(tokenizer, tmp_path, "empty").train(resume_from_checkpoint=True)


def test_sigkill_mid_run_then_resume_finishes_like_an_uninterrupted_run(tmp_path):
    script = str(HERE / "kill_run.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, script, str(killed), "slow"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    import kill_run  # the uninterrupted run, in this process while the other one starts up

    kill_run.main(str(tmp_path / "straight"), slow=False, resume=False)
    deadline = time.time() + 240
    while not (killed / "checkpoint-8" / CHECKPOINT_MARKER).exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint appeared in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "final").exists()
    resumed = subprocess.run([sys.executable, script, str(killed), "resume"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(str(killed / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def _poison_teacher(trainer, calls=(0,)):
    seen = []

    def hook(module, args, output):
        seen.append(1)
        if len(seen) - 1 in calls:
            output["logits"][0, 1] = float("nan")
        return output

    trainer.teacher_model.register_forward_hook(hook)


def test_nan_teacher_logits_skip_the_batch_and_are_counted(tokenizer, tmp_path, caplog):
    trainer = ner_trainer(tokenizer, tmp_path, max_steps=3, logging_steps=1)
    _poison_teacher(trainer)
    trainer.train()
    assert trainer.skipped_batches == 1
    assert "Non-finite values in the teacher's logits at step 1" in caplog.text
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs[0]["skipped_batches"] == 1 and "kd_loss" not in logs[0]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(torch.isfinite(torch.tensor(h["kd_loss"])) for h in logs[1:])


def test_an_evaluation_under_the_train_prefix_after_skipped_batches_is_left_alone(tokenizer, tmp_path):
    # `log` took any `train_loss` for the run's closing metrics and scaled it by (trained + skipped) / trained:
    # `evaluate(train_set, metric_key_prefix="train")` returned 4/3 of the loss, and a stray skipped_batches.
    trainer = ner_trainer(tokenizer, tmp_path, max_steps=3, logging_steps=1)
    _poison_teacher(trainer)
    trainer.train()
    assert trainer.skipped_batches == 1
    as_train = trainer.evaluate(trainer.train_dataset, metric_key_prefix="train")
    as_eval = trainer.evaluate(trainer.train_dataset)
    assert as_train["train_loss"] == pytest.approx(as_eval["eval_loss"]) and "skipped_batches" not in as_train


def test_nan_with_raise_policy_names_step_and_component(tokenizer, tmp_path):
    trainer = ner_trainer(tokenizer, tmp_path, max_steps=3, nonfinite_policy="raise")
    _poison_teacher(trainer, calls=(1,))
    with pytest.raises(FloatingPointError, match=r"teacher's logits at step 2.*nonfinite_policy='skip'"):
        trainer.train()


def test_nonfinite_policy_is_validated():
    from hf_distill import DistillationArguments

    with pytest.raises(ValueError, match=r"`nonfinite_policy` must be one of 'skip', 'raise', got 'ignore'"):
        DistillationArguments(output_dir="x", nonfinite_policy="ignore", report_to="none")


def test_a_failed_save_leaves_the_previous_model_intact(tokenizer, tmp_path):
    trainer = ner_trainer(tokenizer, tmp_path, max_steps=1)
    trainer.train()
    target = tmp_path / "final"
    trainer.save_model(str(target))
    good = (target / "model.safetensors").read_bytes()

    def broken_save(directory, *args, **kwargs):
        Path(directory, "model.safetensors").write_bytes(b"half-written")
        raise OSError("disk full")

    trainer.model.save_pretrained = broken_save
    with pytest.raises(OSError, match="disk full"):
        trainer.save_model(str(target))
    assert (target / "model.safetensors").read_bytes() == good
    from hf_distill.trainer import STAGING_FOLDER

    assert not (target / STAGING_FOLDER).exists() and sorted(p.name for p in tmp_path.iterdir()) == ["final", "out"]
    assert load_file(str(target / "model.safetensors"))  # still a readable model


def test_a_save_stages_inside_its_folder_and_writes_nothing_beside_it(tokenizer, tmp_path, monkeypatch):
    # The staging folder sat beside output_dir: a save into a mount point (a container volume) failed to move its
    # files across devices, and a folder whose parent the run cannot write to could not be saved into at all.
    import hf_distill.trainer as trainer_module

    trainer = ner_trainer(tokenizer, tmp_path, max_steps=1)
    trainer.train()
    target = tmp_path / "volume" / "student"
    target.mkdir(parents=True)
    moves = []
    move_into = trainer_module.move_into
    monkeypatch.setattr(trainer_module, "move_into", lambda source, destination: (
        moves.append((Path(source), Path(destination))), move_into(source, destination))[1])
    trainer.save_model(str(target))
    assert moves == [(target / trainer_module.STAGING_FOLDER, target)]
    assert os.listdir(target.parent) == ["student"] and (target / "model.safetensors").is_file()
    assert trainer_module.STAGING_FOLDER not in os.listdir(target)



def test_load_best_model_at_end_restores_the_best_checkpoint_and_rotation_keeps_it(tokenizer, tmp_path):
    """The Trainer's best-model bookkeeping still works on top of the completion markers: the best-scoring
    checkpoint survives `save_total_limit`, and the student after training is that checkpoint, not the last step."""
    from test_trainer import make_args, ner_dataset
    from transformers import AutoModelForTokenClassification, DataCollatorForTokenClassification

    from hf_distill import DistillationTrainer

    scores = iter([0.1, 0.9, 0.3])
    args = make_args(tmp_path, max_steps=6, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
                     save_total_limit=1, load_best_model_at_end=True, metric_for_best_model="score")
    trainer = DistillationTrainer(
        model=tiny_token_model(tokenizer, layers=1, seed=1), teacher_model=tiny_token_model(tokenizer, seed=2),
        args=args, train_dataset=ner_dataset(tokenizer), eval_dataset=ner_dataset(tokenizer),
        data_collator=DataCollatorForTokenClassification(tokenizer), processing_class=tokenizer,
        compute_metrics=lambda prediction: {"score": next(scores)})
    trainer.train()
    best = Path(trainer.state.best_model_checkpoint)
    assert best.name == "checkpoint-4" and trainer.state.best_metric == 0.9
    assert sorted(os.listdir(tmp_path / "out")) == ["checkpoint-4"]  # the last one rotated out, the best kept
    assert (best / CHECKPOINT_MARKER).is_file()
    saved = AutoModelForTokenClassification.from_pretrained(best).state_dict()
    assert all(torch.equal(saved[k], v) for k, v in trainer.model.state_dict().items())


@pytest.mark.parametrize("method", ["none", "fgm", "pgd", "freelb"])
def test_nan_in_the_students_own_forward_is_skipped_and_changes_no_weight(tokenizer, tmp_path, method):
    # A NaN inside the student's forward reaches its gradients even through a zero-weighted loss (0 * NaN): the
    # skipped batch must still add nothing. On the first AdamW step, zero gradients leave every weight bit-identical.
    attack = {} if method == "none" else {"adv_steps": 2, "adv_init_scale": 0.1}
    trainer = ner_trainer(tokenizer, tmp_path, max_steps=1, adversarial=method, **attack)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    def poison(module, args, output):
        return output * float("nan") if torch.is_grad_enabled() else output

    trainer.model.classifier.register_forward_hook(poison)
    trainer.train()  # used to crash in the attack (no gradient w.r.t. the embeddings after a skipped clean pass)
    assert trainer.skipped_batches == 1
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("method", ["fgm", "pgd", "freelb"])
def test_a_perturbed_pass_that_overflows_skips_the_whole_batch(tokenizer, tmp_path, method, monkeypatch):
    # The clean pass (FGM, PGD) or FreeLB's first pass is back-propagated before the overflowing one shows up (as an
    # fp16 overflow at a large epsilon would): the skipped batch must take it back. SGD: no gradient, no change.
    import hf_distill.adversarial as adversarial

    project = adversarial.project
    monkeypatch.setattr(adversarial, "project", lambda *args, **kwargs: project(*args, **kwargs) * float("inf"))
    trainer = ner_trainer(tokenizer, tmp_path, max_steps=1, adversarial=method, adv_steps=2, optim="sgd",
                          learning_rate=1.0, weight_decay=0.0, max_grad_norm=0.0)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.skipped_batches == 1
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("method", ["none", "fgm"])
def test_nan_teacher_logits_count_once_and_only_at_distilled_positions(tokenizer, tmp_path, method):
    def run(where):
        trainer = ner_trainer(tokenizer, tmp_path, max_steps=1, adversarial=method)

        def hook(module, args, kwargs, output):
            padded = (kwargs["attention_mask"] == 0).nonzero()
            assert len(padded), "the first batch must have padding for this test"
            row, col = padded[0].tolist() if where == "padding" else (0, 1)
            output["logits"][row, col] = float("nan")
            return output

        trainer.teacher_model.register_forward_hook(hook, with_kwargs=True)
        trainer.train()
        return trainer

    at_padding = run("padding")  # masked out of the loss, as without an attack: nothing to skip
    assert at_padding.skipped_batches == 0
    assert "kd_loss" in next(h for h in at_padding.state.log_history if "loss" in h)
    assert run("label").skipped_batches == 1  # once, though the teacher's logits are checked on two paths


def test_atomically_written_files_are_readable_like_any_other(tmp_path):
    # tempfile.mkstemp creates 0o600 files; a model card or a cache's metadata must follow the umask as open() does.
    from hf_distill.files import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "card.md", "hello")
        (tmp_path / "plain.md").write_text("hello")
    finally:
        os.umask(old)
    assert (tmp_path / "card.md").stat().st_mode & 0o777 == (tmp_path / "plain.md").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()].count("card.md") == 1 and len(list(tmp_path.iterdir())) == 2


def test_the_count_of_skipped_batches_carries_on_after_a_resume(tokenizer, tmp_path):
    def run():
        trainer = ner_trainer(tokenizer, tmp_path, max_steps=4, save_strategy="steps", save_steps=2,
                              output_dir=str(tmp_path / "out"))
        _poison_teacher(trainer)
        return trainer

    first = run()
    first.add_callback(StopAt(2))
    first.train()
    assert first.skipped_batches == 1
    resumed = ner_trainer(tokenizer, tmp_path, max_steps=4, save_strategy="steps", save_steps=2,
                          output_dir=str(tmp_path / "out"))
    output = resumed.train(resume_from_checkpoint=True)
    assert resumed.skipped_batches == 1  # the batch skipped before the checkpoint still counts
    assert output.metrics["skipped_batches"] == 1  # in the run's final metrics too
    assert resumed.state.log_history[-1]["skipped_batches"] == 1


def test_a_second_train_call_counts_only_its_own_skipped_batches(tokenizer, tmp_path):
    trainer = ner_trainer(tokenizer, tmp_path, max_steps=2, save_strategy="steps", save_steps=2,
                          output_dir=str(tmp_path / "out"))
    _poison_teacher(trainer)  # the first forward only: run 1 skips one batch, run 2 none
    trainer.train()
    assert trainer.skipped_batches == 1
    output = trainer.train()  # a new run from step 0, over the same output_dir
    assert trainer.skipped_batches == 0 and "skipped_batches" not in output.metrics
    with open(tmp_path / "out" / "checkpoint-2" / CHECKPOINT_MARKER) as handle:
        assert json.load(handle)["skipped_batches"] == 0  # a run resumed from it would count run 1's batch


def test_a_process_whose_whole_logging_window_was_skipped_reduces_like_the_others():
    # Every process must enter the same collective: a window holding only skipped batches, or no adversarial entry,
    # contributes zeros to a reduce of the same layout instead of returning early (which hung a 2-process run).
    from types import SimpleNamespace

    from hf_distill.losses import DistillationLoss
    from hf_distill.trainer import _LossWindow

    full, skipped = _LossWindow(), _LossWindow()
    t = torch.tensor
    full.add(DistillationLoss(t(0.0), t(3.0), t(2), t(8.0), t(4)), temperature=2.0, alpha=0.5)
    full.add_ratio("hidden_loss", t(1.5), t(3))
    full.add_objective("adv_loss", DistillationLoss(t(0.0), t(4.0), t(2), t(0.0), t(0)), alpha=1.0)
    full.add_ratio("adv_delta_norm", t(0.75), t(3))
    skipped.skipped = 2
    flats = {}

    def accelerator(me, partner):
        def reduce(tensor, reduction):
            flats[me] = tensor.clone()
            return tensor + flats[partner] if partner in flats else tensor
        return SimpleNamespace(num_processes=2, device=torch.device("cpu"), reduce=reduce)

    names = (["hidden_loss", "adv_delta_norm"], ["adv_loss"])
    skipped.averages(accelerator("skipped", "full"), *names)  # records its zeros first
    logs = full.averages(accelerator("full", "skipped"), *names)
    assert flats["skipped"].shape == flats["full"].shape and flats["skipped"].abs().sum() == 2  # only the skip count
    assert logs == {"temperature": 2.0, "alpha": 0.5, "kd_loss": 1.5, "ce_loss": 2.0, "skipped_batches": 2,
                    "hidden_loss": 0.5, "adv_loss": 2.0, "adv_delta_norm": 0.25}


def test_a_long_logging_window_sums_every_loss_and_holds_a_bounded_number():
    # The window stacks its losses a few dozen at a time (fewer device operations per step): a window of any length,
    # logged or never logged, must give the exact sums and keep no more than a fold's worth of losses alive.
    from types import SimpleNamespace

    from hf_distill.losses import DistillationLoss
    from hf_distill.trainer import _FOLD_EVERY, _LossWindow

    window, t = _LossWindow(), torch.tensor
    n = 2 * _FOLD_EVERY + 5
    for i in range(n):
        window.add(DistillationLoss(t(0.0), t(float(i)), t(i % 3 + 1), t(0.5, dtype=torch.bfloat16), t(2)),
                   temperature=1.0 + i % 2, alpha=0.25)
        assert len(window.pending) < _FOLD_EVERY
    logs = window.averages(SimpleNamespace(num_processes=1, device=torch.device("cpu")))
    kd_count = sum(i % 3 + 1 for i in range(n))
    assert logs["kd_loss"] == pytest.approx(sum(range(n)) / kd_count, rel=1e-6)
    assert logs["ce_loss"] == pytest.approx(0.25)
    assert logs["temperature"] == pytest.approx(sum(1.0 + i % 2 for i in range(n)) / n)
    assert logs["alpha"] == 0.25 and window.reduced_skipped == 0 and window.reduced_shares == (n, 0)


@pytest.mark.parametrize("method", ["none", "fgm"])
def test_a_nan_in_the_students_forward_keeps_the_earlier_micro_batches_gradient(tokenizer, tmp_path, monkeypatch,
                                                                                  method):
    # Gradient accumulation 2, one process: the second micro-batch's logits are NaN (without an attack), or its
    # perturbed pass overflows after its clean pass was back-propagated (FGM), so it is skipped. What the first
    # micro-batch accumulated must survive: no 0 · NaN backward, and FGM's discard restores it rather than zeroing.
    from test_trainer import ner_dataset

    import hf_distill.adversarial as adversarial

    data = ner_dataset(tokenizer, n=4)
    fgm = adversarial.fgm_delta

    def update(rows, accumulation, poison):
        trainer = ner_trainer(tokenizer, tmp_path, dataset=data.select(rows), max_steps=1, optim="sgd",
                              learning_rate=1.0, max_grad_norm=0.0, lr_scheduler_type="constant",
                              gradient_accumulation_steps=accumulation, adversarial=method)
        calls = []

        def hook(module, args, output):
            calls.append(1)
            return output * float("nan") if poison and len(calls) == 2 else output

        def fgm_delta(*args, **kwargs):
            calls.append(1)
            return fgm(*args, **kwargs) * (float("inf") if poison and len(calls) == 2 else 1.0)

        if method == "fgm":
            monkeypatch.setattr(adversarial, "fgm_delta", fgm_delta)
        else:
            trainer.model.classifier.register_forward_hook(hook)
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        trainer.train()
        return trainer, {k: v - before[k] for k, v in trainer.model.state_dict().items()}

    skipped, with_skip = update([0, 1, 2, 3], 2, poison=True)
    _, alone = update([0, 1], 1, poison=False)
    assert skipped.skipped_batches == 1
    # The first micro-batch's gradient, divided by the labelled positions of both (the skipped one's still count).
    first, both = (sum(sum(x != -100 for x in data[i]["labels"]) for i in rows) for rows in ([0, 1], range(4)))
    for name, delta in alone.items():
        assert torch.allclose(with_skip[name], delta * first / both, atol=1e-6), name
    assert with_skip["classifier.weight"].abs().sum() > 0


def test_hard_teacher_labels_from_nan_logits_are_skipped_not_trained_on(tokenizer, tmp_path):
    # The argmax of a NaN row is class 0, and the loss stays finite: the logits themselves must be checked.
    trainer = ner_trainer(tokenizer, tmp_path, max_steps=2, logging_steps=1, teacher_labels="hard")
    _poison_teacher(trainer)
    trainer.train()
    assert trainer.skipped_batches == 1


def test_a_skipped_batchs_feature_loss_is_not_logged(tokenizer, tmp_path):
    trainer = ner_trainer(tokenizer, tmp_path, max_steps=2, logging_steps=1, hidden_distill_weight=1.0)
    _poison_teacher(trainer)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs[0]["skipped_batches"] == 1 and "hidden_loss" not in logs[0] and "hidden_loss" in logs[1]


def _ema_run(tokenizer, tmp_path, **kwargs):
    from test_trainer import make_args, ner_dataset
    from transformers import DataCollatorForTokenClassification

    from hf_distill import DistillationTrainer

    return DistillationTrainer(
        model=tiny_token_model(tokenizer, layers=1, seed=1), processing_class=tokenizer,
        args=make_args(tmp_path, self_distillation="ema", ema_decay=0.5, save_strategy="steps", save_steps=2,
                       **kwargs),
        train_dataset=ner_dataset(tokenizer), eval_dataset=ner_dataset(tokenizer),
        data_collator=DataCollatorForTokenClassification(tokenizer))


def test_a_save_cut_short_before_its_marker_rotates_nothing_out(tokenizer, tmp_path, monkeypatch):
    # save_total_limit=1: Trainer deleted the previous checkpoint before the EMA teacher and the marker were written,
    # so a kill in between left no complete checkpoint at all.
    from hf_distill import DistillationTrainer

    trainer = _ema_run(tokenizer, tmp_path, max_steps=4, save_total_limit=1)
    original = DistillationTrainer._save_trainer_owned_state

    def killed_at_step_4(self, folder):
        if self.state.global_step == 4:
            raise KeyboardInterrupt("killed while saving")
        return original(self, folder)

    monkeypatch.setattr(DistillationTrainer, "_save_trainer_owned_state", killed_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert (tmp_path / "out" / "checkpoint-2" / CHECKPOINT_MARKER).is_file()
    monkeypatch.setattr(DistillationTrainer, "_save_trainer_owned_state", original)
    resumed = _ema_run(tokenizer, tmp_path, max_steps=4, save_total_limit=1)
    resumed.train(resume_from_checkpoint=True)  # from checkpoint-2, the incomplete checkpoint-4 skipped
    assert resumed.state.global_step == 4
    assert sorted(os.listdir(tmp_path / "out")) == ["checkpoint-4"]


@pytest.mark.parametrize("as_path", [str, Path])
def test_a_checkpoint_cut_short_while_writing_the_ema_teacher_is_refused_by_path(tokenizer, tmp_path, monkeypatch,
                                                                                  as_path):
    # The EMA teacher was written after Trainer's trainer_state.json, which vouches for a checkpoint without a marker
    # (the stock Trainer's): a kill in between was resumed and failed on the half-written file. A pathlib.Path skipped
    # every check.
    from hf_distill import DistillationTrainer

    original = DistillationTrainer._save_trainer_owned_state

    def killed_at_step_4(self, folder):
        if self.state.global_step == 4:  # half of the file written
            (Path(folder) / "ema_teacher.pt").write_bytes(b"PK\x03\x04 half")
            raise KeyboardInterrupt("killed while saving")
        return original(self, folder)

    monkeypatch.setattr(DistillationTrainer, "_save_trainer_owned_state", killed_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        _ema_run(tokenizer, tmp_path, max_steps=4).train()
    monkeypatch.setattr(DistillationTrainer, "_save_trainer_owned_state", original)
    with pytest.raises(ValueError, match=r"incomplete checkpoint .*Resume from .*checkpoint-2"):
        _ema_run(tokenizer, tmp_path, max_steps=4).train(resume_from_checkpoint=as_path(tmp_path / "out" / "checkpoint-4"))
    resumed = _ema_run(tokenizer, tmp_path, max_steps=4)
    resumed.train(resume_from_checkpoint=as_path(tmp_path / "out" / "checkpoint-2"))
    assert resumed.state.global_step == 4


def test_checkpoints_record_the_runs_own_save_total_limit(tokenizer, tmp_path):
    # The limit is unset while Trainer saves a checkpoint (its rotation waits for the marker), and Trainer wrote
    # training_args.bin in that window: every checkpoint said save_total_limit=None.
    trainer = _ema_run(tokenizer, tmp_path, max_steps=6, save_total_limit=2)
    trainer.train()
    assert sorted(os.listdir(tmp_path / "out")) == ["checkpoint-4", "checkpoint-6"]
    for step in (4, 6):
        saved = torch.load(tmp_path / "out" / f"checkpoint-{step}" / "training_args.bin", weights_only=False)
        assert saved.save_total_limit == 2
    assert trainer.args.save_total_limit == 2


def test_load_best_model_at_end_also_restores_the_best_checkpoints_ema_teacher(tokenizer, tmp_path):
    scores = iter([0.1, 0.9, 0.3])
    trainer = _ema_run(tokenizer, tmp_path, max_steps=6, eval_strategy="steps", eval_steps=2, load_best_model_at_end=True,
                       metric_for_best_model="score")
    trainer.compute_metrics = lambda prediction: {"score": next(scores)}
    trainer.train()
    best = Path(trainer.state.best_model_checkpoint)
    assert best.name == "checkpoint-4"
    saved = torch.load(best / "ema_teacher.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in trainer.teacher_model.state_dict().items())


def test_resume_true_finds_a_stock_trainer_checkpoint_but_never_an_unmarked_one_of_ours(tmp_path):
    from hf_distill.files import last_complete_checkpoint

    stock = tmp_path / "stock"
    for step, files in ((2, ["trainer_state.json"]), (4, [])):  # checkpoint-4: cut short before its state file
        (stock / f"checkpoint-{step}").mkdir(parents=True)
        for name in files:
            (stock / f"checkpoint-{step}" / name).write_text("{}")
    assert last_complete_checkpoint(stock) == (str(stock / "checkpoint-2"), [str(stock / "checkpoint-4")])
    ours = tmp_path / "ours"
    for step, files in ((2, ["trainer_state.json", CHECKPOINT_MARKER]), (4, ["trainer_state.json"])):
        (ours / f"checkpoint-{step}").mkdir(parents=True)
        for name in files:
            (ours / f"checkpoint-{step}" / name).write_text("{}")
    # Marked checkpoints say this folder is ours: checkpoint-4, unmarked, was cut short after trainer_state.json.
    assert last_complete_checkpoint(ours) == (str(ours / "checkpoint-2"), [str(ours / "checkpoint-4")])


def test_move_into_merges_a_sub_folder_into_the_one_already_there(tmp_path):
    # A second save of a model that writes a sub-folder (a PEFT model's second adapter) must not fail on it.
    from hf_distill.files import move_into

    saves = [{"a.txt": "1", "sub/b.txt": "1", "sub/only_first.txt": "1"}, {"a.txt": "2", "sub/b.txt": "2"}]
    for run, files in enumerate(saves):
        staging = tmp_path / f"staging{run}"
        for name, text in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_text(text)
        move_into(staging, tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "a.txt").read_text() == (out / "sub" / "b.txt").read_text() == "2"
    assert (out / "sub" / "only_first.txt").read_text() == "1"


def test_resume_true_orders_checkpoints_by_step_not_by_name(tmp_path):
    from hf_distill.files import last_complete_checkpoint

    for step in (5, 9, 10, 100):  # by name, checkpoint-9 sorts after checkpoint-10 and checkpoint-100
        (tmp_path / f"checkpoint-{step}").mkdir()
        if step != 100:  # checkpoint-100 was cut short
            (tmp_path / f"checkpoint-{step}" / CHECKPOINT_MARKER).write_text("{}")
    assert last_complete_checkpoint(tmp_path) == (str(tmp_path / "checkpoint-10"), [str(tmp_path / "checkpoint-100")])


@pytest.mark.parametrize("method", ["none", "fgm"])
def test_a_step_whose_every_batch_was_skipped_still_steps_the_fp16_grad_scaler(tokenizer, tmp_path, method):
    # The grad scaler refuses to step when no parameter has a gradient ("No inf checks were recorded"): a skipped batch
    # on one process back-propagates a zero loss built from the parameters, not nothing (fp16 needs a GPU: the scaler
    # it builds is stood in for by the CPU one).
    trainer = ner_trainer(tokenizer, tmp_path, max_steps=2, adversarial=method)
    trainer.teacher_model.register_forward_hook(lambda module, args, output: {**output, "logits": output["logits"] *
                                                                                 float("nan")})
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.skipped_batches == 2
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_a_skipped_step_is_left_out_of_the_logged_and_returned_loss(tokenizer, tmp_path):
    # A skipped step has no loss: counting it as 0 would halve a two-step window's loss and the run's train_loss.
    def run(out, poison, **kwargs):
        trainer = ner_trainer(tokenizer, tmp_path, output_dir=str(tmp_path / out), learning_rate=0.0, **kwargs)
        if poison:
            _poison_teacher(trainer, calls=poison)
        return trainer, trainer.train()

    reference, _ = run("reference", (), max_steps=2, logging_steps=1)
    losses = [h["loss"] for h in reference.state.log_history if "loss" in h]
    trainer, output = run("skipped", (1,), max_steps=2, logging_steps=2)
    window = next(h for h in trainer.state.log_history if "loss" in h)
    assert window["skipped_batches"] == 1 and window["loss"] == pytest.approx(losses[0], rel=1e-4)
    assert output.training_loss == pytest.approx(losses[0], rel=1e-4)
    # A skip in the last window, which is never logged on its own, still reaches the run's metrics.
    trainer, output = run("tail", (2,), max_steps=3, logging_steps=2)
    assert output.metrics["skipped_batches"] == 1 and trainer.state.log_history[-1]["skipped_batches"] == 1
    assert output.training_loss == pytest.approx(sum(losses) / 2, rel=1e-4)


def test_a_skipped_short_step_is_left_out_as_a_step_not_as_its_batches(tokenizer, tmp_path):
    # Trainer's loss is a mean over optimizer steps: an epoch's last step may hold fewer micro-batches than the others,
    # and skipping it whole (or a whole full step) must leave the mean of the trained steps, whatever their sizes.
    rows = ner_dataset(tokenizer).select(range(5))  # batch 1, accumulation 2: steps of 2, 2 and 1 micro-batches

    def run(out, poison, logging_steps):
        trainer = ner_trainer(tokenizer, tmp_path, output_dir=str(tmp_path / out), learning_rate=0.0, dataset=rows,
                              per_device_train_batch_size=1, gradient_accumulation_steps=2, max_steps=-1,
                              num_train_epochs=1, logging_steps=logging_steps)
        if poison:
            _poison_teacher(trainer, calls=poison)
        return trainer, trainer.train()

    reference, _ = run("reference", (), 1)
    steps = [h["loss"] for h in reference.state.log_history if "loss" in h]
    assert len(steps) == 3
    for poison, kept in (((4,), (0, 1)), ((0, 1), (1, 2))):
        trainer, output = run(f"skip{poison}", poison, 3)
        window = next(h for h in trainer.state.log_history if "loss" in h)
        expected = sum(steps[i] for i in kept) / len(kept)
        assert window["skipped_batches"] == len(poison)
        assert window["loss"] == pytest.approx(expected, rel=1e-4)
        assert output.training_loss == pytest.approx(expected, rel=1e-4)


def test_a_skip_warning_names_the_step_log_history_uses(tokenizer, tmp_path, caplog):
    trainer = ner_trainer(tokenizer, tmp_path, max_steps=2, logging_steps=1)
    _poison_teacher(trainer, calls=(1,))
    trainer.train()
    assert "at step 2" in caplog.text
    assert next(h for h in trainer.state.log_history if h.get("skipped_batches"))["step"] == 2


def test_a_checkpoint_saved_again_is_not_complete_until_rewritten(tokenizer, tmp_path, monkeypatch):
    # A second run in the same output_dir saves checkpoint-2 again and is killed half-way: the first run's marker and
    # trainer_state.json must not vouch for a folder whose weights are the second run's and optimizer the first's.
    from hf_distill import DistillationTrainer
    from hf_distill.files import last_complete_checkpoint

    def run():
        return ner_trainer(tokenizer, tmp_path, max_steps=2, save_strategy="steps", save_steps=2,
                           output_dir=str(tmp_path / "out"))

    run().train()
    folder = tmp_path / "out" / "checkpoint-2"
    assert (folder / CHECKPOINT_MARKER).is_file()

    def killed(self, output_dir):
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(DistillationTrainer, "_save_optimizer_and_scheduler", killed)
    with pytest.raises(KeyboardInterrupt):
        run().train()
    assert not (folder / CHECKPOINT_MARKER).exists() and not (folder / "trainer_state.json").exists()
    assert last_complete_checkpoint(tmp_path / "out") == (None, [str(folder)])
    with pytest.raises(ValueError, match="incomplete checkpoint"):
        run().train(resume_from_checkpoint=str(folder))


def test_resuming_from_the_output_folder_itself_points_to_its_checkpoints(tokenizer, tmp_path):
    def run():
        return ner_trainer(tokenizer, tmp_path, max_steps=2, save_strategy="steps", save_steps=2,
                           output_dir=str(tmp_path / "out"))

    run().train()
    with pytest.raises(ValueError, match="output folder, not a checkpoint") as error:
        run().train(resume_from_checkpoint=str(tmp_path / "out"))
    assert "checkpoint-2" in str(error.value) and "resume_from_checkpoint=True" in str(error.value)


def _two_steps_then_resume(tokenizer, tmp_path, teacher=None, **changed):
    """A 4-step run saved at step 2 and stopped there, resumed with `changed` settings (or another teacher)."""
    settings = dict(max_steps=4, save_steps=2, save_strategy="steps", temperature=2.0, alpha=0.5)
    first = ner_trainer(tokenizer, tmp_path, student=tiny_token_model(tokenizer, layers=1, seed=1), **settings)
    first.add_callback(StopAt(2))
    first.train()
    resumed = ner_trainer(tokenizer, tmp_path, student=tiny_token_model(tokenizer, layers=1, seed=1), teacher=teacher,
                          **{**settings, **changed})
    resumed.train(resume_from_checkpoint=True)
    return resumed


def test_a_resume_with_other_distillation_settings_names_them_and_the_card_says_which_steps_had_which(
        tokenizer, tmp_path, caplog):
    # The steps before the checkpoint trained at T 2 and alpha 0.5, those after at T 4 and alpha 0.9: nothing said so,
    # and the card gave the whole run T 4 and alpha 0.9.
    with caplog.at_level("WARNING"):
        resumed = _two_steps_then_resume(tokenizer, tmp_path, temperature=4.0, alpha=0.9, adversarial="fgm")
    assert "with distillation settings that differ from those it was trained with" in caplog.text
    assert "temperature 2.0 -> 4.0" in caplog.text and "adversarial 'none' -> 'fgm'" in caplog.text
    logged = [(round(h["temperature"], 4), round(h["alpha"], 4)) for h in resumed.state.log_history
              if "temperature" in h]
    assert logged == [(2.0, 0.5), (2.0, 0.5), (4.0, 0.9), (4.0, 0.9)]
    resumed.create_model_card()
    card = (tmp_path / "out" / "README.md").read_text()
    assert ("| changed when resumed at step 2 | adversarial none → fgm; alpha 0.5 → 0.9; temperature 2.0 → 4.0 (the "
            "steps up to 2 trained with the earlier values) |") in card
    # The change stays on the record of the later checkpoints, for the card of a run resumed from them.
    marker = json.loads((tmp_path / "out" / "checkpoint-4" / CHECKPOINT_MARKER).read_text())
    assert marker["changed_at_resume"] == [[2, {"adversarial": ["none", "fgm"], "alpha": [0.5, 0.9],
                                                "temperature": [2.0, 4.0]}]]
    assert marker["distillation"]["temperature"] == 4.0


def test_a_resume_with_the_same_settings_says_nothing(tokenizer, tmp_path, caplog):
    with caplog.at_level("WARNING"):
        resumed = _two_steps_then_resume(tokenizer, tmp_path)
    assert "differ from those it was trained with" not in caplog.text and resumed.state.global_step == 4
    resumed.create_model_card()
    assert "changed when resumed" not in (tmp_path / "out" / "README.md").read_text()


def test_a_resume_with_another_teacher_is_refused_before_any_weight_is_loaded(tokenizer, tmp_path, caplog):
    # The steps behind the checkpoint learned from one teacher and those after it would learn from another, silently.
    other = tiny_token_model(tokenizer, layers=2, seed=7)
    with pytest.raises(ValueError, match=r"checkpoint-2 was trained with another teacher than this run's .*Resume with "
                                         r"the teacher \(or the teacher-logit cache\) it was trained with"):
        _two_steps_then_resume(tokenizer, tmp_path, teacher=other)
    # The same teacher cast to another precision (teacher_dtype) has other bytes: a changed setting, not a teacher.
    (tmp_path / "bf16").mkdir()
    with caplog.at_level("WARNING"):
        _two_steps_then_resume(tokenizer, tmp_path / "bf16", teacher_dtype="bfloat16")
    assert "teacher_dtype 'auto' -> 'bfloat16'" in caplog.text
