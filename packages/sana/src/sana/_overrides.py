"""Command-line overrides in the official Sana syntax (`--train.train_batch_size=32`) and config errors.

Generic over the pydantic schema it is given: splits argv, turns value strings into Python values, checks
dotted keys against the schema and turns pydantic's errors into one `ConfigError` naming dotted keys.
`sana.config` owns the schema and calls these.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Sequence
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

__all__ = (
    "ConfigError",
    "check_key",
    "check_key_syntax",
    "is_override_token",
    "parse_override_args",
    "parse_value",
    "set_dotted",
    "translate_errors",
    "unknown_key_error",
)

_PREFIX = "--"
_NONE_WORDS = frozenset({"None", "none", "null", "Null", "NULL", "~", ""})  # all read as None
_QUOTES = ("'", '"')


class ConfigError(ValueError):
    """A config file, key or override value is wrong; the message names the dotted key and what is allowed."""


def is_override_token(token: str, roots: Collection[str]) -> bool:
    """True when `token` is `--root...` (optionally `=value`) and `root` (before any dot) is in `roots`."""
    if not token.startswith(_PREFIX) or len(token) <= len(_PREFIX):
        return False
    key = token[len(_PREFIX) :].split("=", 1)[0]
    return key.split(".", 1)[0] in roots


def parse_override_args(argv: Sequence[str], roots: Collection[str]) -> tuple[dict[str, Any], list[str]]:
    """Split `argv` into `{dotted_key: value}` overrides (roots in `roots`) and the remaining tokens, in order.

    An override is `--key=value` or `--key value` (two tokens). `--key` with no value (end of argv, or the next
    token starts with `--`) raises `ConfigError`. A key given twice keeps the last value, like argparse.
    """
    overrides: dict[str, Any] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if not is_override_token(token, roots):
            rest.append(token)
            i += 1
            continue
        body = token[len(_PREFIX) :]
        if "=" in body:
            key, raw = body.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith(_PREFIX):
            key, raw = body, argv[i + 1]
            i += 2
        else:
            raise ConfigError(f"malformed override {token!r}: no value; write --{body}=VALUE or --{body} VALUE")
        check_key_syntax(key, token)
        overrides[key] = parse_value(raw, key)
    return overrides, rest


def check_key_syntax(key: str, origin: str) -> None:
    """Reject empty components (`--model..x`, `--model.`) and whitespace in a dotted key."""
    parts = key.split(".")
    if any(not p or p != p.strip() or " " in p for p in parts):
        raise ConfigError(
            f"malformed override {origin!r}: the key {key!r} must be dot-separated names like model.image_size"
        )


def parse_value(raw: str, key: str) -> Any:
    """One override value: YAML scalars (`32`, `2e-5`, `false`, `null`), `None`, and bracketed lists.

    Lists may hold quoted or bare items: `[asset/example_data]`, `[a,b]`, `["a", 'b']`. A value wrapped in one
    pair of quotes is a string, except a quoted bracketed list (`"[a]"`, as the official scripts write it),
    which is a list. `--k={a: 1}` gives a dict. Numbers in `1e-4` form stay strings; the schema converts them.
    """
    text = raw.strip()
    if text in _NONE_WORDS:
        return None
    if len(text) >= 2 and text[0] == text[-1] and text[0] in _QUOTES:
        inner = text[1:-1].strip()
        if inner.startswith("[") and inner.endswith("]"):
            return _parse_list(inner, key)
        return text[1:-1]
    if text.startswith("[") and text.endswith("]"):
        return _parse_list(text, key)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"malformed value {raw!r} for config key {key!r}: {exc}") from None


def _parse_list(text: str, key: str) -> list[Any]:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if isinstance(value, list):
        return [None if isinstance(v, str) and v in _NONE_WORDS else v for v in value]
    items = [item.strip() for item in text[1:-1].split(",")]  # e.g. [C:\data] or unbalanced quotes inside
    if any(not item for item in items) and items != [""]:
        raise ConfigError(f"malformed list {text!r} for config key {key!r}: empty item; write [a,b] or ['a', 'b']")
    return [] if items == [""] else [parse_value(item, key) for item in items]


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set `tree[a][b][c] = value` for key `a.b.c`, creating missing (or null) intermediate mappings."""
    *parents, leaf = key.split(".")
    node = tree
    for depth, part in enumerate(parents):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            where = ".".join(parents[: depth + 1])
            raise ConfigError(f"cannot set config key {key!r}: {where!r} holds {child!r}, not a mapping")
        node = child
    node[leaf] = value


# ------------------------------------------------------------------- keys checked against a pydantic schema


def _submodel(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    """The BaseModel class behind field `name` of `model` (also inside `X | None`), else None."""
    annotation = model.model_fields[name].annotation
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _model_at(root: type[BaseModel], dotted: str) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for part in dotted.split(".") if dotted else ():
        if model is None or part not in model.model_fields:
            return None
        model = _submodel(model, part)
    return model


def unknown_key_error(dotted: str, model: type[BaseModel]) -> ConfigError:
    """`unknown config key 'model.multi_scal'; did you mean 'model.multi_scale'?` plus the valid keys there."""
    valid = sorted(model.model_fields)
    prefix, _, leaf = dotted.rpartition(".")
    close = difflib.get_close_matches(leaf, valid, n=3, cutoff=0.6)
    dot = f"{prefix}." if prefix else ""
    hint = f"; did you mean {', '.join(repr(dot + c) for c in close)}?" if close else ""
    return ConfigError(f"unknown config key {dotted!r}{hint} (valid keys here: {', '.join(valid)})")


def check_key(root: type[BaseModel], key: str) -> None:
    """Raise `ConfigError` unless `key` names a field of `root` (or one entry inside a dict-typed field)."""
    model: type[BaseModel] | None = root
    parts = key.split(".")
    for i, part in enumerate(parts):
        if model is None:  # below a plain field: only a dict-typed field takes one more component
            parent = ".".join(parts[:i])
            if i == len(parts) - 1 and _is_dict_field(root, parts[:i]):
                return
            raise ConfigError(f"config key {parent!r} is a value, not a section: cannot set {key!r}")
        if part not in model.model_fields:
            raise unknown_key_error(".".join(parts[: i + 1]), model)
        model = _submodel(model, part)


def _is_dict_field(root: type[BaseModel], parts: list[str]) -> bool:
    owner = _model_at(root, ".".join(parts[:-1]))
    if owner is None:
        return False
    annotation = owner.model_fields[parts[-1]].annotation
    return any(get_origin(t) is dict or t is dict for t in (annotation, *get_args(annotation)))


_TYPE_TAGS = frozenset({"float", "int", "str", "bool", "none", "dict", "list", "literal"})


def _dotted(root: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """pydantic error location -> `model.pag_applied_layers[0]`, dropping union-branch tags like 'list[float]'."""
    out = ""
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif model is None and ("[" in part or part in _TYPE_TAGS):
            continue
        else:
            known = model is not None and part in model.model_fields
            out += f".{part}" if out else part
            model = _submodel(model, part) if known and model is not None else None
    return out


def translate_errors(root: type[BaseModel], exc: ValidationError, where: str) -> ConfigError:
    """One `ConfigError` from pydantic's errors: each line names the dotted key, the problem and the value."""
    messages: dict[str, list[str]] = {}
    for err in exc.errors(include_url=False):
        key = _dotted(root, err["loc"])
        if err["type"] == "extra_forbidden":
            parent = _model_at(root, key.rpartition(".")[0])
            return unknown_key_error(key, parent) if parent else ConfigError(f"unknown config key {key!r}")
        msg = err["msg"].removeprefix("Value error, ")
        messages.setdefault(key, []).append(f"{msg}, got {err.get('input')!r}")
    lines = [f"config key {k!r}: {' | '.join(dict.fromkeys(v))}" for k, v in messages.items()]
    return ConfigError(f"invalid config ({where}): " + "; ".join(lines))
