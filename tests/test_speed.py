import pytest
import torch

from hf_distill.speed import inference_latency_ms


def test_warmup_calls_are_not_timed(monkeypatch):
    # A clock that the model moves: 1000 ms for each of the three warm-up calls (lazy initialisation), 1 ms after.
    import hf_distill.speed as speed

    clock = [0.0]

    class Slow(Recorder):
        def forward(self, **inputs):
            clock[0] += 1.0 if len(self.calls) < 3 else 0.001
            return super().forward(**inputs)

    monkeypatch.setattr(speed.time, "perf_counter", lambda: clock[0])
    assert inference_latency_ms(Slow(), {"input_ids": torch.ones(1, 2)}, repeats=2, warmup=3) == pytest.approx(1.0)


class Recorder(torch.nn.Module):
    """Records the keyword arguments and mode of each call; raises on call number `fail_at` (1-based)."""

    def __init__(self, fail_at=None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.calls = []
        self.fail_at = fail_at

    def forward(self, **inputs):
        self.calls.append((sorted(inputs), self.training))
        if len(self.calls) == self.fail_at:
            raise RuntimeError("boom")
        return inputs["input_ids"].float() * self.weight


def batch():
    return {"input_ids": torch.ones(2, 3, dtype=torch.long), "labels": torch.zeros(2, dtype=torch.long),
            "note": "not a tensor"}


def test_times_warmup_plus_repeats_eval_mode_calls_without_labels_and_restores_training_mode():
    model = Recorder().train()
    ms = inference_latency_ms(model, batch(), repeats=4, warmup=2)
    assert ms >= 0.0
    assert model.calls == [(["input_ids"], False)] * 6
    assert model.training


def test_mode_is_restored_when_the_forward_raises():
    model = Recorder(fail_at=2).train()
    with pytest.raises(RuntimeError, match="boom"):
        inference_latency_ms(model, batch(), repeats=3, warmup=1)
    assert model.training


@pytest.mark.parametrize("repeats,warmup", [(0, 3), (2, -1)])
def test_refuses_no_repeats_or_negative_warmup(repeats, warmup):
    with pytest.raises(ValueError, match="repeats"):
        inference_latency_ms(Recorder(), batch(), repeats=repeats, warmup=warmup)


def test_compare_latency_alternates_and_a_burst_of_load_slows_both_not_one(monkeypatch):
    # A shared clock; each call of the teacher costs 2 ms and of the student 1 ms, except that "load" arrives in the
    # second half of the run and triples every call then. Timed one after the other, the teacher would take all of
    # it; timed in alternating rounds, the ratio of each round stays 2.
    import hf_distill.speed as speed
    from hf_distill.speed import compare_latency

    clock, order = [0.0], []

    class Timed(Recorder):
        def __init__(self, name, cost):
            super().__init__()
            self.name, self.cost = name, cost

        def forward(self, **inputs):
            order.append(self.name)
            clock[0] += self.cost * (3.0 if len(order) > 40 else 1.0)
            return super().forward(**inputs)

    monkeypatch.setattr(speed.time, "perf_counter", lambda: clock[0])
    timed = compare_latency(Timed("teacher", 0.002), Timed("student", 0.001), batch(), rounds=4, repeats=5)
    assert timed.speedup == pytest.approx(2.0)
    warm = 2 * 5  # each model's warm-up: 3 untimed calls and 2 timed ones
    rounds = [order[warm + 12 * i] for i in range(4)]  # who goes first in each round (6 calls of each model)
    assert order[:warm] == ["student"] * 5 + ["teacher"] * 5 and rounds == ["student", "teacher", "student", "teacher"]
    with pytest.raises(ValueError, match="`rounds` must be >= 1"):
        compare_latency(Timed("teacher", 0.002), Timed("student", 0.001), batch(), rounds=0)
