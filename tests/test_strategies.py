"""Strategies beyond logits, wired into DistillationTrainer: feature and attention distillation, several teachers,
EMA self-distillation, pseudo-labels and mixed unlabeled data, augmentation, a LoRA student."""

import os

import pytest
import torch
from conftest import NER_LABELS, tiny_sequence_model, tiny_token_model
from test_reliability import StopAt
from test_trainer import NO_DROPOUT, make_args, ner_dataset, ner_trainer, seq_dataset
from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

from hf_distill import DistillationTrainer, mix_unlabeled, soft_kl
from hf_distill.ensemble import combine_teacher_logits
from hf_distill.features import attention_kl
from hf_distill.trainer import EMA_TEACHER_FILE, PROJECTOR_FILE

NO_DROP = {**NO_DROPOUT}


def _batch(tokenizer, n=3):
    return dict(DataCollatorForTokenClassification(tokenizer)([ner_dataset(tokenizer)[i] for i in range(n)]))


def _loss_and_reference(trainer, student, teacher, batch, **flags):
    """The trainer's training loss on `batch`, and both models' outputs (with `flags`) for a hand computation."""
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        return loss, student(**inputs, **flags), teacher(**inputs, **flags)


# ---- hidden states --------------------------------------------------------------------------------------------


def test_hidden_state_term_is_added_with_its_weight(tokenizer, tmp_path):
    student = tiny_token_model(tokenizer, layers=1, seed=1, **NO_DROP)
    teacher = tiny_token_model(tokenizer, layers=2, seed=2, **NO_DROP)
    trainer = ner_trainer(tokenizer, tmp_path, student=student, teacher=teacher, alpha=0.5,
                          hidden_distill_weight=3.0)
    assert trainer.feature_projector is None  # same hidden size: nothing to learn
    batch = _batch(tokenizer)
    loss, s, t = _loss_and_reference(trainer, student, teacher, batch, output_hidden_states=True)
    mask = batch["labels"].ne(-100)
    kd = soft_kl(s.logits[mask], t.logits[mask], 2.0).mean()
    ce = torch.nn.functional.cross_entropy(s.logits[mask], batch["labels"][mask])
    real = batch["attention_mask"].bool()
    hidden = ((s.hidden_states[1] - t.hidden_states[2]) ** 2).mean(-1)[real].mean()  # uniform map 1 -> 2
    assert loss.item() == pytest.approx((0.5 * kd + 0.5 * ce + 3.0 * hidden).item(), rel=1e-5)
    trainer.train()
    assert all("hidden_loss" in h for h in trainer.state.log_history if "loss" in h)


def test_hidden_state_distillation_ignores_attention_maps_the_teachers_config_asks_for(tokenizer, tmp_path):
    # A teacher loaded with output_attentions=True (under SDPA, Transformers returns no maps): the hidden-state-only
    # run indexed the empty attention tuple and crashed. Only the maps of the terms that are on are collected.
    student = tiny_token_model(tokenizer, layers=1, seed=1, **NO_DROP)
    teacher = tiny_token_model(tokenizer, layers=2, seed=2, output_attentions=True, **NO_DROP)
    trainer = ner_trainer(tokenizer, tmp_path, student=student, teacher=teacher, alpha=0.5, hidden_distill_weight=1.0)
    outputs = trainer.teacher_outputs(_batch(tokenizer), features=True)
    assert set(outputs) == {"hidden_states", "logits", "confidence_logits"}
    trainer.train()
    assert all("hidden_loss" in h for h in trainer.state.log_history if "loss" in h)


def test_feature_distillation_refuses_encoder_decoder_models_and_names_a_missing_output(tokenizer, tmp_path):
    from transformers import BartConfig, BartForSequenceClassification

    from hf_distill.trainer import _feature_outputs

    def bart(layers):
        torch.manual_seed(layers)
        return BartForSequenceClassification(BartConfig(
            vocab_size=len(tokenizer), d_model=16, encoder_layers=layers, decoder_layers=layers,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
            max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id))

    for weights in ({"hidden_distill_weight": 1.0}, {"attention_distill_weight": 1.0}):
        with pytest.raises(ValueError, match="the student is an encoder-decoder model \\(bart\\).*logits alone"):
            DistillationTrainer(model=bart(1), teacher_model=bart(2), args=make_args(tmp_path, **weights),
                                train_dataset=seq_dataset(tokenizer), data_collator=DataCollatorWithPadding(tokenizer),
                                processing_class=tokenizer)
    with pytest.raises(ValueError, match="the teacher's `attentions`, but its forward returned none"):
        _feature_outputs({"logits": torch.zeros(1), "attentions": ()}, "attentions", "teacher")


def _projector_trainer(tokenizer, tmp_path, out, **kwargs):
    student = tiny_token_model(tokenizer, layers=1, seed=1, hidden=16)
    return ner_trainer(tokenizer, tmp_path, student=student, output_dir=str(tmp_path / out), max_steps=4,
                       save_strategy="steps", save_steps=2, train_sampling_strategy="random",
                       **{"hidden_distill_weight": 1.0, "feature_layer_map": "0:0,1:2", **kwargs})


def test_a_projection_under_deepspeed_is_refused(tokenizer, tmp_path, monkeypatch):
    # Under DeepSpeed, Trainer resumes through deepspeed_load_checkpoint, never _load_from_checkpoint, and an optimizer
    # from the DeepSpeed config holds the engine's parameters only: the projection would be silently lost on resume.
    setup = DistillationTrainer._setup_features

    def as_under_deepspeed(self):
        self.is_deepspeed_enabled = True  # DeepSpeed cannot run here; the trainer reads this flag
        return setup(self)

    monkeypatch.setattr(DistillationTrainer, "_setup_features", as_under_deepspeed)
    with pytest.raises(ValueError, match=r"hidden sizes 16 \(student\) and 32 \(teacher\).*DeepSpeed.*DDP or FSDP"):
        _projector_trainer(tokenizer, tmp_path, "ds")


def test_projection_trains_with_the_student_lives_in_checkpoints_not_in_the_export(tokenizer, tmp_path):
    trainer = _projector_trainer(tokenizer, tmp_path, "run")
    projector = trainer.feature_projector
    assert projector is not None and set(projector.maps) == {"0", "1"}
    before = {k: v.clone() for k, v in projector.state_dict().items()}
    trainer.train()
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in projector.parameters()} <= optimized
    assert any(not torch.equal(before[k], v) for k, v in projector.state_dict().items())
    assert (tmp_path / "run" / "checkpoint-2" / PROJECTOR_FILE).is_file()
    trainer.save_model(str(tmp_path / "export"))
    from safetensors.torch import load_file

    assert set(load_file(str(tmp_path / "export" / "model.safetensors"))) == set(trainer.model.state_dict())


def test_resume_restores_the_projection_and_continues_exactly(tokenizer, tmp_path):
    full = _projector_trainer(tokenizer, tmp_path, "full")
    full.train()
    cut = _projector_trainer(tokenizer, tmp_path, "cut")
    cut.add_callback(StopAt(2))
    cut.train()
    resumed = _projector_trainer(tokenizer, tmp_path, "cut")
    resumed.train(resume_from_checkpoint=True)
    for key, value in full.model.state_dict().items():
        assert torch.allclose(value, resumed.model.state_dict()[key], atol=1e-6), key
    for key, value in full.feature_projector.state_dict().items():
        assert torch.allclose(value, resumed.feature_projector.state_dict()[key], atol=1e-6), key


def test_an_ensemble_distils_its_mixture_and_the_feature_teachers_hidden_states(tokenizer, tmp_path):
    student = tiny_token_model(tokenizer, layers=1, seed=1, **NO_DROP)
    t1, t2 = tiny_token_model(tokenizer, seed=2, **NO_DROP), tiny_token_model(tokenizer, seed=3, **NO_DROP)
    trainer = ner_trainer(tokenizer, tmp_path, student=student, teacher=[t1, t2], alpha=1.0, temperature=2.0,
                          teacher_ensemble="weighted", teacher_weights=[3.0, 1.0], hidden_distill_weight=2.0,
                          feature_teacher=1)
    batch = _batch(tokenizer)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        s, o1, o2 = (m(**inputs, output_hidden_states=True) for m in (student, t1, t2))
    mask, real = batch["labels"].ne(-100), batch["attention_mask"].bool()
    target = 0.75 * (o1.logits[mask] / 2).softmax(-1) + 0.25 * (o2.logits[mask] / 2).softmax(-1)
    kd = 4 * (target * (target.log() - (s.logits[mask] / 2).log_softmax(-1))).sum(-1).mean()

    def hidden(teacher_out):  # uniform map: student layer 1 -> teacher layer 2
        return ((s.hidden_states[1] - teacher_out.hidden_states[2]) ** 2).mean(-1)[real].mean()

    assert loss.item() == pytest.approx((kd + 2.0 * hidden(o2)).item(), rel=1e-5)
    assert loss.item() != pytest.approx((kd + 2.0 * hidden(o1)).item(), rel=1e-3)  # not the first teacher's


def test_feature_teacher_must_name_a_teacher_and_a_feature_term(tokenizer, tmp_path):
    teachers = [tiny_token_model(tokenizer, seed=2), tiny_token_model(tokenizer, seed=3)]
    with pytest.raises(ValueError, match=r"`feature_teacher=2` names a teacher that is not there: .* 2 teacher\(s\)"):
        ner_trainer(tokenizer, tmp_path, teacher=teachers, hidden_distill_weight=1.0, feature_teacher=2)
    with pytest.raises(ValueError, match="`hidden_distill_weight` and `attention_distill_weight` are both 0"):
        make_args(tmp_path, feature_teacher=1)
    with pytest.raises(ValueError, match="`feature_teacher` must be an index >= 0"):
        make_args(tmp_path, hidden_distill_weight=1.0, feature_teacher=-1)


def test_feature_distillation_needs_an_online_teacher(tokenizer, tmp_path):
    from hf_distill import build_teacher_cache

    data = ner_dataset(tokenizer)
    collator = DataCollatorForTokenClassification(tokenizer)
    cache = build_teacher_cache(tiny_token_model(tokenizer, seed=2), data, collator, tmp_path / "cache",
                                progress_bar=False)
    with pytest.raises(ValueError, match="a teacher cache holds logits only"):
        DistillationTrainer(model=tiny_token_model(tokenizer, layers=1), teacher_cache=cache,
                            args=make_args(tmp_path, hidden_distill_weight=1.0), train_dataset=data,
                            data_collator=collator, processing_class=tokenizer)


# ---- attention maps -------------------------------------------------------------------------------------------


def test_attention_term_by_hand_with_eager_attention(tokenizer, tmp_path):
    student = tiny_token_model(tokenizer, layers=1, seed=1, **NO_DROP)
    teacher = tiny_token_model(tokenizer, layers=2, seed=2, **NO_DROP)
    trainer = ner_trainer(tokenizer, tmp_path, student=student, teacher=teacher, alpha=1.0,
                          attention_distill_weight=2.0)
    assert student.config._attn_implementation == teacher.config._attn_implementation == "eager"
    batch = _batch(tokenizer)
    loss, s, t = _loss_and_reference(trainer, student, teacher, batch, output_attentions=True)
    mask = batch["labels"].ne(-100)
    kd = soft_kl(s.logits[mask], t.logits[mask], 2.0).mean()
    real = batch["attention_mask"].bool()
    total, count = attention_kl(s.attentions, t.attentions, {1: 2}, real)
    assert loss.item() == pytest.approx((kd + 2.0 * total / count).item(), rel=1e-5)


def test_a_cut_students_attention_matches_the_layers_it_was_copied_from(tokenizer, tmp_path):
    from hf_distill import create_student

    teacher = tiny_token_model(tokenizer, layers=4, seed=2, **NO_DROP)
    student = create_student(teacher, [0, 2], attention_probs_dropout_prob=0.0)
    assert student.config.cut_from_teacher_layers == [0, 2] and student.config.cut_from_teacher_depth == 4
    trainer = ner_trainer(tokenizer, tmp_path, student=student, teacher=teacher, alpha=1.0,
                          attention_distill_weight=2.0, hidden_distill_weight=1.0)
    assert trainer._attention_map == {1: 1, 2: 3} and trainer._layer_map == {1: 2, 2: 4}  # hidden: uniform
    batch = _batch(tokenizer)
    loss, s, t = _loss_and_reference(trainer, student, teacher, batch, output_attentions=True,
                                     output_hidden_states=True)
    mask, real = batch["labels"].ne(-100), batch["attention_mask"].bool()
    kd = soft_kl(s.logits[mask], t.logits[mask], 2.0).mean()
    attention, count = attention_kl(s.attentions, t.attentions, {1: 1, 2: 3}, real)
    hidden = sum(((s.hidden_states[i] - t.hidden_states[j]) ** 2).mean(-1)[real].mean() for i, j in ((1, 2), (2, 4)))
    assert loss.item() == pytest.approx((kd + 2.0 * attention / count + hidden / 2).item(), rel=1e-5)
    # The first layer is the teacher's own, on the same input: its attention starts identical.
    assert torch.allclose(s.attentions[0], t.attentions[0], atol=1e-6)
    # The card names the maps that were used, not the unset feature_layer_map.
    trainer.create_model_card(output_dir=str(tmp_path))
    card = (tmp_path / "README.md").read_text()
    assert "| hidden-state layer map (student → teacher) | 1→2, 2→4 |" in card
    assert "| attention layer map (student → teacher) | 1→1, 2→3 |" in card

    explicit = ner_trainer(tokenizer, tmp_path, student=student, teacher=teacher, attention_distill_weight=1.0,
                           feature_layer_map="1:2,2:4")
    assert explicit._attention_map == explicit._layer_map == {1: 2, 2: 4}
    other = ner_trainer(tokenizer, tmp_path, student=student, teacher=tiny_token_model(tokenizer, layers=2, **NO_DROP),
                        attention_distill_weight=1.0)  # not the depth it was cut from: uniform
    assert other._attention_map == {1: 1, 2: 2}


def test_cut_layer_map_is_only_for_a_student_cut_from_that_depth():
    from types import SimpleNamespace

    from hf_distill.features import cut_layer_map

    cut = SimpleNamespace(cut_from_teacher_layers=[0, 2, 4], cut_from_teacher_depth=6, num_hidden_layers=3)
    assert cut_layer_map(cut, 6) == {1: 1, 2: 3, 3: 5}
    assert cut_layer_map(cut, 12) is None
    assert cut_layer_map(SimpleNamespace(num_hidden_layers=3), 6) is None


def test_attention_distillation_refuses_dropout_and_other_head_counts(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="attention_probs_dropout_prob=0.1"):
        ner_trainer(tokenizer, tmp_path, student=tiny_token_model(tokenizer, layers=1, hidden_dropout_prob=0.0),
                    attention_distill_weight=1.0)
    student = tiny_token_model(tokenizer, layers=1, heads=4, attention_probs_dropout_prob=0.0)
    with pytest.raises(ValueError, match="student has 4 heads and the teacher 2"):
        ner_trainer(tokenizer, tmp_path, student=student, attention_distill_weight=1.0)
    # DistilBERT names it attention_dropout (0.1 by default): it used to pass the check unseen.
    from transformers import DistilBertConfig, DistilBertForTokenClassification

    def distil(layers, dropout):
        return DistilBertForTokenClassification(DistilBertConfig(
            vocab_size=tokenizer.vocab_size, dim=32, n_layers=layers, n_heads=2, hidden_dim=64,
            max_position_embeddings=64, num_labels=len(NER_LABELS), id2label=dict(enumerate(NER_LABELS)),
            label2id={name: i for i, name in enumerate(NER_LABELS)}, attention_dropout=dropout))

    with pytest.raises(ValueError, match=r"`attention_dropout=0.1`.*create_student\(teacher, layers, attention_dropout"):
        ner_trainer(tokenizer, tmp_path, student=distil(1, 0.1), teacher=distil(2, 0.0), attention_distill_weight=1.0)
    ner_trainer(tokenizer, tmp_path, student=distil(1, 0.0), teacher=distil(2, 0.0), attention_distill_weight=1.0)


def test_attention_distillation_refuses_a_gpt2_style_student_that_drops_attention(tokenizer, tmp_path, caplog):
    # GPT-2 names it attn_pdrop (0.1 by default): the check read a field the config does not have, and passed.
    from transformers import GPT2Config, GPT2ForTokenClassification

    def gpt2(layers, dropout):
        return GPT2ForTokenClassification(GPT2Config(
            vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=layers, n_head=2, n_positions=64, attn_pdrop=dropout,
            pad_token_id=tokenizer.pad_token_id, num_labels=len(NER_LABELS), id2label=dict(enumerate(NER_LABELS)),
            label2id={name: i for i, name in enumerate(NER_LABELS)}))

    # The advice names the student's own class, and create_student only for a student cut from the teacher.
    with pytest.raises(ValueError, match=r"`attn_pdrop=0.1`.*GPT2ForTokenClassification.from_pretrained\(\.\.\., "
                                         r"attn_pdrop=0.0\)`, or `create_student.*for a student cut from the teacher"):
        ner_trainer(tokenizer, tmp_path, student=gpt2(1, 0.1), teacher=gpt2(2, 0.0), attention_distill_weight=1.0)
    ner_trainer(tokenizer, tmp_path, student=gpt2(1, 0.0), teacher=gpt2(2, 0.0), attention_distill_weight=1.0)


def test_attention_distillation_warns_where_it_cannot_see_the_students_attention_dropout(
        tokenizer, tmp_path, caplog, monkeypatch):
    import hf_distill.features as features
    import hf_distill.trainer as trainer_module

    # A config that names its attention dropout in a way hf-distill does not know.
    monkeypatch.setattr(features, "ATTENTION_DROPOUT_FIELDS", ("attention_dropout_rate",))
    monkeypatch.setattr(trainer_module, "ATTENTION_DROPOUT_FIELDS", ("attention_dropout_rate",))
    with caplog.at_level("WARNING"):
        ner_trainer(tokenizer, tmp_path, student=tiny_token_model(tokenizer, layers=1, **NO_DROP),
                    attention_distill_weight=1.0)
    assert "cannot check" in caplog.text and "attention_dropout_rate" in caplog.text


# ---- several teachers -----------------------------------------------------------------------------------------


def test_two_teachers_distil_their_mixture(tokenizer, tmp_path):
    student = tiny_token_model(tokenizer, layers=1, seed=1, **NO_DROP)
    t1, t2 = tiny_token_model(tokenizer, seed=2, **NO_DROP), tiny_token_model(tokenizer, seed=3, **NO_DROP)
    trainer = ner_trainer(tokenizer, tmp_path, student=student, teacher=[t1, t2], alpha=1.0, temperature=2.0,
                          teacher_ensemble="weighted", teacher_weights=[3.0, 1.0])
    assert len(trainer.teacher_models) == 2
    batch = _batch(tokenizer)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        s, z1, z2 = student(**inputs).logits, t1(**inputs).logits, t2(**inputs).logits
    mask = batch["labels"].ne(-100)
    target = 0.75 * (z1[mask] / 2).softmax(-1) + 0.25 * (z2[mask] / 2).softmax(-1)
    expected = 4 * (target * (target.log() - (s[mask] / 2).log_softmax(-1))).sum(-1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    trainer.train()
    for teacher in (t1, t2):
        assert not any(p.requires_grad for p in teacher.parameters())


def test_ensemble_pseudo_labels_come_from_the_mixture_at_temperature_one(tokenizer, tmp_path):
    # Which rows pass the threshold, and with which class, is read from the mixture at T = 1 whatever the distillation
    # temperature (the mixture at T = 4 is more confident on some rows and less on others).
    t1, t2 = (tiny_sequence_model(tokenizer, num_labels=3, seed=s, **NO_DROP) for s in (2, 3))
    with torch.no_grad():  # confident teachers that disagree
        t1.classifier.weight.mul_(60)
        t2.classifier.weight.mul_(60)
    data = seq_dataset(tokenizer, labels=False)
    batch = dict(DataCollatorWithPadding(tokenizer)(list(data)))
    with torch.no_grad():
        mixture = (t1(**batch).logits.softmax(-1) + t2(**batch).logits.softmax(-1)) / 2
    confidence = mixture.max(-1).values
    threshold = confidence.median().item()
    keep = confidence >= threshold
    assert 0 < keep.sum() < len(keep)  # the threshold does choose
    trainer = DistillationTrainer(
        model=tiny_sequence_model(tokenizer, num_labels=3, layers=1, seed=1, **NO_DROP), teacher_model=[t1, t2],
        args=make_args(tmp_path, alpha=0.0, temperature=4.0, pseudo_label_threshold=threshold), train_dataset=data,
        data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
    )
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    with torch.no_grad():
        s = trainer.model(**batch).logits
    expected = torch.nn.functional.cross_entropy(s[keep], mixture.argmax(-1)[keep], reduction="sum") / len(keep)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 8.0])
def test_ensemble_hard_labels_are_the_mixtures_argmax_at_temperature_one(tokenizer, tmp_path, temperature):
    # The argmax of T·log Σ softmax(z/T) moves with T; hard labels must not (the temperature is unused with them).
    t1, t2 = (tiny_sequence_model(tokenizer, num_labels=3, seed=s, **NO_DROP) for s in (2, 3))
    with torch.no_grad():  # confident teachers that disagree, so the mixture's argmax depends on the temperature
        t1.classifier.weight.mul_(200)
        t2.classifier.weight.mul_(200)
    data = seq_dataset(tokenizer, labels=False)
    trainer = DistillationTrainer(
        model=tiny_sequence_model(tokenizer, num_labels=3, layers=1, seed=1, **NO_DROP), teacher_model=[t1, t2],
        args=make_args(tmp_path, alpha=1.0, temperature=temperature, teacher_labels="hard"), train_dataset=data,
        data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
    )
    batch = dict(DataCollatorWithPadding(tokenizer)(list(data)))
    with torch.no_grad():
        mixture = (t1(**batch).logits.softmax(-1) + t2(**batch).logits.softmax(-1)) / 2
        at_eight = combine_teacher_logits([t1(**batch).logits, t2(**batch).logits], temperature=8.0)
    assert not torch.equal(at_eight.argmax(-1), mixture.argmax(-1))  # the case the test is about does arise
    assert torch.equal(trainer.teacher_logits(batch).argmax(-1), mixture.argmax(-1))


def test_every_teacher_is_checked(tokenizer, tmp_path):
    other_labels = tiny_token_model(tokenizer, labels=NER_LABELS[:5], seed=3)
    with pytest.raises(ValueError, match="label"):
        ner_trainer(tokenizer, tmp_path, teacher=[tiny_token_model(tokenizer, seed=2), other_labels])
    with pytest.raises(ValueError, match="`teacher_weights` has 3 weights but 2 teachers"):
        ner_trainer(tokenizer, tmp_path, teacher=[tiny_token_model(tokenizer, seed=2)] * 2,
                    teacher_ensemble="weighted", teacher_weights=[1.0, 1.0, 1.0])


# ---- EMA self-distillation ------------------------------------------------------------------------------------


def _ema_trainer(tokenizer, tmp_path, student, **kwargs):
    return DistillationTrainer(
        model=student, args=make_args(tmp_path, self_distillation="ema", **kwargs),
        train_dataset=ner_dataset(tokenizer), data_collator=DataCollatorForTokenClassification(tokenizer),
        processing_class=tokenizer,
    )


def test_ema_teacher_follows_the_student_by_the_decay(tokenizer, tmp_path):
    student = tiny_token_model(tokenizer, layers=1, seed=1)
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = _ema_trainer(tokenizer, tmp_path, student, max_steps=1, ema_decay=0.9)
    teacher = trainer.teacher_model
    assert teacher is not student and not any(p.requires_grad for p in teacher.parameters())
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]} if trainer.optimizer \
        else set()
    trainer.train()
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}
    after = student.state_dict()
    for name, param in teacher.named_parameters():
        assert torch.allclose(param, 0.9 * initial[name] + 0.1 * after[name], atol=1e-6), name
    assert any(not torch.equal(initial[k], after[k]) for k in initial)


def test_ema_teacher_of_a_bfloat16_student_keeps_its_small_updates(tokenizer, tmp_path):
    # With decay 0.999 an update moves a weight by 0.1% of its gap to the student: in bfloat16 (8 bits of mantissa)
    # most such updates round away, so the EMA is kept in float32.
    student = tiny_token_model(tokenizer, layers=1, seed=1).to(torch.bfloat16)
    initial = {k: v.float().clone() for k, v in student.state_dict().items()}
    trainer = _ema_trainer(tokenizer, tmp_path, student, max_steps=1, ema_decay=0.999, learning_rate=1e-2)
    trainer.train()
    assert all(p.dtype == torch.float32 for p in trainer.teacher_model.parameters())
    after = student.state_dict()
    for name, param in trainer.teacher_model.named_parameters():
        expected = initial[name].lerp(after[name].float(), 0.001)
        assert torch.allclose(param, expected, rtol=0, atol=1e-7), name


def test_ema_teacher_is_saved_and_restored_on_resume(tokenizer, tmp_path):
    def run(out, stop=None):
        trainer = _ema_trainer(tokenizer, tmp_path, tiny_token_model(tokenizer, layers=1, seed=1), max_steps=4,
                               ema_decay=0.5, output_dir=str(tmp_path / out), save_strategy="steps", save_steps=2,
                               train_sampling_strategy="random")
        if stop:
            trainer.add_callback(StopAt(stop))
        return trainer

    full = run("full")
    full.train()
    cut = run("cut", stop=2)
    cut.train()
    assert (tmp_path / "cut" / "checkpoint-2" / EMA_TEACHER_FILE).is_file()
    resumed = run("cut")
    resumed.train(resume_from_checkpoint=True)
    for key, value in full.teacher_model.state_dict().items():
        assert torch.allclose(value, resumed.teacher_model.state_dict()[key], atol=1e-6), key


def test_a_second_train_call_saves_its_own_ema_teacher_in_its_checkpoints(tokenizer, tmp_path):
    trainer = _ema_trainer(tokenizer, tmp_path, tiny_token_model(tokenizer, layers=1, seed=1), max_steps=2,
                           ema_decay=0.5, save_strategy="steps", save_steps=2)
    trainer.train()
    first = torch.load(tmp_path / "out" / "checkpoint-2" / EMA_TEACHER_FILE, weights_only=True)
    trainer.train()  # same folder, same step: the checkpoint must hold this run's EMA teacher, not the first run's
    second = torch.load(tmp_path / "out" / "checkpoint-2" / EMA_TEACHER_FILE, weights_only=True)
    assert any(not torch.equal(first[k], second[k]) for k in first)
    assert all(torch.equal(v, second[k]) for k, v in trainer.teacher_model.state_dict().items())


def test_ema_with_a_teacher_is_refused(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="do not pass `teacher_model`"):
        ner_trainer(tokenizer, tmp_path, self_distillation="ema")
    student = tiny_token_model(tokenizer, layers=1, seed=1)
    for settings in ({"teacher_ensemble": "weighted", "teacher_weights": [0.5, 0.5]}, {"teacher_ensemble": "confidence"}):
        with pytest.raises(ValueError, match=r"combine several teachers.*leave them at their defaults"):
            _ema_trainer(tokenizer, tmp_path, student, **settings)


# ---- unlabeled data -------------------------------------------------------------------------------------------


def _seq_trainer(tokenizer, tmp_path, dataset, **kwargs):
    return DistillationTrainer(
        model=tiny_sequence_model(tokenizer, layers=1, seed=1, **NO_DROP),
        teacher_model=tiny_sequence_model(tokenizer, seed=2, **NO_DROP),
        args=make_args(tmp_path, **kwargs), train_dataset=dataset,
        data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
    )


def test_pseudo_labels_train_the_hard_loss_on_unlabeled_rows(tokenizer, tmp_path):
    labeled, unlabeled = seq_dataset(tokenizer).select(range(3)), seq_dataset(tokenizer, labels=False)
    mixed = mix_unlabeled(labeled, unlabeled.select(range(3, 6)))
    assert mixed["labels"] == [0, 1, 0, -100, -100, -100]
    trainer = _seq_trainer(tokenizer, tmp_path, mixed, alpha=0.0, pseudo_label_threshold=0.5)
    batch = dict(DataCollatorWithPadding(tokenizer)(list(mixed)))
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        s, t = trainer.model(**inputs).logits, trainer.teacher_model(**inputs).logits
    targets = batch["labels"].clone()
    targets[3:] = t[3:].argmax(-1)  # two classes: the top class always has probability >= 0.5
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(s, targets).item(), rel=1e-5)
    # A threshold nobody reaches: unlabeled rows add 0 but still count in the mean.
    strict = _seq_trainer(tokenizer, tmp_path, mixed, alpha=0.0, pseudo_label_threshold=1.0)
    strict.model.train()
    loss = strict.compute_loss(strict.model, dict(batch))
    labelled_sum = torch.nn.functional.cross_entropy(s[:3], batch["labels"][:3], reduction="sum")
    assert loss.item() == pytest.approx((labelled_sum / 6).item(), rel=1e-5)
    # The logged ce_loss is that same mean (over the 6 positions), not the mean over the 3 that carry a label.
    logged = _seq_trainer(tokenizer, tmp_path, mixed, alpha=0.0, pseudo_label_threshold=1.0,
                          per_device_train_batch_size=6, max_steps=1, learning_rate=0.0)
    logged.train()
    (log,) = [h for h in logged.state.log_history if "ce_loss" in h]
    assert log["ce_loss"] == pytest.approx(log["loss"], rel=1e-4)


def test_unlabeled_text_with_pseudo_labels_needs_no_labels_column(tokenizer, tmp_path):
    trainer = _seq_trainer(tokenizer, tmp_path, seq_dataset(tokenizer, labels=False), alpha=0.5,
                           pseudo_label_threshold=0.6)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all("kd_loss" in h for h in logs)


def test_mixed_token_data_distils_unlabeled_rows_on_all_subwords(tokenizer, tmp_path):
    labeled = ner_dataset(tokenizer, n=3)
    unlabeled = ner_dataset(tokenizer).select(range(3, 6)).remove_columns("labels")
    mixed = mix_unlabeled(labeled, unlabeled)
    assert [set(r) for r in mixed["labels"][3:]] == [{-100}] * 3
    trainer = ner_trainer(tokenizer, tmp_path, dataset=mixed, distill_positions="all_subwords")
    batch = dict(DataCollatorForTokenClassification(tokenizer)(list(mixed)))
    assert trainer.distill_mask(batch)[3:].any()  # the unlabeled rows are distilled
    trainer.train()


def test_unlabeled_token_rows_with_first_subword_positions_are_pointed_out(tokenizer, tmp_path, caplog):
    # first_subword distils the labelled positions: a row with none is neither distilled nor trained on.
    mixed = mix_unlabeled(ner_dataset(tokenizer, n=3), ner_dataset(tokenizer).select(range(3, 5)))
    with caplog.at_level("WARNING"):
        ner_trainer(tokenizer, tmp_path, dataset=mixed)
    assert "2 of 5 training rows have no label" in caplog.text and "all_subwords" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        ner_trainer(tokenizer, tmp_path, dataset=mixed, distill_positions="all_subwords")
        ner_trainer(tokenizer, tmp_path, dataset=ner_dataset(tokenizer, n=3))
    assert "have no label" not in caplog.text


def test_mix_unlabeled_with_a_seed_shuffles_the_two_sets_together(tokenizer):
    labeled, unlabeled = seq_dataset(tokenizer), seq_dataset(tokenizer, labels=False)
    plain = mix_unlabeled(labeled, unlabeled)
    assert list(plain["labels"]) == list(labeled["labels"]) + [-100] * len(unlabeled)  # without a seed: labelled rows first
    mixed = mix_unlabeled(labeled, unlabeled, seed=0)
    assert list(mixed["input_ids"]) == list(plain.shuffle(seed=0)["input_ids"])
    assert list(mixed["labels"]) == list(plain.shuffle(seed=0)["labels"]) != list(plain["labels"])
    head = list(mixed["labels"])[: len(labeled)]  # what `select(range(n))` would take holds rows of both kinds
    assert -100 in head and any(label != -100 for label in head)


def test_mix_unlabeled_takes_a_label_column_as_glue_names_it(tokenizer):
    # GLUE and `load_text_classification_file` name the column `label`, which Trainer's collators take: mixing
    # refused it.
    labeled = seq_dataset(tokenizer).rename_column("labels", "label")
    unlabeled = seq_dataset(tokenizer).rename_column("labels", "label")  # a label column there is ignored
    mixed = mix_unlabeled(labeled, unlabeled)
    assert "label" not in mixed.column_names
    assert list(mixed["labels"]) == list(labeled["label"]) + [-100] * len(unlabeled)
    with pytest.raises(ValueError, match=r"no `labels` \(or `label`\) column"):
        mix_unlabeled(labeled.remove_columns("label"), unlabeled)


def test_mix_unlabeled_fills_large_list_token_labels(tokenizer):
    # Arrow large lists (a parquet file written with them) train like lists; mixing failed on a cast error.
    from datasets import LargeList, Value

    labeled = ner_dataset(tokenizer, n=3)
    labeled = labeled.cast_column("labels", LargeList(Value("int64")))
    mixed = mix_unlabeled(labeled, ner_dataset(tokenizer).select(range(3, 5)).remove_columns("labels"))
    assert [len(r) for r in mixed["labels"][3:]] == [len(r) for r in mixed["input_ids"][3:]]
    assert [set(r) for r in mixed["labels"][3:]] == [{-100}] * 2


def test_token_pseudo_labels_need_all_subwords(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="Use `distill_positions='all_subwords'` with `pseudo_label_threshold`"):
        ner_trainer(tokenizer, tmp_path, pseudo_label_threshold=0.9)
    trainer = ner_trainer(tokenizer, tmp_path, pseudo_label_threshold=0.0001, distill_positions="all_subwords",
                          alpha=0.0, dataset=mix_unlabeled(ner_dataset(tokenizer, n=2),
                                                           ner_dataset(tokenizer).select(range(2, 6))))
    batch = dict(DataCollatorForTokenClassification(tokenizer)(list(trainer.train_dataset)))
    candidates = trainer.pseudo_label_candidates(batch)
    assert not candidates[:2].any() and candidates[2:].sum() == trainer.distill_mask(batch)[2:].sum()


def test_mix_unlabeled_explains_a_dataset_dict(tokenizer):
    from datasets import DatasetDict

    with pytest.raises(ValueError, match="pass one split"):
        mix_unlabeled(seq_dataset(tokenizer), DatasetDict({"train": seq_dataset(tokenizer)}))


@pytest.mark.parametrize("side", ["labeled", "unlabeled"])
def test_mix_unlabeled_explains_a_streamed_split(tokenizer, side):
    # a tokenized stream has no column names and no length: it failed with a bare TypeError
    labeled, unlabeled = seq_dataset(tokenizer), seq_dataset(tokenizer).remove_columns("labels")
    stream = (labeled if side == "labeled" else unlabeled).to_iterable_dataset().map(lambda row: row)
    pair = (stream, unlabeled) if side == "labeled" else (labeled, stream)
    with pytest.raises(ValueError, match=rf"`{side}` is a streamed IterableDataset.*\.take\("):
        mix_unlabeled(*pair)
    # A list of rows or a torch Subset, which the trainer takes as a training set, failed on `column_names`.
    rows = list(labeled if side == "labeled" else unlabeled)
    pair = (rows, unlabeled) if side == "labeled" else (labeled, rows)
    with pytest.raises(ValueError, match=rf"`{side}` is a list; mixing needs a `datasets.Dataset`.*from_list"):
        mix_unlabeled(*pair)


# ---- augmentation ---------------------------------------------------------------------------------------------


def test_teacher_labels_the_augmented_input(tokenizer, tmp_path):
    trainer = ner_trainer(tokenizer, tmp_path, augment_mask_prob=0.5, augment_replace_prob=0.2, max_steps=2)
    seen = []
    trainer.teacher_model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].clone()),
                                                   with_kwargs=True)
    trainer.train()
    clean = {tuple(r) for r in ner_dataset(tokenizer)["input_ids"]}
    assert seen and any(tuple(x[x != 0].tolist()) not in clean for batch in seen for x in batch)
    specials = torch.tensor(tokenizer.all_special_ids)
    for batch in seen:  # [CLS]/[SEP] stay where they were; padding stays padding
        assert (batch[:, 0] == tokenizer.cls_token_id).all()
        assert ((batch == tokenizer.mask_token_id) | ~torch.isin(batch, specials) | (batch == 0) |
                (batch == tokenizer.sep_token_id) | (batch == tokenizer.cls_token_id)).all()


def test_replacements_are_ids_the_tokenizer_makes_not_padded_embedding_rows(tokenizer, tmp_path):
    # An embedding matrix padded past the tokenizer (ModernBERT, DeBERTa-v3) has rows no text ever reaches: they were
    # drawn as "words" and fed to teacher and student alike.
    student, teacher = tiny_token_model(tokenizer, layers=1, seed=1), tiny_token_model(tokenizer, layers=2, seed=2)
    for model in (student, teacher):
        model.resize_token_embeddings(len(tokenizer) + 40)
    trainer = ner_trainer(tokenizer, tmp_path, student=student, teacher=teacher, augment_replace_prob=1.0)
    replaced = trainer.augment(_batch(tokenizer))["input_ids"]
    assert int(trainer._replacement_ids.max()) < len(tokenizer) and int(replaced.max()) < len(tokenizer)
    assert len(trainer._replacement_ids) == len(tokenizer) - len(set(tokenizer.all_special_ids) - {
        tokenizer.unk_token_id, tokenizer.mask_token_id})


def test_augmentation_is_seeded(tokenizer, tmp_path):
    def draws(seed):
        trainer = ner_trainer(tokenizer, tmp_path, augment_mask_prob=0.3, seed=seed)
        batch = _batch(tokenizer)
        return [trainer.augment(batch)["input_ids"] for _ in range(2)]

    a, b, c = draws(0), draws(0), draws(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_augmentation_with_only_a_cache_is_refused(tokenizer, tmp_path):
    from hf_distill import build_teacher_cache

    data = ner_dataset(tokenizer)
    cache = build_teacher_cache(tiny_token_model(tokenizer, seed=2), data, DataCollatorForTokenClassification(tokenizer),
                                tmp_path / "cache", progress_bar=False)
    with pytest.raises(ValueError, match="the teacher must label them online"):
        DistillationTrainer(model=tiny_token_model(tokenizer, layers=1), teacher_cache=cache,
                            args=make_args(tmp_path, augment_mask_prob=0.1), train_dataset=data,
                            data_collator=DataCollatorForTokenClassification(tokenizer), processing_class=tokenizer)


def test_masking_with_a_tokenizer_without_a_mask_token_is_refused_at_init(tokenizer, tmp_path):
    # A GPT-2/Llama-style tokenizer: accepted at init, then the first training batch failed.
    import copy

    no_mask = copy.deepcopy(tokenizer)
    no_mask.mask_token = None
    assert no_mask.mask_token_id is None
    with pytest.raises(ValueError, match=r"augment_mask_prob=0.1` writes the mask token .* has none .*Use "
                                         r"`augment_replace_prob`"):
        DistillationTrainer(model=tiny_token_model(no_mask, layers=1), teacher_model=tiny_token_model(no_mask),
                            args=make_args(tmp_path, augment_mask_prob=0.1), train_dataset=ner_dataset(no_mask),
                            data_collator=DataCollatorForTokenClassification(no_mask), processing_class=no_mask)


# ---- a LoRA student -------------------------------------------------------------------------------------------


def test_lora_student_trains_its_adapters_and_saves_them(tokenizer, tmp_path):
    peft = pytest.importorskip("peft")
    base = tiny_token_model(tokenizer, layers=2, seed=1, **NO_DROP)
    base.config._name_or_path = "acme/tiny-student"
    frozen_before = base.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    config = peft.LoraConfig(task_type=peft.TaskType.TOKEN_CLS, r=4, lora_alpha=8, target_modules=["query", "value"])
    student = peft.get_peft_model(base, config)
    trainer = ner_trainer(tokenizer, tmp_path, student=student, max_steps=4, learning_rate=1e-2)
    lora_before = {n: p.detach().clone() for n, p in student.named_parameters() if "lora_B" in n}
    trainer.train()
    assert torch.equal(base.bert.encoder.layer[0].attention.self.query.base_layer.weight, frozen_before)
    assert any(not torch.equal(lora_before[n], p) for n, p in student.named_parameters() if "lora_B" in n)
    trainer.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    # The card is ours, with PEFT's metadata: an adapter on the student's base model, not a transformers model.
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "hf-distill" in card and "library_name: peft" in card and "base_model: acme/tiny-student" in card
    assert "PEFT adapter on `acme/tiny-student`" in card
    reloaded = peft.PeftModel.from_pretrained(tiny_token_model(tokenizer, layers=2, seed=1, **NO_DROP),
                                              tmp_path / "adapter").eval()
    batch = _batch(tokenizer)
    batch.pop("labels")
    student.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, student(**batch).logits, atol=1e-6)


def test_a_lora_adapter_on_a_cut_student_is_not_said_to_go_on_the_teacher(tokenizer, tmp_path, caplog):
    # create_student copied the teacher's config, name included, so PEFT recorded the teacher as the adapter's base:
    # loading the adapter on it gave the full-depth teacher with the student's adapter, silently.
    peft = pytest.importorskip("peft")
    from hf_distill import create_student

    tiny_token_model(tokenizer, layers=2, seed=2).save_pretrained(tmp_path / "teacher")
    teacher = type(tiny_token_model(tokenizer)).from_pretrained(tmp_path / "teacher")
    cut = create_student(teacher, [1])
    assert teacher.name_or_path == str(tmp_path / "teacher") and cut.name_or_path == ""
    config = peft.LoraConfig(task_type=peft.TaskType.TOKEN_CLS, r=4, lora_alpha=8, target_modules=["query", "value"])
    with caplog.at_level("WARNING"):
        trainer = ner_trainer(tokenizer, tmp_path, student=peft.get_peft_model(cut, config), teacher=teacher,
                              max_steps=1)
    assert "base model has no name" in caplog.text and "save_pretrained" in caplog.text
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert f"PEFT adapter on `{tmp_path / 'teacher'}`" not in card and "base_model:" not in card
    assert "on a base model with no name" in card and "is not saved with it" in card


def test_lora_on_the_word_embeddings_trains_adversarially(tokenizer, tmp_path):
    # PEFT's LoRA embedding layer has no `embedding_dim`; the attack must still perturb its output.
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(task_type=peft.TaskType.TOKEN_CLS, r=4, target_modules=["query", "word_embeddings"])
    student = peft.get_peft_model(tiny_token_model(tokenizer, layers=1, seed=1, **NO_DROP), config)
    trainer = ner_trainer(tokenizer, tmp_path, student=student, adversarial="pgd", adv_steps=2, max_steps=2)
    lora_before = {n: p.detach().clone() for n, p in student.named_parameters() if "lora_embedding_B" in n}
    trainer.train()
    assert lora_before and all(not torch.equal(lora_before[n], p) for n, p in student.named_parameters()
                               if "lora_embedding_B" in n)
    assert all(h["adv_delta_norm"] > 0 for h in trainer.state.log_history if "loss" in h)


# ---- what each teacher's forward receives ----------------------------------------------------------------------


def _pairs(tokenizer):
    enc = tokenizer(["john lives in paris .", "the movie was great"], ["mary works at acme", "the plot was awful !"])
    batch = dict(DataCollatorWithPadding(tokenizer)([{k: enc[k][i] for k in enc} for i in range(2)]))
    assert batch["token_type_ids"].any()  # sentence pairs: the segment ids matter
    return batch


def _segment_sensitive(model):
    with torch.no_grad():  # make the segment embedding decide the logits
        model.bert.embeddings.token_type_embeddings.weight.normal_(0, 3.0)
        model.classifier.weight.mul_(100)
    return model.eval()


def test_a_lora_teacher_gets_the_inputs_its_base_model_takes(tokenizer, tmp_path):
    # PeftModel.forward names input_ids and attention_mask and passes the rest (token_type_ids) through **kwargs.
    peft = pytest.importorskip("peft")
    base = _segment_sensitive(tiny_sequence_model(tokenizer, seed=2, **NO_DROP))
    config = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=["query", "value"])
    teacher = peft.get_peft_model(base, config).eval()
    batch = _pairs(tokenizer)
    trainer = DistillationTrainer(
        model=tiny_sequence_model(tokenizer, layers=1, seed=1), teacher_model=teacher,
        args=make_args(tmp_path, alpha=1.0), train_dataset=seq_dataset(tokenizer),
        data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
    )
    with torch.no_grad():
        assert torch.equal(trainer.teacher_logits(batch), teacher(**batch).logits)


def test_each_teacher_of_an_ensemble_gets_the_inputs_its_own_forward_takes(tokenizer, tmp_path):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    distil = DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=tokenizer.vocab_size, dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_position_embeddings=64,
        dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0)).eval()  # takes no token_type_ids
    bert = _segment_sensitive(tiny_sequence_model(tokenizer, seed=2, **NO_DROP))
    batch = _pairs(tokenizer)
    trainer = DistillationTrainer(
        model=tiny_sequence_model(tokenizer, layers=1, seed=1), teacher_model=[distil, bert],
        args=make_args(tmp_path, alpha=1.0, temperature=1.0), train_dataset=seq_dataset(tokenizer),
        data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
    )
    with torch.no_grad():
        p_bert = bert(**batch).logits.softmax(-1)
        p_distil = distil(**{k: v for k, v in batch.items() if k != "token_type_ids"}).logits.softmax(-1)
        assert torch.allclose(trainer.teacher_logits(batch).softmax(-1), (p_bert + p_distil) / 2, atol=1e-6)


def test_a_user_optimizer_gets_the_projection_and_a_user_scheduler_without_it_is_refused(tokenizer, tmp_path):
    from transformers import DataCollatorForTokenClassification, get_linear_schedule_with_warmup

    from hf_distill import DistillationTrainer

    def trainer_with(out, scheduler):
        student = tiny_token_model(tokenizer, layers=1, seed=1, hidden=16)
        optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
        schedule = get_linear_schedule_with_warmup(optimizer, 0, 4) if scheduler else None
        reference = _projector_trainer(tokenizer, tmp_path, out)
        return DistillationTrainer(model=student, teacher_model=reference.teacher_model, args=reference.args,
                                   train_dataset=reference.train_dataset,
                                   data_collator=DataCollatorForTokenClassification(tokenizer),
                                   processing_class=tokenizer, optimizers=(optimizer, schedule))

    alone = trainer_with("alone", scheduler=False)
    before = {k: v.clone() for k, v in alone.feature_projector.state_dict().items()}
    alone.train()  # the projection joins the user's optimizer, and Trainer's scheduler covers both groups
    assert len(alone.optimizer.param_groups) == 2 and alone.optimizer.param_groups[1]["lr"] == 0.0  # linear decay
    assert any(not torch.equal(before[k], v) for k, v in alone.feature_projector.state_dict().items())
    with pytest.raises(ValueError, match=r"optimizers=\(optimizer, None\)"):
        trainer_with("both", scheduler=True).train()


def test_max_grad_norm_clips_the_projection_with_the_student(tokenizer, tmp_path):
    from transformers import TrainerCallback

    def projector_step(max_grad_norm):
        trainer = ner_trainer(tokenizer, tmp_path, student=tiny_token_model(tokenizer, layers=1, seed=1, hidden=16),
                              output_dir=str(tmp_path / f"clip{max_grad_norm}"), max_steps=1, optim="sgd",
                              learning_rate=0.1, lr_scheduler_type="constant", max_grad_norm=max_grad_norm,
                              logging_steps=1, hidden_distill_weight=1.0, feature_layer_map="0:0,1:2")
        before = {k: v.clone() for k, v in trainer.feature_projector.state_dict().items()}
        norms = {}

        class Norms(TrainerCallback):  # the gradients about to be stepped, per part
            def on_pre_optimizer_step(self, args, state, control, **kwargs):
                for name, module in (("student", trainer.model), ("projector", trainer.feature_projector)):
                    norms[name] = torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])

        trainer.add_callback(Norms())
        trainer.train()
        moved = max((v - before[k]).abs().max().item() for k, v in trainer.feature_projector.state_dict().items())
        logged = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h][0]
        return moved, logged, norms

    unclipped, norm, grads = projector_step(0.0)
    assert norm == pytest.approx(torch.cat([grads["student"], grads["projector"]]).norm().item(), rel=1e-5)
    clipped, clipped_norm, grads = projector_step(1e-6)
    assert unclipped > 1e-3 and clipped <= 0.1 * 1e-6 * 1.01  # SGD: lr times a gradient of norm <= max_grad_norm
    assert torch.cat([grads["student"], grads["projector"]]).norm().item() == pytest.approx(1e-6, rel=1e-3)
    assert clipped_norm == pytest.approx(norm, rel=1e-5)  # the logged norm is the one before clipping


def test_an_ensembles_teachers_must_agree_on_their_labels_and_a_bad_one_is_named(tokenizer, tmp_path):
    # The student's placeholder labels (LABEL_0, LABEL_1) let each teacher pass on its own; their mixture would add
    # one teacher's "neg" to the other's "pos".
    def named(seed, labels, vocab=None):
        model = tiny_sequence_model(tokenizer, seed=seed, id2label=dict(enumerate(labels)),
                                    label2id={n: i for i, n in enumerate(labels)})
        model.config._name_or_path = f"acme/teacher-{seed}"
        return model

    def build(teachers, student=None):
        return DistillationTrainer(model=student or tiny_sequence_model(tokenizer, layers=1), teacher_model=teachers,
                                   args=make_args(tmp_path), train_dataset=seq_dataset(tokenizer),
                                   data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)

    with pytest.raises(ValueError, match=r"Teacher 1 \(acme/teacher-2\) has the labels \['pos', 'neg'\].*another order"):
        build([named(1, ["neg", "pos"]), named(2, ["pos", "neg"])])
    build([named(1, ["neg", "pos"]), named(2, ["neg", "pos"])])
    # A first teacher with placeholder names says nothing about the order: the others are still compared.
    unnamed = tiny_sequence_model(tokenizer, seed=3)
    with pytest.raises(ValueError, match=r"Teacher 2 \(acme/teacher-2\) has the labels \['pos', 'neg'\], teacher 1 "):
        build([unnamed, named(1, ["neg", "pos"]), named(2, ["pos", "neg"])])
    # A teacher that fails against the student is named by its place in the list.
    three = tiny_sequence_model(tokenizer, num_labels=3)
    three.config._name_or_path = "acme/three-way"
    with pytest.raises(ValueError, match=r"Teacher 1 of 2 \(acme/three-way\): The teacher predicts 3 labels"):
        build([named(1, ["neg", "pos"]), three])


def test_a_save_over_another_kind_of_save_leaves_no_stale_weights(tokenizer, tmp_path):
    # An adapter saved where a full model was (or the reverse) must not leave the other's weights for from_pretrained.
    peft = pytest.importorskip("peft")
    full = ner_trainer(tokenizer, tmp_path, max_steps=1)
    full.save_model(str(tmp_path / "student"))
    assert (tmp_path / "student" / "model.safetensors").is_file()
    config = peft.LoraConfig(task_type=peft.TaskType.TOKEN_CLS, r=4, target_modules=["query", "value"])
    adapter = ner_trainer(tokenizer, tmp_path, max_steps=1,
                          student=peft.get_peft_model(tiny_token_model(tokenizer, layers=1, seed=1), config))
    adapter.save_model(str(tmp_path / "student"))
    files = set(os.listdir(tmp_path / "student"))
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files and "model.safetensors" not in files
    full.save_model(str(tmp_path / "student"))
    files = set(os.listdir(tmp_path / "student"))
    assert "model.safetensors" in files and not files & {"adapter_model.safetensors", "adapter_config.json"}
    assert "README.md" in files and "config.json" in files


@pytest.mark.usefixtures("skip_gc_collect")
def test_a_retry_of_auto_find_batch_size_starts_from_clean_gradients_and_logs(tokenizer, tmp_path):
    # Trainer reruns its loop with half the batch after an out-of-memory error: what the aborted attempt left in the
    # projection's gradients and in the loss window must not reach the retry's first step.
    def first_log(out, batch_size, fail_at=None):
        calls = []

        class FailOnce(DistillationTrainer):
            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
                calls.append(1)
                if len(calls) == fail_at:
                    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
                return loss

        args = make_args(tmp_path, output_dir=str(tmp_path / out), auto_find_batch_size=True, max_steps=1,
                         per_device_train_batch_size=batch_size, gradient_accumulation_steps=2, learning_rate=0.0,
                         hidden_distill_weight=1.0, feature_layer_map="0:0,1:2")
        trainer = FailOnce(model=tiny_token_model(tokenizer, layers=1, seed=1, hidden=16, **NO_DROPOUT),
                           teacher_model=tiny_token_model(tokenizer, layers=2, seed=2, **NO_DROPOUT), args=args,
                           train_dataset=ner_dataset(tokenizer),
                           data_collator=DataCollatorForTokenClassification(tokenizer), processing_class=tokenizer)
        torch.manual_seed(0)
        trainer.feature_projector.load_state_dict(projector)
        trainer.train()
        return next(h for h in trainer.state.log_history if "loss" in h)

    torch.manual_seed(5)
    projector = {k: torch.randn_like(v) for k, v in ner_trainer(
        tokenizer, tmp_path, student=tiny_token_model(tokenizer, layers=1, seed=1, hidden=16),
        hidden_distill_weight=1.0, feature_layer_map="0:0,1:2").feature_projector.state_dict().items()}
    retried, fresh = first_log("retried", 2, fail_at=2), first_log("fresh", 1)
    for key in ("grad_norm", "kd_loss", "hidden_loss", "loss"):
        assert retried[key] == pytest.approx(fresh[key], rel=1e-5), key


@pytest.mark.parametrize("change", [{"hidden_distill_weight": 0.0, "feature_layer_map": None},
                                    {"feature_layer_map": "1:2"}])
def test_resuming_with_other_feature_settings_names_the_projection(tokenizer, tmp_path, change):
    cut = _projector_trainer(tokenizer, tmp_path, "cut")
    cut.add_callback(StopAt(2))
    cut.train()
    resumed = _projector_trainer(tokenizer, tmp_path, "cut", **change)
    with pytest.raises(ValueError, match="feature_projector.pt.*hidden-state distillation settings"):
        resumed.train(resume_from_checkpoint=True)


def test_a_checkpoint_saved_again_without_a_projection_holds_none_and_resumes(tokenizer, tmp_path):
    # A second run in the same output_dir, without hidden-state distillation, saved checkpoint-2 again over the first
    # run's: the first run's feature_projector.pt stayed, and resuming the second run was refused as other settings.
    _projector_trainer(tokenizer, tmp_path, "out").train()
    again = _projector_trainer(tokenizer, tmp_path, "out", hidden_distill_weight=0.0, feature_layer_map=None)
    again.add_callback(StopAt(2))
    again.train()
    assert not (tmp_path / "out" / "checkpoint-2" / PROJECTOR_FILE).exists()
    resumed = _projector_trainer(tokenizer, tmp_path, "out", hidden_distill_weight=0.0, feature_layer_map=None)
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert resumed.state.global_step == 4


@pytest.mark.parametrize("settings", [{"teacher_ensemble": "confidence"},
                                      {"teacher_ensemble": "weighted", "teacher_weights": [5.0]}])
def test_ensemble_settings_with_one_teacher_are_refused(tokenizer, tmp_path, settings):
    # They would change nothing, while the model card listed them as the way the teachers were combined.
    with pytest.raises(ValueError, match=r"combine several teachers, and this run has one"):
        ner_trainer(tokenizer, tmp_path, **settings)


def test_ema_decay_without_ema_self_distillation_is_refused(tmp_path):
    with pytest.raises(ValueError, match="ema_decay=0.99.*self_distillation='ema'"):
        make_args(tmp_path, ema_decay=0.99)
    assert make_args(tmp_path, ema_decay=0.99, self_distillation="ema").ema_decay == 0.99


@pytest.mark.parametrize("settings, match", [
    ({"adv_epsilon": 0.3, "adv_steps": 2}, r"adv_epsilon=0.3, adv_steps=2 are set, but `adversarial` is 'none'"),
    ({"adv_start_step": 5}, r"adv_start_step=5 is set, but `adversarial` is 'none'"),
    ({"feature_layer_map": "1:1"}, r"feature_layer_map='1:1' is set, but .*hidden_distill_weight"),
    ({"hidden_distill_loss": "cosine"}, r"hidden_distill_loss='cosine' is set"),
])
def test_adversarial_and_feature_settings_without_their_method_are_refused(tmp_path, settings, match):
    # A user who forgets `adversarial=...` must not get a plain student believing it robust.
    with pytest.raises(ValueError, match=match):
        make_args(tmp_path, **settings)
    assert make_args(tmp_path, adversarial="pgd", adv_epsilon=0.3, adv_steps=2, adv_start_step=5).adv_steps == 2
    assert make_args(tmp_path, hidden_distill_weight=1.0, feature_layer_map="1:1",
                     hidden_distill_loss="cosine").feature_layer_map == "1:1"


def test_every_process_averages_every_projector_gradient_even_one_its_skipped_batch_left_unset(tokenizer, tmp_path,
                                                                                               monkeypatch):
    # A process that skipped its batch back-propagates a zero-weighted student loss, which never reaches the
    # projection: its gradients stayed None and it entered no all_reduce while the others entered one per parameter,
    # so a two-process run hung.
    import torch.distributed as dist

    trainer = _projector_trainer(tokenizer, tmp_path, "out")
    reduced = []
    monkeypatch.setattr(type(trainer.args), "world_size", property(lambda self: 2))
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, op=None: reduced.append(tensor))
    params = list(trainer.feature_projector.parameters())
    assert params and all(p.grad is None for p in params)
    trainer._projector_grads_averaged = False
    trainer._average_projector_grads()
    assert len(reduced) == len(params)  # the same collectives as a process whose gradients are set
    assert all(p.grad is not None and not p.grad.any() for p in params)  # it contributes zeros


def test_ema_self_distillation_refuses_a_cast_teacher(tokenizer, tmp_path):
    # In bfloat16 most EMA updates round to nothing: the teacher would barely follow the student, silently.
    student = tiny_token_model(tokenizer, layers=1, seed=1)
    with pytest.raises(ValueError, match="teacher_dtype='auto'"):
        _ema_trainer(tokenizer, tmp_path, student, teacher_dtype="bfloat16")


def test_the_feature_teacher_of_an_ensemble_reads_attention_eagerly(tokenizer, tmp_path):
    student = tiny_token_model(tokenizer, layers=1, seed=1, **NO_DROP)
    t1, t2 = tiny_token_model(tokenizer, seed=2, **NO_DROP), tiny_token_model(tokenizer, seed=3, **NO_DROP)
    trainer = ner_trainer(tokenizer, tmp_path, student=student, teacher=[t1, t2], alpha=1.0,
                          attention_distill_weight=1.0, feature_teacher=1)
    assert t2.config._attn_implementation == "eager"  # the teacher whose attention maps are matched
    trainer.model.train()
    assert torch.isfinite(trainer.compute_loss(trainer.model, dict(_batch(tokenizer))))


@pytest.mark.parametrize("term", ["hidden", "attention"])
def test_logged_feature_losses_are_the_unweighted_terms_every_step(tokenizer, tmp_path, term):
    logged = []
    for weight in (1.0, 2.0):
        trainer = ner_trainer(tokenizer, tmp_path / str(weight), student=tiny_token_model(tokenizer, layers=1, seed=1,
                                                                                          **NO_DROP),
                              teacher=tiny_token_model(tokenizer, layers=2, seed=2, **NO_DROP), alpha=1.0,
                              max_steps=2, logging_steps=1, **{f"{term}_distill_weight": weight})
        trainer.train()
        logs = [h for h in trainer.state.log_history if "loss" in h]
        assert len(logs) == 2 and all(f"{term}_loss" in h for h in logs)
        logged.append(logs[0][f"{term}_loss"])
    assert logged[0] == pytest.approx(logged[1], rel=1e-6)  # the weight scales the loss, not the logged term


def test_a_teacher_weight_per_teacher_is_checked_at_init(tokenizer, tmp_path):
    teachers = [tiny_token_model(tokenizer, seed=2), tiny_token_model(tokenizer, seed=3)]
    with pytest.raises(ValueError, match=r"`teacher_weights` has 1 weights but 2 teachers.*one weight per teacher"):
        ner_trainer(tokenizer, tmp_path, teacher=teachers, teacher_ensemble="weighted", teacher_weights=[1.0])


@pytest.mark.parametrize("task, settings", [
    ("ner", {"distill_positions": "all_subwords"}),  # -100 on real tokens below: distilled != labelled positions
    ("ner", {"hidden_distill_weight": 1.0, "feature_layer_map": "0:0,1:2"}),  # real tokens != distilled positions
    ("seq", {"hidden_distill_weight": 1.0, "feature_layer_map": "0:0,1:2"}),
])
def test_the_step_counts_normalise_each_term_as_the_batch_alone_does(tokenizer, tmp_path, task, settings):
    # Training passes get_batch_samples' counts [distilled, labelled, tokens]: with one micro-batch they must give the
    # loss compute_loss gives on its own (KD over distilled positions, CE over labelled ones, features over tokens).
    if task == "ner":
        trainer = ner_trainer(tokenizer, tmp_path, student=tiny_token_model(tokenizer, layers=1, seed=1, **NO_DROP),
                              alpha=0.5, **settings)
        batch = _batch(tokenizer)
        batch["labels"][:, 1:3] = -100
    else:
        data, collator = seq_dataset(tokenizer), DataCollatorWithPadding(tokenizer)
        trainer = DistillationTrainer(model=tiny_sequence_model(tokenizer, layers=1, seed=1, **NO_DROP),
                                      teacher_model=tiny_sequence_model(tokenizer, seed=2, **NO_DROP),
                                      args=make_args(tmp_path, alpha=0.5, **settings), train_dataset=data,
                                      data_collator=collator, processing_class=tokenizer)
        batch = dict(collator(list(data)))
    _, counts = trainer.get_batch_samples(iter([dict(batch)]), 1, trainer.args.device)
    assert len(set(counts.tolist())) > 1 or counts[2] == 0  # the counts differ, so a swap would show
    trainer.model.train()
    with torch.no_grad():
        alone = trainer.compute_loss(trainer.model, dict(batch))
        counted = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=counts)
    assert counted.item() == pytest.approx(alone.item(), rel=1e-6)


@pytest.mark.parametrize("name", [PROJECTOR_FILE, EMA_TEACHER_FILE])
def test_a_checkpoint_without_the_state_the_run_needs_is_refused_on_resume(tokenizer, tmp_path, name):
    def make():
        if name == PROJECTOR_FILE:
            return _projector_trainer(tokenizer, tmp_path, "cut")
        return _ema_trainer(tokenizer, tmp_path, tiny_token_model(tokenizer, layers=1, seed=1), max_steps=4,
                            output_dir=str(tmp_path / "cut"), save_strategy="steps", save_steps=2)

    cut = make()
    cut.add_callback(StopAt(2))
    cut.train()
    os.remove(tmp_path / "cut" / "checkpoint-2" / name)
    with pytest.raises(ValueError, match=f"has no {name}, which this run needs to continue exactly"):
        make().train(resume_from_checkpoint=True)


def test_the_projection_decays_with_the_runs_weight_decay(tokenizer, tmp_path):
    trainer = _projector_trainer(tokenizer, tmp_path, "decay", weight_decay=0.1)
    optimizer = trainer.create_optimizer()
    projection = {id(p) for p in trainer.feature_projector.parameters()}
    groups = [g for g in optimizer.param_groups if projection & {id(p) for p in g["params"]}]
    assert groups and all(g["weight_decay"] == 0.1 for g in groups)


def test_first_subword_distillation_of_a_batch_without_labels_says_what_to_use(tokenizer, tmp_path):
    trainer = ner_trainer(tokenizer, tmp_path, distill_positions="first_subword")
    with pytest.raises(ValueError, match="has no `labels`.*distill_positions='all_subwords'"):
        trainer.distill_mask({"input_ids": torch.tensor([[2, 5, 3]])})
