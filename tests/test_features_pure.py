"""The pure pieces of the strategies: layer maps, feature losses, ensembles, augmentation, EMA, pseudo-labels."""

import pytest
import torch
from torch import nn

from hf_distill import (
    attention_kl,
    augment_input_ids,
    combine_teacher_logits,
    ema_update,
    hidden_state_loss,
    pseudo_labels,
    uniform_layer_map,
)
from hf_distill.features import FeatureProjector, parse_layer_map


def test_uniform_layer_map_spreads_student_layers_over_the_teacher():
    assert uniform_layer_map(3, 6) == {1: 2, 2: 4, 3: 6}
    assert uniform_layer_map(4, 12) == {1: 3, 2: 6, 3: 9, 4: 12}
    assert uniform_layer_map(2, 2) == {1: 1, 2: 2}


def test_layer_map_from_text_and_its_errors():
    assert parse_layer_map("0:0, 1:3", 2, 6) == {0: 0, 1: 3}
    assert parse_layer_map({2: 6}, 2, 6) == {2: 6}
    with pytest.raises(ValueError, match="student:teacher"):
        parse_layer_map("1-2", 2, 6)
    with pytest.raises(ValueError, match="the student has layers 0..2 and the teacher 0..6"):
        parse_layer_map("3:6", 2, 6)
    for teacher_layer in ("7", "-1"):  # past the teacher's last layer; -1 would read a layer from the end
        with pytest.raises(ValueError, match=rf"teacher layer {teacher_layer}.*the student has layers 0..2 and the "
                                             r"teacher 0..6"):
            parse_layer_map(f"1:{teacher_layer}", 2, 6)
    with pytest.raises(ValueError, match="pairs student layer 1 twice"):
        parse_layer_map("1:2,1:4", 2, 6)  # a dict would keep only the last pair, without a word


def _states(seed, layers, shape):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(layers)]


def test_hidden_state_mse_and_cosine_by_hand():
    s, t = _states(0, 3, (2, 4, 8)), _states(1, 5, (2, 4, 8))
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    layer_map = {1: 2, 2: 4}
    total, count = hidden_state_loss(s, t, layer_map, mask, kind="mse")
    expected = sum(((s[a] - t[b]) ** 2).mean(-1)[mask] for a, b in layer_map.items()) / 2
    assert count.item() == 5
    assert total.item() == pytest.approx(expected.sum().item(), rel=1e-6)
    total, _ = hidden_state_loss(s, t, layer_map, mask, kind="cosine")
    cos = sum(1 - torch.nn.functional.cosine_similarity(s[a], t[b], dim=-1)[mask] for a, b in layer_map.items()) / 2
    assert total.item() == pytest.approx(cos.sum().item(), rel=1e-6)
    assert hidden_state_loss(t, t, {1: 1}, mask)[0].item() == 0.0


def test_hidden_state_projection_is_applied_and_required_when_sizes_differ():
    s, t = _states(0, 2, (1, 3, 4)), _states(1, 2, (1, 3, 8))
    mask = torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="a projection is needed"):
        hidden_state_loss(s, t, {1: 1}, mask)
    projector = FeatureProjector(4, 8, [1])
    total, _ = hidden_state_loss(s, t, {1: 1}, mask, projector=projector)
    expected = ((projector.maps["1"](s[1]) - t[1]) ** 2).mean(-1).sum()
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    total.backward()
    assert projector.maps["1"].weight.grad is not None


def test_attention_kl_by_hand_and_zero_for_identical_maps():
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(2, 3, 4, 4, generator=g).softmax(-1) for _ in range(2)]
    t = [torch.randn(2, 3, 4, 4, generator=g).softmax(-1) for _ in range(4)]
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    total, count = attention_kl(s, t, {1: 2, 2: 4}, mask)
    per_token = 0
    for a, b in {1: 2, 2: 4}.items():
        kl = (t[b - 1] * (t[b - 1].log() - s[a - 1].log())).sum(-1)  # (B, H, L)
        per_token = per_token + kl.mean(1)
    assert count.item() == 6
    assert total.item() == pytest.approx((per_token / 2)[mask].sum().item(), rel=1e-5)
    assert attention_kl(t, t, {1: 1}, mask)[0].abs().item() < 1e-6
    with pytest.raises(ValueError, match="same number of heads"):
        attention_kl([torch.rand(2, 2, 4, 4)], t, {1: 1}, mask)


def test_mean_ensemble_is_the_mixture_of_softened_distributions():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    combined = combine_teacher_logits([z1, z2], method="mean", temperature=2.0)
    mixture = ((z1 / 2).softmax(-1) + (z2 / 2).softmax(-1)) / 2
    assert torch.allclose((combined / 2).softmax(-1), mixture, atol=1e-6)
    weighted = combine_teacher_logits([z1, z2], method="weighted", weights=[3, 1], temperature=1.0)
    assert torch.allclose(weighted.softmax(-1), 0.75 * z1.softmax(-1) + 0.25 * z2.softmax(-1), atol=1e-6)
    assert torch.equal(combine_teacher_logits([z1]), z1)
    assert torch.allclose(combine_teacher_logits([z1, z2], method="weighted", weights=[1, 1], distill_loss="mse"),
                          (z1 + z2) / 2)


def test_confidence_ensemble_trusts_the_sure_teacher_more():
    sure = torch.tensor([[8.0, 0.0, 0.0]])
    unsure = torch.tensor([[0.0, 0.1, 0.0]])
    combined = combine_teacher_logits([sure, unsure], method="confidence", temperature=1.0).softmax(-1)
    c1, c2 = sure.softmax(-1).max(), unsure.softmax(-1).max()
    expected = (c1 * sure.softmax(-1) + c2 * unsure.softmax(-1)) / (c1 + c2)
    assert torch.allclose(combined, expected, atol=1e-6)
    assert combined[0, 0] > combine_teacher_logits([sure, unsure], method="mean").softmax(-1)[0, 0]
    # With mse the logits themselves are averaged, by the same normalised confidences.
    averaged = combine_teacher_logits([sure, unsure], method="confidence", distill_loss="mse")
    assert torch.allclose(averaged, (c1 * sure + c2 * unsure) / (c1 + c2), atol=1e-6)


def test_weighted_ensemble_needs_one_weight_per_teacher():
    with pytest.raises(ValueError, match="one weight per teacher: got 2 teachers and 3"):
        combine_teacher_logits([torch.zeros(1, 2)] * 2, method="weighted", weights=[1, 2, 3])


def test_augmentation_touches_only_candidates_and_is_seeded():
    ids = torch.arange(10, 50).view(2, 20)
    candidates = torch.ones_like(ids, dtype=torch.bool)
    candidates[:, 0] = candidates[:, -1] = False
    kwargs = dict(mask_prob=0.3, replace_prob=0.3, mask_token_id=4, vocab_size=100)
    a = augment_input_ids(ids, candidates, generator=torch.Generator().manual_seed(0), **kwargs)
    b = augment_input_ids(ids, candidates, generator=torch.Generator().manual_seed(0), **kwargs)
    c = augment_input_ids(ids, candidates, generator=torch.Generator().manual_seed(1), **kwargs)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, 0], ids[:, 0]) and torch.equal(a[:, -1], ids[:, -1])
    assert (a == 4).any() and ((a != ids) & (a != 4)).any()
    everything = augment_input_ids(ids, candidates, mask_prob=1.0, replace_prob=0.0, mask_token_id=4, vocab_size=100,
                                   generator=torch.Generator().manual_seed(0))
    assert torch.equal(everything[candidates], torch.full_like(ids[candidates], 4))
    only = torch.tensor([7, 9])
    replaced = augment_input_ids(ids, candidates, mask_prob=0.0, replace_prob=1.0, mask_token_id=None,
                                 vocab_size=100, generator=torch.Generator().manual_seed(0), replacement_ids=only)
    assert set(replaced[candidates].tolist()) <= {7, 9}


def test_ema_update_by_hand():
    torch.manual_seed(0)
    teacher, student = nn.Linear(3, 2), nn.Linear(3, 2)
    before = teacher.weight.detach().clone()
    ema_update(teacher, student, 0.9)
    assert torch.allclose(teacher.weight, 0.9 * before + 0.1 * student.weight.detach())
    ema_update(teacher, student, 0.0)
    assert torch.equal(teacher.weight, student.weight)
    # Buffers (BatchNorm's running statistics) are the student's own, copied.
    teacher, student = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    student.train()(torch.randn(8, 3) + 5)
    ema_update(teacher, student, 0.9)
    assert torch.equal(teacher.running_mean, student.running_mean) and teacher.num_batches_tracked == 1


def test_pseudo_labels_fill_only_confident_unlabelled_candidates():
    logits = torch.tensor([[5.0, 0.0], [0.0, 0.2], [0.0, 5.0], [0.0, 5.0]])
    labels = torch.tensor([-100, -100, -100, 0])
    candidates = torch.tensor([True, True, False, True])
    out = pseudo_labels(labels, logits, candidates, threshold=0.9)
    assert out.tolist() == [0, -100, -100, 0]  # unsure row stays unlabelled; non-candidate untouched; label kept
    assert pseudo_labels(None, logits, torch.ones(4, dtype=torch.bool), 0.5).tolist() == [0, 1, 1, 1]


def test_feature_losses_refuse_an_empty_layer_map():
    states = _states(0, 2, (1, 3, 4))
    with pytest.raises(ValueError, match="The layer map is empty"):
        hidden_state_loss(states, states, {}, torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="The layer map is empty"):
        attention_kl([torch.rand(1, 2, 3, 3)], [torch.rand(1, 2, 3, 3)], {}, torch.ones(1, 3, dtype=torch.bool))
