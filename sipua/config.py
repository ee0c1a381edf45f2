"""Load :class:`~sipua.settings.Settings` from TOML, the environment and overrides.

Precedence, lowest first: the dataclass defaults < the TOML file < ``SIPUA_*`` environment
variables < ``overrides`` (what command-line flags give, as dotted keys ``"ice.nomination"``).
Every problem, whichever layer it comes from, becomes one :class:`~sipua.errors.ConfigError`
that names the source (file, environment variable or overrides), the key and what was expected.

The schema is the dataclasses themselves: keys are field names, types come from the
annotations, the documentation from the ``#:`` comments. ``config/defaults.toml`` and the key
reference in ``docs/configuration.md`` are rendered from it (``python -m sipua.config
--write-defaults`` / ``--write-docs``), so they cannot drift.

Environment scheme: ``SIPUA_<SECTION>__<KEY>``, upper case, ``__`` between levels;
accounts and TURN servers by index or (accounts) by name: ``SIPUA_ACCOUNTS__0__PASSWORD``,
``SIPUA_ACCOUNTS__ALICE__PASSWORD``, ``SIPUA_ICE__TURN_SERVERS__0__URI``. Only variables with a
``__`` after the prefix are settings; ``SIPUA_CONFIG`` names the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import math
import os
import sys
import textwrap
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

from sipua.errors import ConfigError
from sipua.settings import SettingError, Settings, field_docs

__all__ = [
    "ENV_CONFIG", "ENV_PREFIX", "config_search_path", "find_config_file", "load_settings",
    "main", "render_defaults", "render_reference", "render_toml", "settings_from_dict",
]

ENV_PREFIX = "SIPUA_"
#: Environment variable naming the configuration file (when no path is given).
ENV_CONFIG = "SIPUA_CONFIG"
_ROOT = Path(__file__).resolve().parents[1]
DEFAULTS_FILE = _ROOT / "config" / "defaults.toml"
DOCS_FILE = _ROOT / "docs" / "configuration.md"
DOCS_BEGIN = "<!-- BEGIN KEY REFERENCE (python -m sipua.config --write-docs) -->"
DOCS_END = "<!-- END KEY REFERENCE -->"

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")

Path_ = tuple[str | int, ...]


# --- schema introspection -------------------------------------------------------------------------

@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_settings_class(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _optional_inner(tp: Any) -> Any | None:
    """``X`` for ``X | None``, else None."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def _tuple_item(tp: Any) -> Any | None:
    """``X`` for ``tuple[X, ...]``, else None."""
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
    return None


def _table_list_item(tp: Any) -> type | None:
    item = _tuple_item(tp)
    return item if _is_settings_class(item) else None


def _describe_type(tp: Any) -> str:
    inner = _optional_inner(tp)
    if inner is not None:
        return _describe_type(inner)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    item = _tuple_item(tp)
    if item is str:
        return "an array of strings"
    if item is not None:
        return "an array of tables"
    return "a table"


def _type_name(tp: Any) -> str:
    """Short type for the reference table."""
    inner = _optional_inner(tp)
    if inner is not None:
        return _type_name(inner)
    names = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if tp in names:
        return names[tp]
    item = _tuple_item(tp)
    if item is str:
        return "array of strings"
    if item is not None:
        return "array of tables"
    return "table"


def _describe_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    return repr(value)


def _key(path: Path_) -> str:
    return ".".join(str(p) for p in path)


def _env_name(path: Path_) -> str:
    return ENV_PREFIX + "__".join(str(p).upper() for p in path)


# --- sources --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Origin:
    """Where a value came from: how errors name it, and the base of relative paths."""

    label: str
    env: bool = False
    base_dir: Path | None = None


_DEFAULTS = _Origin("the defaults")


class _Loader:
    """Merges the layers into one tree of plain data, then builds the dataclasses from it."""

    def __init__(self) -> None:
        self.raw: dict[str, Any] = {}
        self.origins: dict[str, _Origin] = {}

    # Errors ---------------------------------------------------------------------------------

    def origin(self, path: Path_) -> _Origin:
        for end in range(len(path), 0, -1):
            found = self.origins.get(_key(path[:end]))
            if found is not None:
                return found
        return _DEFAULTS

    def invalid(self, path: Path_, problem: str, origin: _Origin | None = None) -> ConfigError:
        where = (origin or self.origin(path)).label
        return ConfigError(f"invalid value for '{_key(path)}' in {where}: {problem}")

    def unknown(self, path: Path_, choices: list[str], origin: _Origin) -> ConfigError:
        message = f"unknown key '{_key(path)}' in {origin.label}"
        close = difflib.get_close_matches(str(path[-1]), choices, n=1)
        if close:
            better = (*path[:-1], close[0])
            hint = _env_name(better) if origin.env else f"'{_key(better)}'"
            message += f" (did you mean {hint}?)"
        elif choices:
            message += f" (known keys here: {', '.join(choices)})"
        return ConfigError(message)

    # Layers ---------------------------------------------------------------------------------

    def absorb(self, value: Any, tp: Any, path: Path_, origin: _Origin) -> Any:
        """Check the keys of a nested value against the schema and note where each came from."""
        self.origins[_key(path)] = origin
        if _is_settings_class(tp):
            if not isinstance(value, Mapping):
                raise self.invalid(path, f"expected a table, got {_describe_value(value)}",
                                   origin)
            hints = _hints(tp)
            table: dict[str, Any] = {}
            for key, item in value.items():
                if key not in hints:
                    raise self.unknown((*path, key), list(hints), origin)
                table[key] = self.absorb(item, hints[key], (*path, key), origin)
            return table
        item_type = _table_list_item(tp)
        if item_type is not None and value is not None:
            if not isinstance(value, list | tuple):
                raise self.invalid(path, f"expected an array of tables, got "
                                         f"{_describe_value(value)}", origin)
            return [self.absorb(v, item_type, (*path, i), origin) for i, v in enumerate(value)]
        return value

    def merge_file(self, data: Mapping[str, Any], origin: _Origin) -> None:
        self.raw = self.absorb(data, Settings, (), origin)

    def set_value(self, parts: list[str], value: Any, origin: _Origin) -> None:
        """Set one dotted key (from the environment or an override), creating tables on the way.

        A string from the environment is converted to the key's type here, so the build step
        sees typed values only.
        """
        if not parts or not all(parts):
            raise ConfigError(f"empty key in {origin.label}")
        tp: Any = Settings
        node: Any = self.raw
        path: Path_ = ()
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                item_type = tp
                index = self._index(node, part, path, origin)
                if index == len(node):
                    node.append({})
                    self.origins[_key((*path, index))] = origin
                path = (*path, index)
                if last:
                    node[index] = self._merged(node[index], value, item_type, path, origin)
                    return
                node, tp = node[index], item_type
                continue
            hints = _hints(tp)
            if part not in hints:
                raise self.unknown((*path, part), list(hints), origin)
            field_type = hints[part]
            path = (*path, part)
            if last:
                node[part] = self._merged(node.get(part), value, field_type, path, origin)
                return
            item_type = _table_list_item(field_type)
            if _is_settings_class(field_type):
                child = node.setdefault(part, {})
                tp = field_type
            elif item_type is not None:
                child = node.setdefault(part, [])
                tp = item_type
            else:
                raise ConfigError(f"unknown key '{_key((*path, parts[depth + 1]))}' in "
                                  f"{origin.label} ('{_key(path)}' has no keys below it)")
            if not isinstance(child, dict | list):
                raise self.invalid(path, f"expected {_describe_type(field_type)}, got "
                                         f"{_describe_value(child)}")
            if path and _key(path) not in self.origins:
                self.origins[_key(path)] = origin
            node = child

    def _index(self, items: list[Any], part: str, path: Path_, origin: _Origin) -> int:
        """A list position from an index, or (accounts) from a name, any case."""
        if part.isdigit():
            index = int(part)
            if index > len(items):
                raise ConfigError(
                    f"invalid key '{_key((*path, part))}' in {origin.label}: there "
                    f"{'is' if len(items) == 1 else 'are'} {len(items)} '{_key(path)}' "
                    f"entries, so the next one is {len(items)}")
            return index
        for index, item in enumerate(items):
            if isinstance(item, Mapping) and str(item.get("name", "")).lower() == part.lower():
                return index
        names = [str(i.get("name")) for i in items if isinstance(i, Mapping) and "name" in i]
        raise ConfigError(f"unknown key '{_key((*path, part))}' in {origin.label}: expected an "
                          f"index or the name of an entry"
                          + (f" ({', '.join(names)})" if names else ""))

    def _merged(self, old: Any, value: Any, tp: Any, path: Path_, origin: _Origin) -> Any:
        if origin.env and isinstance(value, str):
            value = self._from_text(value, tp, path, origin)
        elif isinstance(value, str) and tp is not str and _optional_inner(tp) is not str:
            # An override given as text (a CLI --set KEY=VALUE): same rules as the environment.
            value = self._from_text(value, tp, path, origin)
        value = self.absorb(value, tp, path, origin)
        if isinstance(old, dict) and isinstance(value, dict):
            return _deep_merge(old, value)
        return value

    def _from_text(self, text: str, tp: Any, path: Path_, origin: _Origin) -> Any:
        """Type-directed parsing of one environment value (see docs/configuration.md)."""
        inner = _optional_inner(tp)
        if inner is not None:
            return None if text == "" else self._from_text(text, inner, path, origin)
        if tp is str:
            return text
        if tp is bool:
            if text.strip().lower() in _TRUE:
                return True
            if text.strip().lower() in _FALSE:
                return False
            raise self.invalid(path, f"expected true or false, got {text!r}", origin)
        if tp is int:
            try:
                return int(text.strip())
            except ValueError:
                raise self.invalid(path, f"expected an integer, got {text!r}", origin) from None
        if tp is float:
            try:
                return float(text.strip())
            except ValueError:
                raise self.invalid(path, f"expected a number, got {text!r}", origin) from None
        if _tuple_item(tp) is str:
            # A TOML array if it parses as one, else comma-separated ("[::]:5060" is not TOML).
            try:
                parsed = tomllib.loads(f"v = {text}")["v"]
            except tomllib.TOMLDecodeError:
                parsed = None
            if isinstance(parsed, list):
                return parsed
            return [item.strip() for item in text.split(",") if item.strip()]
        try:
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            raise self.invalid(path, f"expected {_describe_type(tp)} in TOML inline syntax "
                                     f"(or set the keys one by one), got {text!r}",
                               origin) from None

    # Build ----------------------------------------------------------------------------------

    def build(self) -> Settings:
        result = self._build(Settings, self.raw, ())
        assert isinstance(result, Settings)
        return result

    def _build(self, cls: type, table: Mapping[str, Any], path: Path_) -> Any:
        hints = _hints(cls)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            fpath = (*path, f.name)
            if f.name in table:
                value = self._typed(table[f.name], hints[f.name], fpath)
                if f.metadata.get("path") and isinstance(value, str) and value:
                    value = self._resolve_path(value, fpath)
                kwargs[f.name] = value
            elif f.default is MISSING and f.default_factory is MISSING:
                example = f.metadata.get("example")
                raise ConfigError(
                    f"missing key '{_key(fpath)}' in {self.origin(path).label}: expected "
                    f"{_describe_type(hints[f.name])}"
                    + (f" such as {json.dumps(example)}" if example is not None else ""))
        try:
            return cls(**kwargs)
        except SettingError as exc:
            keys = [tuple(k.split(".")) for k in exc.keys]
            full = [(*path, *k) for k in keys]
            origin = next((self.origin(p) for p in full if self.origin(p) is not _DEFAULTS),
                          _DEFAULTS)
            raise self.invalid(full[0], exc.problem, origin) from None

    def _typed(self, value: Any, tp: Any, path: Path_) -> Any:
        inner = _optional_inner(tp)
        if inner is not None:
            return None if value is None else self._typed(value, inner, path)
        wrong = self.invalid(path, f"expected {_describe_type(tp)}, got {_describe_value(value)}")
        if tp is bool:
            if not isinstance(value, bool):
                raise wrong
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise wrong
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise wrong
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if not math.isfinite(number):
                raise self.invalid(path, f"expected a finite number, got {value!r}")
            return number
        if tp is str:
            if not isinstance(value, str):
                raise wrong
            return value
        if _is_settings_class(tp):
            if not isinstance(value, Mapping):
                raise wrong
            return self._build(tp, value, path)
        item = _tuple_item(tp)
        if item is not None:
            if not isinstance(value, list | tuple):
                raise wrong
            return tuple(self._typed(v, item, (*path, i)) for i, v in enumerate(value))
        raise TypeError(f"no loader for the type {tp!r} of {_key(path)}")

    def _resolve_path(self, value: str, path: Path_) -> str:
        """``~`` expanded; relative paths in a file are relative to that file's directory."""
        expanded = Path(value).expanduser()
        base = self.origin(path).base_dir
        if base is not None and not expanded.is_absolute():
            expanded = base / expanded
        return str(expanded)


def _deep_merge(old: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(old)
    for key, value in new.items():
        if isinstance(merged.get(key), dict) and isinstance(value, Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# --- locating and reading files -------------------------------------------------------------------

def config_search_path(env: Mapping[str, str] | None = None) -> list[Path]:
    """Where :func:`load_settings` looks without a path, first match wins.

    ``$SIPUA_CONFIG`` (when set), ``./sipua.toml``, then ``$XDG_CONFIG_HOME/sipua/config.toml``
    (``~/.config/sipua/config.toml`` when XDG_CONFIG_HOME is unset or empty).
    """
    env = os.environ if env is None else env
    found: list[Path] = []
    if env.get(ENV_CONFIG):
        found.append(Path(env[ENV_CONFIG]).expanduser())
    found.append(Path("sipua.toml"))
    xdg = env.get("XDG_CONFIG_HOME")
    if xdg:
        base = Path(xdg)
    elif env.get("HOME"):
        base = Path(env["HOME"]) / ".config"
    else:
        base = Path.home() / ".config"
    found.append(base / "sipua" / "config.toml")
    return found


def find_config_file(env: Mapping[str, str] | None = None) -> Path | None:
    """The file :func:`load_settings` would read without a path, or None.

    ``$SIPUA_CONFIG`` naming a missing file is an error, not a reason to look further.
    """
    env = os.environ if env is None else env
    if env.get(ENV_CONFIG):
        path = Path(env[ENV_CONFIG]).expanduser()
        if not path.is_file():
            raise ConfigError(f"cannot read config file '{path}' named by {ENV_CONFIG}: "
                              f"no such file")
        return path
    for candidate in config_search_path(env):
        if candidate.is_file():
            return candidate
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as stream:
            return tomllib.load(stream)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {path}: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"invalid TOML in {path}: the file is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file '{path}': {exc.strerror or exc}") from None


# --- the entry points -----------------------------------------------------------------------------

def load_settings(path: str | Path | None = None, *, env: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """Settings from defaults < TOML file < ``SIPUA_*`` environment < ``overrides``.

    ``path`` None searches :func:`config_search_path` (no file found = defaults only). ``env``
    None reads ``os.environ``. ``overrides`` maps dotted keys (``"ice.nomination"``,
    ``"accounts.0.password"``, ``"accounts.alice.password"``) to values; text values for
    non-text keys are parsed like environment values. Raises
    :class:`~sipua.errors.ConfigError`.
    """
    env = os.environ if env is None else env
    file = Path(path) if path is not None else find_config_file(env)
    loader = _Loader()
    if file is not None:
        loader.merge_file(_read_toml(file), _Origin(str(file), base_dir=file.parent))
    for name, value in sorted(_settings_env(env).items(), key=lambda kv: _env_sort_key(kv[0])):
        parts = [part.lower() for part in name[len(ENV_PREFIX):].split("__")]
        loader.set_value(parts, value, _Origin(f"environment variable {name}", env=True))
    for key, value in (overrides or {}).items():
        loader.set_value(key.split("."), value, _Origin("overrides"))
    return loader.build()


def _settings_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items()
            if k.startswith(ENV_PREFIX) and "__" in k[len(ENV_PREFIX):]}


def _env_sort_key(name: str) -> list[tuple[int, int, str]]:
    """Indices in numeric order, so SIPUA_ACCOUNTS__2 comes before SIPUA_ACCOUNTS__10."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split("__")]


def settings_from_dict(data: Mapping[str, Any], *, source: str = "settings") -> Settings:
    """Settings from plain data shaped like the TOML file; None leaves a key unset."""
    loader = _Loader()
    loader.merge_file(data, _Origin(source))
    return loader.build()


# --- rendering ------------------------------------------------------------------------------------

def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def _comment(text: str, prefix: str = "# ") -> list[str]:
    return textwrap.wrap(text, width=98, initial_indent=prefix, subsequent_indent=prefix,
                         break_on_hyphens=False)


def _template(cls: type, header: str, doc: str) -> list[str]:
    """A commented-out example table for an array of tables (accounts, TURN servers)."""
    lines = [*_comment(doc), f"# [[{header}]]"]
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        lines += _comment(docs[f.name], "#   ")
        required = f.default is MISSING and f.default_factory is MISSING
        example = f.metadata.get("example", f.default)
        suffix = "  (required)" if required else ""
        lines.append(f"# {f.name} = {_toml_value(example)}{suffix}")
    return lines


def _table_lines(obj: Any, header: str, *, comments: bool, doc: str) -> list[str]:
    cls: type = type(obj)
    docs = field_docs(cls)
    lines = [*(_comment(doc) if comments else []), f"[{header}]"]
    later: list[str] = []
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        item_type = _table_list_item(_hints(cls)[f.name])
        if item_type is not None:
            later += [""]
            if comments and not value:
                later += _template(item_type, f"{header}.{f.name}", docs[f.name])
            for item in value:
                later += _table_lines(item, f"[{header}.{f.name}]", comments=False, doc="")
            continue
        if _is_settings_class(type(value)):  # a nested table such as [ice.faults]
            later += ["", *_table_lines(value, f"{header}.{f.name}", comments=comments,
                                        doc=docs[f.name])]
            continue
        if comments:
            lines += _comment(docs[f.name])
        if value is None:
            if comments:
                example = f.metadata.get("example")
                lines.append(f"# {f.name} = {_toml_value(example)}  (unset by default)")
            continue
        lines.append(f"{f.name} = {_toml_value(value)}")
    return lines + later


def render_toml(settings: Settings, *, comments: bool = False) -> str:
    """``settings`` as a TOML document that :func:`load_settings` reads back to the same value."""
    docs = field_docs(Settings)
    blocks: list[list[str]] = []
    for f in dataclasses.fields(Settings):
        value = getattr(settings, f.name)
        item_type = _table_list_item(_hints(Settings)[f.name])
        if item_type is not None:
            if comments and not value:
                blocks.append(_template(item_type, f.name, docs[f.name]))
            for account in value:
                blocks.append(_table_lines(account, "[accounts]", comments=False, doc=""))
            continue
        blocks.append(_table_lines(value, f.name, comments=comments, doc=docs[f.name]))
    return "\n\n".join("\n".join(block) for block in blocks) + "\n"


def render_defaults() -> str:
    """The text of ``config/defaults.toml``: every key, its default and its documentation."""
    header = (
        "# sipua: every setting with its default value.\n"
        "#\n"
        "# Generated from sipua/settings.py: do not edit; run\n"
        "#     python -m sipua.config --write-defaults\n"
        "# after changing a setting. Copy only the keys you change into your own file; see\n"
        "# config/README.md for where sipua looks for it and docs/configuration.md for more.\n\n"
    )
    return header + render_toml(Settings(), comments=True)


def render_reference() -> str:
    """The Markdown key reference of ``docs/configuration.md`` (between its markers)."""
    out: list[str] = []
    section_docs = field_docs(Settings)
    hints = _hints(Settings)
    for f in dataclasses.fields(Settings):
        tp = hints[f.name]
        item = _table_list_item(tp)
        cls = item if item is not None else tp
        title = f"[[{f.name}]]" if item is not None else f"[{f.name}]"
        out += [f"### `{title}`", "", cls.__doc__ or section_docs[f.name], ""]
        out += _reference_table(cls, (f.name,) if item is None else (f.name, "N"))
        for g in dataclasses.fields(cls):
            sub = _table_list_item(_hints(cls)[g.name])
            if sub is not None:
                out += [f"#### `[[{f.name}.{g.name}]]`", "", sub.__doc__ or "", ""]
                out += _reference_table(sub, (f.name, g.name, "N"))
            nested = _hints(cls)[g.name]
            if _is_settings_class(nested):
                out += [f"#### `[{f.name}.{g.name}]`", "", nested.__doc__ or "", ""]
                out += _reference_table(nested, (f.name, g.name))
    return "\n".join(out).rstrip() + "\n"


def _reference_table(cls: type, path: tuple[str, ...]) -> list[str]:
    docs = field_docs(cls)
    hints = _hints(cls)
    rows = ["| key | type | default | environment | meaning |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.default is not MISSING:
            default = "unset" if f.default is None else f"`{_toml_value(f.default)}`"
        elif f.default_factory is not MISSING and _is_settings_class(hints[f.name]):
            default = "see below"  # a nested table, documented in its own section
        elif f.default_factory is not MISSING:
            default = f"`{_toml_value(f.default_factory())}`"
        else:
            default = "required"
        env = _env_name((*path, f.name))
        meaning = docs[f.name].replace("|", "\\|").replace("<", "&lt;")
        rows.append(f"| `{f.name}` | {_type_name(hints[f.name])} | {default} | `{env}` | "
                    f"{meaning} |")
    return [*rows, ""]


def _splice_docs(text: str) -> str:
    begin, end = text.find(DOCS_BEGIN), text.find(DOCS_END)
    if begin < 0 or end < begin:
        raise ConfigError(f"{DOCS_FILE} lacks the markers {DOCS_BEGIN!r} and {DOCS_END!r}")
    return text[: begin + len(DOCS_BEGIN)] + "\n\n" + render_reference() + "\n" + text[end:]


def _redacted(settings: Settings) -> Settings:
    """The same settings with every password replaced, for printing."""
    hidden = "********"
    return dataclasses.replace(
        settings,
        accounts=tuple(dataclasses.replace(a, password=hidden) if a.password else a
                       for a in settings.accounts),
        ice=dataclasses.replace(settings.ice, turn_servers=tuple(
            dataclasses.replace(t, password=hidden) if t.password else t
            for t in settings.ice.turn_servers)))


# --- python -m sipua.config -----------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """``python -m sipua.config``: write the generated files, check them, or show settings."""
    parser = argparse.ArgumentParser(prog="python -m sipua.config", description=__doc__.split(
        "\n\n")[0] if __doc__ else None)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write-defaults", nargs="?", const=str(DEFAULTS_FILE), metavar="PATH",
                       help=f"write the defaults file (default {DEFAULTS_FILE})")
    group.add_argument("--write-docs", nargs="?", const=str(DOCS_FILE), metavar="PATH",
                       help="regenerate the key reference inside docs/configuration.md")
    group.add_argument("--check", action="store_true",
                       help="exit 1 when the defaults file or the docs are stale")
    group.add_argument("--show", nargs="?", const="", metavar="FILE",
                       help="print the effective settings, passwords hidden (FILE, else the usual "
                            "search)")
    args = parser.parse_args(argv)
    try:
        if args.write_defaults is not None:
            Path(args.write_defaults).write_text(render_defaults(), encoding="utf-8")
        elif args.write_docs is not None:
            target = Path(args.write_docs)
            target.write_text(_splice_docs(target.read_text(encoding="utf-8")), encoding="utf-8")
        elif args.check:
            stale = []
            if DEFAULTS_FILE.read_text(encoding="utf-8") != render_defaults():
                stale.append(f"{DEFAULTS_FILE}: run python -m sipua.config --write-defaults")
            docs = DOCS_FILE.read_text(encoding="utf-8")
            if docs != _splice_docs(docs):
                stale.append(f"{DOCS_FILE}: run python -m sipua.config --write-docs")
            for line in stale:
                print(line, file=sys.stderr)
            return 1 if stale else 0
        else:
            settings = load_settings(args.show or None)
            sys.stdout.write(render_toml(_redacted(settings)))
    except ConfigError as exc:
        print(f"sipua: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
