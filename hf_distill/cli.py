"""Command-line parsing for the recipes: a YAML or JSON config file first, command-line flags on top.

    python recipes/distill_ner.py recipes/configs/ner_quick.yaml --num_train_epochs 2

Every key of the config file must be a field of one of the recipe's dataclasses; an unknown key is an error that
names it and the closest known field, instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from transformers import HfArgumentParser


def _read_config(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config file {path!r} does not exist. Pass a .yaml or .json file from recipes/configs/.")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if path.endswith(".json"):
        try:
            config = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"Config file {path!r} is not valid JSON: {err}.") from err
    else:
        import yaml

        try:
            config = yaml.load(text, Loader=_yaml_loader())
        except yaml.YAMLError as err:
            raise ValueError(f"Config file {path!r} is not valid YAML: {err}") from err
    if config is None:
        raise ValueError(f"Config file {path!r} is empty; it should map argument names to values.")
    if not isinstance(config, dict):
        raise ValueError(
            f"Config file {path!r} holds a {type(config).__name__}; it should map argument names to values, "
            "e.g. `num_train_epochs: 3`."
        )
    return config


_YAML12_SCALARS = {
    # YAML 1.2's core schema: what JSON and the command line agree on. PyYAML implements YAML 1.1, where `no` is
    # False (`save_strategy: no` would become the invalid choice 'False'), `1e-6` is a string (it needs a dot),
    # `3:6` is the base-60 integer 186 and `017` is octal.
    "tag:yaml.org,2002:bool": (r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    "tag:yaml.org,2002:int": (r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    "tag:yaml.org,2002:float": (
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
}


def _yaml12_int(loader: Any, node: Any) -> int:
    text = loader.construct_scalar(node)
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text, 10)


def _yaml12_float(loader: Any, node: Any) -> float:
    text = loader.construct_scalar(node).lower()
    return float(text.replace(".inf", "inf").replace(".nan", "nan"))


def _yaml_loader() -> type:
    """PyYAML's safe loader with YAML 1.2 core-schema scalars, so that a config value means what the same flag means
    on the command line: `save_strategy: no` is the string "no", `min_lr: 1e-6` a float, `feature_layer_map: 3:6`
    the layer pair it looks like, `017` the number 17. Booleans are true/false only."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    replaced = set(_YAML12_SCALARS)
    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in replaced]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    for tag, (pattern, first) in _YAML12_SCALARS.items():
        Loader.add_implicit_resolver(tag, re.compile(pattern), list(first))
    Loader.add_constructor("tag:yaml.org,2002:int", _yaml12_int)
    Loader.add_constructor("tag:yaml.org,2002:float", _yaml12_float)
    return Loader


_PAIR_FIELDS = {"feature_layer_map"}
"""Fields spelled `student:teacher` pairs on the command line (`1:2,2:4`), which a config file may also write as a
mapping (`{1: 2, 2: 4}`, as the Python API accepts)."""


def _flag_value(value: Any, key: str | None = None) -> str:
    """A config value as the command line would spell it: a dict as JSON (what `TrainingArguments` parses for
    `lr_scheduler_kwargs` and the like), not Python's repr; a mapping of layer pairs as `1:2,2:4`."""
    if isinstance(value, dict) and key in _PAIR_FIELDS:
        return ",".join(f"{student}:{teacher}" for student, teacher in value.items())
    return json.dumps(value) if isinstance(value, dict) else str(value)


_LIST_AFTER_PARSING = {"report_to", "optim_target_modules"}
"""Fields that `TrainingArguments` takes as a list (`report_to: [tensorboard, trackio]`, `optim_target_modules:
[attn, mlp]`, where a comma-joined string would be read as one pattern) but whose command-line flag takes one value: a list from a config file is set on the parsed arguments instead of going through the flag."""


def _to_flags(config: dict[str, Any], single_valued: set[str]) -> list[str]:
    """Command-line flags for `config`. A field that takes one value accepts a one-item list; an empty list is left
    out (the field keeps its default); a longer list is refused with the spelling that field takes (except for the
    fields of `_LIST_AFTER_PARSING`, which `parse_args` sets itself)."""
    flags = []
    for key, value in config.items():
        if isinstance(value, list) and key in _LIST_AFTER_PARSING:
            continue
        if isinstance(value, list) and not value:  # every field keeps its default (a bare flag would need values)
            continue
        if isinstance(value, list) and key in single_valued:
            if len(value) > 1:
                joined = ",".join(str(v) for v in value)
                raise ValueError(
                    f"`{key}` takes a single value, but the config file gives the list {value}. Write one value; a "
                    f"comma-separated field such as student_layers or feature_layer_map takes one string: "
                    f"`{key}: \"{joined}\"`."
                )
            value = value[0]
        if value is None:
            continue
        flags.append(f"--{key}")
        if isinstance(value, list):
            flags.extend(_flag_value(v) for v in value)
        else:
            flags.append(_flag_value(value, key))
    return flags


def _flag_field(arg: str) -> str | None:
    """The field a command-line flag sets, in each spelling argparse accepts (`--field_name`, `--field-name`,
    `--field_name=value`); None for a value."""
    return arg[2:].split("=", 1)[0].replace("-", "_") if arg.startswith("--") else None


def _is_config_file(arg: str) -> bool:
    return not arg.startswith("-") and arg.endswith((".yaml", ".yml", ".json"))


def _unset_flags(parser: HfArgumentParser, argv: list[str]) -> tuple[list[str], set[str]]:
    """`--field None` (or `null`, or `--field=None`) for a field whose default is None: the flag is dropped and the
    field's name returned, so that the field keeps its default even where the config file sets it (argparse would
    read "None" as a number or a string)."""
    optional = {a.dest for a in parser._actions if a.option_strings and a.default is None}
    kept, unset, i = [], set(), 0
    while i < len(argv):
        name = _flag_field(argv[i])
        inline = argv[i].split("=", 1)[1] if name is not None and "=" in argv[i] else None
        if name in optional and inline in ("None", "null"):
            unset.add(name)
            i += 1
            continue
        if name in optional and inline is None and i + 1 < len(argv) and argv[i + 1] in ("None", "null"):
            unset.add(name)
            i += 2
            continue
        kept.append(argv[i])
        i += 1
    return kept, unset


def _switch_settings(argv: Sequence[str], name: str) -> list[bool]:
    """Every value that the flags `argv` give the boolean field `name` (`--name`, `--name true`, `--name=no`, ...)."""
    from transformers.hf_argparser import string_to_bool

    values = []
    for i, arg in enumerate(argv):
        if _flag_field(arg) != name:
            continue
        if "=" in arg:
            values.append(string_to_bool(arg.split("=", 1)[1]))
        elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            values.append(string_to_bool(argv[i + 1]))
        else:
            values.append(True)
    return values


def _refuse_switches(argv: Sequence[str], fixed: Mapping[str, tuple[bool, str]]) -> None:
    for name, (value, reason) in fixed.items():
        other = [v for v in _switch_settings(argv, name) if v != value]
        if other:
            raise ValueError(f"`--{name} {str(other[0]).lower()}` is not supported here: {reason}")


def parse_args(dataclass_types: Sequence[type], argv: Sequence[str] | None = None, *,
               fixed_switches: Mapping[str, tuple[bool, str]] | None = None) -> tuple[Any, ...]:
    """Parse `argv` (default `sys.argv[1:]`) into instances of `dataclass_types`.

    If the first argument ends in `.yaml`, `.yml` or `.json`, it is read as a config file whose keys are field
    names; the remaining command-line flags override it. `--field None` gives back a field's default of None (e.g.
    `--final_alpha None` when the file sets one).

    `fixed_switches` maps a boolean field that the script does not read (`do_train`, `do_predict`, ...) to the
    behaviour the script has instead, `(value, reason)`: a flag or config key that asks for the other value is an
    error giving the reason, instead of being accepted and ignored.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # No abbreviated flags (`--do_pred` for `--do_predict`): the checks below read flags by their full names.
    parser = HfArgumentParser(list(dataclass_types), allow_abbrev=False)
    config_file = argv.pop(0) if argv and _is_config_file(argv[0]) else None
    # A config file later on (not the value of a flag, such as `--train_file data.json`) would be ignored.
    stray = next((arg for previous, arg in zip(argv, argv[1:], strict=False)
                  if _is_config_file(arg) and not previous.startswith("-")), None)
    if stray is not None:
        raise ValueError(
            f"{stray!r} looks like a config file, but a config file is read only as the first argument: put it before "
            f"the flags (`{os.path.basename(sys.argv[0]) or 'recipe.py'} {stray} --flag value ...`), which then "
            "override it."
        )
    argv, unset = _unset_flags(parser, argv)
    if config_file is not None:
        argv = [config_file, *argv]
    if config_file is not None:
        config = {k: v for k, v in _read_config(argv[0]).items() if k not in unset}
        known = {action.dest for action in parser._actions}
        unknown = [key for key in config if key not in known]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, known, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(
                f"Config file {argv[0]!r} has unknown key(s): {', '.join(hints)}. "
                "Keys must be argument names; run the recipe with --help to list them."
            )
        defaults = {a.dest: a.default for a in parser._actions if a.option_strings}
        nulls = [key for key, value in config.items() if value is None and defaults.get(key) is not None]
        if nulls:
            raise ValueError(
                f"Config file {argv[0]!r} leaves {', '.join(repr(k) for k in nulls)} empty (null), which "
                f"{'this field' if len(nulls) == 1 else 'these fields'} cannot be: write a value, or remove the key to "
                "keep the default (" + ", ".join(f"{k}: {defaults[k]!r}" for k in nulls) + ")."
            )
        single_valued = {a.dest for a in parser._actions if a.nargs is None and a.option_strings}
        given = {_flag_field(arg) for arg in argv[1:]} - {None}
        lists = {k: v for k, v in config.items() if k in _LIST_AFTER_PARSING and isinstance(v, list) and k not in given}
        argv = _to_flags(config, single_valued) + argv[1:]
        _refuse_switches(argv, fixed_switches or {})
        parsed = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
        # Built again with the list, so that the dataclass validates and normalises it as it would a value it was given.
        return tuple(dataclasses.replace(obj, **{k: v for k, v in lists.items() if hasattr(obj, k)})
                     if any(hasattr(obj, k) for k in lists) else obj for obj in parsed)
    _refuse_switches(argv, fixed_switches or {})
    return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
