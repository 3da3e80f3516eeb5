"""Pure pieces of embedding-space adversarial attacks (FGM, PGD-K, FreeLB-K): tensors in, tensors out.

The perturbation δ is added to the *output* of the word-embedding lookup, never to the embedding weight matrix, and
the sum is fed back to the model as `inputs_embeds`. That lookup is `model.get_input_embeddings()(input_ids)` and
nothing more: BERT-style models add position and token-type embeddings and a LayerNorm themselves when they are given
`inputs_embeds`, so passing the full embedding-layer output would apply those twice.

Shapes used throughout:
    embeds, delta, grad: (B, L, H), the word embeddings of a batch, a perturbation of them, and the gradient of the
        loss with respect to δ.
    mask: (B, L, 1) float32, 1 where a token may be perturbed (real, non-special tokens) and 0 elsewhere.

Norms are per example, over the whole sequence (L, H), as in FreeLB, and are always computed in fp32 so that fp16/bf16
gradients cannot overflow. Every function returns fp32; cast to the embedding dtype when adding δ to the embeddings.

A training step with these pieces (the trainer owns the loop):
    FGM:      δ = fgm_delta(∇δ L(x), mask, epsilon=ε); backward L(x + δ).                       2 passes.
    PGD-K:    g ← ∇δ L(x) (the clean pass's, at δ = 0); δ ← init; K times: δ = project(ascent_step(δ, g, α), ε),
              g ← ∇δ L(x + δ); backward L(x + δ).                                                  K + 1 passes.
              (The first step uses the clean pass's gradient even after a random start: it saves a pass.)
    FreeLB-K: δ ← init; K times: backward L(x + δ) / K (parameter gradients accumulate),
              δ = project(ascent_step(δ, ∇δ, α), ε).                                             K passes.

References:
    Miyato, Dai & Goodfellow (2017), "Adversarial Training Methods for Semi-Supervised Text Classification" (FGM).
    Madry et al. (2018), "Towards Deep Learning Models Resistant to Adversarial Attacks" (PGD).
    Zhu et al. (2020), "FreeLB: Enhanced Adversarial Training for Natural Language Understanding".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from .losses import zero_weighted_loss

ATTACK_METHODS = ("fgm", "pgd", "freelb")
NORMS = ("l2", "linf")

_GRAD_NORM_FLOOR = 1e-12
"""Smallest gradient norm an l2 step divides by: a zero gradient then gives a zero step, not NaN."""


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"`norm` must be one of {', '.join(repr(n) for n in NORMS)}, got {norm!r}.")


def _per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape (B,) values so that they broadcast against `like` (B, ...)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def word_embeddings(model: nn.Module) -> nn.Module:
    """The model's word-embedding module, `model.get_input_embeddings()`.

    Raises:
        ValueError: The model has no input embeddings (it does not implement `get_input_embeddings`, or returns
            `None`), so there is nothing to perturb.
    """
    getter = getattr(model, "get_input_embeddings", None)
    module = None
    if callable(getter):
        try:
            module = getter()
        except (NotImplementedError, AttributeError):
            module = None
    if module is None:
        raise ValueError(
            f"{type(model).__name__} has no input embeddings (`get_input_embeddings()` is missing or returns None), "
            "so embedding-space attacks cannot perturb it. Use a Transformers model that accepts `inputs_embeds`, "
            "or implement `get_input_embeddings()` to return its word-embedding module."
        )
    return module


def embed_inputs(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """The word-embedding lookup of `input_ids`, ready to pass (plus δ) as `inputs_embeds`.

    Only `model.get_input_embeddings()` is applied: no position or token-type embeddings and no LayerNorm, which the
    model adds itself when it receives `inputs_embeds`.

    Args:
        model: A Transformers model (or a wrapper such as a PEFT model) that implements `get_input_embeddings`.
        input_ids: (B, L) token ids.

    Returns:
        (B, L, H) in the embedding dtype. It carries gradient if the embedding weights require grad; detach it for
        attacks that only differentiate with respect to δ.
    """
    return word_embeddings(model)(input_ids)


def model_logits(outputs: Any) -> torch.Tensor:
    """The logits of a model's outputs: `outputs["logits"]`, or the first element of a model built with
    `return_dict=False`."""
    return outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode inside the block, and afterwards every submodule back in its own mode (`model.train(flag)`
    would set them all alike, undoing, say, embeddings a user had put in eval mode)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def check_embedding_path(model: nn.Module, input_ids: torch.Tensor, model_inputs: dict[str, Any],
                         base: nn.Module | None = None) -> None:
    """Check that the model gives the same logits from `inputs_embeds` as from `input_ids`, on real tokens.

    Attacks feed `embed_inputs(input_ids) + δ` as `inputs_embeds`; at δ = 0 that must be the model's ordinary
    forward. It is not for every model and batch: RoBERTa-style models derive position ids from `input_ids` (counting
    from the first real token) but number `inputs_embeds` positions from the left edge, so a left-padded batch would be
    attacked at shifted positions. Runs two forwards in eval mode without gradients, then restores the mode.
    `EmbeddingPathCheck` calls it on the batches that need it.

    Args:
        model: the model as it is called (possibly wrapped); `base` is the unwrapped one with the embeddings
            (default: `model`).
        input_ids: (B, L) token ids.
        model_inputs: the other forward arguments (attention mask, token type ids), without `input_ids`.

    Raises:
        ValueError: the two forwards disagree, with the likely cause and the fix.
    """
    base = model if base is None else base
    with eval_mode(model), torch.no_grad():
        from_ids = model_logits(model(input_ids=input_ids, **model_inputs)).float()
        from_embeds = model_logits(model(inputs_embeds=embed_inputs(base, input_ids), **model_inputs)).float()
    attention_mask = model_inputs.get("attention_mask")
    if from_ids.dim() == 3 and attention_mask is not None:  # token logits: padding positions do not count
        real = attention_mask.to(from_ids.device).bool()
        from_ids, from_embeds = from_ids[real], from_embeds[real]
    scale = 1.0 + (float(from_ids.abs().amax()) if from_ids.numel() else 0.0)
    # Both forwards run the same operations on the same values, so any real difference is far above rounding.
    if not torch.allclose(from_ids, from_embeds, rtol=1e-3, atol=1e-4 * scale):
        gap = float((from_ids - from_embeds).abs().max())
        padded_at = set()
        if attention_mask is not None:
            padded_at = {side for side, column in (("left", 0), ("right", -1))
                         if bool((attention_mask[:, column] == 0).any())}
        if "left" in padded_at:
            hint = ("The batch is left-padded, and models such as RoBERTa number `inputs_embeds` positions from the "
                    "left edge: pad on the right (`tokenizer.padding_side = \"right\"`).")
        elif "right" in padded_at and from_ids.dim() == 2:
            hint = ("The batch is right-padded, and sequence classifiers that pool the last non-padding token (GPT-2, "
                    "Llama, Mistral...) find it from `input_ids` but take the last position from `inputs_embeds`: "
                    "pad on the left (`tokenizer.padding_side = \"left\"`).")
        else:
            hint = ("Check that the model's forward treats `inputs_embeds` as the output of `get_input_embeddings()` "
                    "(no extra scaling or position handling that only the `input_ids` path applies).")
        raise ValueError(
            f"{type(base).__name__} gives different logits from `inputs_embeds` than from `input_ids` on this batch "
            f"(largest gap {gap:.3g}), so an embedding-space attack would not perturb the model you evaluate. " + hint
        )


class EmbeddingPathCheck:
    """`check_embedding_path` on the first batch and, if that one had no padding, on the first padded batch too
    (where position handling can differ); every later call returns at once."""

    def __init__(self):
        self.checked_unpadded = False
        self.done = False

    def __call__(self, model: nn.Module, input_ids: torch.Tensor, model_inputs: dict[str, Any],
                 base: nn.Module | None = None) -> None:
        if self.done:
            return
        attention_mask = model_inputs.get("attention_mask")
        padded = attention_mask is not None and bool((attention_mask == 0).any())
        if padded or not self.checked_unpadded:
            check_embedding_path(model, input_ids, model_inputs, base)
        self.checked_unpadded = True
        self.done = padded or attention_mask is None


def perturbation_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    special_ids: Iterable[int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Where a perturbation may be non-zero: 1 on real tokens, 0 on padding and (optionally) special tokens.

    Args:
        input_ids: (B, L) token ids.
        attention_mask: (B, L), non-zero on real tokens; `None` treats every position as real.
        special_ids: Ids that are never perturbed, e.g. `tokenizer.all_special_ids` ([CLS], [SEP], [PAD]).

    Returns:
        (B, L, 1) float32 on the device of `input_ids`.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"`input_ids` must be (batch, length), got shape {tuple(input_ids.shape)}.")
    if attention_mask is None:
        mask = torch.ones_like(input_ids, dtype=torch.bool)
    else:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"`attention_mask` has shape {tuple(attention_mask.shape)} but `input_ids` has "
                f"{tuple(input_ids.shape)}; pass the attention mask of the same batch."
            )
        mask = attention_mask.to(input_ids.device) != 0
    if special_ids is not None:
        special = torch.as_tensor(list(special_ids) if not torch.is_tensor(special_ids) else special_ids)
        if special.numel():
            mask = mask & ~torch.isin(input_ids, special.to(device=input_ids.device, dtype=input_ids.dtype))
    return mask.unsqueeze(-1).float()


def delta_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """The norm of each example's perturbation over all its positions and dimensions.

    Args:
        delta: (B, L, H) (any (B, ...) works).
        norm: "l2" (Euclidean norm of the flattened example) or "linf" (largest absolute entry).

    Returns:
        (B,) fp32.
    """
    _check_norm(norm)
    flat = delta.float().flatten(1)
    if norm == "l2":
        return torch.linalg.vector_norm(flat, ord=2, dim=1)
    return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])


def init_delta(
    embeds: torch.Tensor,
    mask: torch.Tensor,
    *,
    init_scale: float,
    norm: str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A random starting perturbation, zero where `mask` is 0.

    - "l2": uniform(-1, 1) noise, masked, then scaled so that each example's norm over (L, H) is exactly
      `init_scale`. (FreeLB's reference code multiplies the noise by `init_mag / sqrt(len · H)` instead, which gives
      an expected norm of about `init_mag / sqrt(3)`; here `init_scale` *is* the norm.)
    - "linf": uniform(-init_scale, init_scale), masked.

    Args:
        embeds: (B, L, H), used only for its shape and device.
        mask: (B, L, 1) from [`perturbation_mask`].
        init_scale: >= 0; 0 gives zeros.
        norm: "l2" or "linf".
        generator: Seeds the noise. It may live on the CPU whatever the device of `embeds`.

    Returns:
        (B, L, H) fp32 on the device of `embeds`. An example with no perturbable token gets zeros.
    """
    _check_norm(norm)
    if not init_scale >= 0 or not math.isfinite(init_scale):
        raise ValueError(f"`init_scale` must be a finite number >= 0, got {init_scale}.")
    mask = mask.float().to(embeds.device)
    if init_scale == 0:
        return torch.zeros(embeds.shape, dtype=torch.float32, device=embeds.device)
    device = generator.device if generator is not None else embeds.device
    noise = torch.rand(embeds.shape, generator=generator, device=device, dtype=torch.float32).to(embeds.device)
    noise = (noise * 2 - 1) * mask
    if norm == "linf":
        return noise * init_scale
    norms = _per_example(delta_norm(noise, "l2"), noise)
    return torch.where(norms > 0, noise * (init_scale / norms.clamp_min(_GRAD_NORM_FLOOR)), torch.zeros_like(noise))


def ascent_step(
    delta: torch.Tensor,
    grad: torch.Tensor,
    mask: torch.Tensor,
    *,
    step_size: float,
    norm: str,
) -> torch.Tensor:
    """One gradient-ascent step on δ: `δ + step_size · direction(grad)`, masked.

    - "l2": direction = g / ‖g‖, the norm taken per example over (L, H) after masking (FreeLB, Miyato et al.).
    - "linf": direction = sign(g) (FGSM/PGD of Madry et al.).

    A zero gradient gives a zero step, and an example whose gradient holds NaN or inf gets a zero step (its δ is
    kept), so one overflowing example cannot poison the batch.

    Args:
        delta: (B, L, H) the current perturbation.
        grad: (B, L, H) gradient of the loss with respect to δ (any dtype).
        mask: (B, L, 1) from [`perturbation_mask`].
        step_size: α >= 0, the length of the step in the chosen norm.
        norm: "l2" or "linf".

    Returns:
        (B, L, H) fp32.
    """
    _check_norm(norm)
    if not step_size >= 0 or not math.isfinite(step_size):
        raise ValueError(f"`step_size` must be a finite number >= 0, got {step_size}.")
    if grad.shape != delta.shape:
        raise ValueError(
            f"`grad` has shape {tuple(grad.shape)} but `delta` has {tuple(delta.shape)}; pass the gradient of the "
            "loss with respect to this delta."
        )
    mask = mask.float().to(delta.device)
    g = grad.float().to(delta.device)
    finite = _per_example(torch.isfinite(g).flatten(1).all(dim=1), g)
    g = torch.where(finite, g, torch.zeros_like(g)) * mask
    if norm == "l2":
        direction = g / _per_example(delta_norm(g, "l2"), g).clamp_min(_GRAD_NORM_FLOOR)
    else:
        direction = torch.sign(g)
    return (delta.float() + step_size * direction) * mask


def project(delta: torch.Tensor, mask: torch.Tensor, *, epsilon: float, norm: str) -> torch.Tensor:
    """Project each example's δ back into the ε-ball, and zero it where `mask` is 0.

    - "l2": an example whose norm exceeds ε is scaled down to norm ε; the others are unchanged.
    - "linf": every entry is clamped to [-ε, ε].

    Args:
        delta: (B, L, H).
        mask: (B, L, 1) from [`perturbation_mask`].
        epsilon: ε >= 0. 0 gives zeros; `math.inf` leaves δ unconstrained (FreeLB's `adv_max_norm=0`).
        norm: "l2" or "linf".

    Returns:
        (B, L, H) fp32.
    """
    _check_norm(norm)
    if not epsilon >= 0:
        raise ValueError(f"`epsilon` must be >= 0 (or math.inf for no constraint), got {epsilon}.")
    delta = delta.float() * mask.float().to(delta.device)
    if epsilon == 0:
        return torch.zeros_like(delta)
    if math.isinf(epsilon):
        return delta
    if norm == "linf":
        return delta.clamp(-epsilon, epsilon)
    norms = _per_example(delta_norm(delta, "l2"), delta)
    scale = torch.where(norms > epsilon, epsilon / norms.clamp_min(_GRAD_NORM_FLOOR), torch.ones_like(norms))
    return delta * scale


def fgm_delta(grad: torch.Tensor, mask: torch.Tensor, *, epsilon: float, norm: str = "l2") -> torch.Tensor:
    """The FGM perturbation `ε · g / ‖g‖` ("l2") or `ε · sign(g)` ("linf"), masked: one step of size ε from zero.

    Args:
        grad: (B, L, H) gradient of the attacked loss with respect to the word embeddings.
        mask: (B, L, 1) from [`perturbation_mask`].
        epsilon: ε >= 0 and finite.
        norm: "l2" or "linf".

    Returns:
        (B, L, H) fp32.
    """
    if not math.isfinite(epsilon):
        raise ValueError(f"FGM takes a single step of size `epsilon`, which must be finite, got {epsilon}.")
    zeros = torch.zeros(grad.shape, dtype=torch.float32, device=grad.device)
    return project(ascent_step(zeros, grad, mask, step_size=epsilon, norm=norm), mask, epsilon=epsilon, norm=norm)


@dataclass(frozen=True)
class AttackSettings:
    """The settings of an embedding-space attack used during training.

    Args:
        method (`str`): "fgm", "pgd" or "freelb".
        epsilon (`float`): Radius ε of the per-example ball that δ is projected into (>= 0). For "fgm" it is also the
            step size. `math.inf` means no projection (FreeLB's `adv_max_norm=0`); it is refused for "fgm".
        step_size (`float`): Ascent step α (>= 0, finite) for "pgd" and "freelb"; ignored by "fgm".
        steps (`int`): Number of ascent steps K (>= 1) for "pgd" and "freelb"; ignored by "fgm".
        norm (`str`, defaults to `"l2"`): "l2" or "linf".
        init_scale (`float`, defaults to `0.0`): Size of the random start (see [`init_delta`]); 0 starts from zero.
            Ignored by "fgm".
    """

    method: str
    epsilon: float
    step_size: float
    steps: int
    norm: str = "l2"
    init_scale: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in ATTACK_METHODS:
            raise ValueError(
                f"`method` must be one of {', '.join(repr(m) for m in ATTACK_METHODS)}, got {self.method!r}."
            )
        _check_norm(self.norm)
        if not self.epsilon >= 0:
            raise ValueError(f"`epsilon` must be >= 0, got {self.epsilon}.")
        if self.method == "fgm" and math.isinf(self.epsilon):
            raise ValueError(
                "`epsilon` is the step size of FGM and must be finite, got inf. Use a finite epsilon (about 1 for l2), "
                "or method='freelb' for an unconstrained perturbation."
            )
        if not self.step_size >= 0 or not math.isfinite(self.step_size):
            raise ValueError(f"`step_size` must be a finite number >= 0, got {self.step_size}.")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"`steps` must be an integer >= 1, got {self.steps!r}.")
        if not self.init_scale >= 0 or not math.isfinite(self.init_scale):
            raise ValueError(f"`init_scale` must be a finite number >= 0, got {self.init_scale}.")

    @property
    def passes(self) -> int:
        """Forward+backward passes per training step: 2 for FGM, K + 1 for PGD-K, K for FreeLB-K."""
        if self.method == "fgm":
            return 2
        if self.method == "pgd":
            return self.steps + 1
        return self.steps


class AdversarialStep(NamedTuple):
    """What one adversarial training step did, for the trainer's logs."""

    loss: torch.Tensor  # the total that was back-propagated (detached)
    clean: Any  # the objective's parts on clean inputs (FreeLB: on its first, nearly clean, pass)
    adversarial: Any  # the adversarial objective's parts on the last perturbed pass that trained the student
    delta_norms: torch.Tensor  # (B,) each example's norm of the final perturbation (0 where nothing is perturbed)
    skipped: bool = False  # a pass was non-finite: the attack stopped there (see `on_nonfinite`)


def adversarial_backward(
    settings: AttackSettings,
    *,
    shape: tuple[int, int, int],
    device: torch.device,
    mask: torch.Tensor,
    forward: Callable[[torch.Tensor], torch.Tensor],
    clean_objective: Callable[[torch.Tensor], Any],
    adversarial_objective: Callable[[torch.Tensor], Any],
    backward: Callable[[torch.Tensor], None],
    sync: Callable[[bool], AbstractContextManager],
    on_nonfinite: Callable[[], None],
    adv_weight: float = 1.0,
    discard: Callable[[], None] = lambda: None,
    generator: torch.Generator | None = None,
    same_objectives: bool = False,
    grad_scale: float = 1.0,
    keep_in_step: bool = True,
) -> AdversarialStep:
    """Run the forward and backward passes of one FGM, PGD-K or FreeLB-K training step.

    Parameter gradients are accumulated by `backward`; this function never touches weights, so it only changes the
    model through the optimizer step that follows, and never through the embedding matrix.

    Args:
        settings: the attack.
        shape, device: (B, L, H) and device of the word embeddings, which δ takes.
        mask: (B, L, 1) where δ may be non-zero (`perturbation_mask`).
        forward: δ (B, L, H) fp32 -> student logits on `word_embeddings + δ`. It must re-embed on every call so that
            the embedding weights get their gradient from every pass.
        clean_objective / adversarial_objective: logits -> an object with a `.loss` tensor (a `DistillationLoss`).
            The adversarial one is what the attacker maximises, at every step FGM's and PGD's first included (the
            teacher's targets come from clean inputs).
        backward: back-propagates a loss into the parameters (the trainer scales it and applies AMP).
        sync: `sync(last)` is the context for one forward+backward pass: `last=False` must suppress gradient
            all-reduce (DDP `no_sync`), so that only the final pass of the step synchronises.
        on_nonfinite: called when a pass's loss is NaN or inf (it may raise). That pass is not back-propagated and
            the attack stops; `discard` then drops what the call's earlier passes added to the gradients, a
            zero-weighted loss connected to every parameter takes the synchronising backward's place, so every
            process still all-reduces once, and the step is returned with `skipped=True`.
        discard: restores the parameters' gradients to what they were before this call (the trainer's part: it
            knows what they held), so that a skipped batch adds no gradient.
        adv_weight: weight of the adversarial term added to the clean loss (FGM, PGD).
        generator: random start of δ (PGD, FreeLB with `init_scale > 0`).
        same_objectives: the two objectives are the same function (e.g. `adv_objective="both"`), so the clean pass's
            gradient w.r.t. the embeddings is also the attack's. Otherwise FGM and PGD take the adversarial
            objective's gradient at δ = 0 from the clean pass's graph: one extra backward to the embeddings only (no
            weight gradients), about a third of a pass.
        keep_in_step: a skipped step still runs the synchronising zero-weighted backward (several processes, which
            wait for its all-reduce). With one process it is left out, so that a NaN inside the forward cannot reach
            the gradients that earlier micro-batches accumulated.
        grad_scale: the attack's own input gradients (FGM's and PGD's `torch.autograd.grad` calls, which do not go
            through `backward`) are taken of `grad_scale * loss`. Pass the AMP loss scale under fp16, so that small
            gradients do not underflow to zero in half precision as they would unscaled; the step direction (g/‖g‖ or
            sign g) does not depend on it. FreeLB's gradients come from `backward`, which scales them already.

    Passes (forward + backward) per call: FGM 2, PGD-K K + 1, FreeLB-K K (plus that input-gradient backward).
    """
    zero = torch.zeros(shape, dtype=torch.float32, device=device)
    s = settings

    def train_on(logits: torch.Tensor, parts: Any, weight: float, last: bool) -> bool:
        """Back-propagate `weight * parts.loss`; when it is not finite, report it instead and return False. The
        synchronising (`last`) pass then back-propagates a zero-weighted loss on the same logits, so that every
        process still all-reduces once (its gradients are zeros, unless a NaN inside the forward reaches them,
        which the trainer cleans up)."""
        if torch.isfinite(parts.loss):
            backward(weight * parts.loss)
            return True
        on_nonfinite()
        discard()
        if last and keep_in_step:
            backward(zero_weighted_loss(logits))
        return False

    def skip() -> AdversarialStep:
        """The step ends at a non-finite pass; that pass did not synchronise, so a zero-weighted one does."""
        discard()
        if keep_in_step:
            with sync(True):
                logits = forward(zero)
                backward(zero_weighted_loss(logits))
        return _skipped_step(zero)

    if s.method == "freelb":
        # Zhu et al. (2020): K ascent steps; each pass trains the student on loss/K, so the K gradients add up.
        delta = init_delta(zero, mask, init_scale=s.init_scale, norm=s.norm, generator=generator)
        total, clean = zero.new_zeros(()), None
        for k in range(s.steps):
            last = k == s.steps - 1
            delta = delta.detach().requires_grad_(True)
            with sync(last):
                logits = forward(delta)
                parts = adversarial_objective(logits)
                if not train_on(logits, parts, 1.0 / s.steps, last):
                    return _skipped_step(zero) if last else skip()
            clean = parts if clean is None else clean
            total += parts.loss.detach() / s.steps
            if not last:
                delta = project(ascent_step(delta.detach(), delta.grad, mask, step_size=s.step_size, norm=s.norm),
                                mask, epsilon=s.epsilon, norm=s.norm)
        return AdversarialStep(total, clean, parts, delta_norm(delta.detach(), s.norm))

    # FGM and PGD: a clean pass trains the student and gives the first gradient w.r.t. the embeddings: of the
    # adversarial objective, which the clean one equals only when `same_objectives`.
    start = zero.clone().requires_grad_(True)
    with sync(False):
        logits = forward(start)
        clean = clean_objective(logits)
        if not same_objectives:
            (grad,) = torch.autograd.grad(grad_scale * adversarial_objective(logits).loss, start, retain_graph=True)
        if not train_on(logits, clean, 1.0, last=False):
            return skip()
    if same_objectives:
        grad = start.grad
    if s.method == "fgm":
        delta = fgm_delta(grad, mask, epsilon=s.epsilon, norm=s.norm)
    else:
        # Madry et al. (2018): random start, K ascent steps projected to the ε-ball; the clean pass gave the first
        # gradient, K - 1 attack-only passes give the others, and a final pass trains on the result.
        delta = init_delta(zero, mask, init_scale=s.init_scale, norm=s.norm, generator=generator)
        for k in range(s.steps):
            if k > 0:
                delta = delta.detach().requires_grad_(True)
                with sync(False):
                    loss = adversarial_objective(forward(delta)).loss
                    (grad,) = torch.autograd.grad(grad_scale * loss, delta)
            delta = project(ascent_step(delta.detach(), grad, mask, step_size=s.step_size, norm=s.norm),
                            mask, epsilon=s.epsilon, norm=s.norm)
    with sync(True):
        logits = forward(delta.detach())
        adversarial = adversarial_objective(logits)
        if not train_on(logits, adversarial, adv_weight, last=True):
            return _skipped_step(zero)
    total = clean.loss.detach() + adv_weight * adversarial.loss.detach()
    return AdversarialStep(total, clean, adversarial, delta_norm(delta, s.norm))


def _skipped_step(zero: torch.Tensor) -> AdversarialStep:
    return AdversarialStep(zero.new_zeros(()), None, None, zero.new_zeros(()), skipped=True)
