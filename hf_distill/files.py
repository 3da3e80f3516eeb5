"""Writing files so that an interruption never leaves one half-written: write to a temporary file, then rename.

`os.replace` within one directory is atomic on POSIX and Windows, so a reader sees the old file or the new one.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from typing import Any

CHECKPOINT_MARKER = "hf_distill_checkpoint.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same directory."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Created like any file (mode 0o666 less the umask), not 0o600 as `tempfile.mkstemp` would: the model card, the
    # checkpoint marker and a cache's metadata must stay readable by whoever may read the folder.
    tmp = os.path.join(directory, f".tmp-{os.path.basename(path)}-{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def move_into(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Move every entry of the folder `source` into `destination` (created if needed), replacing what is there.

    Each file is moved with `os.replace`, so `destination` holds, for every name, either the old file or the complete
    new one.
    """
    os.makedirs(destination, exist_ok=True)
    for name in sorted(os.listdir(source)):
        target = os.path.join(destination, name)
        if os.path.isdir(os.path.join(source, name)):
            if os.path.isdir(target):
                move_into(os.path.join(source, name), target)
                continue
        os.replace(os.path.join(source, name), target)


_WEIGHT_FILES = re.compile(
    r"^(model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json|pytorch_model(-\d+-of-\d+)?\.bin|"
    r"pytorch_model\.bin\.index\.json|adapter_model\.(safetensors|bin)|adapter_config\.json)$"
)


def remove_stale_weights(folder: str | os.PathLike, kept: set[str]) -> list[str]:
    """Delete the model-weight files of `folder` (full weights, shards and their index, a PEFT adapter) that a new save
    did not write (`kept`): a full model saved over an adapter, or fewer shards over more, would otherwise leave files
    that `from_pretrained` reads instead of, or with, the new ones. Returns the names deleted."""
    stale = [name for name in sorted(os.listdir(folder)) if _WEIGHT_FILES.match(name) and name not in kept]
    for name in stale:
        os.remove(os.path.join(folder, name))
    return stale


def is_complete_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether a checkpoint folder was finished: the marker is written last, after every other file."""
    return os.path.isfile(os.path.join(folder, CHECKPOINT_MARKER))


def last_complete_checkpoint(output_dir: str | os.PathLike) -> tuple[str | None, list[str]]:
    """`(last complete checkpoint or None, incomplete checkpoints newer than it)` in `output_dir`.

    Where no checkpoint carries the marker, the folder was written by the stock `Trainer`: its checkpoints count as
    complete once they hold `trainer_state.json` (written after the model, optimizer and RNG states), as an explicit
    `resume_from_checkpoint=<path>` accepts them."""
    if not os.path.isdir(output_dir):
        return None, []
    steps = sorted(
        (int(m.group(1)), name) for name in os.listdir(output_dir)
        if (m := _CHECKPOINT.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    )
    folders = [os.path.join(output_dir, name) for _, name in steps]
    marked = any(is_complete_checkpoint(folder) for folder in folders)
    incomplete = []
    for folder in reversed(folders):
        stock = not marked and os.path.isfile(os.path.join(folder, "trainer_state.json"))
        if is_complete_checkpoint(folder) or stock:
            return folder, incomplete
        incomplete.append(folder)
    return None, incomplete


def checkpoint_to_resume(output_dir: str | os.PathLike) -> tuple[str, list[str]]:
    """`resume_from_checkpoint=True`: `(the last complete checkpoint in output_dir, the incomplete ones newer than it,
    which are skipped)`, or an error saying that there is none."""
    folder, incomplete = last_complete_checkpoint(output_dir)
    if folder is None:
        raise ValueError(
            f"No complete checkpoint to resume from in {str(output_dir)!r}"
            + (f" ({len(incomplete)} incomplete)" if incomplete else "")
            + ". Start without `resume_from_checkpoint`, or point it at a checkpoint folder."
        )
    return folder, incomplete
