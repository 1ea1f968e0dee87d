"""Configuration: ``conf/base.yaml`` overlaid by an environment file, then by ``--set`` overrides.

``base.yaml`` declares every knob; its values give each knob's type. An overlay may only
set keys that base declares, with a value of the same type (ints are accepted where a
float is declared; a knob declared ``null`` takes any type, and those in :data:`MIXED_KEYS` the
types listed there). A mapping declared empty (``spark.extra_conf: {}``) is free-form: overlays
add to it, each entry one value, kept as written (Spark settings are text), and
``--set spark.extra_conf.spark.executor.instances=20`` sets the one key ``spark.executor.instances`` in
it. Problems raise
:class:`ConfigError`, which the CLI turns into exit code 2 with a message naming the key
and the file.

Usage::

    conf = load_config("conf/local.yaml", overrides=["spark.master=local[2]"])
    conf["spark.master"]            # dotted access
    conf.section("features")        # a plain dict
"""
from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BASE_NAME = "base.yaml"
DEFAULT_CONF = "conf/local.yaml"
# Keys that must hold a value after all overlays.
REQUIRED_KEYS = ("warehouse", "spark.master")
# Knobs whose value may take several types (null always allowed): train.prevalence is "auto" or a number.
MIXED_KEYS: dict[str, tuple[type, ...]] = {"train.prevalence": (str, int, float),
                                           "maintenance.vacuum_listing_parallelism": (int,)}
# Knobs whose null means something (a default folder, no new family; the required ones get their own message).
# Null is refused for any other: a null salt made every account golden, a null memory size started no JVM.
NULLABLE_KEYS = frozenset({"simulate.drift.detection_wave_fraction", "spark.checkpoint_dir",
                           "simulate.drift.new_family", *REQUIRED_KEYS})
# YAML 1.1 (PyYAML) reads 1e-4 and 5e-05 as strings: it wants a dot and a signed exponent.
SCIENTIFIC_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message says which key and where."""


class Config(Mapping):
    """Read-only nested configuration with dotted-key access."""

    def __init__(self, data: dict[str, Any], sources: list[str]):
        self._data = data
        self.sources = sources

    def __getitem__(self, dotted: str) -> Any:
        node: Any = self._data
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                raise KeyError(dotted)
            node = node[part]
        return copy.deepcopy(node) if isinstance(node, (dict, list)) else node

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def section(self, name: str) -> dict[str, Any]:
        value = self[name]
        if not isinstance(value, dict):
            raise KeyError(f"{name} is not a section")
        return value

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._data)

    def with_overrides(self, overrides: list[str]) -> Config:
        data = copy.deepcopy(self._data)
        base = _read_yaml(Path(self.sources[0]))  # the base.yaml this conf was loaded over
        for item in overrides:
            _apply_set(data, base, item)
        _check_required(data, self.sources + ["--set"])
        return Config(data, self.sources + ["--set"])


def _base_path(env_file: Path | None = None) -> Path:
    """The project's ``conf/base.yaml``; where there is no project checkout (a cluster-mode driver
    runs the installed package), the ``base.yaml`` next to the environment file (ship both with
    ``spark-submit --files``)."""
    project = PROJECT_ROOT / "conf" / BASE_NAME
    if project.is_file() or env_file is None:
        return project
    return env_file.parent / BASE_NAME


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"configuration file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return loaded


def _type_ok(declared: Any, value: Any, dotted: str = "") -> bool:
    if value is None:
        return declared is None or dotted in MIXED_KEYS or dotted in NULLABLE_KEYS
    if dotted in MIXED_KEYS:
        return isinstance(value, MIXED_KEYS[dotted]) and not isinstance(value, bool)
    if declared is None:
        return True
    if isinstance(declared, bool):
        return isinstance(value, bool)
    if isinstance(declared, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(declared, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(declared, dict):
        return isinstance(value, dict)
    if isinstance(declared, list):
        return isinstance(value, list)
    return isinstance(value, type(declared))


def _type_name(value: Any, dotted: str = "") -> str:
    if dotted in MIXED_KEYS:
        return " or ".join(_type_name(k()) for k in MIXED_KEYS[dotted])
    return {bool: "boolean", int: "integer", float: "number", str: "string", dict: "mapping", list: "list",
            type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _article(name: str) -> str:
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def _read_texts(path: Path) -> Any:
    """The file's values as written (YAML's base loader types nothing): a free-form mapping's Spark
    settings are text, and ``077`` or ``3.10`` must not reach Spark as 63 or 3.1."""
    return yaml.load(path.read_text(), Loader=yaml.BaseLoader)


def _free_form(value: dict, texts: Any, where: str, dotted: str) -> dict:
    """A free-form mapping's entries, each one value, taken as written (``texts``) where YAML typed it."""
    entries = {}
    for key, entry in value.items():
        if isinstance(entry, (dict, list)):
            raise ConfigError(
                f"{where}: '{dotted}.{key}' must be one value, got {_article(_type_name(entry))}: write each "
                f"setting's whole dotted name as one key (e.g. 'spark.executor.instances: 20' under {dotted})")
        text = texts.get(key) if isinstance(texts, dict) else None
        entries[key] = None if entry is None else _setting_text(entry, text)
    return entries


def _setting_text(value: Any, text: Any) -> str:
    """A Spark setting's text from its YAML value: a number as written (YAML reads ``077`` as octal 63,
    ``3.10`` as 3.1, ``1:30`` as 90), less YAML's ``_`` separators (``1_000``: 1000, which Spark reads);
    a YAML boolean (``yes``, ``on``) as ``true``/``false``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) and isinstance(text, str):
        return text.replace("_", "")
    return str(value)


def _merge(target: dict, base: dict, overlay: dict, where: str, prefix: str = "", texts: Any = None) -> None:
    """Overlay ``overlay`` on ``target`` after checking it against ``base``; ``texts``: the overlay's
    values as written, where it came from a file (:func:`_read_texts`)."""
    for key, value in overlay.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(f"{where}: unknown key '{dotted}' (not declared in conf/{BASE_NAME})")
        declared = base[key]
        if isinstance(declared, dict) and value is None:
            continue  # a section whose entries are all commented out: nothing to change (not a null section)
        if isinstance(declared, dict) and declared and isinstance(value, dict):
            _merge(target[key], declared, value, where, dotted + ".",
                   texts.get(key) if isinstance(texts, dict) else None)
            continue
        if isinstance(declared, dict) and not declared and isinstance(value, dict):
            # Free-form: add to what earlier layers set.
            own = texts.get(key) if isinstance(texts, dict) else None
            target[key] = {**(target.get(key) or {}), **_free_form(value, own, where, dotted)}
            continue
        takes_float = isinstance(declared, float) or float in MIXED_KEYS.get(dotted, ())
        if takes_float and isinstance(value, str) and SCIENTIFIC_NUMBER.fullmatch(value.strip()):
            value = float(value)
        if not _type_ok(declared, value, dotted):
            raise ConfigError(
                f"{where}: key '{dotted}' must be {_article(_type_name(declared, dotted))}, got "
                + ("null (give it a value)" if value is None else f"{_type_name(value)} {value!r}")
            )
        target[key] = float(value) if isinstance(declared, float) and value is not None else value


def _apply_set(data: dict, base: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    declared: Any = base
    free_form = False
    for i, part in enumerate(parts):
        declared = declared.get(part) if isinstance(declared, dict) else None
        if declared == {} and i < len(parts) - 1:
            # A free-form mapping: the rest of the dotted key is one key inside it.
            parts = [*parts[:i + 1], ".".join(parts[i + 1:])]
            declared, free_form = None, True
            break
    # A string knob, and a free-form mapping's entry (Spark settings are text), take the text as
    # typed: YAML would read 022 as octal 18, cut '/data/bw #2' at its comment and refuse {{PWD}}/x.jar
    # or *v2. Null stays null, and a quoted YAML string loses its quotes.
    text = (isinstance(declared, str) and key not in MIXED_KEYS) or free_form
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        if not text:
            raise ConfigError(f"--set {item}: {raw!r} is not a YAML value ({str(exc).splitlines()[0]})") from exc
        value = raw
    quoted = isinstance(value, str) and raw.strip()[:1] in ("'", '"')
    overlay: dict[str, Any] = {}
    node = overlay
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = raw if text and value is not None and not quoted else value
    _merge(data, base, overlay, f"--set {item}")


def _check_required(data: dict, sources: list[str]) -> None:
    for dotted in REQUIRED_KEYS:
        node: Any = data
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node in (None, ""):
            raise ConfigError(
                f"missing required value '{dotted}' (looked in {', '.join(sources)}); set it in the file or with --set"
            )


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load ``base.yaml``, overlay ``path`` (default ``conf/local.yaml``) and ``overrides``."""
    env_path = Path(path) if path else PROJECT_ROOT / DEFAULT_CONF
    if not env_path.is_absolute() and not env_path.exists():
        env_path = PROJECT_ROOT / env_path
    base_path = _base_path(env_path)
    base = _read_yaml(base_path)
    data = copy.deepcopy(base)
    sources = [str(base_path)]
    if env_path.resolve() != base_path.resolve():
        _merge(data, base, _read_yaml(env_path), str(env_path), texts=_read_texts(env_path))
        sources.append(str(env_path))
    for item in overrides or []:
        _apply_set(data, base, item)
    if overrides:
        sources.append("--set")
    _check_required(data, sources)
    return Config(data, sources)


# A scheme of two or more letters (file:, hdfs:, s3a:, abfss:): one letter would be a Windows drive.
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


def is_uri(value: str) -> bool:
    """Whether ``value`` names a location by URI (``s3a://b/wh``, and ``file:/x`` as Spark prints them)."""
    return bool(_URI_SCHEME.match(value))


def resolve_path(value: str, root: Path = PROJECT_ROOT) -> str:
    """A local relative path is taken from ``root`` (the project root), ``~`` is the home folder; URIs
    (``s3a://``, ``abfss://``, ``file:/``) pass through."""
    if is_uri(value):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (root / path).resolve())  # an absolute path as given


def typed_path(value: str) -> str:
    """A path typed in a shell (``--warehouse``): relative to the current directory; URIs pass through."""
    return resolve_path(value, Path.cwd())


def warehouse_path(conf: Config) -> str:
    """The warehouse root as an absolute path or URI (relative conf paths are from the project root)."""
    return resolve_path(conf["warehouse"])
