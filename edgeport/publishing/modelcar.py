"""A KServe modelcar: a runnable OCI image with the artifact's files under /models and a static
busybox as /bin/sh. KServe (`storageUri: oci://…`) runs it as a sidecar with
`sh -c 'ln -sf /proc/$$/root/models /mnt/models && sleep infinity'` (kserve pkg/utils/storage.go),
so the image needs sh, ln, mkdir and sleep and nothing else; a Kubernetes image volume mounts
the same /models without the shell. DMR / ModelPack artifacts are not runnable images, hence
this second form beside them (kserve#4083).

One uncompressed tar layer per file (its diff_id is its digest, so a registry dedups unchanged
files across versions), written deterministically (uid 0, mtime 0), plus one layer for busybox.
Pull checks every layer's digest as bytes arrive, extracts only regular files under models/,
then checks the files against the manifest.json that came with them, like an artifact pull."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import struct
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from edgeport.core.atomic import staging
from edgeport.core.progress import Progress

from . import formats
from .artifact import File, executable, load_manifest, restore_modes, verify_pulled
from .errors import PublishError
from .oci import _canonical, _digest, _fetch, _mib, _safe_path
from .stores import OCI_MANIFEST, Store

IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
TAR_LAYER = "application/vnd.oci.image.layer.v1.tar"
KIND = "dev.edgeport.modelcar"  # manifest annotation: this image is an edgeport modelcar (its version)
TITLE = "org.opencontainers.image.title"
MODELS = "models"
APPLETS = ("sh", "ln", "mkdir", "sleep")  # what KServe's modelcar command runs
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
ELF_MACHINES = {62: "amd64", 183: "arm64", 21: "ppc64le", 22: "s390x", 243: "riscv64"}


def busybox() -> tuple[Path, str]:
    """(path, OCI architecture) of a statically linked busybox: a dynamic one would not run in an
    image that has no libc."""
    for c in BUSYBOX_CANDIDATES:
        p = Path(c)
        if p.is_file():
            arch, static = _elf(p)
            if static:
                return p, arch
    raise PublishError("no statically linked busybox found (/bin/busybox); a modelcar needs one for KServe's "
                       "sh: apt-get install busybox-static")


def _elf(p: Path) -> tuple[str, bool]:
    """(architecture, statically linked) of a 64-bit little-endian ELF: static = no PT_INTERP."""
    with open(p, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return "", False
        machine = struct.unpack_from("<H", head, 18)[0]
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    interp = any(struct.unpack_from("<I", table, i * phentsize)[0] == 3 for i in range(phnum))
    return ELF_MACHINES.get(machine, ""), not interp


def _info(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    t = tarfile.TarInfo(name)
    t.type, t.mode, t.size, t.linkname = kind, mode, size, link
    t.mtime, t.uid, t.gid, t.uname, t.gname = 0, 0, 0, "", ""
    return t


def _parents(path: str) -> list[str]:
    parts = PurePosixPath(path).parts[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _write_tar(dst: Path, entries: list[tuple[tarfile.TarInfo, Path | None]]) -> File:
    with tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, src in entries:
            if src is None:
                tar.addfile(info)
            else:
                with open(src, "rb") as f:
                    tar.addfile(info, f)
    return File(dst.name, dst.stat().st_size, _sha256(dst))


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while b := f.read(2**20):
            h.update(b)
    return h.hexdigest()


def _layers(root: Path, m: dict, files: list[File], tmp: Path) -> tuple[list[File], list[str], str]:
    """The layer tars in `tmp` (busybox first), what each carries, and the architecture."""
    bb, arch = busybox()
    base = [(_info("bin", tarfile.DIRTYPE, 0o755), None), (_info("bin/busybox", tarfile.REGTYPE, 0o755,
                                                                  bb.stat().st_size), bb)]
    base += [(_info(f"bin/{a}", tarfile.SYMTYPE, 0o777, link="busybox"), None) for a in APPLETS]
    base.append((_info(MODELS, tarfile.DIRTYPE, 0o755), None))
    layers, titles = [_write_tar(tmp / "0.tar", base)], ["busybox"]
    exe = executable(m)
    for i, f in enumerate(files, 1):
        name = f"{MODELS}/{f.path}"
        entries = [(_info(d, tarfile.DIRTYPE, 0o755), None) for d in _parents(name)]
        entries.append((_info(name, tarfile.REGTYPE, 0o755 if f.path in exe else 0o644, f.size), root / f.path))
        layers.append(_write_tar(tmp / f"{i}.tar", entries))
        titles.append(f.path)
    return layers, titles, arch


def build(root: Path, m: dict, files: list[File], tmp: Path) -> tuple[list[File], bytes, bytes]:
    """(layer tars in `tmp`, config bytes, manifest bytes) of the modelcar image for an artifact."""
    layers, titles, arch = _layers(root, m, files, tmp)
    name = (m.get("source") or {}).get("model", root.name)
    labels = {TITLE: f"{name} ({m.get('target')}, {m.get('format')})", KIND: "1"}
    config = _canonical({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "WorkingDir": "/", "Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": [x.digest for x in layers]},
    })
    manifest = _canonical({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": IMAGE_CONFIG, "digest": _digest(config), "size": len(config)},
        "layers": [{"mediaType": TAR_LAYER, "digest": x.digest, "size": x.size,
                    "annotations": {TITLE: t} | ({formats.FILEPATH: t} if i else {})}
                   for i, (x, t) in enumerate(zip(layers, titles, strict=True))],
        "annotations": {KIND: "1", TITLE: labels[TITLE]},
    })
    return layers, config, manifest


def push(store: Store, reference: str, root: Path, m: dict, files: list[File]) -> str:
    """Build the image's layers in a temporary directory (as much disk as the artifact), upload
    what the store lacks, then the config, then the manifest. Returns the manifest digest."""
    with tempfile.TemporaryDirectory(prefix="edgeport-modelcar-") as t:
        layers, config, manifest = build(root, m, files, Path(t))
        todo = [x for x in layers if not store.has_blob(x.digest, x.size)]
        print(f"pushing a modelcar image of {len(files)} files to {store.describe()}:{reference} "
              f"({_mib(sum(x.size for x in todo))} to upload, {len(layers) - len(todo)} layers already there)",
              flush=True)
        with Progress() as progress:
            bar = progress.task("uploading", sum(x.size for x in todo))
            for x in todo:
                store.put_blob(Path(t) / x.path, x.digest, x.size, bar.advance)
    store.put_bytes(config, _digest(config))
    store.put_manifest(reference, manifest, OCI_MANIFEST)
    return _digest(manifest)


def is_modelcar(manifest: object) -> bool:
    return isinstance(manifest, dict) and (manifest.get("annotations") or {}).get(KIND) is not None


def pull(store: Store, reference: str, raw: bytes, out: Path, force: bool = False) -> Path:
    """Extract a modelcar whose manifest is `raw` into `out`: every layer's digest checked, the
    config's diff_ids matched to the layers, only files under models/ taken, then the files
    checked against the manifest.json among them; `out` appears only when all of it holds."""
    try:
        manifest = json.loads(raw)
        cfg = manifest["config"]
        layers = [(str(x["digest"]), int(x["size"]),
                   PurePosixPath(str((x.get("annotations") or {}).get(TITLE, "layer"))).name or "layer")
                  for x in manifest["layers"]]
        if cfg["mediaType"] != IMAGE_CONFIG:
            raise ValueError(cfg)
    except (KeyError, TypeError, ValueError):
        raise PublishError(f"{store.describe()}:{reference}: malformed modelcar manifest") from None
    with tempfile.TemporaryDirectory(prefix="edgeport-modelcar-") as t:
        cpath = Path(t) / "config.json"
        _fetch(store, str(cfg["digest"]), int(cfg["size"]), cpath)
        diff_ids = (json.loads(cpath.read_text()).get("rootfs") or {}).get("diff_ids")
        if diff_ids != [d for d, _, _ in layers]:
            raise PublishError(f"{store.describe()}:{reference}: the image config's diff_ids do not match its "
                               "layers (edgeport's modelcar layers are uncompressed tars)")
        with staging(Path(out), force) as tmp, Progress() as progress:
            bar = progress.task("downloading", sum(s for _, s, _ in layers))
            files: list[File] = []
            for digest, size, title in layers:
                tar = Path(t) / f"{title}.layer"  # named so that a refusal says which file
                _fetch(store, digest, size, tar, bar.advance)
                files += _extract(tar, tmp)
                tar.unlink()
            verify_pulled(tmp, files)
            restore_modes(tmp, load_manifest(tmp))
    return Path(out)


def _extract(tar: Path, dst: Path) -> list[File]:
    """The regular files under models/ of one layer, written below `dst` without the prefix;
    anything else under models/ (a link, a device, a path escaping it) is refused."""
    out = []
    with tarfile.open(tar, "r:") as tf:
        for info in tf:
            parts = PurePosixPath(info.name).parts
            if not parts or parts[0] != MODELS:
                continue  # busybox and its links
            if info.isdir():
                continue
            rel = _safe_path("/".join(parts[1:]))
            if not info.isreg():
                raise PublishError(f"modelcar layer entry {info.name!r} is not a regular file")
            target = dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with _member(tf, info) as src, open(target, "wb") as f:
                shutil.copyfileobj(src, f)
            out.append(File(rel, target.stat().st_size, _sha256(target)))
    return out


@contextlib.contextmanager
def _member(tf: tarfile.TarFile, info: tarfile.TarInfo) -> Iterator:
    f = tf.extractfile(info)
    if f is None:
        raise PublishError(f"modelcar layer entry {info.name!r} has no content")
    with f:
        yield f
