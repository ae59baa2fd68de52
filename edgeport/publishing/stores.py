"""Content-addressed places an artifact can be pushed to and pulled from: an OCI distribution
registry (HTTP API, through oras-py) and an OCI image layout directory (`file://`). Both
stream: no blob is ever held in memory whole."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from edgeport.core.atomic import atomic_file

from .errors import PublishError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
READ_CHUNK = 2**20

Advance = Callable[[int], None]


class Store(Protocol):
    """What push and pull need from a place that holds blobs and tagged manifests."""

    def describe(self) -> str: ...
    def has_blob(self, digest: str, size: int) -> bool: ...
    def put_blob(self, path: Path, digest: str, size: int, advance: Advance) -> None: ...
    def put_bytes(self, data: bytes, digest: str) -> None: ...
    def put_manifest(self, reference: str, data: bytes, media_type: str) -> None: ...
    def get_manifest(self, reference: str) -> bytes: ...
    def read_blob(self, digest: str) -> contextlib.AbstractContextManager[Iterator[bytes]]: ...


class _Reader:
    """A file read by the HTTP client in blocks, reporting progress; `__len__` lets requests
    send a Content-Length instead of chunked encoding."""

    def __init__(self, f, size: int, advance: Advance):
        self.f, self.size, self.advance = f, size, advance

    def __len__(self) -> int:
        return self.size

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.advance(len(b))
        return b


# ---------------------------------------------------------------------------------------------
# OCI image layout (https://github.com/opencontainers/image-spec/blob/main/image-layout.md)
# ---------------------------------------------------------------------------------------------
REF_NAME = "org.opencontainers.image.ref.name"


class LayoutStore:
    """An OCI image layout directory: `oci-layout`, `index.json` (a tag is a manifest
    descriptor annotated with org.opencontainers.image.ref.name), `blobs/sha256/<hex>`.
    Blobs land via a temp file and rename; index.json is replaced last, atomically."""

    def __init__(self, root: Path, create: bool):
        self.root = Path(root)
        try:
            self._open(create)
        except OSError as e:
            raise PublishError(f"{self.root}: cannot {'create' if create else 'read'} an OCI image layout there "
                               f"({e.strerror or type(e).__name__})") from None

    def _open(self, create: bool) -> None:
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
            if not (self.root / "oci-layout").exists():
                self._atomic_write(self.root / "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
            if not (self.root / "index.json").exists():
                self._atomic_write(self.root / "index.json", self._index_bytes([]))
        elif not (self.root / "oci-layout").is_file() or not (self.root / "index.json").is_file():
            raise PublishError(f"{self.root}: not an OCI image layout (no oci-layout / index.json)")

    def describe(self) -> str:
        return f"file://{self.root}"

    def _blob(self, digest: str) -> Path:
        algo, _, hexd = digest.partition(":")
        return self.root / "blobs" / algo / hexd

    @staticmethod
    def _index_bytes(manifests: list[dict]) -> bytes:
        return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}, indent=2).encode()

    def _atomic_write(self, path: Path, data: bytes) -> None:
        with atomic_file(path, "wb") as f:
            f.write(data)

    def has_blob(self, digest: str, size: int) -> bool:
        p = self._blob(digest)
        return p.is_file() and p.stat().st_size == size

    def put_blob(self, path: Path, digest: str, size: int, advance: Advance) -> None:
        import hashlib

        h = hashlib.sha256()
        with atomic_file(self._blob(digest), "wb") as out, open(path, "rb") as src:
            while b := src.read(READ_CHUNK):
                out.write(b)
                h.update(b)
                advance(len(b))
            if f"sha256:{h.hexdigest()}" != digest:
                raise PublishError(f"{path} changed while it was being pushed")

    def put_bytes(self, data: bytes, digest: str) -> None:
        self._atomic_write(self._blob(digest), data)

    def _index(self) -> list[dict]:
        try:
            manifests = json.loads((self.root / "index.json").read_text())["manifests"]
            if not isinstance(manifests, list) or not all(
                    isinstance(d, dict) and isinstance(d.get("digest"), str)
                    and isinstance(d.get("annotations", {}), dict) for d in manifests):
                raise ValueError("not a list of descriptors")
            return manifests
        except (OSError, ValueError, KeyError, TypeError):
            raise PublishError(f"{self.root}/index.json is not a valid OCI image index") from None

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> None:
        import hashlib

        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.put_bytes(data, digest)
        entries = [d for d in self._index() if d.get("annotations", {}).get(REF_NAME) != reference]
        entries.append({"mediaType": media_type, "digest": digest, "size": len(data),
                        "annotations": {REF_NAME: reference}})
        self._atomic_write(self.root / "index.json", self._index_bytes(entries))

    def get_manifest(self, reference: str) -> bytes:
        for d in self._index():
            if d.get("annotations", {}).get(REF_NAME) == reference or d.get("digest") == reference:
                p = self._blob(d["digest"])
                if not p.is_file():
                    raise PublishError(f"{self.describe()}: manifest blob {d['digest']} is missing")
                return p.read_bytes()
        raise PublishError(f"{self.describe()}: no tag {reference!r}")

    @contextlib.contextmanager
    def read_blob(self, digest: str) -> Iterator[Iterator[bytes]]:
        p = self._blob(digest)
        if not p.is_file():
            raise PublishError(f"{self.describe()}: blob {digest} is missing")
        with open(p, "rb") as f:
            yield iter(lambda: f.read(READ_CHUNK), b"")


# ---------------------------------------------------------------------------------------------
# OCI distribution registry (https://github.com/opencontainers/distribution-spec/blob/main/spec.md)
# ---------------------------------------------------------------------------------------------
USER_ENV, PASSWORD_ENV = "EDGEPORT_REGISTRY_USER", "EDGEPORT_REGISTRY_PASSWORD"
CONNECT_TIMEOUT, READ_TIMEOUT = 3.0, 120.0
TRANSIENT = {408, 429, 500, 502, 503, 504}
ATTEMPTS, BACKOFF = 4, 1.0  # 1, 2, 4 s between attempts
BACKOFF_ENV = "EDGEPORT_RETRY_BACKOFF"  # the base delay in seconds (tests make it short)
RETRY_AFTER_CAP = 30.0  # a registry's Retry-After is honoured up to this many seconds


def backoff(attempt: int) -> float:
    """The wait before attempt `attempt + 1`: BACKOFF (or $EDGEPORT_RETRY_BACKOFF) * 2**attempt."""
    try:
        base = float(os.environ.get(BACKOFF_ENV, BACKOFF))
    except ValueError:
        raise PublishError(f"{BACKOFF_ENV} must be a number of seconds, not {os.environ[BACKOFF_ENV]!r}") from None
    return max(base, 0.0) * 2**attempt


def _registry_class():
    """oras-py's Registry with what a 12 GB blob needs: its own request retry (five attempts,
    ~2 minutes, and a PUT that reads the whole blob into memory) replaced by bounded retries,
    timeouts and streamed uploads. Its auth (docker config.json, credential helpers, token
    exchange) is used as is."""
    import oras.provider
    import requests

    base_request = oras.provider.Registry.do_request.__wrapped__  # without oras' retry decorator

    class Registry(oras.provider.Registry):
        basic = False

        def do_request(self, url, method="GET", data=None, headers=None, json=None, stream=False, retry=True):
            """One request, retried (bounded, exponential, Retry-After honoured) on a transient
            status or a dropped connection when its body can be sent again; a streamed body
            (`retry=False`) is tried once and its caller replays it from disk."""
            headers = dict(headers or {})
            if self.basic and getattr(self.auth, "_basic_auth", None):
                headers.update(self.auth.get_auth_header())  # before a body is sent, not after a 401
            replayable = retry and (data is None or isinstance(data, bytes | str | dict))
            for attempt in range(ATTEMPTS):
                last = attempt == ATTEMPTS - 1 or not replayable
                try:
                    r = base_request(self, url, method, data, headers, json, stream)
                except ValueError as e:  # oras: "Cannot respond to request for authentication."
                    raise PublishError(f"{self.hostname}: authentication failed ({e})") from None
                except (requests.ConnectionError, requests.Timeout):
                    if last:
                        raise
                    time.sleep(backoff(attempt))
                    continue
                if r.status_code in TRANSIENT and not last:
                    time.sleep(_retry_after(r, backoff(attempt)))
                    continue
                return r
            raise AssertionError("unreachable")

    return Registry


def _retry_after(r, default: float) -> float:
    """Retry-After in seconds (RFC 9110: delta-seconds or an HTTP date), capped; else `default`."""
    value = (r.headers.get("Retry-After") or "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return default
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


class _TimeoutSession:
    """requests.Session with default timeouts (oras-py sets none: a silent host hangs forever)."""

    @staticmethod
    def make():
        import requests

        class S(requests.Session):
            def request(self, *a, **kw):
                kw.setdefault("timeout", (CONNECT_TIMEOUT, READ_TIMEOUT))
                return super().request(*a, **kw)

        return S()


def _oci_error(r) -> str:
    try:
        errs = r.json().get("errors") or []
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errs if isinstance(e, dict)) or r.reason
    except ValueError:
        return r.reason or f"HTTP {r.status_code}"


class RegistryStore:
    """A repository in an OCI distribution registry. Credentials: EDGEPORT_REGISTRY_USER /
    EDGEPORT_REGISTRY_PASSWORD, else docker's config.json (`docker login`), else anonymous."""

    def __init__(self, host: str, repository: str, insecure: bool = False):
        from http.cookiejar import DefaultCookiePolicy

        import requests

        self.host, self.repository = host, repository
        self.scheme = "http" if insecure else "https"
        user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
        _quiet_oras()
        Registry = _registry_class()
        probe = self._probe(requests)
        challenge = probe.headers.get("WWW-Authenticate", "") if probe.status_code == 401 else ""
        self.reg = Registry(hostname=host, insecure=insecure,
                            auth_backend="basic" if challenge.lower().startswith("basic") else "token")
        self.reg.session = self.reg.auth.session = _TimeoutSession.make()
        self.reg.session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        self.reg.basic = challenge.lower().startswith("basic")
        self.container = self.reg.get_container(f"{host}/{repository}")
        if user and password:
            self.reg.auth.set_basic_auth(user, password)
        else:
            self.reg.auth.load_configs(self.container)  # docker config.json / credential helpers
        if self.reg.basic:
            if not getattr(self.reg.auth, "_basic_auth", None):
                raise PublishError(f"{host} requires credentials: set {USER_ENV} and {PASSWORD_ENV}, "
                                   "or `docker login` it")
            r = self.reg.do_request(f"{self.scheme}://{host}/v2/")
            if r.status_code == 401:
                raise PublishError(f"{host} rejected the credentials (HTTP 401)")

    def _probe(self, requests):
        """GET /v2/ (a refused connection is tried once more): an unreachable or silent host
        fails in seconds, not minutes, and a server that is no registry says so."""
        url = f"{self.scheme}://{self.host}/v2/"
        for attempt in range(2):
            try:
                r = requests.get(url, timeout=(CONNECT_TIMEOUT, CONNECT_TIMEOUT))
                break
            except requests.exceptions.SSLError:
                raise PublishError(f"{self.host}: TLS handshake failed (a plain-HTTP registry needs --insecure)") \
                    from None
            except requests.Timeout:
                raise PublishError(f"cannot reach registry {self.host} (timed out)") from None
            except requests.ConnectionError:
                if attempt:
                    raise PublishError(f"cannot reach registry {self.host} (refused or unreachable)") from None
                time.sleep(1)
        if r.status_code not in (200, 401):
            raise PublishError(f"{self.host} is not an OCI registry (GET /v2/ returned HTTP {r.status_code})")
        return r

    def describe(self) -> str:
        return f"oci://{self.host}/{self.repository}"

    def _url(self, kind: str, ref: str = "") -> str:
        return f"{self.scheme}://{self.host}/v2/{self.repository}/{kind}/{ref}"

    def _check(self, r, what: str) -> None:
        if r.status_code == 401:
            raise PublishError(f"{self.host}: not authorized to {what} (HTTP 401; check the credentials)")
        if r.status_code == 403:
            raise PublishError(f"{self.host}: access denied to {what} (HTTP 403)")
        if r.status_code >= 300:
            raise PublishError(f"{self.host}: {what} failed (HTTP {r.status_code}: {_oci_error(r)})")

    def has_blob(self, digest: str, size: int) -> bool:
        r = self.reg.do_request(self._url("blobs", digest), "HEAD")
        if r.status_code == 404:
            return False
        self._check(r, f"check blob {digest}")
        return int(r.headers.get("Content-Length", -1)) == size

    def _session(self) -> str:
        """POST a new upload session; its location."""
        r = self.reg.do_request(self._url("blobs", "uploads/"), "POST",
                                headers={"Content-Type": "application/octet-stream", "Content-Length": "0"})
        self._check(r, "start a blob upload")
        loc = self.reg._get_location(r, self.container)
        if not loc:
            raise PublishError(f"{self.host}: the registry gave no upload location")
        return loc

    def _cancel(self, loc: str) -> None:
        """Best effort: drop an upload session that failed (the registry would expire it)."""
        import requests

        try:
            self.reg.do_request(loc, "DELETE", retry=False)
        except (requests.RequestException, PublishError):
            pass

    def _upload(self, opener, digest: str, size: int, name: str, advance: Advance = lambda n: None) -> None:
        """Monolithic upload (POST, then one streamed PUT): the form every registry accepts.
        The PUT's body is `opener()` (a context manager giving a fresh file-like or bytes each
        time). A transient status (408, 429, 5xx) or a dropped connection cancels that session
        and starts a new one, replaying the body from the start (from disk for a file), up to
        ATTEMPTS times with exponential backoff (Retry-After honoured, capped); then one line."""
        import oras.utils
        import requests

        failure = ""
        for attempt in range(ATTEMPTS):
            sent = 0

            def counted(n, _a=advance):
                nonlocal sent
                sent += n
                _a(n)

            loc = None
            try:
                loc = self._session()
                url = oras.utils.append_url_params(loc, {"digest": digest})
                with opener(counted) as body:
                    r = self.reg.do_request(url, "PUT", data=body, retry=False,
                                            headers={"Content-Type": "application/octet-stream",
                                                     "Content-Length": str(size)})
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
                failure, wait = f"connection failed: {type(e).__name__}", backoff(attempt)
            else:
                if r.status_code not in TRANSIENT:
                    self._check(r, f"upload {name}")
                    return
                failure, wait = f"HTTP {r.status_code}", _retry_after(r, backoff(attempt))
            advance(-sent)
            if loc:
                self._cancel(loc)
            if attempt < ATTEMPTS - 1:
                time.sleep(wait)
                if self.has_blob(digest, size):  # the last try landed; only its answer was lost
                    advance(size)
                    return
        raise PublishError(f"{self.host}: upload of {name} failed {ATTEMPTS} times ({failure}); giving up")

    def put_blob(self, path: Path, digest: str, size: int, advance: Advance) -> None:
        """Stream `path` (monolithic upload), replayed from disk on a transient failure."""

        @contextlib.contextmanager
        def opener(counted):
            with open(path, "rb") as f:
                yield _Reader(f, size, counted)

        self._upload(opener, digest, size, path.name, advance)

    def put_bytes(self, data: bytes, digest: str) -> None:
        if not self.has_blob(digest, len(data)):
            self._upload(lambda counted: contextlib.nullcontext(data), digest, len(data), f"blob {digest}")

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> None:
        r = self.reg.do_request(self._url("manifests", reference), "PUT", data=data,
                                headers={"Content-Type": media_type})
        self._check(r, f"push the manifest for {reference}")

    def get_manifest(self, reference: str) -> bytes:
        r = self.reg.do_request(self._url("manifests", reference), "GET",
                                headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"})
        if r.status_code == 404:
            raise PublishError(f"{self.describe()}: no such tag or digest {reference!r}")
        self._check(r, f"read the manifest {reference}")
        return r.content

    @contextlib.contextmanager
    def read_blob(self, digest: str) -> Iterator[Iterator[bytes]]:
        r = self.reg.do_request(self._url("blobs", digest), "GET", stream=True)
        with contextlib.closing(r):
            if r.status_code == 404:
                raise PublishError(f"{self.describe()}: blob {digest} is missing from the registry")
            self._check(r, f"download blob {digest}")
            yield r.iter_content(READ_CHUNK)


def _quiet_oras() -> None:
    import logging

    from oras.logger import logger

    logger.set_level(logging.ERROR)
