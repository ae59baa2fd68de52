"""What is shipped: every file an artifact's manifest.json lists, plus manifest.json itself,
checked against the manifest before a push and after a pull."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgeport.core import manifest as mf
from edgeport.core.atomic import umask
from edgeport.core.source import sha256_file as sha256_of

from .errors import PublishError


@dataclass(frozen=True)
class File:
    path: str  # relative, '/'-separated
    size: int
    sha256: str  # hex

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}"


def load_manifest(root: Path) -> dict:
    p = root / mf.NAME
    if not p.is_file():
        raise PublishError(f"{root}: no {mf.NAME}; is this an edgeport artifact?")
    try:
        m = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PublishError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(m, dict) or not isinstance(m.get("files"), list):
        raise PublishError(f"{p}: not an edgeport manifest (no file list)")
    return m


def listed(m: dict) -> list[File]:
    """The manifest's file list, validated: relative paths inside the artifact, no duplicates."""
    out, seen = [], set()
    for e in m["files"]:
        try:
            path, size, sha = e["path"], int(e["bytes"]), e["sha256"]
            if not isinstance(path, str) or not isinstance(sha, str) or size < 0:
                raise TypeError(e)
        except (KeyError, TypeError, ValueError):
            raise PublishError(f"{mf.NAME}: malformed file entry {e!r}") from None
        parts = Path(path).parts
        if (not isinstance(path, str) or not parts or Path(path).is_absolute() or ".." in parts
                or path == mf.NAME or path in seen or len(sha) != 64):
            raise PublishError(f"{mf.NAME}: refusing file entry {path!r}")
        seen.add(path)
        out.append(File(Path(path).as_posix(), size, sha))
    return out


# what the OCI config, the layers' media types and the Hub card are built from
REQUIRED = {"format": str, "target": str, "source": dict, "runtime": dict, "quantization": dict}


def _check_fields(root: Path, m: dict) -> None:
    bad = [k for k, t in REQUIRED.items() if not isinstance(m.get(k), t)]
    if not isinstance(m.get("parity"), dict | None):
        bad.append("parity")
    if bad:
        raise PublishError(f"{root / mf.NAME}: missing or malformed {', '.join(bad)}; not an edgeport manifest "
                           "(--force does not help: the registry formats are built from these)")


def for_push(root: Path, force: bool = False) -> tuple[dict, list[File]]:
    """The files to push (manifest.json last), hashed now. Refuses, unless `force`, an artifact
    whose parity failed or is missing, or whose files no longer match its manifest."""
    root = Path(root)
    if not root.is_dir():
        raise PublishError(f"{root}: no such artifact directory")
    m = load_manifest(root)
    _check_fields(root, m)
    problems = []
    parity = m.get("parity")
    if not parity:
        problems.append("it has no parity report (exported with --no-parity?)")
    elif not parity.get("passed"):
        problems.append("its parity check failed")
    files, expected = [], {f.path: f for f in listed(m)}
    on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                     if p.is_file() and p != root / mf.NAME)
    for rel in on_disk:
        p = root / rel
        actual = File(rel, p.stat().st_size, sha256_of(p))
        files.append(actual)
        if rel not in expected:
            problems.append(f"{rel} is not in its manifest")
        elif expected[rel] != actual:
            problems.append(f"{rel} was changed after export (sha256 differs from the manifest)")
    problems += [f"{rel} is missing" for rel in expected if not (root / rel).is_file()]
    if problems and not force:
        raise PublishError(f"refusing to push {root}: {'; '.join(problems)} (--force pushes it anyway)")
    mp = root / mf.NAME
    files.append(File(mf.NAME, mp.stat().st_size, sha256_of(mp)))
    return m, files


def executable(m: dict) -> set[str]:
    """The paths manifest.json marks `executable: true` (export records a Jetson kit's scripts
    so): the one source of file modes for every transport, as neither the Hub nor
    actions/download-artifact keeps modes."""
    return {Path(e["path"]).as_posix() for e in m.get("files") or []
            if isinstance(e, dict) and e.get("executable") is True and isinstance(e.get("path"), str)}


def restore_modes(root: Path, m: dict) -> None:
    """After a pull: the files manifest.json marks executable get 0o777 & ~umask, the others
    0o666 & ~umask, whatever the store said."""
    import os


    exe, mask = executable(m), umask()
    for f in listed(m):
        p = root / f.path
        if p.is_file():
            os.chmod(p, (0o777 if f.path in exe else 0o666) & ~mask)


def verify_pulled(root: Path, files: list[File]) -> None:
    """After a pull: the manifest.json that arrived lists exactly the other files that arrived,
    with their sizes and sha256 (each already checked against its registry digest)."""
    m = load_manifest(root)
    want = {f.path: f for f in listed(m)}
    got = {f.path: f for f in files if f.path != mf.NAME}
    for rel in sorted(set(want) | set(got)):
        if rel not in got:
            raise PublishError(f"{rel} is listed in manifest.json but was not published with it")
        if rel not in want:
            raise PublishError(f"{rel} was published but is not listed in manifest.json")
        if want[rel] != got[rel]:
            raise PublishError(f"{rel} does not match manifest.json (sha256 or size differs)")
