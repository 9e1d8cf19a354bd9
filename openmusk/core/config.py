"""The one YAML/JSON -> dataclass loader every openmusk config goes through.

Strict: an unknown key is named with its file and the closest valid key. Typed: each value is
checked (and, where it is unambiguous, converted) against the field's annotation — int, float,
bool, str, Optional, Literal, list, tuple, dict and nested dataclasses — and a wrong type names
the key, the expected type and the value. Path fields (declared with :func:`path_field`) are
resolved against the config file's folder; command-line overrides go through the same checks and
stay relative to the working directory. A renamed key is accepted with a one-line notice.

    cfg = load_config(MilConfig, "run.yaml", overrides={"epochs": 10, "train.lr": "1e-4"})

A config dataclass may declare ``renamed_keys: ClassVar[dict]`` mapping an old key to its new
name, or to ``(new name, converter)`` when the value changes form too (``amp: true`` ->
``precision: bf16``).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar, Union

__all__ = ["ConfigError", "load_config", "config_from_dict", "config_to_dict", "replace_config",
           "example_yaml", "path_field", "read_mapping", "parse_overrides", "notice", "check_minimums"]

T = TypeVar("T")
_NOT_PATHS = ("hf_hub:", "hf-hub:", "http://", "https://", "s3://", "gs://", "random")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, the key and what is wrong."""


def notice(message: str) -> None:
    """One line on stderr for the user (renamed keys and flags): not an error, not a traceback."""
    print(f"openmusk: note: {message}", file=sys.stderr)


def check_minimums(obj: Any, **minimums: float) -> None:
    """For ``__post_init__``: a ValueError naming the first field of ``obj`` below its minimum."""
    for name, low in minimums.items():
        value = getattr(obj, name)
        if value is not None and value < low:
            raise ValueError(f"key {name!r} must be >= {low}, got {value!r}")


def path_field(default: Any = dataclasses.MISSING, *, when: Callable[[str], bool] | None = None,
               **kwargs: Any) -> Any:
    """A dataclass field holding a file or folder path, resolved against the config file's folder.

    ``when`` limits resolution to values it accepts (e.g. a dataset spec that is a name or a
    ``.yaml`` path).
    """
    return dataclasses.field(default=default, metadata={"path": when or True}, **kwargs)


# ------------------------------------------------------------------------------------ reading
def read_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """The top-level mapping of a YAML or JSON file; every error names the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'} ({e})") from e
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["epochs=10", "train.lr=1e-4"]`` (``--set`` flags) -> ``{"epochs": 10, "train.lr": 1e-4}``.

    Values are read as YAML scalars/lists, so ``10``, ``true``, ``null`` and ``[1, 2]`` mean what
    they do in the file; the types are checked later against the config class.
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def load_config(cls: type[T], path: str | os.PathLike | None = None,
                overrides: Mapping[str, Any] | None = None) -> T:
    """Build ``cls`` from a YAML/JSON file (or defaults when ``path`` is None) plus ``overrides``.

    Override keys may be dotted (``train.lr``) to reach nested sections; ``None`` values are
    ignored (a flag that was not given). Relative paths in the file resolve against its folder;
    relative paths in overrides stay relative to the working directory.
    """
    data = read_mapping(path) if path is not None else {}
    where = str(path) if path is not None else cls.__name__
    base = Path(path).resolve().parent if path is not None else None
    data = _prepare(cls, data, where, base)
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(cls, data, key, value, f"{where} (override {key})")
    return _build(cls, data, where)


def config_from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "config",
                     base_dir: str | os.PathLike | None = None) -> T:
    """Build ``cls`` from a mapping with the same checks as a file; paths resolve against ``base_dir``."""
    prepared = _prepare(cls, dict(data or {}), where, Path(base_dir) if base_dir is not None else None)
    return _build(cls, prepared, where)


def replace_config(config: T, overrides: Mapping[str, Any], where: str = "override") -> T:
    """A copy of ``config`` with dotted-key ``overrides`` applied and validated like a file's keys."""
    cls = type(config)
    data = config_to_dict(config)
    for key, value in overrides.items():
        if value is not None:
            _set_dotted(cls, data, key, value, f"{where} {key}")
    return _build(cls, data, where)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain dict of a config dataclass (tuples as lists), the layout of its YAML file."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def example_yaml(cls: type) -> str:
    """The config's defaults as YAML to start from; required keys come first, marked ``# required``."""
    import yaml

    required, defaults = [], {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
        else:
            required.append(f.name)
    body = yaml.safe_dump(json.loads(json.dumps(defaults, default=_plain)), sort_keys=False)
    head = "".join(f"{name}: null  # required\n" for name in required)
    return head + body


def _plain(o: Any) -> Any:
    """JSON form of nested dataclasses and paths for :func:`example_yaml`."""
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return str(o)


# ---------------------------------------------------------------------------------- internals
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _renamed(cls: type) -> dict[str, Any]:
    return dict(getattr(cls, "renamed_keys", {}) or {})


def _prepare(cls: type, data: Any, where: str, base: Path | None) -> dict[str, Any]:
    """Check keys (renames applied, unknown keys named), resolve paths, recurse into sections."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__} {data!r}")
    data = dict(data)
    for old, target in _renamed(cls).items():
        if old in data:
            new, convert = target if isinstance(target, tuple) else (target, None)
            value = data.pop(old)
            if new in data:
                raise ConfigError(f"{where}: both {old!r} and its new spelling {new!r} are given; keep {new!r}")
            data[new] = convert(value) if convert else value
            notice(f"{where}: key {old!r} is now spelled {new!r}")
    fields = _fields(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r} for {cls.__name__}{hint}; "
                              f"valid keys: {', '.join(sorted(fields))}")
    hints = _hints(cls)
    for key, value in list(data.items()):
        f = fields[key]
        sub = _dataclass_of(hints[key])
        if sub is not None and isinstance(value, dict):
            data[key] = _prepare(sub, value, f"{where}: {key}", base)
        elif (sub := _list_dataclass_of(hints[key])) is not None and isinstance(value, list):
            data[key] = [_prepare(sub, v, f"{where}: {key}[{i}]", base) if isinstance(v, dict) else v
                         for i, v in enumerate(value)]
        elif base is not None and f.metadata.get("path"):
            data[key] = _resolve_path(value, base, f.metadata["path"])
    return data


def _resolve_path(value: Any, base: Path, when: Any) -> Any:
    """``value`` joined to ``base`` when it is a relative local path (not a hub id, URL or 'random')."""
    if not isinstance(value, str) or not value or value.startswith(_NOT_PATHS):
        return value
    if callable(when) and not when(value):
        return value
    expanded = os.path.expanduser(value)
    return expanded if os.path.isabs(expanded) else str(base / expanded)


def _set_dotted(cls: type, data: dict[str, Any], key: str, value: Any, where: str) -> None:
    """Put an override at ``a.b.c`` into nested ``data``, checking each part names a field."""
    parts = key.replace("-", "_").split(".")
    target, current = data, cls
    for i, part in enumerate(parts):
        renames = _renamed(current)
        if part in renames:
            new = renames[part][0] if isinstance(renames[part], tuple) else renames[part]
            convert = renames[part][1] if isinstance(renames[part], tuple) else None
            notice(f"{where}: {part!r} is now spelled {new!r}")
            part, value = new, (convert(value) if convert and i == len(parts) - 1 else value)
        fields = _fields(current)
        if part not in fields:
            close = difflib.get_close_matches(part, list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {part!r} for {current.__name__}{hint}")
        if i == len(parts) - 1:
            target[part] = value
            return
        hint = _hints(current)[part]
        sub = _dataclass_of(hint)
        if sub is None and (typing.get_origin(hint) is dict or hint is dict) and i == len(parts) - 2:
            target[part] = {**dict(target.get(part) or {}), parts[-1]: value}  # encoder_kwargs.width=64
            return
        if sub is None:
            raise ConfigError(f"{where}: {part!r} is not a section, so {key!r} cannot be set")
        existing = target.get(part)
        if dataclasses.is_dataclass(existing):
            existing = config_to_dict(existing)
        target[part] = dict(existing or {})
        target, current = target[part], sub


def _build(cls: type[T], data: dict[str, Any], where: str) -> T:
    """Check every value's type, then construct; errors from ``__post_init__`` name the file."""
    fields = _fields(cls)
    hints = _hints(cls)
    missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {missing} for {cls.__name__}")
    kwargs = {name: _coerce(value, hints[name], name, where) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e


def _dataclass_of(hint: Any) -> type | None:
    """The dataclass type in ``hint`` (``X`` or ``Optional[X]``), else None."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    if _is_union(hint):
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg) and isinstance(arg, type):
                return arg
    return None


def _list_dataclass_of(hint: Any) -> type | None:
    """``X`` when ``hint`` is ``list[X]`` with ``X`` a dataclass (``models: list[ModelEntry]``)."""
    if typing.get_origin(hint) is list:
        args = typing.get_args(hint)
        if args and dataclasses.is_dataclass(args[0]):
            return args[0]
    return None


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "")


class _Mismatch(Exception):
    """A value that does not fit a type; turned into a ConfigError naming the key."""


def _coerce(value: Any, hint: Any, key: str, where: str) -> Any:
    try:
        return _convert(value, hint, key, where)
    except _Mismatch:
        raise ConfigError(f"{where}: key {key!r} expects {_type_name(hint)}, got {value!r} "
                          f"({type(value).__name__})") from None


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _number(value: Any, kind: type) -> Any:
    """``value`` as an int (whole floats and numeric strings too) or a float (also from strings:
    YAML 1.1 reads ``1e-4`` without a dot as a string); raises _Mismatch otherwise."""
    if isinstance(value, bool):
        raise _Mismatch
    if isinstance(value, str):
        try:
            value = kind(value.strip())
        except ValueError:
            raise _Mismatch from None
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if kind is int and isinstance(value, int):
        return value
    if kind is float and isinstance(value, (int, float)):
        return float(value)
    raise _Mismatch


def _convert(value: Any, hint: Any, key: str, where: str) -> Any:  # noqa: C901 - one case per type
    """``value`` as type ``hint``; raises _Mismatch when it does not fit."""
    if hint is Any or hint is object:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if _is_union(hint):
        if value is None:
            if type(None) in args:
                return None
            raise _Mismatch
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key, where)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: key {key!r} must be one of {list(args)}, got {value!r}")
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            return _build(hint, value, f"{where}: {key}")
        raise _Mismatch
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _Mismatch
    if hint in (int, float):
        return _number(value, hint)
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _Mismatch
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple):
        if isinstance(value, str) and origin is not None:
            value = [v.strip() for v in value.split(",") if v.strip()]  # --set shots=1,2,4
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise _Mismatch
            return tuple(_coerce(v, a, f"{key}[{i}]", where) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or hint is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        if not args:
            return dict(value)
        return {_coerce(k, args[0], f"{key} key", where): _coerce(v, args[1], f"{key}.{k}", where)
                for k, v in value.items()}
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise _Mismatch
    return value
