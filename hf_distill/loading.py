"""Loading teachers, students and tokenizers by path or Hub id, with errors that suggest the local alternative.

A wrong Hub id, no network, offline mode or a missing token all end in an `OSError` deep inside `from_pretrained`;
here they become one message that says what was tried and what to do instead.
"""

from __future__ import annotations

import logging
import os

from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedModel,
)

from .checks import LOADED_FROM, has_no_vocabulary
from .data import add_prefix_space, keeps_word_starts

logger = logging.getLogger(__name__)

AUTO_CLASSES = {
    "token_classification": AutoModelForTokenClassification,
    "sequence_classification": AutoModelForSequenceClassification,
}


def _looks_local(name_or_path: str | os.PathLike) -> bool:
    if isinstance(name_or_path, os.PathLike):  # a pathlib.Path is a local path whatever it spells
        return True
    return os.path.isabs(name_or_path) or name_or_path.startswith((".", "~")) or os.sep + os.sep in name_or_path


def _offline_mode() -> str | None:
    """The variable that turns huggingface_hub's offline mode on (`HF_HUB_OFFLINE=1`, or `TRANSFORMERS_OFFLINE`), read
    as huggingface_hub reads it (1, ON, YES or TRUE, in any case), or None. Read now, not at import: a script may set
    it after importing the libraries."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = os.environ.get(name)
        if value:  # the first one set decides, as `HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE` does
            return f"{name}={value}" if value.strip().upper() in ("1", "ON", "YES", "TRUE") else None
    return None


def _explain(name_or_path: str, what: str, err: Exception) -> str:
    offline = _offline_mode()
    hint = (
        f"Offline mode is on ({offline}), so only local directories and cached models can be loaded. "
        if offline else
        "If it is a Hub id, check its spelling and your network; for a private or gated model log in first "
        "(`hf auth login`, or pass a token). "
    )
    return (
        f"Could not load the {what} {name_or_path!r}: {type(err).__name__}: {err}\n{hint}"
        "To work without the Hub, pass a local directory that holds a checkpoint saved with `save_pretrained` "
        "(config.json, weights and tokenizer files), e.g. one written by recipes/finetune_teacher.py."
    )


def _check_local(name_or_path: str | os.PathLike, what: str) -> str:
    """`name_or_path` as a str, once a local path is known to exist."""
    local = _looks_local(name_or_path)
    name_or_path = os.fspath(name_or_path)
    if local and not os.path.isdir(os.path.expanduser(name_or_path)):
        raise FileNotFoundError(
            f"The {what} directory {name_or_path!r} does not exist. Pass the directory where the model was saved "
            "(`save_pretrained`), or a Hub id such as 'bert-base-cased'."
        )
    return name_or_path


def load_model(
    name_or_path: str | os.PathLike, task: str, *, role: str = "teacher", require_all_weights: bool = False, **kwargs
) -> PreTrainedModel:
    """`AutoModelFor<Task>.from_pretrained(name_or_path, **kwargs)` with clear errors. `role` names it in messages.

    With `require_all_weights` (a teacher), a checkpoint that lacks some of the model's weights is refused: Transformers
    would initialise them at random (a base model's classification head, typically) and only log it, and a teacher
    with a random head teaches noise.
    """
    name_or_path = _check_local(name_or_path, role)
    auto = AUTO_CLASSES[task]
    if not require_all_weights:
        # A student or a model to fine-tune may come with a head for another label set (a 2-class SST-2 model for a
        # 3-class task): that head is re-initialised and trained, as Trainer users expect, and said below.
        kwargs.setdefault("ignore_mismatched_sizes", True)
    try:
        model, info = auto.from_pretrained(os.path.expanduser(name_or_path), output_loading_info=True, **kwargs)
    except (OSError, ValueError) as err:
        raise ValueError(_explain(name_or_path, f"{role} ({auto.__name__})", err)) from err
    missing = sorted(info.get("missing_keys") or ())
    mismatched = [entry[0] if isinstance(entry, tuple) else entry for entry in info.get("mismatched_keys") or ()]
    if mismatched:
        logger.warning(
            "The %s %r has weights of another shape for %s (a head for another number of labels?): they are "
            "initialised anew and trained.", role, name_or_path, ", ".join(sorted(mismatched)[:4])
        )
    head = _other_head(model, task)
    if require_all_weights and head is not None:
        raise ValueError(
            f"The {role} {name_or_path!r} was saved as a {head} ({', '.join(model.config.architectures)}), not a "
            f"{task.replace('_', ' ')} model: its classifier scores whole sentences, not tokens, or the reverse. Pass "
            f"a checkpoint fine-tuned for {task.replace('_', ' ')}."
        )
    if require_all_weights and missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise ValueError(
            f"The {role} {name_or_path!r} is not a fine-tuned {task.replace('_', ' ')} model: its checkpoint has no "
            f"{shown}, so these weights would be random and the {role} would teach noise. Pass a checkpoint "
            "fine-tuned on the task (recipes/finetune_teacher.py makes one from a base model such as "
            "'bert-base-cased')."
        )
    folder = os.path.expanduser(name_or_path)
    if os.path.isdir(folder):
        setattr(model, LOADED_FROM, os.path.realpath(folder))
    return model


def _other_head(model: PreTrainedModel, task: str) -> str | None:
    """The task of the head the checkpoint was saved with (`config.architectures`), when it is not `task`: the two
    classification heads share weight names, so such a checkpoint loads without a missing weight."""
    for architecture in getattr(model.config, "architectures", None) or ():
        for other, marker in (("sequence classification", "ForSequenceClassification"),
                              ("token classification", "ForTokenClassification")):
            if marker in architecture and other != task.replace("_", " "):
                return other
    return None


def load_tokenizer(name_or_path: str | os.PathLike, *, pre_split_words: bool = False, **kwargs):
    """`AutoTokenizer.from_pretrained(name_or_path, **kwargs)` with clear errors, including for a directory that holds
    a model but no tokenizer files (from which Transformers builds a tokenizer that knows only its special tokens).

    With `pre_split_words` (token classification), a byte-level BPE tokenizer (RoBERTa, GPT-2, ModernBERT) is made
    to read word lists as running text: loaded again with `add_prefix_space=True`, and switched in place
    ([`add_prefix_space`]) where it ignores that argument. It is saved that way with the model, so that the student
    reads words the same way."""
    if pre_split_words:
        tokenizer = load_tokenizer(name_or_path, **kwargs)
        if keeps_word_starts(tokenizer):
            return tokenizer
        return add_prefix_space(load_tokenizer(name_or_path, **{**kwargs, "add_prefix_space": True}))
    name_or_path = _check_local(name_or_path, "tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(os.path.expanduser(name_or_path), **kwargs)
    except (OSError, ValueError) as err:
        raise ValueError(_explain(name_or_path, "tokenizer", err)) from err
    if has_no_vocabulary(tokenizer):
        raise ValueError(
            f"{name_or_path!r} holds no tokenizer files (no tokenizer.json, tokenizer_config.json or vocabulary), so "
            f"the tokenizer loaded from it knows only its {len(tokenizer)} special tokens. Pass the tokenizer the "
            "model was trained with (the recipes take --tokenizer_name_or_path), or save it into the directory with "
            f"`AutoTokenizer.from_pretrained(<base model>).save_pretrained({name_or_path!r})`."
        )
    return tokenizer
