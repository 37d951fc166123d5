"""Dataset manifests: what each fundus dataset should look like on disk, read from TOML.

One ``data_manifests/<key>.toml`` per dataset says where it lives under the data root, which files
play which role (images, vessel masks, FOV masks, lesion masks, label table), how many of each to
expect, what the labels mean, the licence, citation and download location. ``data check`` and the
loaders in :mod:`koch_explore.data.datasets` read the layout from here instead of hard-coding it,
so a dataset is described once.

Per-file checksums are *not* copied into the TOML (EyePACS alone has 5.5k files): the manifest names
the ``MANIFEST.json`` shipped beside the data, and pins the sha256 of a few key files itself, so a
damaged or regenerated MANIFEST.json cannot vouch for a damaged label table.

Layout patterns are globs relative to the dataset folder in which ``{id}`` marks the part of the
file name shared by the files of one sample, e.g. ``training/images/{id}_training.tif`` and
``training/1st_manual/{id}_manual1.gif`` pair DRIVE image 21 with its vessel tree.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import tomllib

ENV_VAR = "KOCH_MANIFESTS"
ID_FIELD = "{id}"
ROLE_KINDS = ("image", "mask", "table")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TOP_LEVEL_KEYS = {
    "name", "folder", "title", "task", "description", "licence", "citation", "urls", "checksums",
    "checksums_required", "optional", "key_files", "roles", "labels", "splits",
}
_ROLE_KEYS = {"kind", "patterns", "expected", "required", "description"}
_LABEL_KEYS = {"description", "file", "id_column", "columns"}


class ManifestError(ValueError):
    """A manifest file is unreadable or inconsistent; the message names the TOML file."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Glob pattern (``*``, ``?``, one ``{id}``) to a regex that captures the id."""
    out = []
    for token in re.split(r"(\{id\}|\*|\?)", pattern):
        if token == ID_FIELD:
            out.append(r"(?P<id>[^/]+?)")
        elif token == "*":
            out.append(r"[^/]*")
        elif token == "?":
            out.append(r"[^/]")
        else:
            out.append(re.escape(token))
    return re.compile("".join(out) + r"\Z")


@dataclass(frozen=True)
class Role:
    """One kind of file in a dataset (e.g. DRIVE's observer-1 vessel trees).

    ``expected`` is a file count, the name of another role whose count must be matched (phantom
    sizes depend on the generator's arguments), or ``None`` when any count is fine. A ``required``
    role must match at least one file for a folder to be recognised as this dataset.
    """

    name: str
    kind: str
    patterns: tuple[str, ...]
    expected: int | str | None = None
    required: bool = True
    description: str = ""

    def index(self, folder: str | os.PathLike) -> dict[str, Path]:
        """Map sample id -> file, so files of different roles can be paired by id.

        A role without ``{id}`` (a label table) is keyed by its path relative to ``folder``. When two
        patterns yield the same id (e.g. DRIVE training and test never do), the first pattern wins.
        """
        base = Path(folder)
        out: dict[str, Path] = {}
        for pattern in self.patterns:
            regex = _pattern_regex(pattern)
            for p in sorted(base.glob(pattern.replace(ID_FIELD, "*"))):
                rel = p.relative_to(base).as_posix()
                m = regex.match(rel)
                if m and p.is_file():
                    out.setdefault(m.groupdict().get("id") or rel, p)
        return dict(sorted(out.items()))

    def glob(self, folder: str | os.PathLike) -> list[Path]:
        """Files of this role under ``folder``, sorted."""
        return sorted(set(self.index(folder).values()))


@dataclass(frozen=True)
class LabelSpec:
    """What the labels mean. ``columns`` maps a label column to {value: meaning}."""

    description: str
    file: str | None = None
    id_column: str | None = None
    columns: Mapping[str, Mapping[int, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetManifest:
    """Everything the project knows about one dataset before opening it."""

    key: str
    name: str
    folder: str
    title: str
    task: str
    description: str
    roles: Mapping[str, Role]
    labels: LabelSpec
    licence: str
    citation: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()
    checksums: str | None = "MANIFEST.json"
    checksums_required: bool = True
    key_files: Mapping[str, str] = field(default_factory=dict)
    splits: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    optional: bool = False
    source: Path | None = None

    def locate(self, root: str | os.PathLike | None) -> Path | None:
        """The dataset folder under ``root``, or ``root`` itself when it *is* this dataset."""
        if root is None:
            return None
        base = Path(root)
        if (base / self.folder).is_dir():
            return base / self.folder
        if self.recognises(base):
            return base
        return None

    def recognises(self, folder: str | os.PathLike) -> bool:
        """True when every required role has at least one file directly in ``folder``."""
        required = [r for r in self.roles.values() if r.required]
        return bool(required) and Path(folder).is_dir() and all(r.glob(folder) for r in required)

    def expected_counts(self, found: Mapping[str, int]) -> dict[str, int]:
        """Expected count per role, resolving "same as role X" against the ``found`` counts."""
        out: dict[str, int] = {}
        for role in self.roles.values():
            if isinstance(role.expected, int):
                out[role.name] = role.expected
            elif isinstance(role.expected, str):
                out[role.name] = found.get(role.expected, 0)
        return out



def manifests_dir() -> Path:
    """``$KOCH_MANIFESTS`` if set, else ``data_manifests/`` at the repository root, else the copy
    a regular (non-editable) install carries as the ``koch_explore.data_manifests`` package."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[2] / "data_manifests"
    if repo.is_dir():
        return repo
    from importlib.resources import files

    return Path(str(files("koch_explore.data_manifests")))


def _require(cond: bool, path: Path, problem: str) -> None:
    if not cond:
        raise ManifestError(path, problem)


def _parse_role(name: str, raw: object, path: Path) -> Role:
    _require(isinstance(raw, dict), path, f"[roles.{name}] must be a table")
    assert isinstance(raw, dict)
    unknown = set(raw) - _ROLE_KEYS
    _require(not unknown, path, f"[roles.{name}] has unknown keys {sorted(unknown)}")
    kind = raw.get("kind")
    _require(kind in ROLE_KINDS, path, f"[roles.{name}] kind must be one of {ROLE_KINDS}, not {kind!r}")
    patterns = raw.get("patterns")
    _require(
        isinstance(patterns, list) and bool(patterns) and all(isinstance(p, str) and p for p in patterns),
        path, f"[roles.{name}] patterns must be a non-empty list of strings",
    )
    for p in patterns:
        _require(p.count(ID_FIELD) <= 1, path, f"[roles.{name}] pattern {p!r} has more than one {ID_FIELD}")
        _require(not Path(p).is_absolute() and ".." not in Path(p).parts, path,
                 f"[roles.{name}] pattern {p!r} must stay inside the dataset folder")
    expected = raw.get("expected")
    _require(
        expected is None or isinstance(expected, str) or (isinstance(expected, int) and not isinstance(expected, bool) and expected >= 0),
        path, f"[roles.{name}] expected must be a count >= 0 or a role name",
    )
    return Role(
        name=name,
        kind=kind,
        patterns=tuple(patterns),
        expected=expected,
        required=bool(raw.get("required", True)),
        description=str(raw.get("description", "")),
    )


def _parse_labels(raw: object, path: Path) -> LabelSpec:
    _require(isinstance(raw, dict), path, "[labels] table is required (what do the labels mean?)")
    assert isinstance(raw, dict)
    unknown = set(raw) - _LABEL_KEYS
    _require(not unknown, path, f"[labels] has unknown keys {sorted(unknown)}")
    _require(isinstance(raw.get("description"), str), path, "[labels] description is required")
    columns: dict[str, Mapping[int, str]] = {}
    for col, classes in raw.get("columns", {}).items():
        _require(isinstance(classes, dict) and bool(classes), path, f"[labels.columns.{col}] must map values to meanings")
        try:
            columns[col] = MappingProxyType({int(k): str(v) for k, v in classes.items()})
        except ValueError:
            raise ManifestError(path, f"[labels.columns.{col}] keys must be integers") from None
    if columns:
        _require(bool(raw.get("file")) and bool(raw.get("id_column")), path,
                 "[labels] with columns needs file and id_column")
    return LabelSpec(
        description=raw["description"].strip(),
        file=raw.get("file"),
        id_column=raw.get("id_column"),
        columns=MappingProxyType(columns),
    )


def load_manifest(path: str | os.PathLike) -> DatasetManifest:
    """Parse and validate one manifest; unknown keys are errors so that typos do not pass silently."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(p, "manifest file does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(p, f"not valid TOML: {exc}") from None
    unknown = set(raw) - _TOP_LEVEL_KEYS
    _require(not unknown, p, f"unknown keys {sorted(unknown)}")
    for key in ("name", "folder", "title", "task", "description", "licence"):
        _require(isinstance(raw.get(key), str) and bool(raw[key].strip()), p, f"{key!r} is required")
    _require(isinstance(raw.get("roles"), dict) and bool(raw["roles"]), p, "at least one [roles.<name>] is required")
    roles = {name: _parse_role(name, spec, p) for name, spec in raw["roles"].items()}
    for role in roles.values():
        if isinstance(role.expected, str):
            _require(role.expected in roles, p, f"[roles.{role.name}] expected names unknown role {role.expected!r}")
    key_files = raw.get("key_files", {})
    for rel, digest in key_files.items():
        _require(isinstance(digest, str) and bool(_SHA256.match(digest)), p,
                 f"[key_files] {rel!r} must be a lowercase hex sha256")
    splits = {name: tuple(str(i) for i in ids) for name, ids in raw.get("splits", {}).items()}
    return DatasetManifest(
        key=p.stem,
        name=raw["name"],
        folder=raw["folder"],
        title=raw["title"],
        task=raw["task"],
        description=" ".join(raw["description"].split()),
        roles=MappingProxyType(roles),
        labels=_parse_labels(raw.get("labels"), p),
        licence=raw["licence"],
        citation=tuple(raw.get("citation", ())),
        urls=tuple(raw.get("urls", ())),
        checksums=raw.get("checksums") or None,
        checksums_required=bool(raw.get("checksums_required", True)),
        key_files=MappingProxyType(dict(key_files)),
        splits=MappingProxyType(splits),
        optional=bool(raw.get("optional", False)),
        source=p,
    )


def load_manifests(directory: str | os.PathLike | None = None) -> dict[str, DatasetManifest]:
    """All manifests in ``directory`` (default :func:`manifests_dir`), keyed by dataset name, sorted by file name."""
    d = Path(directory) if directory is not None else manifests_dir()
    if not d.is_dir():
        raise FileNotFoundError(f"manifest directory {d} does not exist; set {ENV_VAR} to the folder of *.toml manifests")
    out: dict[str, DatasetManifest] = {}
    for path in sorted(d.glob("*.toml")):
        m = load_manifest(path)
        if m.name in out:
            raise ManifestError(path, f"dataset name {m.name!r} is also used by {out[m.name].source}")
        out[m.name] = m
    return out


def get_manifest(name: str, directory: str | os.PathLike | None = None) -> DatasetManifest:
    """Look a manifest up by dataset name, folder or file stem, case-insensitively."""
    wanted = name.lower()
    manifests = load_manifests(directory)
    for m in manifests.values():
        if wanted in (m.name.lower(), m.folder.lower(), m.key.lower()):
            return m
    raise KeyError(f"no manifest for dataset {name!r}; known: {', '.join(manifests)}")
