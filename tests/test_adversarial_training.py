"""Adversarial distillation inside DistillationTrainer: FGM, PGD and FreeLB."""

import pytest
import torch
from conftest import tiny_sequence_model, tiny_token_model
from test_trainer import NO_DROPOUT, make_args, ner_dataset, ner_trainer
from transformers import TrainerCallback

from hf_distill import DistillationArguments

METHODS = {"fgm": 2, "pgd": 4, "freelb": 3}  # forward+backward passes per step with adv_steps=3


def _count_calls(module, checks=None):
    """The keyword arguments of every training forward of `module`; the no-grad eval-mode forwards of the one-time
    embedding-path check (`check_embedding_path`) go to `checks` instead."""
    calls = []

    def hook(mod, args, kwargs, out):
        (calls if torch.is_grad_enabled() or mod.training else checks if checks is not None else calls).append(kwargs)

    module.register_forward_hook(hook, with_kwargs=True)
    return calls


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_trains_and_leaves_the_teacher_alone(tokenizer, tmp_path, method):
    teacher = tiny_token_model(tokenizer, layers=2, seed=2)
    student = tiny_token_model(tokenizer, layers=1, seed=1)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = ner_trainer(tokenizer, tmp_path, student=student, teacher=teacher, adversarial=method,
                          adv_init_scale=0.1 if method != "fgm" else 0.0, max_steps=2)
    teacher_calls = _count_calls(trainer.teacher_model)
    checks = []
    student_calls = _count_calls(student, checks)
    trainer.train()
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(student_before[k], v) for k, v in student.state_dict().items())
    # The teacher runs once per step, on clean token ids only; the student runs once per pass.
    assert len(teacher_calls) == 2 and all("inputs_embeds" not in kw and "input_ids" in kw for kw in teacher_calls)
    assert len(student_calls) == 2 * METHODS[method]
    assert all("inputs_embeds" in kw for kw in student_calls)
    # Once, at the first adversarial step: the same batch from token ids and from their embeddings, no gradients.
    assert len(checks) == 2 and "input_ids" in checks[0] and "inputs_embeds" in checks[1]
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all(h["adv_loss"] > 0 and h["adv_delta_norm"] > 0 for h in logs)
    # No hook of ours is left on the embeddings.
    embeddings = student.get_input_embeddings()
    assert not embeddings._forward_hooks and not embeddings._forward_pre_hooks


@pytest.mark.parametrize("method", list(METHODS))
def test_zero_learning_rate_leaves_every_weight_bit_identical(tokenizer, tmp_path, method):
    student = tiny_token_model(tokenizer, layers=1, seed=1)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = ner_trainer(tokenizer, tmp_path, student=student, adversarial=method, learning_rate=0.0,
                          weight_decay=0.0, max_steps=2, adv_init_scale=0.5)
    trainer.train()
    for k, v in student.state_dict().items():
        assert torch.equal(before[k], v), k


@pytest.mark.parametrize("objective", ["both", "kd"])  # kd: the attack's gradient is not the clean pass's
@pytest.mark.parametrize("method", list(METHODS))
def test_gradient_accumulation_matches_full_batch(tokenizer, tmp_path, method, objective):
    def final(batch, accumulation):
        trainer = ner_trainer(
            tokenizer, tmp_path, student=tiny_token_model(tokenizer, layers=1, seed=1, **NO_DROPOUT),
            teacher=tiny_token_model(tokenizer, layers=2, seed=2, **NO_DROPOUT), dataset=ner_dataset(tokenizer, n=4),
            per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation, max_steps=1, optim="sgd",
            learning_rate=1.0, max_grad_norm=0.0, warmup_steps=0, lr_scheduler_type="constant", adversarial=method,
            adv_objective=objective,
        )
        trainer.train()
        logged = [h for h in trainer.state.log_history if "adv_loss" in h]
        return trainer.model.state_dict(), logged[0]

    (full, full_log), (accumulated, accumulated_log) = final(4, 1), final(2, 2)
    for k in full:
        assert torch.allclose(full[k], accumulated[k], atol=1e-6), k
    # The logged losses are those of the whole batch too, not a mean of micro-batch shares.
    assert full_log.keys() == accumulated_log.keys() and {"kd_loss", "adv_loss"} <= full_log.keys()
    for key in ("kd_loss", "ce_loss", "adv_loss"):  # FreeLB with adv_objective="kd" has no hard-label term
        if key in full_log:
            assert full_log[key] == pytest.approx(accumulated_log[key], rel=1e-5), key


@pytest.mark.parametrize("method", list(METHODS))
def test_gradient_checkpointing_gives_the_same_training(tokenizer, tmp_path, method):
    # Activation checkpointing recomputes the forward in the backward; δ must still get its gradient (the attack's
    # passes use torch.autograd.grad on it) and the update must be the one without checkpointing.
    def final(checkpointing):
        trainer = ner_trainer(
            tokenizer, tmp_path, student=tiny_token_model(tokenizer, layers=2, seed=1, **NO_DROPOUT),
            teacher=tiny_token_model(tokenizer, layers=2, seed=2, **NO_DROPOUT), max_steps=2, adversarial=method,
            adv_init_scale=0.1, gradient_checkpointing=checkpointing,
        )
        trainer.train()
        assert trainer.model.is_gradient_checkpointing == checkpointing
        return trainer.model.state_dict()

    plain, checkpointed = final(False), final(True)
    for k in plain:
        assert torch.allclose(plain[k], checkpointed[k], atol=1e-6), k


def test_adversarial_training_starts_at_adv_start_step(tokenizer, tmp_path):
    student = tiny_token_model(tokenizer, layers=1, seed=1)
    trainer = ner_trainer(tokenizer, tmp_path, student=student, adversarial="fgm", adv_start_step=2, max_steps=3)
    calls = _count_calls(student, checks=[])
    trainer.train()
    assert len(calls) == 1 + 1 + 2  # two clean steps, then one FGM step
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert "adv_loss" not in logs[0] and "adv_loss" in logs[2]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"adversarial": "fgsm"}, r"`adversarial` must be one of 'none', 'fgm', 'pgd', 'freelb', got 'fgsm'"),
        ({"adv_objective": "kl"}, r"`adv_objective` must be one of"),
        ({"adv_norm": "l1"}, r"`adv_norm` must be one of 'l2', 'linf'"),
        ({"adv_epsilon": -1.0}, r"`adv_epsilon` must be a finite number >= 0, got -1.0"),
        ({"adv_step_size": 0.0}, r"`adv_step_size` must be > 0, got 0.0"),
        ({"adv_steps": 0}, r"`adv_steps` must be an integer >= 1, got 0"),
        ({"adv_init_scale": -0.1}, r"`adv_init_scale` must be a finite number >= 0"),
        ({"adv_weight": float("nan")}, r"`adv_weight` must be a finite number >= 0"),
        ({"adv_start_step": -3}, r"`adv_start_step` must be >= 0, got -3"),
    ],
)
def test_bad_adversarial_settings_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistillationArguments(output_dir="unused", report_to="none", use_cpu=True, **kwargs)


def test_adversarial_step_keeps_trainers_step_hooks(tokenizer, tmp_path, monkeypatch):
    """The adversarial training_step replaces Trainer's: it still runs forwards in `compute_loss_context_manager`
    (where a subclass may add autocast) and honours `torch_empty_cache_steps`."""
    import contextlib

    import hf_distill.trainer as trainer_module

    cleared, entered = [], []
    monkeypatch.setattr(trainer_module, "clear_device_cache", lambda: cleared.append(1))
    trainer = ner_trainer(tokenizer, tmp_path, adversarial="fgm", max_steps=2, torch_empty_cache_steps=1)
    monkeypatch.setattr(trainer, "compute_loss_context_manager",
                        lambda: entered.append(1) or contextlib.nullcontext())
    trainer.train()
    assert len(cleared) == 2  # once a step
    assert len(entered) == 2 * (1 + METHODS["fgm"])  # a step: the teacher, then each student pass


@pytest.mark.parametrize("kwargs", [{"use_reentrant": True}, {"preserve_rng_state": True}, {"use_reentrant": None}])
def test_reentrant_checkpointing_is_refused_where_the_attack_needs_autograd_grad(tmp_path, kwargs):
    # A non-empty dict without use_reentrant reaches torch's checkpoint as it is, whose default is reentrant.
    reentrant = {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": kwargs}
    for method in ("fgm", "pgd"):
        with pytest.raises(ValueError, match=r"reentrant gradient checkpointing.*use_reentrant': False"):
            DistillationArguments(output_dir=str(tmp_path), report_to="none", adversarial=method, **reentrant)
    DistillationArguments(output_dir=str(tmp_path), report_to="none", adversarial="freelb", **reentrant)
    # The attention maps come back without gradient: the attention term would train nothing.
    with pytest.raises(ValueError, match=r"attention maps.*reentrant.*train nothing.*use_reentrant': False"):
        DistillationArguments(output_dir=str(tmp_path), report_to="none", attention_distill_weight=1.0, **reentrant)


@pytest.mark.parametrize("kwargs", [None, {}, {"use_reentrant": False}, {"use_reentrant": False, "preserve_rng_state": True}])
def test_non_reentrant_checkpointing_is_accepted(tmp_path, kwargs):
    # None and {} become Transformers' default, use_reentrant=False.
    DistillationArguments(output_dir=str(tmp_path), report_to="none", adversarial="pgd", attention_distill_weight=1.0,
                          gradient_checkpointing=True, gradient_checkpointing_kwargs=kwargs)


def test_special_tokens_stay_clean_without_processing_class(tokenizer, tmp_path, monkeypatch):
    from transformers import DataCollatorForTokenClassification, default_data_collator

    import hf_distill.trainer as trainer_module
    from hf_distill import DistillationTrainer

    masks = []
    original = trainer_module.adversarial_backward

    def spy(settings, **kwargs):
        masks.append(kwargs["mask"][..., 0])
        return original(settings, **kwargs)

    monkeypatch.setattr(trainer_module, "adversarial_backward", spy)

    def build(collator):
        return DistillationTrainer(model=tiny_token_model(tokenizer, layers=1, seed=1),
                                   teacher_model=tiny_token_model(tokenizer, layers=2, seed=2),
                                   args=make_args(tmp_path, adversarial="fgm", max_steps=1),
                                   train_dataset=ner_dataset(tokenizer), data_collator=collator)

    build(DataCollatorForTokenClassification(tokenizer)).train()  # the collator's tokenizer names them
    mask = masks[-1]
    assert mask[:, 0].eq(0).all() and mask[:, 1].eq(1).all()  # [CLS] stays clean, the first word is attacked
    with pytest.raises(ValueError, match=r"pass `processing_class=tokenizer`"):
        build(default_data_collator)


def _one_step_update(tokenizer, tmp_path, **settings):
    """The change one plain SGD step (lr 1) makes to every student weight."""
    trainer = ner_trainer(tokenizer, tmp_path, student=tiny_token_model(tokenizer, layers=1, seed=1, **NO_DROPOUT),
                          max_steps=1, optim="sgd", learning_rate=1.0, max_grad_norm=0.0, lr_scheduler_type="constant",
                          weight_decay=0.0, **settings)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    return trainer, {k: v - before[k] for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("method", ["fgm", "pgd"])
def test_adv_weight_scales_the_adversarial_term_of_the_update(tokenizer, tmp_path, method):
    # The step's gradient is clean + adv_weight x adversarial: the update is linear in adv_weight.
    updates = [_one_step_update(tokenizer, tmp_path, adversarial=method, adv_epsilon=0.5, adv_weight=w)[1]
               for w in (0.0, 1.0, 2.0)]
    assert not torch.allclose(updates[0]["classifier.weight"], updates[1]["classifier.weight"])
    for key in updates[0]:
        assert torch.allclose(updates[2][key] - updates[1][key], updates[1][key] - updates[0][key], atol=1e-6), key


def test_fgm_attacks_the_distillation_term_when_adv_objective_is_kd(tokenizer, tmp_path, monkeypatch):
    # With alpha < 1 the clean pass trains on alpha·KD + (1 - alpha)·CE, but adv_objective="kd" attacks KD alone:
    # FGM's direction is that of KD's gradient (the one a pure-KD run takes), not the mixture's.
    import hf_distill.adversarial as adversarial

    fgm, grads = adversarial.fgm_delta, []

    def spy(grad, *args, **kwargs):
        grads.append(grad.detach().flatten())
        return fgm(grad, *args, **kwargs)

    monkeypatch.setattr(adversarial, "fgm_delta", spy)
    for alpha, objective in ((0.5, "kd"), (1.0, "kd"), (0.5, "both")):
        _one_step_update(tokenizer, tmp_path, adversarial="fgm", alpha=alpha, adv_objective=objective)
    kd_at_half, kd_alone, mixture = grads

    def cosine(a, b):
        return torch.nn.functional.cosine_similarity(a, b, dim=0).item()

    assert cosine(kd_at_half, kd_alone) == pytest.approx(1.0, abs=1e-5)
    assert cosine(kd_at_half, mixture) < 0.99


@pytest.mark.parametrize("objective, logged", [("kd", "kd_loss"), ("ce", "ce_loss")])
def test_logged_adv_loss_is_the_attacked_objective(tokenizer, tmp_path, objective, logged):
    # At a vanishing epsilon the perturbed loss is the clean one: adv_loss must then read as the term attacked (KD or
    # CE), not as the clean alpha-mixture of both.
    trainer, _ = _one_step_update(tokenizer, tmp_path, adversarial="fgm", adv_epsilon=1e-6, alpha=0.5,
                                  adv_objective=objective, logging_steps=1)
    log = next(h for h in trainer.state.log_history if "adv_loss" in h)
    assert abs(log["kd_loss"] - log["ce_loss"]) > 1e-3  # the two terms differ, so the reading tells them apart
    assert log["adv_loss"] == pytest.approx(log[logged], rel=1e-4)


def test_attack_gradients_use_the_grad_scalers_scale(tokenizer, tmp_path, monkeypatch):
    # Under fp16 the accelerator's grad scaler scales the training backward; the attack's own input gradients must be
    # taken at the same scale (see test_attack_gradients_are_taken_at_the_amp_loss_scale), and at 1 without a scaler.
    import hf_distill.trainer as trainer_module

    scales = []
    original = trainer_module.adversarial_backward

    def spy(settings, **kwargs):
        scales.append(kwargs["grad_scale"])
        return original(settings, **kwargs)

    monkeypatch.setattr(trainer_module, "adversarial_backward", spy)
    ner_trainer(tokenizer, tmp_path / "plain", adversarial="pgd", max_steps=1).train()
    trainer = ner_trainer(tokenizer, tmp_path / "scaled", adversarial="pgd", max_steps=1)
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    trainer.train()
    assert scales == [1.0, 1024.0]


class _ModalSGD(torch.optim.SGD):
    """An optimizer with train/eval modes (as schedule-free optimizers have), which refuses to step in eval mode."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self.mode = "eval"  # schedule-free optimizers start in eval mode: Trainer's training_step switches them

    def train(self):
        self.mode = "train"

    def eval(self):
        self.mode = "eval"

    def step(self, closure=None):
        if self.mode != "train":
            raise RuntimeError("stepped in eval mode")
        return super().step(closure)


class _EvaluateEachStep(TrainerCallback):
    def __init__(self, trainer, data):
        self.trainer, self.data = trainer, data

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.evaluate(self.data)


@pytest.mark.parametrize("method", ["fgm", "freelb"])
def test_adversarial_steps_put_an_optimizer_with_modes_in_train_mode(tokenizer, tmp_path, method):
    # An evaluation between steps puts the optimizer in eval mode again (Trainer's evaluate calls optimizer.eval()).
    trainer = ner_trainer(tokenizer, tmp_path, adversarial=method, max_steps=3, adv_start_step=1)
    trainer.optimizer = _ModalSGD(trainer.model.parameters(), lr=1e-3)
    trainer.add_callback(_EvaluateEachStep(trainer, ner_dataset(tokenizer)))
    trainer.train()
    assert trainer.state.global_step == 3


def test_freelb_logs_the_alpha_its_objective_trained_with_and_warns_of_the_alpha_it_leaves_unused(tokenizer, tmp_path,
                                                                                                     caplog):
    # With adv_objective="kd" FreeLB trains on the distillation term alone: alpha 1, whatever args.alpha says.
    with caplog.at_level("WARNING"):
        trainer = ner_trainer(tokenizer, tmp_path, adversarial="freelb", adv_objective="kd", alpha=0.5, max_steps=2,
                              distill_positions="first_subword")
    assert "alpha=0.5 is not used there and the labels are not trained on" in caplog.text
    assert "throughout" in caplog.text and "adv_objective='both'" in caplog.text
    trainer.train()
    assert all(h["alpha"] == 1.0 for h in trainer.state.log_history if "loss" in h)
    caplog.clear()
    with caplog.at_level("WARNING"):
        ner_trainer(tokenizer, tmp_path, adversarial="freelb", adv_objective="kd", alpha=0.0, adv_start_step=5)
    assert "from optimizer step 5 on: alpha=0.0 is not used" in caplog.text
    for silent in ({"alpha": 1.0}, {"adv_objective": "both", "alpha": 0.5}):  # nothing left unused
        caplog.clear()
        with caplog.at_level("WARNING"):
            ner_trainer(tokenizer, tmp_path, adversarial="freelb", **silent)
        assert "is not used there" not in caplog.text


def test_the_logged_delta_norm_is_the_mean_over_examples_whatever_the_micro_batches(tokenizer, tmp_path):
    # The last of three rows holds only [CLS] [SEP]: nothing to perturb, so its δ is 0 and FGM's l2 δ of the other
    # two is exactly ε. Three rows in one batch, or in micro-batches of 2 and 1, log the same mean, ε · 2/3 (the
    # micro-batch means were averaged: (ε + 0) / 2).
    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    from hf_distill import DistillationTrainer

    enc = tokenizer(["the cat sat", "a dog ran", ""])
    data = Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                              "labels": [0, 1, 0]})
    logged = []
    for batch, accumulation in ((3, 1), (2, 2)):
        trainer = DistillationTrainer(
            model=tiny_sequence_model(tokenizer, layers=1, seed=1), teacher_model=tiny_sequence_model(tokenizer, seed=2),
            args=make_args(tmp_path, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                           max_steps=1, learning_rate=0.0, adversarial="fgm", adv_epsilon=0.3),
            train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer))
        trainer.train()
        logged.append(trainer.state.log_history[0]["adv_delta_norm"])
    assert logged == pytest.approx([0.2, 0.2], rel=1e-5)
