"""``koch-explore data check``: is every dataset complete, intact and decodable?

A dataset's folder is compared with its manifest (``data_manifests/*.toml``): every file listed in
the ``MANIFEST.json`` shipped beside the data must exist with the listed size and sha256, the few
key files pinned in the TOML must match the TOML (so a regenerated or damaged MANIFEST.json cannot
vouch for a damaged label table), every image or mask must decode with :func:`read_raw`, each role
(images, vessel masks, ...) must hold the expected number of files, and every image must have a
valid row in the label table.

Status, worst first: ``corrupt`` (a file is damaged or inconsistent - exit code 1), ``partial``
(files are missing, or no checksum list to verify against), ``found``, and ``missing`` (no folder:
not an error, most users have only some datasets). A root where every dataset checked is missing
is refused by :func:`require_some_found` (exit code 2): it is most likely the wrong folder.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from .io import FundusReadError, read_raw
from .manifests import ID_FIELD, DatasetManifest, load_manifests
from .roots import resolve_data_root

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".gif", ".bmp", ".ppm"})
CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Worst status wins; "note" problems are reported but leave the status alone.
_RANK = {"note": 0, "found": 0, "partial": 1, "corrupt": 2}
# Per-dataset cap on problems of one kind in the label check: 5000 unlabelled images is one fact.
_MAX_LABEL_PROBLEMS = 10


@dataclass(frozen=True)
class Problem:
    """One finding about one file; ``severity`` is the status it forces (corrupt, partial, note)."""

    file: str
    problem: str
    severity: str = "corrupt"


@dataclass
class DatasetStatus:
    """Outcome of checking one dataset. ``verified`` counts files that passed every check that applies."""

    name: str
    status: str
    path: Path | None
    found: dict[str, int] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)
    verified: int = 0
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0
    manifest: DatasetManifest | None = None

    def to_json(self) -> dict:
        """The ``--json`` record; problem files are relative to ``path`` (role patterns for counts)."""
        return {
            "status": self.status,
            "path": None if self.path is None else str(self.path),
            "found": self.found,
            "expected": self.expected,
            "verified": self.verified,
            "problems": [{"file": p.file, "problem": p.problem} for p in self.problems],
        }


@dataclass(frozen=True)
class _FileCheck:
    """What is known about one file before opening it."""

    rel: str
    size: int | None = None
    sha256: str | None = None
    decode: bool = False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def _verify_file(folder: Path, check: _FileCheck) -> tuple[bool, str | None, str]:
    """(passed, problem, severity) for one file: existence, size, sha256, decodability."""
    path = folder / check.rel
    if not path.is_file():
        return False, "file is missing", "partial"
    issues = []
    size = path.stat().st_size
    if check.size is not None and size != check.size:
        issues.append(f"size is {size} bytes, expected {check.size}")
    elif check.sha256 is not None:
        try:
            if _sha256(path) != check.sha256:
                issues.append("sha256 does not match (file altered)")
        except OSError as exc:  # unreadable (permissions, I/O error): report, keep checking the rest
            return False, f"cannot be read ({exc.strerror or exc})", "corrupt"
    if check.decode:
        try:
            read_raw(path)
        except FundusReadError as exc:
            issues.append(exc.problem)
    return (not issues), "; ".join(issues) or None, "corrupt"


def _read_checksum_list(folder: Path, manifest: DatasetManifest, problems: list[Problem]) -> dict[str, _FileCheck]:
    """Entries of the dataset's MANIFEST.json; problems with the list itself are recorded."""
    if manifest.checksums is None:
        return {}
    path = folder / manifest.checksums
    if not path.is_file():
        if manifest.checksums_required:
            problems.append(Problem(manifest.checksums, "missing: per-file checksums cannot be verified", "partial"))
        return {}
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["checksums"]
        if not isinstance(entries, list):
            raise TypeError("'checksums' is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        problems.append(Problem(manifest.checksums, f"unreadable checksum list ({type(exc).__name__}: {exc})"))
        return {}
    out: dict[str, _FileCheck] = {}
    for i, entry in enumerate(entries):
        try:
            rel, size, digest = entry["path"], entry["bytes"], entry["sha256"]
            ok = (
                isinstance(rel, str) and not Path(rel).is_absolute() and ".." not in Path(rel).parts
                and isinstance(size, int) and size >= 0 and isinstance(digest, str) and _SHA256.match(digest)
            )
        except (KeyError, TypeError):
            ok = False
        if not ok:
            problems.append(Problem(manifest.checksums, f"checksums[{i}] is not a valid {{path, bytes, sha256}} entry"))
            continue
        out[rel] = _FileCheck(rel, size, digest, Path(rel).suffix.lower() in IMAGE_SUFFIXES)
    return out


def _plan(folder: Path, manifest: DatasetManifest, problems: list[Problem]) -> dict[str, _FileCheck]:
    """Union of MANIFEST.json entries, TOML key files and files matched by image/mask roles."""
    checks = _read_checksum_list(folder, manifest, problems)
    for rel, digest in manifest.key_files.items():
        listed = checks.get(rel)
        if listed is not None and listed.sha256 != digest:
            problems.append(Problem(rel, f"{manifest.checksums} lists a sha256 that differs from {manifest.key}.toml"))
        checks[rel] = _FileCheck(rel, listed.size if listed else None, digest, Path(rel).suffix.lower() in IMAGE_SUFFIXES)
    for role in manifest.roles.values():
        if role.kind in ("image", "mask"):
            for p in role.glob(folder):
                rel = p.relative_to(folder).as_posix()
                checks.setdefault(rel, _FileCheck(rel, decode=True))
    return checks


def _count_problems(manifest: DatasetManifest, found: dict[str, int], expected: dict[str, int]) -> Iterator[Problem]:
    """Too few files of a role leaves the dataset partial; too many is only worth a note."""
    for role, want in expected.items():
        have = found.get(role, 0)
        where = " or ".join(manifest.roles[role].patterns)
        if have < want:
            yield Problem(where, f"{role}: {have} files found, {want} expected", "partial")
        elif have > want:
            yield Problem(where, f"{role}: {have} files found, only {want} expected (extra files)", "note")


def _stem_if_image(value: str) -> str:
    """Label tables name images with or without extension (``10_left`` or ``10_left.jpeg``)."""
    return Path(value).stem if Path(value).suffix.lower() in IMAGE_SUFFIXES else value


def _label_problems(folder: Path, manifest: DatasetManifest) -> Iterator[Problem]:
    """Every image needs a label row whose grades are among the manifest's declared classes."""
    spec = manifest.labels
    if not spec.file or not spec.columns or not spec.file.endswith(".csv") or any(c in spec.file for c in "*?["):
        return
    path = folder / spec.file
    if not path.is_file():
        return  # reported as a missing file or role count already
    ids: set[str] = set()
    bad = 0
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in reader.fieldnames or []]
            wanted = [spec.id_column, *spec.columns]
            absent = [c for c in wanted if c not in header]
            if absent:
                yield Problem(spec.file, f"label table lacks column(s) {', '.join(map(str, absent))} (has {', '.join(header)})")
                return
            reader.fieldnames = header
            for row in reader:
                ids.add(_stem_if_image((row[spec.id_column] or "").strip()))
                for col, classes in spec.columns.items():
                    raw = (row[col] or "").strip()
                    if not (raw.lstrip("-").isdigit() and int(raw) in classes):
                        bad += 1
                        if bad <= _MAX_LABEL_PROBLEMS:
                            yield Problem(spec.file, f"line {reader.line_num}: {col} {raw!r} is not one of {sorted(classes)}")
    except UnicodeDecodeError:
        yield Problem(spec.file, "label table is not UTF-8 text")
        return
    if bad > _MAX_LABEL_PROBLEMS:
        yield Problem(spec.file, f"{bad - _MAX_LABEL_PROBLEMS} more invalid grades")
    unlabelled = [
        p for role in manifest.roles.values() if role.kind == "image" and any(ID_FIELD in pat for pat in role.patterns)
        for i, p in role.index(folder).items() if i not in ids
    ]
    for p in unlabelled[:_MAX_LABEL_PROBLEMS]:
        yield Problem(p.relative_to(folder).as_posix(), f"image has no row in {spec.file}")
    if len(unlabelled) > _MAX_LABEL_PROBLEMS:
        yield Problem(spec.file, f"{len(unlabelled) - _MAX_LABEL_PROBLEMS} more images have no label row")


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Damaged files are the point of this check; OpenCV's own warnings about them are noise."""
    try:
        import cv2

        logging = cv2.utils.logging
        before = logging.getLogLevel()
        logging.setLogLevel(logging.LOG_LEVEL_ERROR)
    except (ImportError, AttributeError):  # pragma: no cover - older OpenCV builds
        yield
        return
    try:
        yield
    finally:
        logging.setLogLevel(before)


def _default_workers() -> int:
    # Hashing and decoding release the GIL; more threads than cores only thrash the page cache.
    return max(2, min(4, os.cpu_count() or 2))


def check_dataset(
    manifest: DatasetManifest,
    root: str | os.PathLike | None,
    *,
    progress: bool | None = None,
    workers: int | None = None,
) -> DatasetStatus:
    """Check one dataset under ``root`` (a data root, or the dataset folder itself)."""
    start = time.perf_counter()
    folder = manifest.locate(root)
    if folder is None:
        return DatasetStatus(manifest.name, "missing", None, expected=manifest.expected_counts({}), manifest=manifest)
    if not any(p.is_file() for p in folder.rglob("*")):
        return DatasetStatus(manifest.name, "missing", folder, expected=manifest.expected_counts({}),
                             problems=[Problem(manifest.folder, "folder exists but is empty", "note")],
                             manifest=manifest)
    problems: list[Problem] = []
    checks = _plan(folder, manifest, problems)
    found = {role.name: len(role.glob(folder)) for role in manifest.roles.values()}
    expected = manifest.expected_counts(found)
    problems.extend(_count_problems(manifest, found, expected))

    if progress is None:
        progress = sys.stderr.isatty()
    from tqdm.auto import tqdm

    verified = 0
    ordered = sorted(checks.values(), key=lambda c: c.rel)
    with _quiet_opencv(), ThreadPoolExecutor(workers or _default_workers()) as pool, tqdm(
        total=len(ordered), desc=manifest.name, unit="file", disable=not progress, file=sys.stderr, leave=False
    ) as bar:
        for check, (ok, problem, severity) in zip(ordered, pool.map(lambda c: _verify_file(folder, c), ordered)):
            verified += ok
            if problem:
                problems.append(Problem(check.rel, problem, severity))
            bar.update(1)
    problems.extend(_label_problems(folder, manifest))

    status = max((p.severity for p in problems), key=_RANK.__getitem__, default="found")
    status = "found" if status == "note" else status
    return DatasetStatus(manifest.name, status, folder, found, expected, verified, problems,
                         time.perf_counter() - start, manifest)


def select_manifests(
    names: Iterable[str] | None = None, manifests: dict[str, DatasetManifest] | None = None
) -> list[DatasetManifest]:
    """Manifests matching ``names`` (dataset name, folder or TOML stem, any case); all when ``None``."""
    available = manifests if manifests is not None else load_manifests()
    if not names:
        return list(available.values())
    chosen: list[DatasetManifest] = []
    for name in names:
        wanted = name.lower()
        match = next((m for m in available.values() if wanted in (m.name.lower(), m.folder.lower(), m.key.lower())), None)
        if match is None:
            raise KeyError(f"unknown dataset {name!r}; known: {', '.join(available)}")
        if match not in chosen:
            chosen.append(match)
    return chosen


def check_all(
    root: str | os.PathLike | None = None,
    names: Iterable[str] | None = None,
    *,
    progress: bool | None = None,
    manifests: dict[str, DatasetManifest] | None = None,
) -> list[DatasetStatus]:
    """Check every dataset (or those in ``names``) under ``root``, resolved like everywhere else.

    Optional datasets (the phantom) are only reported when their folder exists or when named.
    When ``root`` is itself one dataset's folder (e.g. ``--root runs/phantom``), only that dataset
    is checked. Raises FileNotFoundError when an explicit ``root`` does not exist.
    """
    base = resolve_data_root(root)
    names = list(names or [])
    selected = select_manifests(names, manifests)
    if not names and base is not None:
        itself = [m for m in selected if not (base / m.folder).is_dir() and m.recognises(base)]
        if itself:
            selected = itself
    results = []
    for manifest in selected:
        if manifest.optional and not names and manifest.locate(base) is None:
            continue
        results.append(check_dataset(manifest, base, progress=progress))
    return results


def require_some_found(root: Path | None, statuses: list[DatasetStatus]) -> None:
    """Raise when none of ``statuses`` found its dataset: a root (``--root``, ``KOCH_DATA`` or a
    default one) that holds nothing checked is a mistyped or wrong folder far more often than a
    fresh install, and a table of "missing" rows with exit status 0 would pass for a check."""
    if not statuses or any(s.status != "missing" for s in statuses):
        return
    names = ", ".join(s.name for s in statuses)
    if root is None:
        from .roots import ENV_VAR, candidate_roots

        tried = ", ".join(str(p) for p in candidate_roots(None))
        raise FileNotFoundError(f"no fundus data root found (tried {tried}); set {ENV_VAR} or pass --root")
    raise FileNotFoundError(f"{root}: holds none of the datasets checked ({names}); each goes in its own folder "
                            "right under the data root (see docs/findings/data.md)")


# --------------------------------------------------------------------------- command line


def _counts(status: DatasetStatus) -> str:
    roles = list(dict.fromkeys([*status.found, *status.expected]))
    parts = []
    for role in roles:
        have, want = status.found.get(role, 0), status.expected.get(role)
        parts.append(f"{role} {have}/{want}" if want is not None else f"{role} {have}")
    return ", ".join(parts)


def format_table(root: Path | None, statuses: list[DatasetStatus], seconds: float, max_problems: int = 10) -> str:
    """Human-readable report: one row per dataset, its problems indented below it."""
    lines = [f"data root: {root if root is not None else '(none found: set KOCH_DATA or pass --root)'}"]
    width = max([len(s.name) for s in statuses] + [7])
    lines.append(f"{'dataset':<{width}}  {'status':<8} {'verified':>8}  files found/expected")
    for s in statuses:
        lines.append(f"{s.name:<{width}}  {s.status:<8} {s.verified:>8}  {_counts(s)}")
        if s.status == "missing" and s.manifest is not None and s.manifest.urls:
            lines.append(f"{'':<{width}}    get it from {s.manifest.urls[0]} and unpack into <root>/{s.manifest.folder}")
        for p in s.problems[:max_problems]:
            lines.append(f"{'':<{width}}    {p.file}: {p.problem}")
        if len(s.problems) > max_problems:
            lines.append(f"{'':<{width}}    ... and {len(s.problems) - max_problems} more (see --json)")
    total = sum(s.verified for s in statuses)
    corrupt = [s.name for s in statuses if s.status == "corrupt"]
    verdict = f"CORRUPT: {', '.join(corrupt)}" if corrupt else "no dataset is corrupt"
    lines.append(f"{total} files verified in {seconds:.1f} s; {verdict}.")
    return "\n".join(lines)
