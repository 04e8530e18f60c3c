"""The one config schema of every training stage: typed dataclasses and one builder.

A stage's settings are a dataclass that derives from :class:`ConfigSchema` (stages 1-2:
:class:`~deepgen.train.config.TrainConfig`; stage 3: :class:`~deepgen.train.grpo.run_config.Stage3Config`, whose
``grpo`` field, a :class:`~deepgen.train.grpo.config.GRPOConfig`, is a *group*: a dataclass-typed field whose keys
sit at the top level of the file).  :func:`build_config` is the only place where a dict of values (a TOML/JSON/YAML
file, ``--set key=value`` overrides, keyword arguments) becomes a config:

* old names (:data:`RENAMED_KEYS`) and old values (:data:`RENAMED_VALUES`) are accepted and mapped to the new
  ones, with one ``DeprecationWarning`` (and one log line) naming the new name;
* unknown keys are rejected with the closest valid name (``did you mean 'max_steps'?``);
* every value is checked and converted to its field's type (:func:`coerce_value`, from the type hints);
* the config's own ``problems()`` (ranges, choices, cross-field rules) are added;
* every problem is reported in ONE :class:`~deepgen.errors.ConfigError` line, joined by ``"; "``.

Why dataclasses and not pydantic v2: the library runs headless (``deepgen train``), where pydantic would be a new
dependency (ComfyUI ships it, the CLI's environment need not); pydantic's lax mode accepts values a TOML config
should not (``1`` for ``true``, ``"3"`` for ``3``) while strict mode refuses ones it should (an integer for a
float in YAML), so either way a hand-written layer stays; its errors are multi-line and worded for developers,
and old names with a deprecation message and cross-field checks need validators of our own anyway.  What pydantic
would replace is :func:`coerce_value`, some 50 lines, now in one place.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from ..errors import ConfigError, one_line

log = logging.getLogger("deepgen.train")

__all__ = [
    "ConfigSchema",
    "RENAMED_KEYS",
    "RENAMED_VALUES",
    "build_config",
    "coerce_value",
    "drop_replaced",
    "schema_keys",
]

# One name per concept across the stages: old key -> new key.  A file or `--set` with an old key still loads.
RENAMED_KEYS: dict[str, str] = {
    "max_train_steps": "max_steps",  # stage 3 (optimizer updates = trainer steps)
    "lr_scheduler": "lr_schedule",  # stage 3
    "adam_betas": "betas",  # stage 3
    "lora_rank": "dit_lora_rank",  # stage 3's DiT LoRA
    "lora_alpha": "dit_lora_alpha",
    "lora_targets": "dit_lora_targets",
}
# key -> {old value: new value}
RENAMED_VALUES: dict[str, dict[Any, Any]] = {
    "lr_schedule": {"constant_with_warmup": "constant"},  # "constant" has the warm-up (warmup_steps) in front
}


class ConfigSchema:
    """Base of the config dataclasses: validation, flat dict/TOML output, construction from values.

    Subclasses set ``TITLE`` (used in messages: "Invalid <TITLE> (<source>): ..."), may set ``CONVERT`` (key ->
    function(value) -> value, run on the raw value instead of the type check, and on the default too) and implement
    :meth:`problems`.
    """

    TITLE: ClassVar[str] = "config"
    CONVERT: ClassVar[Mapping[str, Callable[[Any], Any]]] = {}

    def problems(self) -> list[str]:
        """Every validation problem (empty list = valid)."""
        return []

    def validate(self):
        """Raise :class:`ConfigError` listing every problem on one line; return ``self``."""
        problems = self.problems()
        if problems:
            raise ConfigError(one_line(f"Invalid {self.TITLE}: " + "; ".join(dict.fromkeys(problems))))
        return self

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "config"):
        return build_config(cls, values, source=source)

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-able dict, as in a file (a group's keys at the top level; tuples become lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]  # every ConfigSchema is a dataclass
            value = getattr(self, f.name)
            if isinstance(value, ConfigSchema):
                out.update(value.to_dict())
            else:
                out[f.name] = _plain(value)
        return out

    def to_toml(self) -> str:
        """Flat TOML text of this config (keys with value None are left out: TOML has no null)."""
        return "".join(f"{k} = {_toml_value(v)}\n" for k, v in self.to_dict().items() if v is not None)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


# ----------------------------------------------------------------------------------------------------
# keys and types


def schema_keys(cls: type) -> dict[str, tuple[str | None, Any]]:
    """``key -> (group attribute or None, type hint)`` of a config class, groups flattened."""
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[str | None, Any]] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            for k, (_, h) in schema_keys(hint).items():
                out[k] = (f.name, h)
        else:
            out[f.name] = (None, hint)
    return out


def coerce_value(name: str, value: Any, hint: Any) -> Any:
    """Check/convert one value to the type ``hint``; raise ValueError with a readable message."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or (origin is not None and type(None) in args):  # X | None
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return coerce_value(name, value, inner)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name} must be true or false (got {value!r})")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"{name} must be an integer (got {value!r})")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{name} must be a number (got {value!r})")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise ValueError(f"{name} must be a string (got {value!r})")
    if origin is list:
        if isinstance(value, (str, os.PathLike)) and args and args[0] is str:
            value = [value]  # data = "one/path" is fine
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list (got {value!r})")
        return [coerce_value(f"{name}[{i}]", x, args[0]) for i, x in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ValueError(f"{name} must be a list of {len(args)} numbers (got {value!r})")
        return tuple(coerce_value(f"{name}[{i}]", x, a) for i, (x, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{name} must be a table {{ key = value, ... }} (got {value!r})")
        return {str(k): coerce_value(f"{name}.{k}", v, args[1]) for k, v in value.items()}
    return value


# ----------------------------------------------------------------------------------------------------
# old names


def drop_replaced(values: dict[str, Any], new_keys: Iterable[str]) -> dict[str, Any]:
    """``values`` without the keys that ``new_keys`` (overrides) set again under another name of the same concept,
    so ``--set max_train_steps=5`` replaces a file's ``max_steps = 10`` (and the other way round)."""

    def concept(key: str) -> str:
        return RENAMED_KEYS.get(key, key)

    replaced = {concept(k) for k in new_keys}
    return {k: v for k, v in values.items() if concept(k) not in replaced or k in new_keys}


def _rename(values: dict[str, Any], known: Mapping[str, Any], problems: list[str]) -> list[str]:
    """Map old keys/values to new ones in place; return the deprecation notes."""
    notes: list[str] = []
    for old in [k for k in values if k not in known and k in RENAMED_KEYS]:
        new = RENAMED_KEYS[old]
        if new not in known:
            continue
        if new in values:
            problems.append(f"{old!r} and {new!r} both given ({old!r} is the old name of {new!r}; keep {new!r})")
            values.pop(old)
            continue
        values[new] = values.pop(old)
        notes.append(f"{old!r} is now {new!r}")
    for key, mapping in RENAMED_VALUES.items():
        value = values.get(key)
        if isinstance(value, str) and value in mapping:
            values[key] = mapping[value]
            notes.append(f"{key} = {value!r} is now {key} = {mapping[value]!r}")
    return notes


# ----------------------------------------------------------------------------------------------------
# the builder


def build_config(
    cls: type[ConfigSchema],
    values: Mapping[str, Any],
    *,
    source: str = "config",
    preset: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
):
    """``cls``'s defaults, then ``preset(values)``'s keys (if given), then ``values``: checked, converted, validated.

    Raises :class:`ConfigError` with every problem on one line; warns once (``DeprecationWarning`` + a log line)
    about old names.  ``preset`` may raise ValueError (reported like any other problem).
    """
    known = schema_keys(cls)
    values = dict(values)
    problems: list[str] = []
    notes = _rename(values, known, problems)
    if notes:
        message = one_line(
            f"deprecated names in the {cls.TITLE} ({source}): "
            + "; ".join(notes)
            + "; the old names still work, but rename them"
        )
        warnings.warn(message, DeprecationWarning, stacklevel=3)
        log.warning("%s", message)
    for key in sorted(set(values) - set(known)):
        close = difflib.get_close_matches(key, list(known), n=1)
        problems.append(f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    base: Mapping[str, Any] = {}
    if preset is not None:
        try:
            base = preset(values)
        except ValueError as e:
            problems.append(str(e))
    merged = {**base, **{k: v for k, v in values.items() if k in known}}
    cfg = cls()  # the defaults; every value below replaces one (badly typed ones keep the default, and are reported)

    def owner(key: str):
        group = known[key][0]
        return cfg if group is None else getattr(cfg, group)

    for key, value in merged.items():
        if key in cls.CONVERT:
            continue
        try:
            setattr(owner(key), key, coerce_value(key, value, known[key][1]))
        except ValueError as e:
            problems.append(str(e))
    for key, convert in cls.CONVERT.items():
        target = owner(key)
        try:
            setattr(target, key, convert(merged.get(key, getattr(target, key))))
        except ValueError as e:
            problems.append(str(e))
    problems += cfg.problems()
    if problems:
        raise ConfigError(one_line(f"Invalid {cls.TITLE} ({source}): " + "; ".join(dict.fromkeys(problems))))
    return cfg
