"""The loss functions against hand-written formulas, masking, and numerical safety."""

import math

import pytest
import torch

from hf_distill.losses import (
    distillation_objective,
    hard_label_cross_entropy,
    logit_mse,
    soft_cross_entropy,
    soft_kl,
)


def _probs(logits, t):
    e = [math.exp(v / t) for v in logits]
    return [x / sum(e) for x in e]


def test_soft_kl_matches_formula_with_t_squared():
    s, t = [1.0, 0.0, -1.0], [0.5, 1.5, -0.5]
    temp = 3.0
    ps, pt = _probs(s, temp), _probs(t, temp)
    expected = temp**2 * sum(a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps, strict=False))
    got = soft_kl(torch.tensor([s]), torch.tensor([t]), temp)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_soft_cross_entropy_has_no_t_squared():
    s, t = [2.0, -1.0], [0.0, 1.0]
    temp = 2.0
    ps, pt = _probs(s, temp), _probs(t, temp)
    expected = -sum(a * math.log(b) for a, b in zip(pt, ps, strict=False))
    assert soft_cross_entropy(torch.tensor([s]), torch.tensor([t]), temp).item() == pytest.approx(expected, rel=1e-5)


def test_mse_and_hard_label_ce():
    s, t = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.0, 2.0, 5.0]])
    assert logit_mse(s, t).item() == pytest.approx((1 + 0 + 4) / 3)
    # teacher argmax is class 2
    expected = -math.log(_probs([1.0, 2.0, 3.0], 1.0)[2])
    assert hard_label_cross_entropy(s, t).item() == pytest.approx(expected, rel=1e-5)


def test_identical_logits_give_zero_kl():
    x = torch.randn(5, 4)
    assert torch.allclose(soft_kl(x, x.clone(), 2.0), torch.zeros(5), atol=1e-6)


def test_token_objective_masks_ignored_positions_by_hand():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    labels = torch.tensor([[-100, 1, 2], [3, -100, -100]])
    mask = labels.ne(-100)
    alpha, temp = 0.3, 2.0
    rows = [(b, i) for b in range(2) for i in range(3) if labels[b, i] != -100]
    kd = sum(soft_kl(student[b, i][None], teacher[b, i][None], temp).item() for b, i in rows) / len(rows)
    ce = sum(-torch.log_softmax(student[b, i], -1)[labels[b, i]].item() for b, i in rows) / len(rows)
    out = distillation_objective(student, teacher, labels, mask, alpha=alpha, temperature=temp)
    assert out.loss.item() == pytest.approx(alpha * kd + (1 - alpha) * ce, rel=1e-5)
    assert out.kd_count.item() == 3 and out.ce_count.item() == 3
    # Changing a masked position's logits changes nothing.
    student2 = student.clone()
    student2[0, 0] += 100.0
    teacher2 = teacher.clone()
    teacher2[1, 2] -= 50.0
    out2 = distillation_objective(student2, teacher2, labels, mask, alpha=alpha, temperature=temp)
    assert out2.loss.item() == pytest.approx(out.loss.item(), rel=1e-6)


def test_sequence_objective_by_hand():
    student, teacher = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1])
    mask = torch.ones(2, dtype=torch.bool)
    kd = soft_kl(student, teacher, 4.0).mean().item()
    ce = torch.nn.functional.cross_entropy(student, labels).item()
    out = distillation_objective(student, teacher, labels, mask, alpha=0.7, temperature=4.0, distill_loss="kl")
    assert out.loss.item() == pytest.approx(0.7 * kd + 0.3 * ce, rel=1e-5)


@pytest.mark.parametrize("kind", ["kl", "soft_ce", "mse"])
def test_each_distill_loss_is_selected(kind):
    student, teacher = torch.randn(3, 5), torch.randn(3, 5)
    mask = torch.ones(3, dtype=torch.bool)
    fn = {"kl": lambda: soft_kl(student, teacher, 2.0), "soft_ce": lambda: soft_cross_entropy(student, teacher, 2.0),
          "mse": lambda: logit_mse(student, teacher)}[kind]
    out = distillation_objective(student, teacher, None, mask, alpha=1.0, temperature=2.0, distill_loss=kind)
    assert out.loss.item() == pytest.approx(fn().mean().item(), rel=1e-5)


def test_hard_teacher_labels_use_argmax():
    student, teacher = torch.randn(4, 3), torch.randn(4, 3)
    out = distillation_objective(student, teacher, None, torch.ones(4, dtype=torch.bool), alpha=1.0,
                                 temperature=5.0, teacher_labels="hard")
    expected = torch.nn.functional.cross_entropy(student, teacher.argmax(-1))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_all_masked_batch_gives_zero_not_nan():
    student = torch.randn(2, 3, 4, requires_grad=True)
    labels = torch.full((2, 3), -100)
    out = distillation_objective(student, torch.randn(2, 3, 4), labels, labels.ne(-100), alpha=0.5, temperature=2.0)
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert torch.equal(student.grad, torch.zeros_like(student))


@pytest.mark.parametrize("kind,labels_kind", [("kl", "soft"), ("mse", "soft"), ("soft_ce", "soft"), ("kl", "hard")])
def test_masked_positions_add_nothing_whatever_they_hold(kind, labels_kind):
    # Masked rows, with a NaN teacher (fp16 padding) and large student logits, change neither the loss nor any
    # gradient: the result is that of the kept rows alone, and the masked rows' gradient is exactly zero.
    torch.manual_seed(0)
    student = (torch.randn(6, 4) * 5).requires_grad_()
    teacher = torch.randn(6, 4)
    mask = torch.tensor([True, False, True, True, False, True])
    teacher[~mask] = float("nan")
    settings = dict(alpha=1.0, temperature=2.0, distill_loss=kind, teacher_labels=labels_kind)
    out = distillation_objective(student, teacher, None, mask, **settings)
    out.loss.backward()
    kept = student.detach()[mask].clone().requires_grad_()
    alone = distillation_objective(kept, teacher[mask], None, torch.ones(4, dtype=torch.bool), **settings)
    alone.loss.backward()
    assert out.loss.item() == pytest.approx(alone.loss.item(), rel=1e-6) and out.kd_count.item() == 4
    assert torch.equal(student.grad[~mask], torch.zeros(2, 4))
    assert torch.allclose(student.grad[mask], kept.grad, atol=1e-7)


def test_normalizers_replace_local_counts():
    student, teacher = torch.randn(4, 3), torch.randn(4, 3)
    labels = torch.tensor([0, 1, 2, 0])
    mask = torch.ones(4, dtype=torch.bool)
    local = distillation_objective(student, teacher, labels, mask, alpha=0.5, temperature=2.0)
    wider = distillation_objective(student, teacher, labels, mask, alpha=0.5, temperature=2.0,
                                   kd_normalizer=torch.tensor(8), ce_normalizer=torch.tensor(8))
    assert wider.loss.item() == pytest.approx(local.loss.item() / 2, rel=1e-6)


def test_half_precision_logits_give_fp32_finite_loss():
    student = (torch.randn(8, 5) * 30).half()
    teacher = (torch.randn(8, 5) * 30).half()
    out = distillation_objective(student, teacher, None, torch.ones(8, dtype=torch.bool), alpha=1.0, temperature=1.0)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)


@pytest.mark.parametrize("temp", [0.05, 100.0])
def test_extreme_temperatures_give_finite_loss_and_gradient(temp):
    student = (torch.randn(6, 9) * 20).requires_grad_()
    out = distillation_objective(student, torch.randn(6, 9) * 20, torch.arange(6), torch.ones(6, dtype=torch.bool),
                                 alpha=0.5, temperature=temp)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(student.grad).all()


def test_shape_mismatch_is_explained():
    with pytest.raises(ValueError, match="share the label set"):
        distillation_objective(torch.randn(2, 3), torch.randn(2, 4), None, torch.ones(2, dtype=torch.bool),
                               alpha=1.0, temperature=1.0)


def test_missing_labels_with_alpha_below_one_is_explained():
    with pytest.raises(ValueError, match="alpha=1"):
        distillation_objective(torch.randn(2, 3), torch.randn(2, 3), None, torch.ones(2, dtype=torch.bool),
                               alpha=0.5, temperature=1.0)


def test_label_smoothing_by_hand_and_ignored_positions_stay_out():
    student = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [1.0, -2.0, 0.0]]])
    labels = torch.tensor([[0, -100, 2]])
    eps, rows = 0.1, [(0, [2.0, 0.0, -1.0]), (2, [1.0, -2.0, 0.0])]
    expected = 0.0
    for target, logits in rows:
        logp = [math.log(p) for p in _probs(logits, 1.0)]
        expected += (1 - eps) * -logp[target] + eps * -sum(logp) / 3
    out = distillation_objective(student, None, labels, torch.zeros(1, 3, dtype=torch.bool), alpha=0.0,
                                 temperature=1.0, label_smoothing=eps)
    assert out.loss.item() == pytest.approx(expected / 2, rel=1e-5)
    plain = distillation_objective(student, None, labels, torch.zeros(1, 3, dtype=torch.bool), alpha=0.0,
                                   temperature=1.0)
    assert plain.loss.item() < out.loss.item()
