"""Where an artifact goes: `hf://org/name[@rev]`, `oci://host[:port]/repo[:tag|@digest]`,
`file:///path[:tag]` (an OCI image layout directory)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import PublishError

DEFAULT_TAG = "latest"
# the OCI distribution spec's grammar for tags and repository names
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_REPO = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"hf://{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class OciRef:
    host: str  # host[:port]
    repository: str
    reference: str  # a tag, or a sha256 digest

    def __str__(self) -> str:
        sep = "@" if self.is_digest else ":"
        return f"oci://{self.host}/{self.repository}{sep}{self.reference}"

    @property
    def is_digest(self) -> bool:
        return bool(_DIGEST.match(self.reference))


@dataclass(frozen=True)
class LayoutRef:
    path: Path
    tag: str = DEFAULT_TAG

    def __str__(self) -> str:
        return f"file://{self.path}:{self.tag}"


Ref = HubRef | OciRef | LayoutRef


def _tag(tag: str, uri: str) -> str:
    if not _TAG.match(tag):
        raise PublishError(f"{uri}: {tag!r} is not a valid tag (letters, digits, '_', '.', '-'; at most 128)")
    return tag


def parse(uri: str) -> Ref:
    """Parse a registry URI; anything else is a one-line error that shows the accepted forms."""
    forms = "hf://org/name[@revision], oci://host[:port]/repo[:tag], file:///path[:tag]"
    if uri.startswith("hf://"):
        rest = uri[5:]
        repo_id, _, rev = rest.partition("@")
        if not _HUB_ID.match(repo_id):
            raise PublishError(f"{uri}: a Hub repository is org/name")
        return HubRef(repo_id, rev or None)
    if uri.startswith("oci://"):
        rest = uri[6:]
        host, slash, path = rest.partition("/")
        if not host or not slash or not path:
            raise PublishError(f"{uri}: expected oci://host[:port]/repo[:tag]")
        if "@" in path:
            path, _, ref = path.partition("@")
            if not _DIGEST.match(ref):
                raise PublishError(f"{uri}: {ref!r} is not a sha256 digest")
        else:
            path, _, ref = path.rpartition(":") if ":" in path else (path, "", DEFAULT_TAG)
            ref = _tag(ref, uri)
        if not _REPO.match(path):
            raise PublishError(f"{uri}: {path!r} is not a valid repository name (lowercase, digits, '._-/')")
        return OciRef(host, path, ref)
    if uri.startswith("file://"):
        rest = uri[7:]
        if not rest.startswith("/"):
            raise PublishError(f"{uri}: a file URI takes an absolute path (file:///path/to/layout[:tag])")
        head, colon, tag = rest.rpartition(":")
        if colon and "/" not in tag:
            return LayoutRef(Path(head), _tag(tag, uri))
        return LayoutRef(Path(rest))
    raise PublishError(f"{uri!r} is not a registry URI; use {forms}")
