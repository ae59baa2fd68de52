"""Publishing failures a user can act on (one line each, exit 2 at the CLI)."""

from edgeport.core.errors import EdgeportError


class PublishError(EdgeportError):
    """A push or pull was refused or failed: bad URI, unpublishable artifact, registry error,
    a download that does not match what was published."""
