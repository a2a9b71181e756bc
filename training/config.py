"""Config dataclasses: documented defaults, overridden by a YAML file, overridden by the command line.

Every config is a dataclass whose fields are declared with `opt(default, "one sentence of help")`. `add_arguments`
turns the fields into `--field-name` options (the help text is the sentence), and `build` applies the layers:

    defaults  <  YAML file given with --config (keys are field names)  <  command-line options
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or option names an unknown field or holds a value of the wrong type."""


def opt(default: Any, help: str) -> Any:
    """A config field with its default and a sentence of help (shown by --help)."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(element type, is_list) for the field types configs use: scalars, Optional scalars and list[str]."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if origin is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _coerce(name: str, annotation: Any, value: Any, origin: str) -> Any:
    if value is None:
        return None
    kind, is_list = _base_type(annotation)
    try:
        if is_list:
            items = value.split(",") if isinstance(value, str) else list(value)
            return [kind(v.strip() if isinstance(v, str) else v) for v in items if v != ""]
        if kind is bool:
            return parse_bool(value)
        return kind(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
        raise ConfigError(f"{origin}: field {name!r} expects {getattr(kind, '__name__', kind)}: {exc}") from None


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add --config and one --field-name option per field of the config dataclass `cls`."""
    parser.add_argument("--config", type=Path, help="YAML file whose keys are the field names below")
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} fields (default in brackets)")
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            metavar=_base_type(hints[f.name])[0].__name__.upper(),
            help=f"{f.metadata.get('help', '')} [{default}]".replace("%", "%%"),  # argparse formats help with %
        )


def build(cls: type[T], yaml_path: Path | None = None, overrides: dict | None = None) -> T:
    """The config: defaults, then the YAML file, then `overrides` (values None are ignored)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if yaml_path is not None:
        try:
            loaded = yaml.safe_load(Path(yaml_path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{yaml_path}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{yaml_path}: expected a mapping of field names to values")
        for key, value in loaded.items():
            if key not in names:
                raise ConfigError(f"{yaml_path}: unknown field {key!r} for {cls.__name__}")
            values[key] = _coerce(key, hints[key], value, str(yaml_path))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in names:
            raise ConfigError(f"unknown option {key!r} for {cls.__name__}")
        values[key] = _coerce(key, hints[key], value, "--" + key.replace("_", "-"))
    return cls(**values)


def from_args(cls: type[T], args: argparse.Namespace) -> T:
    """The config of a subcommand whose parser was set up with `add_arguments(parser, cls)`."""
    names = {f.name for f in dataclasses.fields(cls)}
    return build(cls, getattr(args, "config", None), {k: v for k, v in vars(args).items() if k in names})


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)
