"""Feature distillation: hidden states and attention maps of the teacher as extra targets for the student.

Pure loss functions plus the small learned projection used when the student's hidden size differs from the
teacher's. The trainer decides which layers, which weights and when; nothing here holds training state.

Layers are numbered as in `output_hidden_states`: 0 is the embedding output, i (1..N) the output of layer i. For
attention maps, layer i (1..N) is the i-th layer's attention distribution.

References:
    - Sun et al. (2019), "Patient Knowledge Distillation for BERT Model Compression" (matching intermediate layers).
    - Jiao et al. (2020), "TinyBERT" (uniform layer map m -> m·N/M, MSE on hidden states through a learned
      projection, attention matching).
    - Wang et al. (2020), "MiniLM" (KL between the teacher's and the student's self-attention distributions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

HIDDEN_LOSSES = ("mse", "cosine")


def uniform_layer_map(student_layers: int, teacher_layers: int) -> dict[int, int]:
    """Student layer s -> teacher layer round(s · T / S), for s = 1..S (TinyBERT's uniform strategy).

    A 3-layer student of a 6-layer teacher matches layers 1, 2, 3 to 2, 4, 6.
    """
    if student_layers < 1 or teacher_layers < 1:
        raise ValueError(f"Layer counts must be >= 1, got student {student_layers} and teacher {teacher_layers}.")
    return {s: max(1, round(s * teacher_layers / student_layers)) for s in range(1, student_layers + 1)}


def cut_layer_map(student_config: Any, teacher_layers: int) -> dict[int, int] | None:
    """Student layer s -> the teacher layer it was copied from (1-based), for a student that `create_student` cut from
    a teacher of `teacher_layers` layers; `None` for any other student.

    Attention patterns belong to their layer's weights: a copied layer starts with its teacher layer's attention,
    and matching it to another layer's (the uniform map) pulls it away from what it was trained to do. A 3-layer
    student cut from layers 0, 2, 4 of a 6-layer teacher matches 1, 2, 3 to 1, 3, 5.
    """
    layers = getattr(student_config, "cut_from_teacher_layers", None)
    depth = getattr(student_config, "cut_from_teacher_depth", None)
    if not layers or depth != teacher_layers or len(layers) != getattr(student_config, "num_hidden_layers", None):
        return None
    return {s: int(t) + 1 for s, t in enumerate(layers, start=1)}


def parse_layer_map(
    spec: str | Mapping[int, int] | None, student_layers: int, teacher_layers: int
) -> dict[int, int]:
    """A layer map from `"1:2,2:4,3:6"`, a dict, or None (uniform), checked against both models' depths."""
    if spec is None or spec == "":
        return uniform_layer_map(student_layers, teacher_layers)
    if isinstance(spec, str):
        layer_map = {}
        for pair in spec.split(","):
            parts = pair.split(":")
            if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
                raise ValueError(
                    f"`feature_layer_map` {spec!r} is not a list of `student:teacher` layer pairs; write e.g. "
                    f"'1:2,2:4,3:6' (0 is the embedding output, i the output of layer i)."
                )
            if int(parts[0]) in layer_map:
                raise ValueError(
                    f"`feature_layer_map` {spec!r} pairs student layer {int(parts[0])} twice; each student layer is "
                    "matched to one teacher layer. Keep one pair per student layer."
                )
            layer_map[int(parts[0])] = int(parts[1])
    else:
        layer_map = {int(s): int(t) for s, t in dict(spec).items()}
    if not layer_map:
        raise ValueError("`feature_layer_map` is empty; give at least one `student:teacher` pair or leave it unset.")
    for s, t in layer_map.items():
        if not 0 <= s <= student_layers or not 0 <= t <= teacher_layers:
            raise ValueError(
                f"`feature_layer_map` pairs student layer {s} with teacher layer {t}, but the student has layers "
                f"0..{student_layers} and the teacher 0..{teacher_layers} (0 is the embedding output)."
            )
    return dict(sorted(layer_map.items()))


def _require_pairs(layer_map: Mapping[int, int]) -> None:
    if not layer_map:
        raise ValueError("The layer map is empty: give at least one student layer -> teacher layer pair.")


class FeatureProjector(nn.Module):
    """One linear map per matched student layer, from the student's hidden size to the teacher's.

    The trainer owns it and trains it with the student; it lives in checkpoints, never in the exported student.
    """

    def __init__(self, student_hidden: int, teacher_hidden: int, student_layers: Sequence[int]):
        super().__init__()
        self.maps = nn.ModuleDict({str(s): nn.Linear(student_hidden, teacher_hidden) for s in student_layers})

    def forward(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.maps[str(layer)](hidden)


def hidden_state_loss(
    student_hidden: Sequence[torch.Tensor],
    teacher_hidden: Sequence[torch.Tensor] | Mapping[int, torch.Tensor],
    layer_map: Mapping[int, int],
    mask: torch.Tensor,
    *,
    kind: str = "mse",
    projector: FeatureProjector | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance between matched hidden states, summed over the masked tokens and averaged over the matched layers.

    Args:
        student_hidden: `output_hidden_states` of the student, each (B, L, Hs).
        teacher_hidden: the teacher's, each (B, L, Ht): a tuple, or a dict holding just the matched layers.
        layer_map: student layer -> teacher layer.
        mask: (B, L) bool, the tokens compared (real tokens: the attention mask).
        kind: `"mse"` (mean over the hidden dimension of the squared difference) or `"cosine"` (1 - cosine).
        projector: maps student states to the teacher's size; required when Hs != Ht.

    Returns:
        `(sum, count)`: the per-token distances summed over tokens, and the number of tokens. The loss is
        `sum / count`; a caller that accumulates micro-batches divides the sums by the count over all of them.
    """
    if kind not in HIDDEN_LOSSES:
        raise ValueError(f"Unknown hidden-state loss {kind!r}; expected one of {HIDDEN_LOSSES}.")
    _require_pairs(layer_map)
    mask = mask.bool()
    per_token = 0.0
    for s, t in layer_map.items():
        hs, ht = student_hidden[s][mask].float(), teacher_hidden[t][mask].float()
        if projector is not None:
            hs = projector(s, hs)
        if hs.shape[-1] != ht.shape[-1]:
            raise ValueError(
                f"Student layer {s} has hidden size {hs.shape[-1]} but teacher layer {t} has {ht.shape[-1]}; a "
                "projection is needed (the trainer adds one when the model configs' hidden sizes differ)."
            )
        if kind == "mse":
            per_token = per_token + (hs - ht).pow(2).mean(-1)
        else:
            per_token = per_token + 1.0 - F.cosine_similarity(hs, ht, dim=-1, eps=1e-8)
    per_token = per_token / len(layer_map)
    return per_token.sum(), mask.sum()


def attention_kl(
    student_attentions: Sequence[torch.Tensor],
    teacher_attentions: Sequence[torch.Tensor] | Mapping[int, torch.Tensor],
    layer_map: Mapping[int, int],
    mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(teacher ‖ student) between attention distributions, MiniLM-style.

    For each matched layer, head and real query token, the KL between the two distributions over keys; averaged
    over heads and matched layers, summed over the query tokens in `mask`.

    Args:
        student_attentions: `output_attentions` of the student, each (B, heads, L, L) of probabilities.
        teacher_attentions: the teacher's, same head count (a tuple, or a dict {layer - 1: map} of the matched
            layers).
        layer_map: student layer -> teacher layer, both in 1..N (0, the embeddings, has no attention).
        mask: (B, L) bool, the query tokens compared.

    Returns:
        `(sum, count)` as in `hidden_state_loss`.
    """
    _require_pairs(layer_map)
    mask = mask.bool()
    per_token = 0.0
    for s, t in layer_map.items():
        if s < 1 or t < 1:
            raise ValueError(f"Attention maps exist for layers 1..N, not layer 0 (pair {s}:{t}).")
        ps, pt = student_attentions[s - 1].float(), teacher_attentions[t - 1].float()
        if ps.shape != pt.shape:
            raise ValueError(
                f"Attention maps of student layer {s} {tuple(ps.shape)} and teacher layer {t} {tuple(pt.shape)} "
                "differ; attention distillation needs the same number of heads and the same inputs."
            )
        # (B, H, L, L) -> per query row KL, summed over keys: t·(log t − log s), with 0·log 0 = 0.
        kl = torch.xlogy(pt, pt) - pt * torch.log(ps.clamp_min(1e-12))
        per_token = per_token + kl.sum(-1).mean(1)  # (B, L): mean over heads
    per_token = per_token / len(layer_map)
    return per_token[mask].sum(), mask.sum()


ATTENTION_DROPOUT_FIELDS = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")
"""The config attribute of attention dropout: BERT-style configs call it the first, DistilBERT-style ones the second,
GPT-2-style ones the third."""


def attention_dropout_field(config: Any) -> str | None:
    """The name of `config`'s attention-dropout attribute (see `ATTENTION_DROPOUT_FIELDS`), or None if it has none."""
    return next((name for name in ATTENTION_DROPOUT_FIELDS if hasattr(config, name)), None)
