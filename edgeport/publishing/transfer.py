"""`push` and `pull` for every kind of URI: the one entry the CLI and CI call."""

from __future__ import annotations

import json
from pathlib import Path

from . import hub, modelcar, oci
from .artifact import for_push
from .errors import PublishError
from .stores import LayoutStore, RegistryStore
from .uri import DEFAULT_TAG, HubRef, LayoutRef, OciRef, parse

MODELCAR_SUFFIX = "-modelcar"


def _network_errors(fn):
    """A connection that drops mid-transfer (after the retries) is a one-line error too."""
    import functools

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        import requests

        try:
            return fn(*a, **kw)
        except requests.RequestException as e:
            host = getattr(getattr(e, "request", None), "url", "") or ""
            host = host.split("/")[2] if host.count("/") >= 2 else "the registry"
            raise PublishError(f"network error talking to {host}: {type(e).__name__}") from None
    return wrapper


@_network_errors
def push(artifact: Path, to: str, *, force: bool = False, insecure: bool = False, hub_api=None) -> str:
    """Publish `artifact` at `to`; returns where it landed, pinned (`…@sha256:…` or the commit)."""
    ref = parse(to)
    m, files = for_push(Path(artifact), force)
    if isinstance(ref, HubRef):
        commit = hub.push(hub_api or hub.default_api(), ref, Path(artifact), m, files)
        return f"hf://{ref.repo_id}@{commit}"
    store, reference = _store(ref, insecure, create=True)
    digest = oci.push(store, reference, Path(artifact), m, files)
    return f"{store.describe()}@{digest}"


@_network_errors
def push_modelcar(artifact: Path, to: str, *, force: bool = False, insecure: bool = False) -> str:
    """Publish `artifact` as a KServe modelcar image at `to` (oci:// or file://); returns it
    pinned by digest (`oci://host/repo@sha256:…`, what a storageUri should name)."""
    ref = parse(to)
    if isinstance(ref, HubRef):
        raise PublishError(f"{to}: a modelcar is a container image; push it to oci:// or file://")
    if isinstance(ref, OciRef) and ref.is_digest:
        raise PublishError(f"{to}: push to a tag; the image's digest is the answer")
    m, files = for_push(Path(artifact), force)
    store, reference = _store(ref, insecure, create=True)
    digest = modelcar.push(store, reference, Path(artifact), m, files)
    return f"{store.describe()}@{digest}"


def modelcar_uri(to: str) -> str:
    """Where `push --modelcar` puts the image beside the artifact at `to`: the same repository,
    the tag with -modelcar appended."""
    ref = parse(to)
    if isinstance(ref, OciRef) and not ref.is_digest:
        return str(OciRef(ref.host, ref.repository, ref.reference + MODELCAR_SUFFIX))
    if isinstance(ref, LayoutRef):
        return str(LayoutRef(ref.path, ref.tag + MODELCAR_SUFFIX))
    raise PublishError(f"{to}: --modelcar needs oci://host/repo[:tag] or file:///path[:tag] "
                       f"(tag {DEFAULT_TAG} when omitted)")


@_network_errors
def pull(uri: str, out: Path, *, force: bool = False, insecure: bool = False, hub_api=None) -> tuple[Path, str]:
    """Fetch the artifact at `uri` into `out`, verified; returns (out, pinned source)."""
    ref = parse(uri)
    if isinstance(ref, HubRef):
        path, commit = hub.pull(hub_api or hub.default_api(), ref, Path(out), force)
        return path, f"hf://{ref.repo_id}@{commit}"
    store, reference = _store(ref, insecure, create=False)
    raw = store.get_manifest(reference)
    if _is_modelcar(raw):
        if reference.startswith("sha256:") and oci._digest(raw) != reference:
            raise PublishError(f"the registry returned a manifest whose digest is not {reference}")
        return modelcar.pull(store, reference, raw, Path(out), force), f"{store.describe()}@{oci._digest(raw)}"
    path, digest = oci.pull(store, reference, Path(out), force)
    return path, f"{store.describe()}@{digest}"


def _is_modelcar(raw: bytes) -> bool:
    try:
        return modelcar.is_modelcar(json.loads(raw))
    except ValueError:
        return False  # oci.pull says what is wrong with it


def _store(ref: OciRef | LayoutRef, insecure: bool, create: bool):
    if isinstance(ref, LayoutRef):
        if not create and not ref.path.is_dir():
            raise PublishError(f"{ref.path}: no such OCI layout directory")
        return LayoutStore(ref.path, create=create), ref.tag
    return RegistryStore(ref.host, ref.repository, insecure=insecure), ref.reference
