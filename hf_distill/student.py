"""Create a shallower student from a teacher's own weights (DistilBERT-style initialisation).

The student has the teacher's class and configuration except for its depth. It starts from the teacher's
embeddings, a chosen subset of its encoder layers (teacher layer ``layers[j]`` becomes student layer ``j``), its
pooler and its task head, so distillation starts from a model that already represents the task reasonably.

References:
    - Sanh, Debut, Chaumond & Wolf (2019), "DistilBERT, a distilled version of BERT: smaller, faster, cheaper and
      lighter", arXiv:1910.01108, section 3: the student is initialised from the teacher by taking one layer out
      of two.
    - Sun, Cheng, Gan & Liu (2019), "Patient Knowledge Distillation for BERT Model Compression" (PKD-Skip/Last),
      which compares choices of teacher layers.
"""

from __future__ import annotations

import copy
import operator
import re
from collections.abc import Iterable, Sequence

import torch
from transformers import PreTrainedModel
from transformers.utils import logging

from .checks import CUT_FROM, model_name

logger = logging.get_logger(__name__)

# `<base>.encoder.layer.<i>.` (BERT, RoBERTa, XLM-R, ELECTRA, DeBERTa, ...) and `<base>.transformer.layer.<i>.`
# (DistilBERT). The prefix is captured so that only one layer stack is remapped.
_LAYER_KEY = re.compile(r"^(?P<stack>(?:.+\.)?(?:encoder|transformer)\.layer)\.(?P<index>\d+)\.(?P<rest>.+)$")
_SUPPORTED = (
    "BERT-family encoders with layers under `<base>.encoder.layer.<i>.` and `config.num_hidden_layers` (BERT, "
    "RoBERTa, XLM-RoBERTa, ELECTRA, DeBERTa, ...), and DistilBERT (`distilbert.transformer.layer.<i>.`, "
    "`config.n_layers`)"
)


def _layer_count_attribute(teacher: PreTrainedModel) -> str:
    """Name of the config attribute that holds the depth (``n_layers`` for DistilBERT, else ``num_hidden_layers``)."""
    config = teacher.config
    attribute = config.attribute_map.get("num_hidden_layers", "num_hidden_layers")
    if not isinstance(getattr(config, attribute, None), int):
        raise ValueError(
            f"Cannot create a student from {type(teacher).__name__}: its config has no integer `{attribute}`. "
            f"create_student supports {_SUPPORTED}."
        )
    return attribute


def _layer_stack(teacher: PreTrainedModel, state_keys: Sequence[str], num_layers: int) -> str:
    """Find the state-dict prefix of the teacher's encoder layers, e.g. ``"bert.encoder.layer"``."""
    stacks: dict[str, set[int]] = {}
    for key in state_keys:
        match = _LAYER_KEY.match(key)
        if match:
            stacks.setdefault(match["stack"], set()).add(int(match["index"]))
    name = type(teacher).__name__
    if len(stacks) != 1:
        found = "no encoder layers" if not stacks else f"several layer stacks {sorted(stacks)}"
        raise ValueError(
            f"Cannot create a student from {name}: found {found} in its state dict. create_student supports "
            f"{_SUPPORTED}. For another architecture, build the student from a config and train it from scratch."
        )
    ((stack, indices),) = stacks.items()
    if indices != set(range(num_layers)):
        raise ValueError(
            f"Cannot create a student from {name}: its config says {num_layers} layers but the state dict has layers "
            f"{sorted(indices)} under {stack!r}. create_student supports {_SUPPORTED}."
        )
    return stack


def _validate_layers(layers: Sequence[int], num_layers: int) -> list[int]:
    """Check that ``layers`` is a non-empty, strictly increasing list of indices in ``[0, num_layers)``."""
    if isinstance(layers, str | bytes) or not isinstance(layers, Iterable):
        raise ValueError(
            f"`layers` is a list of the teacher's layer indices, e.g. [0, 2]; got {layers!r}. The teacher has "
            f"{num_layers} layers, [0, {num_layers - 1}]."
        )
    layers = list(layers)
    for layer in layers:
        try:
            operator.index(layer)
        except TypeError:
            raise ValueError(
                f"`layers` holds {layer!r}, which is not a layer index (an int in [0, {num_layers}))."
            ) from None
    layers = [operator.index(layer) for layer in layers]
    if not layers:
        raise ValueError(f"`layers` is empty; choose at least one teacher layer in [0, {num_layers}), e.g. [0].")
    for layer in layers:
        if not 0 <= layer < num_layers:
            raise ValueError(
                f"`layers` contains {layer}, but the teacher has {num_layers} layers: valid indices are "
                f"[0, {num_layers - 1}]."
            )
    duplicates = sorted({layer for layer in layers if layers.count(layer) > 1})
    if duplicates:
        raise ValueError(f"`layers` repeats {duplicates}; each teacher layer can be copied only once.")
    if layers != sorted(layers):
        raise ValueError(
            f"`layers` must be strictly increasing so that the student keeps the teacher's layer order, got {layers}; "
            f"did you mean {sorted(layers)}?"
        )
    return layers


# Config attributes that hold one entry per layer (Longformer's attention windows, per-layer attention types).
_PER_LAYER_ATTRIBUTES = ("attention_window", "layer_types")


def create_student(teacher: PreTrainedModel, layers: Sequence[int], **config_overrides) -> PreTrainedModel:
    """Build a student of the teacher's class with ``len(layers)`` layers, initialised from the teacher's weights.

    Every student weight is copied from the teacher by state-dict key: the embeddings, the pooler and the task head
    under the same keys, and encoder layer ``j`` from teacher layer ``layers[j]``. DistilBERT took every other layer
    (``layers=[0, 2, 4, 6, 8, 10]`` from a 12-layer BERT).

    The teacher is not modified and shares no tensor with the student. The student has a deep copy of the teacher's
    config (so ``id2label``/``label2id`` and ``num_labels`` carry over) with the depth set to ``len(layers)`` and
    per-layer lists (Longformer's ``attention_window``, ``layer_types``) cut to the kept layers' entries; it is
    on the teacher's device and dtype, and in the mode a freshly constructed model has (training mode). A student cut
    from a bf16/fp16 teacher is bf16/fp16: call ``student.float()`` before training it (mixed precision comes from
    ``bf16=True``), unless you mean to train in pure half precision, where an optimizer step drops every update
    smaller than the weights' resolution.

    Args:
        teacher: A model of a supported family (see below), e.g. ``BertForTokenClassification`` with 12 layers.
        layers: Teacher layer indices to keep, strictly increasing, each in ``[0, teacher_layers)``.
        **config_overrides: config attributes to change in the student, e.g. ``attention_probs_dropout_prob=0.0``
            (for attention distillation). Each must already exist in the teacher's config; shapes cannot change.

    Returns:
        The student model, e.g. a 6-layer ``BertForTokenClassification``. Its config records the kept layers
        (``cut_from_teacher_layers``) and the teacher's depth (``cut_from_teacher_depth``), from which attention
        distillation takes its default layer map.

    Raises:
        ValueError: ``layers`` is empty, unsorted, repeated or out of range; an override changes a weight's shape
            (e.g. ``hidden_size``); or the architecture is not one of the
            supported families: BERT-style encoders with layers under ``<base>.encoder.layer.<i>.`` and
            ``config.num_hidden_layers`` (BERT, RoBERTa, XLM-R, ELECTRA, DeBERTa, ...) and DistilBERT
            (``transformer.layer.<i>.``, ``config.n_layers``).
    """
    teacher = getattr(teacher, "_orig_mod", teacher)  # a torch.compile'd teacher: cut the model it wraps
    if hasattr(teacher, "get_base_model") and hasattr(teacher, "peft_config"):
        raise ValueError(
            f"The teacher is a PEFT model ({type(teacher).__name__}), whose layers hold adapters apart from their "
            "weights. Merge them first and cut the merged model: `create_student(teacher.merge_and_unload(), layers)` "
            "(merge_and_unload changes the PEFT model it is called on; call it on a copy to keep the adapters)."
        )
    if getattr(teacher, "_hf_peft_config_loaded", False):
        raise ValueError(
            f"The teacher ({type(teacher).__name__}) has PEFT adapters loaded into its layers (a folder with "
            "adapter_config.json, or `load_adapter`), which hold them apart from their weights. Cut a merged copy: "
            "`create_student(AutoPeftModelFor<Task>.from_pretrained(path).merge_and_unload(), layers)` (from peft), or "
            "save that merged model and pass its folder."
        )
    attribute = _layer_count_attribute(teacher)
    num_layers = getattr(teacher.config, attribute)
    depth_names = {attribute, "num_hidden_layers", *_PER_LAYER_ATTRIBUTES} & set(config_overrides)
    if depth_names:
        raise ValueError(
            f"{', '.join(f'`{n}`' for n in sorted(depth_names))} cannot be overridden: the student's depth and its "
            "per-layer settings follow `layers` (the teacher layers it keeps). Pass the layers you want instead, e.g. "
            f"`layers={list(range(0, num_layers, 2))}`."
        )
    teacher_state = teacher.state_dict()
    stack = _layer_stack(teacher, list(teacher_state), num_layers)
    layers = _validate_layers(layers, num_layers)

    config = copy.deepcopy(teacher.config)
    # A new model, not the teacher's checkpoint: PEFT would record the teacher as the base of an adapter on it.
    config._name_or_path = ""
    setattr(config, attribute, len(layers))
    for name in _PER_LAYER_ATTRIBUTES:  # one entry per layer: keep the kept layers' own entries
        value = getattr(config, name, None)
        if isinstance(value, (list, tuple)) and len(value) == num_layers:
            setattr(config, name, type(value)(value[i] for i in layers))
    # Where each student layer came from, for attention distillation's default layer map (`features.cut_layer_map`).
    config.cut_from_teacher_layers = list(layers)
    config.cut_from_teacher_depth = num_layers
    for name, value in config_overrides.items():
        if not hasattr(config, name):
            raise ValueError(f"`{name}` is not an attribute of {type(config).__name__}; it cannot be overridden.")
        setattr(config, name, value)
    student = type(teacher)(config)
    student.to(device=teacher.device, dtype=teacher.dtype)

    student_state = {}
    used = set()
    shapes = {key: value.shape for key, value in student.state_dict().items()}
    for key in shapes:
        match = _LAYER_KEY.match(key)
        if match and match["stack"] == stack:
            source = f"{stack}.{layers[int(match['index'])]}.{match['rest']}"
        else:
            source = key
        if source not in teacher_state:
            raise ValueError(
                f"Cannot create a student from {type(teacher).__name__}: student weight {key!r} has no teacher weight "
                f"{source!r}. create_student supports {_SUPPORTED}."
            )
        if shapes[key] != teacher_state[source].shape and not config_overrides:
            raise ValueError(
                f"Cannot create a student from {type(teacher).__name__}: student weight {key!r} has the shape "
                f"{tuple(shapes[key])} but its teacher weight {tuple(teacher_state[source].shape)}, a weight whose "
                f"shape depends on the number of layers. create_student supports {_SUPPORTED}."
            )
        if shapes[key] != teacher_state[source].shape:
            changed = ", ".join(f"`{n}={v!r}`" for n, v in config_overrides.items())
            raise ValueError(
                f"Student weight {key!r} has the shape {tuple(shapes[key])} but its teacher weight "
                f"{source!r} {tuple(teacher_state[source].shape)}: {changed} changes the shape of copied weights, "
                "which create_student cannot do (it copies the teacher's weights). Override only settings that keep "
                "the shapes (dropout, ...); for a narrower student, build it from its own config and distil with "
                "`hidden_distill_weight` (a projection bridges the hidden sizes)."
            )
        student_state[key] = teacher_state[source]
        used.add(source)

    with torch.no_grad():
        student.load_state_dict(student_state, strict=True)

    setattr(student, CUT_FROM, model_name(teacher, default=""))
    unused = [key for key in teacher_state if key not in used and not key.startswith(f"{stack}.")]
    if unused:
        logger.warning("These teacher weights have no place in the student and were not copied: %s", unused)
    logger.info(
        "Created a %d-layer %s from teacher layers %s (of %d).",
        len(layers),
        type(student).__name__,
        layers,
        num_layers,
    )
    return student
