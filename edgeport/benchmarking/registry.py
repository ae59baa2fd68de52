"""A real OCI registry on loopback for tests and benchmarks: Debian's `docker-registry`
(CNCF distribution 2.8; `apt-get install docker-registry apache2-utils`), filesystem storage in
a temp dir, bcrypt htpasswd auth, a free port. Stopped (and its storage removed) on exit."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

BINARY = "docker-registry"
USER, PASSWORD = "edgeport", "s3cret-registry-pw"

CONFIG = """version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
auth:
  htpasswd:
    realm: edgeport-test
    path: {root}/htpasswd
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRegistry:
    def __init__(self, workdir: Path | None = None):
        for tool in (BINARY, "htpasswd"):
            if not shutil.which(tool):
                raise RuntimeError(f"{tool} not found: apt-get install docker-registry apache2-utils")
        self.root = Path(tempfile.mkdtemp(prefix="edgeport-registry-", dir=workdir))
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    @property
    def storage(self) -> Path:
        return self.root / "data"

    def blob_path(self, digest: str) -> Path:
        """Where distribution's filesystem driver keeps a blob (to corrupt it in tests)."""
        hexd = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def __enter__(self) -> LocalRegistry:
        pw = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], check=True, capture_output=True, text=True)
        (self.root / "htpasswd").write_text(pw.stdout)
        (self.root / "config.yml").write_text(CONFIG.format(root=self.root, port=self.port))
        self.log = open(self.root / "registry.log", "wb")
        self.proc = subprocess.Popen([BINARY, "serve", str(self.root / "config.yml")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {(self.root / 'registry.log').read_text()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not start listening in 15 s")

    def __exit__(self, *exc) -> None:
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)
