"""Tests for hf_distill.student.create_student on tiny models built from configs."""

import pytest
import torch
from conftest import NER_LABELS, tiny_sequence_model, tiny_token_model
from transformers import (
    AutoModelForTokenClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
)

from hf_distill.student import create_student

INPUT_IDS = torch.tensor([[2, 3, 4, 1, 0, 3], [2, 1, 1, 4, 3, 0]])


@pytest.fixture
def teacher(tokenizer):
    return tiny_token_model(tokenizer, layers=4, seed=0)


def logits(model, input_ids=INPUT_IDS):
    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def test_student_copies_chosen_layers_embeddings_and_head(teacher):
    student = create_student(teacher, [0, 2])

    assert type(student) is type(teacher)
    assert student.config.num_hidden_layers == 2
    assert len(student.bert.encoder.layer) == 2
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    for key, value in student_state.items():
        source = key.replace("bert.encoder.layer.1.", "bert.encoder.layer.2.")  # student layer 1 <- teacher layer 2
        torch.testing.assert_close(value, teacher_state[source], rtol=0, atol=0, msg=key)
    # The layer-1 query weight must come from teacher layer 2, not teacher layer 1.
    assert not torch.equal(
        student_state["bert.encoder.layer.1.attention.self.query.weight"],
        teacher_state["bert.encoder.layer.1.attention.self.query.weight"],
    )
    torch.testing.assert_close(student.classifier.weight, teacher.classifier.weight, rtol=0, atol=0)
    torch.testing.assert_close(
        student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight, rtol=0, atol=0
    )


def test_student_keeps_labels_device_dtype_and_fresh_mode(teacher):
    teacher.eval()
    student = create_student(teacher, [1, 3])

    assert student.config.id2label == dict(enumerate(NER_LABELS))
    assert student.config.label2id == {label: i for i, label in enumerate(NER_LABELS)}
    assert student.device == teacher.device
    assert student.dtype == teacher.dtype
    assert student.training  # a freshly constructed model trains; teacher.eval() must not leak into the student
    assert teacher.config.num_hidden_layers == 4


def test_student_of_a_bfloat16_teacher_is_bfloat16(teacher):
    # A model built from a config is float32 whatever its source; the cut must follow the teacher.
    teacher.to(torch.bfloat16)
    student = create_student(teacher, [1, 3])
    assert student.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in student.parameters())


def test_teacher_is_unchanged_and_shares_no_tensors(teacher):
    before = {key: value.clone() for key, value in teacher.state_dict().items()}

    student = create_student(teacher, [0, 2])
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.add_(1.0)

    after = teacher.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    teacher_pointers = {p.data_ptr() for p in teacher.parameters()}
    assert not teacher_pointers & {p.data_ptr() for p in student.parameters()}
    # Nor its config: renaming a student label in place leaves the teacher's labels alone.
    student.config.id2label[2] = "renamed"
    student.config.label2id["renamed"] = 2
    assert teacher.config.id2label[2] == NER_LABELS[2] and "renamed" not in teacher.config.label2id


def test_student_logits_differ_from_a_random_model(teacher, tokenizer):
    student = create_student(teacher, [0, 1, 2, 3])
    random_model = tiny_token_model(tokenizer, layers=4, seed=1)

    # With every layer kept, the student is the teacher; a randomly initialised model is not.
    torch.testing.assert_close(logits(student), logits(teacher))
    assert not torch.allclose(logits(random_model), logits(teacher), atol=1e-3)


def test_shallow_student_logits_differ_from_random_student(teacher, tokenizer):
    student = create_student(teacher, [0, 2])
    random_student = tiny_token_model(tokenizer, layers=2, seed=1)
    assert not torch.allclose(logits(student), logits(random_student), atol=1e-3)


def test_saved_student_reloads_with_identical_logits(teacher, tmp_path):
    student = create_student(teacher, [1, 3])
    student.save_pretrained(tmp_path)

    reloaded = AutoModelForTokenClassification.from_pretrained(tmp_path)

    assert reloaded.config.num_hidden_layers == 2
    torch.testing.assert_close(logits(reloaded), logits(student), rtol=0, atol=0)


def test_sequence_classification_student_copies_pooler(tokenizer):
    teacher = tiny_sequence_model(tokenizer, num_labels=3, layers=3)
    student = create_student(teacher, [2])

    torch.testing.assert_close(student.bert.pooler.dense.weight, teacher.bert.pooler.dense.weight, rtol=0, atol=0)
    torch.testing.assert_close(
        student.bert.encoder.layer[0].output.dense.weight,
        teacher.bert.encoder.layer[2].output.dense.weight,
        rtol=0,
        atol=0,
    )


def test_distilbert_student_uses_n_layers():
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=10, dim=16, n_layers=3, n_heads=2, hidden_dim=32, max_position_embeddings=16)
    teacher = DistilBertForSequenceClassification(config)

    student = create_student(teacher, [0, 2])

    assert student.config.n_layers == 2
    assert len(student.distilbert.transformer.layer) == 2
    torch.testing.assert_close(
        student.distilbert.transformer.layer[1].ffn.lin1.weight,
        teacher.distilbert.transformer.layer[2].ffn.lin1.weight,
        rtol=0,
        atol=0,
    )
    torch.testing.assert_close(student.pre_classifier.weight, teacher.pre_classifier.weight, rtol=0, atol=0)


def test_per_layer_config_lists_keep_the_kept_layers_entries():
    # Longformer has one attention window per layer: a cut student must keep its own layers' windows (it crashed).
    from transformers import LongformerConfig, LongformerForSequenceClassification

    torch.manual_seed(0)
    config = LongformerConfig(vocab_size=40, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                              intermediate_size=32, max_position_embeddings=80, attention_window=[4, 4, 8, 8],
                              pad_token_id=1)
    student = create_student(LongformerForSequenceClassification(config), [1, 2])
    assert student.config.attention_window == [4, 8] and student.config.num_hidden_layers == 2


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([], r"`layers` is empty"),
        ([0, 4], r"contains 4, but the teacher has 4 layers: valid indices are \[0, 3\]"),
        ([-1], r"contains -1, .* valid indices are \[0, 3\]"),
        ([1, 1], r"repeats \[1\]"),
        ([2, 0], r"strictly increasing .* got \[2, 0\]; did you mean \[0, 2\]"),
        (3, r"`layers` is a list of the teacher's layer indices, e.g. \[0, 2\]; got 3"),
        ("0,2", r"`layers` is a list of the teacher's layer indices, e.g. \[0, 2\]; got '0,2'"),
        ([0, 1.0], r"`layers` holds 1.0, which is not a layer index"),
    ],
)
def test_bad_layers_raise(teacher, layers, message):
    with pytest.raises(ValueError, match=message):
        create_student(teacher, layers)


def test_unsupported_architecture_names_class_and_families():
    config = GPT2Config(vocab_size=10, n_embd=16, n_layer=2, n_head=2, n_positions=16, bos_token_id=0, eos_token_id=0)
    teacher = GPT2ForSequenceClassification(config)
    with pytest.raises(ValueError, match=r"GPT2ForSequenceClassification.*supports BERT-family.*DistilBERT"):
        create_student(teacher, [0])


def test_config_overrides_reach_the_student_and_unknown_ones_are_refused(teacher):
    student = create_student(teacher, [0], attention_probs_dropout_prob=0.0)
    assert student.config.attention_probs_dropout_prob == 0.0
    assert teacher.config.attention_probs_dropout_prob != 0.0
    assert student.bert.encoder.layer[0].attention.self.dropout.p == 0.0
    with pytest.raises(ValueError, match="`not_a_field` is not an attribute of BertConfig"):
        create_student(teacher, [0], not_a_field=1)
    with pytest.raises(ValueError, match=r"`num_hidden_layers` cannot be overridden.*follow `layers`"):
        create_student(teacher, [0], num_hidden_layers=3)


def test_an_override_that_changes_a_weights_shape_is_refused_naming_it(teacher):
    with pytest.raises(ValueError, match=r"`hidden_size=16` changes the shape of copied weights"):
        create_student(teacher, [0], hidden_size=16)


def test_a_peft_teacher_is_refused_with_the_merge_to_do_first(teacher):
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(teacher, peft.LoraConfig(r=2, target_modules=["query"]))
    with pytest.raises(ValueError, match=r"PEFT model.*create_student\(teacher.merge_and_unload\(\), layers\)"):
        create_student(lora, [0])


def test_a_teacher_with_adapters_loaded_into_it_is_refused_with_the_merge_to_do_first(teacher, tmp_path):
    # Transformers loads an adapter folder into the base model's layers (its PEFT integration): the model is no PEFT
    # wrapper, but its weights sit under `base_layer`, and cutting it failed with "no teacher weight" for every layer.
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForTokenClassification

    teacher.save_pretrained(tmp_path / "base")
    lora = peft.get_peft_model(AutoModelForTokenClassification.from_pretrained(tmp_path / "base"),
                               peft.LoraConfig(r=2, target_modules=["query"]))
    lora.save_pretrained(tmp_path / "adapter")
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path / "adapter")
    with pytest.raises(ValueError, match=r"PEFT adapters loaded into its layers.*merge_and_unload"):
        create_student(loaded, [0])


def test_a_model_with_depth_shaped_weights_is_refused_as_unsupported_without_blaming_an_override():
    # ESM keeps a contact head whose width is the number of layers x heads: cutting layers changes its shape.
    from transformers import EsmConfig, EsmForTokenClassification

    torch.manual_seed(0)
    esm = EsmForTokenClassification(EsmConfig(vocab_size=33, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                              intermediate_size=37, max_position_embeddings=64, pad_token_id=1,
                                              mask_token_id=32, num_labels=3))
    with pytest.raises(ValueError, match=r"shape depends on the number of layers\. create_student supports") as error:
        create_student(esm, [1, 3])
    assert "override" not in str(error.value).lower()
