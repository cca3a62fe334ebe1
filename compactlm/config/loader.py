"""Typed YAML configs: nested dataclasses filled from YAML, with `key.sub=value` overrides.

Every stage's config is a dataclass; `load_config(Cls, path, overrides)` reads YAML, applies
command-line overrides (the value is parsed as YAML, so `optim.lr=3e-4`, `data.weights=[0.7,0.3]`
and `model.tie_embeddings=true` all work), builds the dataclass and runs its `checks()`. Every
problem is one line naming the key and blaming where it came from: the override on the command line
that set it, or the YAML file; an unknown key gets a "did you mean". `describe` lists every key with
its type, default and meaning (the comment beside the field), for `compactlm config show`.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import io
import tokenize
import types
import typing
from pathlib import Path

import yaml

from compactlm.errors import CompactlmError, ConfigError, shown_key


class KeyProblem(Exception):
    """A problem with one (dotted) key; turned into a ConfigError that says where the key came from."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


# ---- reading ---------------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], object]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. optim.lr=3e-4")
    try:
        parsed = yaml.safe_load(value) if value else ""
    except (yaml.YAMLError, RecursionError):  # PyYAML recurses once per nesting level: "[[[[..." is text
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(data: dict, overrides: list[str]) -> dict[str, str]:
    """Apply KEY=VALUE overrides to `data` in place; returns {dotted key: the override's text}."""
    applied = {}
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, key in enumerate(path[:-1]):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {shown_key('.'.join(path[:i + 1]))} is not a section")
        node[path[-1]] = value
        applied[".".join(path)] = text
    return applied


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the config as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:  # PyYAML recurses once per nesting level
        raise ConfigError(f"{path}: invalid YAML (nested too deeply)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values")
    return data


def load_config(cls, path: str | Path | None = None, overrides: list[str] = (), data: dict | None = None,
                check: bool = True):
    """Build dataclass `cls` from a YAML file (or a dict) plus overrides, checked unless told not to."""
    source = str(path) if path is not None else "config"
    data = dict(data or {}) if path is None else read_yaml(path)
    overridden = apply_overrides(data, list(overrides))
    return from_dict(cls, data, source, overridden, check)


def failed_checks(config) -> list[tuple[str, str]]:
    """(key, problem) for each of a config's own `checks()` that does not hold."""
    checks = config.checks() if hasattr(config, "checks") else []
    return [(key, problem) for key, ok, problem in checks if not ok]


def from_dict(cls, data, source: str = "config", overridden: dict[str, str] | None = None, check: bool = True):
    """Build and check `cls` from plain data; problems become one ConfigError line."""
    try:
        config = _build(cls, data, "")
        for key, problem in failed_checks(config)[:1] if check else []:
            raise KeyProblem(key, problem)
    except KeyProblem as p:
        if p.problem == UNKNOWN:
            p.problem = UNKNOWN + _suggestion(cls, p.key)
        raise ConfigError(_attribute(p, source, overridden or {})) from None
    return config


def _attribute(p: KeyProblem, source: str, overridden: dict[str, str]) -> str:
    """Blame the override that set the key (or a section above it), else the file."""
    for key, text in overridden.items():
        if p.key == key or p.key.startswith((key + ".", key + "[")):
            return f"override {text!r}: {shown_key(p.key)}: {p.problem}"
    return f"{source}: {shown_key(p.key)}: {p.problem}"


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _build(cls, data, where: str):
    if not isinstance(data, dict):
        raise KeyProblem(where or "config", f"must be a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in sorted(data, key=str):
        if key not in fields:
            raise KeyProblem(_join(where, str(key)), UNKNOWN)
    values = {name: _convert(hints[name], value, _join(where, name)) for name, value in data.items()}
    for name, value in values.items():  # a section given in part keeps its config's defaults for the rest
        section_default = _section_default(fields[name])
        if section_default is not None and dataclasses.is_dataclass(value):
            given = data[name]
            values[name] = dataclasses.replace(section_default, **{k: getattr(value, k) for k in given})
    try:
        return cls(**values)
    except TypeError as exc:  # a required key is missing
        raise KeyProblem(where or "config", str(exc).split(".__init__() ")[-1]) from None
    except CompactlmError as exc:  # a dataclass's own __post_init__ check (SourceConfig's is a DataError)
        # its message may quote a value with a line break in it: the key's message stays one line
        raise KeyProblem(where or "config", " ".join(str(exc).splitlines())) from None


def _section_default(field):
    """The default a config gives one of its sections (which may differ from the section class's own:
    FinetuneConfig's optimizer, say), or None for a field that is not a section with a default."""
    if field.default_factory is dataclasses.MISSING:
        return None
    default = field.default_factory()
    return default if dataclasses.is_dataclass(default) else None


UNKNOWN = "unknown key"


def _suggestion(root, key: str) -> str:
    """'; did you mean optim.lr?' for train.lr: the same name in another section, else a close spelling."""
    known = all_keys(root)
    leaf = key.rsplit(".", 1)[-1]
    close = [k for k in known if k.rsplit(".", 1)[-1] == leaf] or difflib.get_close_matches(key, known, n=2, cutoff=0.7)
    return (f"; did you mean {' or '.join(close)}?" if close else "") + " (`compactlm config show CONFIG` lists every key)"


def all_keys(cls, where: str = "") -> list[str]:
    """Every dotted leaf key of a config class (sections, also optional ones, are descended into)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        section = next((h for h in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(h)), None)
        keys += all_keys(section, _join(where, f.name)) if section else [_join(where, f.name)]
    return keys


def _convert(hint, value, where: str):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        rejections = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where)
            except KeyProblem as p:
                rejections.append(p)
        raise rejections[0] if rejections else KeyProblem(where, f"invalid value {value!r}")
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise KeyProblem(where, f"must be a list, got {value!r}")
        (item,) = typing.get_args(hint) or (typing.Any,)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise KeyProblem(where, f"must be a mapping, got {value!r}")
        _, item = typing.get_args(hint) or (str, typing.Any)
        return {str(k): _convert(item, v, f"{where}.{k}") for k, v in value.items()}
    if hint is typing.Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "3e-4" as a string
        except ValueError:
            pass
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise KeyProblem(where, f"must be {hint.__name__}, got {value!r}")
    return value


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


# ---- describing ------------------------------------------------------------------------------------
def field_docs(cls) -> dict[str, str]:
    """{field: the comment beside it, or above it, in the class body}: comments are the fields'
    documentation (base classes' included)."""
    docs = {}
    for klass in reversed(cls.__mro__[:-1]):
        docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls) -> dict[str, str]:
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    docs, pending = {}, []
    for number, line in enumerate(source.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(comments.get(number, ""))  # a comment on the line(s) above the field
            continue
        name = stripped.split(":", 1)[0] if ":" in stripped and not stripped.startswith(("def ", "@", "class ")) else ""
        if name.isidentifier() and line.startswith("    ") and not line.startswith("     "):
            text = comments.get(number) or " ".join(pending)
            if text:
                docs[name] = text
        pending = []
    return docs


def describe(config, where: str = "", defaults=None) -> list[tuple[str, str, object, object, str]]:
    """(dotted key, type, value, default, meaning) for every leaf key of a config. `defaults`: the
    section's defaults as its config sets them (FinetuneConfig's optimizer), else the class's own."""
    rows = []
    docs, hints = field_docs(type(config)), typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        key, value = _join(where, f.name), getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe(value, key, _section_default(f))
            continue
        default = (getattr(defaults, f.name) if defaults is not None else
                   f.default if f.default is not dataclasses.MISSING else
                   f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
        rows.append((key, _type_name(hints[f.name]), plain(value), plain(default), docs.get(f.name, "")))
    return rows


def plain(value):
    """A config value as plain data: dataclasses, also inside lists and mappings, become dicts."""
    if dataclasses.is_dataclass(value):
        return to_dict(value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def _type_name(hint) -> str:
    text = getattr(hint, "__name__", None) if not typing.get_args(hint) else None
    return text or str(hint).replace("typing.", "").replace("compactlm.", "").replace("NoneType", "None")
