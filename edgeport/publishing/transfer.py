"""`push` and `pull` for every kind of URI: the one entry the CLI and CI call."""

from __future__ import annotations

from pathlib import Path

from . import hub, oci
from .artifact import for_push
from .errors import PublishError
from .stores import LayoutStore, RegistryStore
from .uri import HubRef, LayoutRef, OciRef, parse


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
def pull(uri: str, out: Path, *, force: bool = False, insecure: bool = False, hub_api=None) -> tuple[Path, str]:
    """Fetch the artifact at `uri` into `out`, verified; returns (out, pinned source)."""
    ref = parse(uri)
    if isinstance(ref, HubRef):
        path, commit = hub.pull(hub_api or hub.default_api(), ref, Path(out), force)
        return path, f"hf://{ref.repo_id}@{commit}"
    store, reference = _store(ref, insecure, create=False)
    path, digest = oci.pull(store, reference, Path(out), force)
    return path, f"{store.describe()}@{digest}"


def _store(ref: OciRef | LayoutRef, insecure: bool, create: bool):
    if isinstance(ref, LayoutRef):
        if not create and not ref.path.is_dir():
            raise PublishError(f"{ref.path}: no such OCI layout directory")
        return LayoutStore(ref.path, create=create), ref.tag
    return RegistryStore(ref.host, ref.repository, insecure=insecure), ref.reference
