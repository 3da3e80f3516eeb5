"""The pure pieces of embedding-space attacks: masks, random starts, ascent steps and projections, by hand."""

import dataclasses
import math

import pytest
import torch
from conftest import tiny_token_model
from torch import nn

from hf_distill.adversarial import (
    AttackSettings,
    EmbeddingPathCheck,
    ascent_step,
    check_embedding_path,
    delta_norm,
    embed_inputs,
    fgm_delta,
    init_delta,
    perturbation_mask,
    project,
)

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def _ones_mask(b=2, length=3):
    return torch.ones(b, length, 1)


def test_embed_inputs_is_the_word_lookup_only(tokenizer):
    model = tiny_token_model(tokenizer, layers=1, **NO_DROPOUT).eval()
    enc = tokenizer(["john lives in paris", "acme corp"], padding=True, return_tensors="pt")
    embeds = embed_inputs(model, enc["input_ids"])
    assert torch.equal(embeds, model.bert.embeddings.word_embeddings(enc["input_ids"]))
    with torch.no_grad():
        from_ids = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        from_embeds = model(inputs_embeds=embeds, attention_mask=enc["attention_mask"]).logits
    # Position/type embeddings and LayerNorm are applied once, by the model, in both cases.
    torch.testing.assert_close(from_embeds, from_ids, rtol=0, atol=1e-6)


def test_embed_inputs_refuses_a_model_without_input_embeddings():
    with pytest.raises(ValueError, match="has no input embeddings"):
        embed_inputs(nn.Linear(3, 3), torch.zeros(1, 2, dtype=torch.long))


def test_perturbation_mask_zeroes_padding_and_special_tokens():
    input_ids = torch.tensor([[2, 7, 8, 3], [2, 9, 3, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    mask = perturbation_mask(input_ids, attention_mask)
    assert mask.shape == (2, 4, 1) and mask.dtype == torch.float32
    assert mask.squeeze(-1).tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    mask = perturbation_mask(input_ids, attention_mask, special_ids=[0, 2, 3])
    assert mask.squeeze(-1).tolist() == [[0, 1, 1, 0], [0, 1, 0, 0]]


def test_perturbation_mask_rejects_a_mismatched_attention_mask():
    with pytest.raises(ValueError, match="attention_mask"):
        perturbation_mask(torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 3))


def test_l2_init_has_exact_norm_and_respects_the_mask():
    embeds = torch.zeros(3, 4, 5, dtype=torch.float16)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float32).unsqueeze(-1)
    delta = init_delta(embeds, mask, init_scale=0.7, norm="l2", generator=torch.Generator().manual_seed(0))
    assert delta.dtype == torch.float32 and delta.shape == embeds.shape
    torch.testing.assert_close(delta_norm(delta, "l2"), torch.tensor([0.7, 0.7, 0.0]))
    assert torch.all(delta[mask.expand_as(delta) == 0] == 0)


def test_linf_init_is_bounded_and_seeded():
    embeds, mask = torch.zeros(2, 3, 4), _ones_mask()
    first = init_delta(embeds, mask, init_scale=0.1, norm="linf", generator=torch.Generator().manual_seed(1))
    again = init_delta(embeds, mask, init_scale=0.1, norm="linf", generator=torch.Generator().manual_seed(1))
    other = init_delta(embeds, mask, init_scale=0.1, norm="linf", generator=torch.Generator().manual_seed(2))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.abs().max() <= 0.1 and first.abs().max() > 0


def test_zero_init_scale_gives_zeros():
    delta = init_delta(torch.zeros(2, 3, 4), _ones_mask(), init_scale=0.0, norm="l2")
    assert torch.equal(delta, torch.zeros(2, 3, 4))


def test_l2_ascent_step_by_hand():
    delta = torch.zeros(1, 2, 2)
    grad = torch.tensor([[[3.0, 0.0], [0.0, 4.0]]])
    step = ascent_step(delta, grad, torch.ones(1, 2, 1), step_size=0.5, norm="l2")
    torch.testing.assert_close(step, torch.tensor([[[0.3, 0.0], [0.0, 0.4]]]))


def test_l2_ascent_step_ignores_masked_gradient_in_the_norm():
    grad = torch.tensor([[[3.0, 0.0], [100.0, 100.0]]])
    mask = torch.tensor([[[1.0], [0.0]]])
    step = ascent_step(torch.zeros(1, 2, 2), grad, mask, step_size=1.0, norm="l2")
    torch.testing.assert_close(step, torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))


def test_linf_ascent_step_uses_the_sign():
    grad = torch.tensor([[[0.2, -5.0], [0.0, 1e-8]]])
    step = ascent_step(torch.zeros(1, 2, 2), grad, torch.ones(1, 2, 1), step_size=0.1, norm="linf")
    torch.testing.assert_close(step, torch.tensor([[[0.1, -0.1], [0.0, 0.1]]]))


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_zero_and_nonfinite_gradients_give_a_zero_step_for_that_example_only(norm):
    delta = torch.full((3, 2, 2), 0.25)
    grad = torch.ones(3, 2, 2)
    grad[0] = 0.0
    grad[1, 0, 1] = float("nan")
    grad[2, 1, 0] = float("inf")
    step = ascent_step(delta, grad, torch.ones(3, 2, 1), step_size=0.1, norm=norm)
    assert torch.isfinite(step).all()
    assert torch.equal(step, delta)  # every example had a zero or non-finite gradient

    grad = torch.ones(2, 2, 2)
    grad[0, 0, 0] = float("nan")
    step = ascent_step(torch.zeros(2, 2, 2), grad, torch.ones(2, 2, 1), step_size=0.1, norm=norm)
    assert torch.equal(step[0], torch.zeros(2, 2))
    assert step[1].abs().sum() > 0


def test_fp16_gradients_do_not_overflow_the_norm():
    grad = torch.full((1, 4, 8), 60000.0, dtype=torch.float16)  # the fp16 sum of squares would be inf
    step = ascent_step(torch.zeros(1, 4, 8), grad, torch.ones(1, 4, 1), step_size=1.0, norm="l2")
    assert step.dtype == torch.float32
    assert delta_norm(step, "l2").item() == pytest.approx(1.0, rel=1e-5)


def test_l2_projection_scales_down_only_examples_outside_the_ball():
    delta = torch.zeros(2, 1, 2)
    delta[0, 0] = torch.tensor([3.0, 4.0])  # norm 5
    delta[1, 0] = torch.tensor([0.3, 0.4])  # norm 0.5
    projected = project(delta, torch.ones(2, 1, 1), epsilon=1.0, norm="l2")
    torch.testing.assert_close(projected[0, 0], torch.tensor([0.6, 0.8]))
    assert torch.equal(projected[1], delta[1])


def test_linf_projection_clamps_and_zero_epsilon_gives_zeros():
    delta = torch.tensor([[[0.5, -2.0, 0.05]]])
    torch.testing.assert_close(
        project(delta, torch.ones(1, 1, 1), epsilon=0.1, norm="linf"), torch.tensor([[[0.1, -0.1, 0.05]]])
    )
    assert torch.equal(project(delta, torch.ones(1, 1, 1), epsilon=0.0, norm="l2"), torch.zeros(1, 1, 3))
    assert torch.equal(project(delta, torch.ones(1, 1, 1), epsilon=math.inf, norm="l2"), delta)


def test_delta_norm_per_example():
    delta = torch.tensor([[[3.0, 0.0], [0.0, -4.0]], [[0.0, 0.0], [0.0, 0.0]]], dtype=torch.bfloat16)
    assert delta_norm(delta, "l2").tolist() == [5.0, 0.0]
    assert delta_norm(delta, "linf").tolist() == [4.0, 0.0]
    assert delta_norm(delta, "l2").dtype == torch.float32


def test_fgm_delta_has_norm_epsilon_along_the_gradient():
    torch.manual_seed(0)
    grad = torch.randn(2, 3, 4)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]).unsqueeze(-1)
    delta = fgm_delta(grad, mask, epsilon=1.5, norm="l2")
    torch.testing.assert_close(delta_norm(delta, "l2"), torch.tensor([1.5, 1.5]))
    expected = grad * mask / torch.linalg.vector_norm((grad * mask).flatten(1), dim=1).view(-1, 1, 1) * 1.5
    torch.testing.assert_close(delta, expected)
    assert torch.equal(fgm_delta(grad, mask, epsilon=0.2, norm="linf").abs().amax(), torch.tensor(0.2))


def test_pgd_steps_raise_a_quadratic_loss_and_stay_in_the_ball():
    target = torch.tensor([[[2.0, -1.0], [0.5, 3.0]]])
    mask = torch.ones(1, 2, 1)
    delta = torch.zeros(1, 2, 2)
    losses = []
    for _ in range(5):
        delta.requires_grad_(True)
        loss = -((delta - target) ** 2).sum()  # maximised at delta = target, outside the ball
        (grad,) = torch.autograd.grad(loss, delta)
        losses.append(loss.item())
        delta = project(
            ascent_step(delta.detach(), grad, mask, step_size=0.3, norm="l2"), mask, epsilon=1.0, norm="l2"
        )
    assert losses == sorted(losses)
    assert delta_norm(delta, "l2").item() <= 1.0 + 1e-6


def test_attack_settings_passes():
    assert AttackSettings("fgm", epsilon=1.0, step_size=0.0, steps=1).passes == 2
    assert AttackSettings("pgd", epsilon=1.0, step_size=0.3, steps=3).passes == 4
    assert AttackSettings("freelb", epsilon=math.inf, step_size=0.1, steps=3, init_scale=0.5).passes == 3


def test_attack_settings_are_frozen():
    settings = AttackSettings("pgd", epsilon=1.0, step_size=0.3, steps=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.epsilon = 2.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "smart"}, "`method` must be one of .*'smart'"),
        ({"epsilon": -0.1}, "`epsilon` must be >= 0, got -0.1"),
        ({"epsilon": float("nan")}, "`epsilon` must be >= 0, got nan"),
        ({"method": "fgm", "epsilon": math.inf}, "FGM and must be finite"),
        ({"step_size": -1.0}, "`step_size` must be .*got -1.0"),
        ({"steps": 0}, "`steps` must be an integer >= 1, got 0"),
        ({"steps": 2.5}, "`steps` must be an integer >= 1, got 2.5"),
        ({"norm": "l1"}, "`norm` must be one of .*'l1'"),
        ({"init_scale": -1.0}, "`init_scale` must be .*got -1.0"),
    ],
)
def test_attack_settings_validation_names_the_field(kwargs, message):
    settings = {"method": "pgd", "epsilon": 1.0, "step_size": 0.3, "steps": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        AttackSettings(**settings)


def _tiny_roberta(num_labels=2):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=40, pad_token_id=1, num_labels=num_labels)
    return RobertaForSequenceClassification(config).train()


def test_embedding_path_check_catches_positions_that_inputs_embeds_would_shift(tokenizer):
    model = _tiny_roberta()
    right = torch.tensor([[0, 5, 6, 2, 1, 1], [0, 7, 8, 9, 10, 2]])
    left = torch.tensor([[1, 1, 0, 5, 6, 2], [0, 7, 8, 9, 10, 2]])
    check_embedding_path(model, right, {"attention_mask": right.ne(1).long()})  # same positions: passes
    with pytest.raises(ValueError, match="left-padded.*padding_side"):
        check_embedding_path(model, left, {"attention_mask": left.ne(1).long()})
    assert model.training  # the check ran in eval mode and put the mode back
    bert = tiny_token_model(tokenizer, layers=1)
    check_embedding_path(bert, left, {"attention_mask": left.ne(1).long()})  # BERT: absolute positions either way


def test_embedding_path_check_leaves_out_the_padding_of_a_right_padded_token_classifier():
    # RoBERTa numbers padding at padding_idx from input_ids but counts on from inputs_embeds: the logits there differ,
    # and no label or attack reads them, so a right-padded NER batch passes.
    from transformers import RobertaForTokenClassification

    config = _tiny_roberta(num_labels=3).config
    torch.manual_seed(0)
    model = RobertaForTokenClassification(config)
    right = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 2, 1, 1]])
    mask = right.ne(1).long()
    check_embedding_path(model, right, {"attention_mask": mask})
    with torch.no_grad():  # the case is real: the two paths do differ at the padding
        model.eval()
        from_ids = model(input_ids=right, attention_mask=mask).logits
        from_embeds = model(inputs_embeds=model.get_input_embeddings()(right), attention_mask=mask).logits
    assert not torch.allclose(from_ids[1, 3:], from_embeds[1, 3:], atol=1e-3)
    left = torch.tensor([[0, 5, 6, 7, 2], [1, 1, 0, 8, 2]])
    with pytest.raises(ValueError, match="left-padded"):
        check_embedding_path(model, left, {"attention_mask": left.ne(1).long()})


def test_embedding_path_check_tells_a_right_padded_last_token_pooler_to_pad_on_the_left():
    """GPT-2-style classifiers pool the last non-pad token, found from `input_ids`; from `inputs_embeds` they take the
    last position, which is padding in a right-padded batch."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(GPT2Config(vocab_size=40, n_embd=32, n_layer=1, n_head=2, n_positions=40,
                                                     num_labels=2, pad_token_id=0))
    right = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    with pytest.raises(ValueError, match=r"right-padded.*last non-padding token.*padding_side = \"left\""):
        check_embedding_path(model, right, {"attention_mask": right.ne(0).long()})
    left = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    check_embedding_path(model, left, {"attention_mask": left.ne(0).long()})  # left padding: the same logits


def test_the_path_is_checked_on_the_first_batch_and_the_first_padded_one_then_never():
    model = _tiny_roberta()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    full = torch.tensor([[0, 5, 6, 2], [0, 7, 8, 2]])
    left = torch.tensor([[1, 1, 0, 5, 6, 2], [0, 7, 8, 9, 10, 2]])
    right = torch.tensor([[0, 5, 6, 2, 1, 1], [0, 7, 8, 9, 10, 2]])
    check = EmbeddingPathCheck()
    check(model, full, {"attention_mask": torch.ones_like(full)})  # no padding: checked, not yet done
    check(model, full, {"attention_mask": torch.ones_like(full)})  # a second unpadded batch adds nothing
    assert len(calls) == 2 and not check.done
    with pytest.raises(ValueError, match="left-padded"):  # the first padded batch is checked
        check(model, left, {"attention_mask": left.ne(1).long()})
    done = EmbeddingPathCheck()
    done(model, right, {"attention_mask": right.ne(1).long()})
    assert done.done and len(calls) == 6
    done(model, right, {"attention_mask": right.ne(1).long()})
    assert len(calls) == 6  # no forward once a padded batch passed


def test_evaluate_robustness_refuses_a_batch_its_attack_would_misplace():
    from datasets import Dataset

    from hf_distill import evaluate_robustness

    rows = Dataset.from_dict({"input_ids": [[1, 1, 0, 5, 6, 2], [0, 7, 8, 9, 10, 2]],
                              "attention_mask": [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], "labels": [0, 1]})
    with pytest.raises(ValueError, match="inputs_embeds"):
        evaluate_robustness(_tiny_roberta(), rows, epsilon=0.1, steps=1)


@pytest.mark.parametrize("same", [False, True])
def test_fgm_ascends_the_adversarial_objective_not_the_clean_mixture(same):
    # The clean pass trains on alpha·KD + (1 - alpha)·CE, but with adv_objective="kd" the attacker maximises KD:
    # δ must be ε·∇KD/‖∇KD‖ at δ = 0, not the direction of the mixture's gradient (which may even lower KD).
    import contextlib
    from types import SimpleNamespace

    from hf_distill.adversarial import adversarial_backward

    torch.manual_seed(0)
    weight, embeds = torch.randn(8, 3), torch.randn(2, 4, 8)
    labels, teacher = torch.tensor([0, 1]), torch.randn(2, 3)

    def forward(delta):
        return ((embeds + delta) @ weight).mean(1)

    def kd(logits):
        return nn.functional.kl_div(logits.log_softmax(-1), teacher.softmax(-1), reduction="sum")

    def mixture(logits):
        return SimpleNamespace(loss=0.5 * kd(logits) + 0.5 * nn.functional.cross_entropy(logits, labels))

    used = []
    adversarial_backward(
        AttackSettings("fgm", 1.0, 0.0, 1), shape=(2, 4, 8), device=torch.device("cpu"), mask=_ones_mask(2, 4),
        forward=lambda delta: used.append(delta.detach()) or forward(delta), clean_objective=mixture,
        adversarial_objective=mixture if same else (lambda logits: SimpleNamespace(loss=kd(logits))),
        backward=lambda loss: loss.backward() if loss.requires_grad else None,
        sync=lambda last: contextlib.nullcontext(),
        on_nonfinite=lambda: None, same_objectives=same,
    )
    start = torch.zeros(2, 4, 8, requires_grad=True)
    attacked = mixture(forward(start)).loss if same else kd(forward(start))
    (grad,) = torch.autograd.grad(attacked, start)
    expected = grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1)
    assert torch.allclose(used[-1], expected, atol=1e-6)


def _linear_step(settings, adv_weight=1.0):
    """adversarial_backward on logits linear in δ, with a squared-logit objective that numbers its calls.

    Returns the step, the δ of every forward pass, and the loss that each backward received."""
    import contextlib
    from types import SimpleNamespace

    from hf_distill.adversarial import adversarial_backward

    torch.manual_seed(0)
    weight, embeds = torch.randn(8, 3, requires_grad=True), torch.randn(2, 4, 8)  # the weight trains
    deltas, backwards, calls = [], [], []

    def forward(delta):
        deltas.append(delta.detach().clone())
        return ((embeds + delta) @ weight).mean(1)

    def objective(logits):
        calls.append(len(calls))
        return SimpleNamespace(loss=logits.pow(2).sum(), call=calls[-1])

    def backward(loss):
        backwards.append(loss.item())
        loss.backward()

    step = adversarial_backward(
        settings, shape=(2, 4, 8), device=torch.device("cpu"), mask=_ones_mask(2, 4), forward=forward,
        clean_objective=objective, adversarial_objective=objective, backward=backward,
        sync=lambda last: contextlib.nullcontext(), on_nonfinite=lambda: None, same_objectives=True,
        adv_weight=adv_weight,
    )
    clean_loss = (((embeds @ weight.detach()).mean(1)) ** 2).sum().item()
    return step, deltas, backwards, clean_loss


@pytest.mark.parametrize("method, adv_weight, shares", [
    ("freelb", 1.0, [1 / 3, 1 / 3, 1 / 3]),  # each of K = 3 passes trains on loss / K
    ("fgm", 0.5, [1.0, 0.5]),  # the clean pass, then adv_weight x the perturbed one
    ("pgd", 0.5, [1.0, 0.5]),  # the K - 1 attack-only passes back-propagate nothing into the weights
])
def test_each_pass_back_propagates_its_share_of_the_step(method, adv_weight, shares):
    # At epsilon = 0 every pass sees the clean input, so every pass's loss is the clean loss L.
    step, _, backwards, clean_loss = _linear_step(AttackSettings(method, 0.0, 0.0, 3), adv_weight=adv_weight)
    assert backwards == pytest.approx([share * clean_loss for share in shares], rel=1e-6)
    assert step.loss.item() == pytest.approx(sum(shares) * clean_loss, rel=1e-6)  # the logged total
    if method == "freelb":  # the clean parts are the first pass's, the adversarial ones the last's
        assert (step.clean.call, step.adversarial.call) == (0, 2)


@pytest.mark.parametrize("method", ["pgd", "freelb"])
@pytest.mark.parametrize("norm, epsilon", [("l2", 0.1), ("linf", 0.01)])
def test_training_perturbations_stay_in_the_epsilon_ball(method, norm, epsilon):
    # A step size far larger than epsilon: only the projection keeps δ inside the ball, and the attack reaches its edge.
    step, deltas, _, _ = _linear_step(AttackSettings(method, epsilon, 1.0, 3, init_scale=epsilon / 2, norm=norm))
    for delta in deltas:
        sizes = delta.flatten(1).norm(dim=1) if norm == "l2" else delta.flatten(1).abs().amax(dim=1)
        assert (sizes <= epsilon * (1 + 1e-5)).all(), sizes
    assert step.delta_norms == pytest.approx([epsilon, epsilon], rel=1e-5)


@pytest.mark.parametrize("method", ["fgm", "pgd"])
def test_attack_gradients_are_taken_at_the_amp_loss_scale(method):
    # Under fp16 autocast a small input gradient underflows to zero in half precision unless the loss is scaled, as
    # the grad scaler scales the training backward: the attack's own autograd.grad calls must use that scale too.
    import contextlib
    from types import SimpleNamespace

    from hf_distill.adversarial import adversarial_backward

    weight = torch.full((4,), 1e-4, dtype=torch.float16)

    def forward(delta):  # half-precision logits whose gradient w.r.t. δ is 1e-4 · upstream: 1e-8, below fp16's range
        return (delta.to(torch.float16) * weight).sum(-1).mean(-1, keepdim=True)

    def objective(logits):
        return SimpleNamespace(loss=1e-4 * logits.float().sum())

    deltas = {}
    for scale in (1.0, 2.0 ** 16):
        used = []
        adversarial_backward(
            AttackSettings(method, 1.0, 0.5, 2), shape=(2, 3, 4), device=torch.device("cpu"), mask=_ones_mask(2, 3),
            forward=lambda delta, used=used: used.append(delta.detach()) or forward(delta),
            clean_objective=objective, adversarial_objective=lambda logits: objective(logits),
            backward=lambda loss: None, sync=lambda last: contextlib.nullcontext(), on_nonfinite=lambda: None,
            grad_scale=scale,
        )
        deltas[scale] = used[-1]
    assert deltas[1.0].abs().max() == 0  # unscaled: every gradient entry underflowed, so δ stayed at zero
    norms = deltas[2.0 ** 16].flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.ones(2), atol=1e-4)
