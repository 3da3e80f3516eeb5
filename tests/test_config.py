"""DistillationArguments validation and the schedules."""

import math

import pytest

from hf_distill import DistillationArguments, scheduled_value


def make(**kwargs):
    return DistillationArguments(output_dir="unused", report_to="none", use_cpu=True, **kwargs)


def test_defaults():
    args = make()
    assert (args.temperature, args.alpha, args.distill_loss, args.teacher_labels, args.distill_positions) == (
        2.0, 0.5, "kl", "soft", "first_subword")
    assert args.needs_labels


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0.0}, r"`temperature` must be a finite number > 0, got 0.0"),
        ({"temperature": -1.0}, r"`temperature` must be a finite number > 0, got -1.0"),
        ({"temperature": float("inf")}, r"`temperature` must be a finite number > 0, got inf"),
        ({"final_temperature": 0.0, "temperature_schedule": "linear"}, r"`final_temperature` must be a finite number"),
        ({"final_temperature": float("inf"), "temperature_schedule": "linear"}, r"`final_temperature` must be a finite"),
        ({"temperature_schedule": "exp"}, r"`temperature_schedule` must be one of .*got 'exp'"),
        ({"temperature_schedule": "linear"}, r"`final_temperature` is not set"),
        ({"final_temperature": 1.0}, r"would be ignored"),
        ({"alpha": 1.3}, r"`alpha` must be in \[0, 1\], got 1.3"),
        ({"augment_mask_prob": 0.7, "augment_replace_prob": 0.7},
         r"`augment_mask_prob \+ augment_replace_prob` must be <= 1, got 0.7 \+ 0.7"),
        # decay 1 would leave the EMA teacher on its starting weights for the whole run
        ({"self_distillation": "ema", "ema_decay": 1.0}, r"`ema_decay` must be in \[0, 1\), got 1.0"),
        ({"self_distillation": "ema", "ema_decay": -0.1}, r"`ema_decay` must be in \[0, 1\), got -0.1"),
        ({"alpha": -0.1}, r"`alpha` must be in \[0, 1\], got -0.1"),
        ({"final_alpha": 2.0, "alpha_schedule": "cosine"}, r"`final_alpha` must be in \[0, 1\], got 2.0"),
        ({"alpha_schedule": "cosine"}, r"`final_alpha` is not set"),
        ({"distill_loss": "js"}, r"`distill_loss` must be one of 'kl', 'mse', 'soft_ce', got 'js'"),
        ({"teacher_labels": "argmax"}, r"`teacher_labels` must be one of"),
        ({"distill_positions": "last"}, r"`distill_positions` must be one of"),
        ({"teacher_labels": "hard", "distill_loss": "mse"}, r"cannot express"),
        ({"distill_loss": "mse", "final_temperature": 1.0, "temperature_schedule": "linear"},
         r"`distill_loss='mse'` compares raw logits.*schedule would do nothing"),
        ({"teacher_labels": "hard", "final_temperature": 1.0, "temperature_schedule": "cosine"},
         r"`teacher_labels='hard'` trains on the teacher's argmax.*schedule would do nothing"),
        ({"alpha": 1.0, "pseudo_label_threshold": 0.9}, r"pseudo-labels feed only the hard-label loss.*would change"),
        ({"alpha": 0.5, "pseudo_label_threshold": 0.9, "adversarial": "freelb", "adv_objective": "kd"},
         r"pseudo-labels feed only the hard-label loss.*FreeLB.*adv_objective='kd'.*distillation term alone"),
    ],
)
def test_bad_values_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


def test_needs_labels_follows_the_alpha_schedule():
    assert not make(alpha=1.0).needs_labels
    assert make(alpha=1.0, final_alpha=0.5, alpha_schedule="linear").needs_labels
    # Pseudo-labels are accepted once the hard-label loss gets weight at some point of the schedule.
    assert not make(alpha=1.0, final_alpha=0.5, alpha_schedule="linear", pseudo_label_threshold=0.9).needs_labels


def test_an_attack_on_the_hard_label_loss_needs_labels(tokenizer, tmp_path):
    from test_trainer import ner_dataset, ner_trainer

    assert make(alpha=1.0, adversarial="fgm", adv_objective="ce").needs_labels
    assert not make(alpha=1.0, adversarial="fgm", adv_objective="kd").needs_labels
    unlabeled = ner_dataset(tokenizer).remove_columns("labels")
    with pytest.raises(ValueError, match=r"no labels column .* adv_objective='ce' attacks the hard-label loss"):
        ner_trainer(tokenizer, tmp_path, dataset=unlabeled, alpha=1.0, adversarial="fgm", adv_objective="ce")



def test_freelb_on_the_distillation_term_alone_needs_no_labels(tokenizer, tmp_path):
    from test_trainer import ner_dataset, ner_trainer

    assert not make(alpha=0.5, adversarial="freelb", adv_objective="kd").needs_labels
    assert make(alpha=0.5, adversarial="freelb", adv_objective="kd", adv_start_step=5).needs_labels  # clean steps first
    unlabeled = ner_dataset(tokenizer).remove_columns("labels")
    trainer = ner_trainer(tokenizer, tmp_path, dataset=unlabeled, alpha=0.5, adversarial="freelb", max_steps=2,
                          distill_positions="all_subwords")
    trainer.train()
    assert trainer.state.global_step == 2 and trainer.skipped_batches == 0


def test_schedules():
    assert scheduled_value(4.0, None, 0.7, "constant") == 4.0
    assert scheduled_value(4.0, 1.0, 0.0, "linear") == 4.0
    assert scheduled_value(4.0, 1.0, 0.5, "linear") == pytest.approx(2.5)
    assert scheduled_value(4.0, 1.0, 1.0, "linear") == pytest.approx(1.0)
    assert scheduled_value(4.0, 1.0, 0.5, "cosine") == pytest.approx(2.5)
    assert scheduled_value(4.0, 1.0, 0.25, "cosine") == pytest.approx(1.0 + 3.0 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert scheduled_value(4.0, 1.0, 1.7, "linear") == pytest.approx(1.0)  # clipped
    with pytest.raises(ValueError, match="Unknown schedule"):
        scheduled_value(1.0, 2.0, 0.5, "step")


def test_scheduled_value_refuses_a_bad_name_or_a_missing_end_whatever_the_other_argument():
    # the public helper used to return `start` for any schedule once `end` was None, typos included
    with pytest.raises(ValueError, match="Unknown schedule 'cosin'"):
        scheduled_value(4.0, None, 0.5, "cosin")
    with pytest.raises(ValueError, match="needs an end value"):
        scheduled_value(4.0, None, 0.5, "linear")


def test_help_texts_are_documented():
    import dataclasses

    new = {"temperature", "final_temperature", "temperature_schedule", "alpha", "final_alpha", "alpha_schedule",
           "distill_loss", "teacher_labels", "distill_positions"}
    fields = {f.name: f for f in dataclasses.fields(DistillationArguments)}
    for name in new:
        assert fields[name].metadata.get("help"), name
        assert name in DistillationArguments.__doc__, name


@pytest.mark.parametrize("fsdp, deepspeed", [(True, False), (False, True)])
def test_sharded_students_refuse_what_needs_the_whole_student(fsdp, deepspeed):
    from hf_distill.checks import check_sharding

    check_sharding(make(), fsdp=fsdp, deepspeed=deepspeed)  # plain distillation shards fine
    with pytest.raises(ValueError, match="keeps a full copy of the student"):
        check_sharding(make(self_distillation="ema"), fsdp=fsdp, deepspeed=deepspeed)
    # FSDP keeps the word embeddings sharded between forwards, where the attack looks them up; DeepSpeed would step
    # the optimizer after the clean backward and again after the adversarial one.
    with pytest.raises(ValueError, match="FSDP keeps those weights sharded" if fsdp else "steps the optimizer inside"):
        check_sharding(make(adversarial="fgm"), fsdp=fsdp, deepspeed=deepspeed)
    check_sharding(make(adversarial="fgm"), fsdp=False, deepspeed=False)  # DDP or one device


@pytest.mark.parametrize("name, value", [("adv_step_size", "1e-2"), ("alpha", "5e-1"), ("adv_start_step", "100"),
                                         ("adv_start_step", 2.5), ("adv_perturb_special_tokens", "false"),
                                         ("temperature", True), ("final_alpha", "0.5")])
def test_a_value_of_the_wrong_type_is_refused_naming_the_field(name, value):
    # Parsers that pass values through unconverted (HfArgumentParser.parse_yaml_file reads 1e-2 as a string under
    # YAML 1.1, parse_dict, JSON) must not reach a comparison error, or a string "false" read as true.
    with pytest.raises(ValueError, match=rf"`{name}` must be"):
        DistillationArguments(output_dir="out", report_to="none", **{name: value})


def test_numpy_scalars_are_numbers_too():
    import numpy as np

    args = DistillationArguments(output_dir="out", report_to="none", alpha=np.float32(0.25), adversarial="pgd",
                                 adv_steps=np.int64(2), adv_perturb_special_tokens=np.bool_(True))
    assert args.alpha == 0.25 and args.adv_steps == 2 and type(args.adv_steps) is int
    assert '"alpha": 0.25' in args.to_json_string()


@pytest.mark.parametrize("field, value", [("feature_layer_map", 124), ("adversarial", False), ("distill_loss", 1.5)])
def test_a_text_field_given_another_type_says_how_yaml_read_it(tmp_path, field, value):
    # PyYAML (YAML 1.1) reads an unquoted `2:4` as the base-60 number 124, and `no` as false: such a value reached
    # dict() or a comparison with a bare TypeError, or matched no choice with a misleading message.
    with pytest.raises(ValueError, match=rf"`{field}` must be text, got {value!r}.*quote"):
        DistillationArguments(output_dir=str(tmp_path), report_to="none", **{field: value})


def test_a_layer_map_may_be_a_mapping(tmp_path):
    args = DistillationArguments(output_dir=str(tmp_path), report_to="none", hidden_distill_weight=1.0,
                                 feature_layer_map={1: 2, 2: 4})
    assert args.feature_layer_map == {1: 2, 2: 4}


def test_teacher_weights_are_checked_and_made_python_floats_like_the_scalar_fields():
    import json

    import numpy as np

    base = dict(output_dir="out", report_to="none", use_cpu=True, teacher_ensemble="weighted")
    args = DistillationArguments(**base, teacher_weights=[np.float32(0.7), np.float32(0.3)])
    assert all(type(w) is float for w in args.teacher_weights)
    json.dumps(args.to_dict())  # numpy float32 weights made the TensorBoard report fail to serialise them
    for bad, said in ((["0.7", "0.3"], "quoted numbers: write them unquoted"), (0.5, "got 0.5"),
                      ([True, 1.0], "got \\[True, 1.0\\]")):
        with pytest.raises(ValueError, match=f"`teacher_weights` must be a list of numbers.*{said}"):
            DistillationArguments(**base, teacher_weights=bad)
    with pytest.raises(ValueError, match=r"`teacher_weights` .*positive sum.*\[0.0, 0.0\]"):  # a 0/0 mixture: NaN
        DistillationArguments(**base, teacher_weights=[0.0, 0.0])


def test_the_offline_hint_reads_offline_mode_as_huggingface_hub_does(monkeypatch):
    from hf_distill.loading import _offline_mode

    for hub, transformers_offline, expected in (("1", None, "HF_HUB_OFFLINE=1"), ("no", None, None),
                                                (None, "1", "TRANSFORMERS_OFFLINE=1"), (None, "yes", "TRANSFORMERS_OFFLINE=yes"),
                                                ("", "ON", "TRANSFORMERS_OFFLINE=ON"), (None, None, None)):
        for name, value in (("HF_HUB_OFFLINE", hub), ("TRANSFORMERS_OFFLINE", transformers_offline)):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        assert _offline_mode() == expected


def test_several_processes_that_do_not_average_tokens_are_warned_of():
    # With average_tokens_across_devices=False each process divides by its own counts and DDP averages processes as
    # equals: two processes then trained another update than one process on the same batch, and nothing said so.
    from types import SimpleNamespace

    from hf_distill.checks import unweighted_processes

    warning = unweighted_processes(SimpleNamespace(world_size=2, average_tokens_across_devices=False))
    assert "average_tokens_across_devices=False with 2 processes" in warning and "Leave" in warning
    assert unweighted_processes(SimpleNamespace(world_size=2, average_tokens_across_devices=True)) is None
    assert unweighted_processes(SimpleNamespace(world_size=1, average_tokens_across_devices=False)) is None
