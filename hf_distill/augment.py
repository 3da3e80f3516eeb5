"""Input augmentation for distillation: masked and randomly replaced tokens, labelled by the teacher.

The teacher sees the same augmented input as the student, so its soft targets describe the new input (TinyBERT's
data augmentation relies on this); with a teacher view (`add_noisy_view`), the teacher reads its clean view instead. Seeded through a `torch.Generator`, so a run and its resume draw the same
tokens.

References:
    - Jiao et al. (2020), "TinyBERT", section 3.3: augmented inputs labelled by the teacher.
    - Devlin et al. (2019), "BERT": [MASK] and random-token corruption.
"""

from __future__ import annotations

import torch


def augment_input_ids(
    input_ids: torch.Tensor,
    candidates: torch.Tensor,
    *,
    mask_prob: float,
    replace_prob: float,
    mask_token_id: int | None,
    vocab_size: int,
    generator: torch.Generator,
    replacement_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """A corrupted copy of `input_ids` (B, L).

    Each position where `candidates` (B, L) is true becomes `mask_token_id` with probability `mask_prob`, or else a
    random token with probability `replace_prob` (drawn from `replacement_ids`, default every id below
    `vocab_size`). Other positions, such as padding and special tokens, are never touched. Draws happen on the CPU
    generator, so results do not depend on the device.
    """
    if mask_prob + replace_prob > 1:
        raise ValueError(f"`mask_prob + replace_prob` must be <= 1, got {mask_prob} + {replace_prob}.")
    if mask_prob > 0 and mask_token_id is None:
        raise ValueError("Token masking needs a tokenizer with a mask token (`tokenizer.mask_token_id` is None).")
    draw = torch.rand(input_ids.shape, generator=generator)
    if replacement_ids is None:
        random_ids = torch.randint(0, vocab_size, input_ids.shape, generator=generator)
    else:
        random_ids = replacement_ids[torch.randint(0, len(replacement_ids), input_ids.shape, generator=generator)]
    cand = candidates.bool().cpu()
    out = input_ids.cpu().clone()
    masked = cand & (draw < mask_prob)
    replaced = cand & (draw >= mask_prob) & (draw < mask_prob + replace_prob)
    if mask_prob > 0:
        out[masked] = mask_token_id
    out[replaced] = random_ids[replaced]
    return out.to(input_ids.device)
