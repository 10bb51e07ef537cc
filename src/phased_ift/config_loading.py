"""Turning plain dicts and dotted `key=value` overrides into checked dataclasses (the machinery of `config`).

Owns: type coercion with errors naming the file and dotted key, unknown-key suggestions (difflib), renamed keys
(`RENAMED`: the old key's error names the new one), registry-checked fields (`_f(..., registry=KIND)`, against the
names of `config_choices`), and override parsing (values read as YAML). The schema (the sections and their help)
lives in `phased_ift.config`; apart from `RENAMED`, nothing here knows a section by name.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any

import yaml

from phased_ift.config_choices import (ARM_CHOICES, FORMAT_CHOICES, GENERATE_BACKENDS, PHASE_METHODS, SCORERS,
                                      arm_choice)
from phased_ift.errors import PhasedIFTError

# kind -> the names of `config_choices` that a field declared with `registry=KIND` takes; the registries (design.ARMS,
# scoring.SCORERS, phases.METHODS, generate.BACKENDS, data.FORMAT_NAMES) register against the same names.
_REGISTRIES = {"arm": ARM_CHOICES, "scorer": SCORERS, "phase method": PHASE_METHODS,
               "generate backend": GENERATE_BACKENDS, "data format": FORMAT_CHOICES}


def registry_names(kind: str) -> list[str]:
    """The names of one kind of choice (`config_choices`): "arm", "scorer", "phase method", "generate backend",
    "data format". A field declares its kind with `_f(..., registry=KIND)` and `load_config` checks it
    (`_check_registry`)."""
    if kind not in _REGISTRIES:
        raise ValueError(f"unknown registry kind {kind!r}")
    return list(_REGISTRIES[kind])


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise PhasedIFTError(f"{where}: `{key}` must be a mapping (section {_type_name(tp)}), got {value!r}.")
        return _build(tp, value, key, where)
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise PhasedIFTError(f"{where}: `{key}` must be a list, got {value!r}; write e.g. {key}=[a,b].")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise PhasedIFTError(f"{where}: `{key}` must be a mapping, got {value!r}.")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise PhasedIFTError(f"{where}: `{key}` must be true or false, got {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PhasedIFTError(f"{where}: `{key}` must be an integer, got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PhasedIFTError(f"{where}: `{key}` must be a number, got {value!r}.")
        return float(value)
    if tp is str:
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise PhasedIFTError(f"{where}: `{key}` must be a string, got {value!r}.")
        return str(value)
    return value


# Keys a config no longer has -> the key that replaced them (a clear error instead of "unknown key").
RENAMED = {
    "judge.judge": "judge",  # the judge's endpoint keys (base_url, model, ...) sit directly under judge
    "judge.template": "pairwise.template",
    "judge.pairs": "pairwise.pairs",
    "judge.test_sets": "pairwise.test_sets",
    "judge.seqeval_following_template": "evaluation.seqeval_following_template",
    "judge.seqeval_quality_template": "evaluation.seqeval_quality_template",
}


def _renamed(key: str, where: str) -> PhasedIFTError:
    new = RENAMED[key]
    example = f" (e.g. `{key}.base_url` is now `{new}.base_url`)" if key == "judge.judge" else ""
    return PhasedIFTError(f"{where}: `{key}` was renamed `{new}`{example}; use the new key (`phased-ift config` "
                          "lists every key).")


def _build(cls: type, raw: dict, prefix: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in raw.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields and key in RENAMED:
            raise _renamed(key, where)
        if k not in fields:
            close = difflib.get_close_matches(str(k), list(fields), n=1)
            hint = f" Did you mean `{(prefix + '.') if prefix else ''}{close[0]}`?" if close else ""
            raise PhasedIFTError(
                f"{where}: unknown key `{key}`.{hint} Known keys here: {', '.join(sorted(fields))}."
            )
        kwargs[k] = _coerce(v, hints[k], key, where)
        _check_registry(fields[k], kwargs[k], key, where)
    try:
        return cls(**kwargs)
    except PhasedIFTError as e:
        raise PhasedIFTError(f"{where}: {e}".replace("config: ", "")) from None


def _check_registry(f: dataclasses.Field, value: Any, key: str, where: str) -> None:
    """A field declared with `registry=KIND` takes only names registered for KIND (each element of a list)."""
    kind = f.metadata.get("registry")
    if kind is None:
        return
    names = registry_names(kind)
    items = enumerate(value) if isinstance(value, list) else [(None, value)]
    for i, v in items:
        # an arm family's members (order-2-1-3 of `permutations`) are named by the family, not declared
        if v not in names and not (kind == "arm" and isinstance(v, str) and arm_choice(v) is not None):
            at = key if i is None else f"{key}[{i}]"
            raise PhasedIFTError(f"{where}: {at} = {v!r} is not one of {names}; set it to one of those.")


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise PhasedIFTError(f"override {item!r} is not key=value; write e.g. train.epochs=2.")
    key, _, text = item.partition("=")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key.strip().split("."), value


def apply_overrides(raw: dict, overrides: typing.Sequence[str]) -> dict:
    """Apply dotted `key=value` overrides (values parsed as YAML) to a raw config dict, in place.

    `data.train.0.limit=100` indexes into lists. Returns `raw`.
    """
    for item in overrides:
        path, value = _parse_override(item)
        set_dotted(raw, path, value, f"override {item!r}")
    return raw


def set_dotted(raw: dict, path: typing.Sequence[str], value: Any, label: str) -> None:
    """raw[a][b][c] = value for path [a, b, c], in place, creating sections on the way; a part under a list is
    its index (`data.train.0.limit`).

    Raises:
        PhasedIFTError: "<label>: ..." when a part is not a valid list index or names a value, not a section.
    """
    node: Any = raw
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            try:
                node = node[int(part)]
            except (ValueError, IndexError):
                raise PhasedIFTError(f"{label}: `{part}` is not a valid list index.") from None
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise PhasedIFTError(f"{label}: `{'.'.join(path[: i + 1])}` is not a section.")
    last = path[-1]
    if isinstance(node, list):
        try:
            node[int(last)] = value
        except (ValueError, IndexError):
            raise PhasedIFTError(f"{label}: `{last}` is not a valid list index.") from None
    else:
        node[last] = value
