"""Publishing under faults, against the real registry (Debian's docker-registry, auth on,
edgeport/benchmarking/registry.py) seen through a fault-injecting HTTP proxy on loopback (below): a blob PUT
answered 503 once, a connection cut in the middle of a blob's body, a 429 with Retry-After, a
registry that answers 503 to every PUT. Each push that can succeed must, and what is pulled back
is byte-identical to what was pushed; one that cannot is one line after bounded retries.

Also: executable bits travel by the artifact's manifest.json (`executable: true`), not by the
pushing machine's file modes (actions/download-artifact drops them) nor by layer annotations.

The artifact is synthetic (no export: seconds, not minutes): a Jetson-kit-like ModelPack artifact
with weights, a config and two scripts its manifest marks executable."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edgeport.benchmarking.registry import LocalRegistry
from tests.test_publishing import (
    assert_normal_modes,
    assert_one_line_error,
    assert_same_tree,
    executables,
    registry_env,
)

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"build_engine.sh", "run.sh"}
FAST = {"EDGEPORT_RETRY_BACKOFF": "0.02"}  # 0.02, 0.04, 0.08 s between attempts


# ---------------------------------------------------------------------------------------------
# a synthetic Jetson-kit-like artifact
# ---------------------------------------------------------------------------------------------
def make_kit(out: Path, weights_bytes: int = 3 * 2**20) -> Path:
    """Weights, a config, two scripts (0755), manifest.json as export writes it (file_entries
    records `executable: true` for the scripts), parity passed."""
    from edgeport.core import manifest as mf

    out.mkdir(parents=True)
    (out / "llm").mkdir()
    (out / "llm" / "model.onnx.data").write_bytes(os.urandom(weights_bytes))
    (out / "llm" / "model.onnx").write_bytes(os.urandom(40_000))
    (out / "config.json").write_text(json.dumps({"max_batch_size": 1}))
    for s in sorted(SCRIPTS):
        (out / s).write_text("#!/bin/sh\necho ok\n")
        os.chmod(out / s, 0o755)
    m = {"schema": mf.SCHEMA, "created": "2025-01-01T00:00:00Z",
         "source": {"model": "synthetic-kit", "hub": False, "revision": None, "files": {}},
         "architecture": "llama", "target": "jetson", "format": "jetson",
         "runtime": {"name": "tensorrt-edge-llm"}, "model": {},
         "quantization": {"requested": "int8"}, "tools": {},
         "files": mf.file_entries(out), "parity": {"passed": True, "stages": {}}}
    assert {e["path"] for e in m["files"] if e.get("executable")} == SCRIPTS
    (out / mf.NAME).write_text(json.dumps(m, indent=2))
    return out


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env or registry_env(**FAST),
                          capture_output=True, text=True, timeout=timeout, umask=0o022)


def assert_ok(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------
# the fault-injecting proxy
# ---------------------------------------------------------------------------------------------
HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


class FaultProxy:
    """HTTP/1.0 forwarder from 127.0.0.1:<port> to the registry, Host header kept (so the
    registry's upload locations point back at the proxy). `faults` is a list of dicts:
    {"method", "path" (a regex), "min_body" (bytes), "times", "action": "status" | "cut",
    "status", "headers", "after" (bytes of the body read before a cut)}; the first that
    matches and has times left fires. Every request is logged as (time, method, path,
    Content-Length, what happened)."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.faults: list[dict] = []
        self.log: list[tuple[float, str, str, int, str]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _any(self):
                proxy.handle(self)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _take(self, method: str, path: str, length: int) -> dict | None:
        with self.lock:
            for f in self.faults:
                if (f.get("times", 1) != 0 and f["method"] == method and re.search(f["path"], path)
                        and length >= f.get("min_body", 0)):
                    if f.get("times", 1) > 0:
                        f["times"] = f.get("times", 1) - 1
                    f["fired"] = f.get("fired", 0) + 1
                    return f
        return None

    def _record(self, method: str, path: str, length: int, what: str) -> None:
        with self.lock:
            self.log.append((time.monotonic(), method, path, length, what))

    @staticmethod
    def _drain(h: BaseHTTPRequestHandler, n: int) -> None:
        while n > 0:
            b = h.rfile.read(min(n, 2**20))
            if not b:
                break
            n -= len(b)

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        assert "chunked" not in (h.headers.get("Transfer-Encoding") or ""), "the client sent a chunked body"
        length = int(h.headers.get("Content-Length") or 0)
        fault = self._take(h.command, h.path, length)
        if fault and fault["action"] == "cut":
            got, want = 0, fault["after"]
            while got < want:
                b = h.rfile.read(min(want - got, 65536))
                if not b:
                    break
                got += len(b)
            self._record(h.command, h.path, length, f"cut after {got}")
            # RST, not FIN: the client is still sending
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
            h.close_connection = True
            return
        if fault and fault["action"] == "status":
            self._drain(h, length)
            body = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": "injected fault"}]}).encode()
            h.send_response_only(fault["status"])
            for k, v in {**fault.get("headers", {}), "Content-Type": "application/json",
                         "Content-Length": str(len(body)), "Connection": "close"}.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(body)
            self._record(h.command, h.path, length, f"answered {fault['status']}")
            return
        self._forward(h, length)

    def _forward(self, h: BaseHTTPRequestHandler, length: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=120)
        headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP}

        def body():
            left = length
            while left > 0:
                b = h.rfile.read(min(left, 2**20))
                if not b:
                    return
                left -= len(b)
                yield b

        conn.request(h.command, h.path, body=body() if length else None, headers=headers)
        resp = conn.getresponse()
        rheaders = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP]
        if h.command == "HEAD" or resp.status in (204, 304):
            data = None
        elif resp.getheader("Content-Length") is None:
            data = resp.read()
            rheaders.append(("Content-Length", str(len(data))))
        else:
            data = resp
        h.send_response_only(resp.status, resp.reason)
        for k, v in rheaders:
            h.send_header(k, v)
        h.send_header("Connection", "close")
        h.end_headers()
        if isinstance(data, bytes):
            h.wfile.write(data)
        elif data is not None:
            while b := data.read(2**20):
                h.wfile.write(b)
        conn.close()
        self._record(h.command, h.path, length, f"forwarded {resp.status}")

    def blob_puts(self, min_body: int = 1) -> list[tuple[float, str, str, int, str]]:
        return [e for e in self.log if e[1] == "PUT" and "/blobs/uploads/" in e[2] and e[3] >= min_body]


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reg():
    with LocalRegistry() as r:
        yield r


@pytest.fixture
def proxy(reg):
    with FaultProxy(reg.port) as p:
        yield p


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Path:
    return make_kit(tmp_path_factory.mktemp("kit") / "kit")


WEIGHTS = 3 * 2**20
BLOB_PUT = r"/v2/.+/blobs/uploads/.+digest=sha256"

FAULTS = {
    "503-once": {"method": "PUT", "path": BLOB_PUT, "min_body": WEIGHTS, "times": 1, "action": "status",
                 "status": 503},
    "cut-mid-blob": {"method": "PUT", "path": BLOB_PUT, "min_body": WEIGHTS, "times": 1, "action": "cut",
                     "after": WEIGHTS // 3},
    "429-retry-after": {"method": "PUT", "path": BLOB_PUT, "min_body": WEIGHTS, "times": 1, "action": "status",
                        "status": 429, "headers": {"Retry-After": "1"}},
}


# ---------------------------------------------------------------------------------------------
# 1. uploads really retry
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", list(FAULTS))
def test_push_survives_a_transient_fault(reg, proxy, kit, fault, tmp_path):
    """The weights blob's PUT fails once (503 / connection cut mid-body / 429 Retry-After: 1):
    the push replays it from disk and succeeds; the pulled tree is byte-identical."""
    proxy.faults.append(dict(FAULTS[fault]))
    repo = f"faults/{fault}"
    r = cli("push", "--artifact", str(kit), "--to", f"oci://{proxy.host}/{repo}:v1", "--insecure")
    assert proxy.faults[0].get("fired") == 1, f"the fault never fired: {proxy.log}"
    assert_ok(r)
    puts = proxy.blob_puts(min_body=WEIGHTS)
    assert len(puts) == 2, puts  # the failed one, then the replay
    if fault == "429-retry-after":
        gap = puts[1][0] - puts[0][0]
        assert gap >= 0.95, f"Retry-After: 1 not honoured: the replay came {gap:.2f} s later"
    out = tmp_path / "pulled"
    assert_ok(cli("pull", "--from", f"oci://{reg.host}/{repo}:v1", "--out", str(out), "--insecure"))
    assert_same_tree(kit, out)


def test_push_gives_up_after_bounded_retries(reg, proxy, kit, tmp_path):
    """A registry that answers 503 to every PUT: a non-zero exit and one line after a bounded
    number of attempts (4) in bounded time, no traceback, and no tag."""
    proxy.faults.append({"method": "PUT", "path": r"/blobs/uploads/", "times": -1, "action": "status",
                         "status": 503})
    t0 = time.monotonic()
    r = cli("push", "--artifact", str(kit), "--to", f"oci://{proxy.host}/faults/always503:v1", "--insecure")
    elapsed = time.monotonic() - t0
    puts = proxy.blob_puts()
    assert len(puts) == 4, f"expected 4 attempts of one blob, got {len(puts)}: {puts}"
    line = assert_one_line_error(r, "503")
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert "giving up" in line, line
    assert len({re.search(r"digest=([^&]+)", p[2])[1] for p in puts}) == 1, "gave up on the first blob"
    assert elapsed < 60, f"took {elapsed:.1f} s"
    assert not any(e[1] == "PUT" and "/manifests/" in e[2] for e in proxy.log), "a manifest was pushed"


def test_retry_after_is_capped_and_dates_are_read():
    from types import SimpleNamespace

    from edgeport.publishing import stores

    def resp(v):
        return SimpleNamespace(headers={"Retry-After": v} if v is not None else {})

    assert stores._retry_after(resp("1"), 0.5) == 1.0
    assert stores._retry_after(resp("86400"), 0.5) == stores.RETRY_AFTER_CAP
    assert stores._retry_after(resp(None), 0.5) == 0.5
    assert stores._retry_after(resp("soon"), 0.5) == 0.5
    from email.utils import formatdate

    assert 3 <= stores._retry_after(resp(formatdate(time.time() + 5, usegmt=True)), 0.5) <= 5


# ---------------------------------------------------------------------------------------------
# 2. executable bits travel by manifest.json
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["oci", "file"])
def test_stripped_modes_round_trip_per_manifest(reg, kit, transport, tmp_path):
    """actions/download-artifact restores files without their modes: a kit whose scripts lost
    their x bits locally is pushed, and the pull gives them back as manifest.json says; what the
    registry holds says so too (the layer's file metadata)."""
    import shutil

    stripped = tmp_path / "stripped"
    shutil.copytree(kit, stripped)
    for p in stripped.rglob("*"):
        if p.is_file():
            os.chmod(p, 0o644)
    assert executables(stripped) == set()
    uri = f"oci://{reg.host}/modes/kit:v1" if transport == "oci" else f"file://{tmp_path / 'layout'}:v1"
    assert_ok(cli("push", "--artifact", str(stripped), "--to", uri, *(["--insecure"] if transport == "oci" else [])))
    out = tmp_path / "pulled"
    assert_ok(cli("pull", "--from", uri, "--out", str(out), *(["--insecure"] if transport == "oci" else [])))
    assert_same_tree(kit, out)
    assert executables(out) == SCRIPTS
    assert_normal_modes(out, SCRIPTS, 0o022)


def test_pull_takes_modes_from_manifest_not_layer_annotations(kit, tmp_path):
    """A manifest whose layer annotations lost the x bit (another tool pushed it): the pull still
    makes the scripts executable, as the artifact's manifest.json says."""
    from edgeport.publishing import formats, transfer

    layout = tmp_path / "layout"
    transfer.push(kit, f"file://{layout}:v1")
    index = json.loads((layout / "index.json").read_text())
    d = index["manifests"][0]
    blob = layout / "blobs" / "sha256" / d["digest"].removeprefix("sha256:")
    manifest = json.loads(blob.read_text())
    for layer in manifest["layers"]:
        meta = json.loads(layer["annotations"][formats.FILE_METADATA])
        meta["mode"] = 0o644
        layer["annotations"][formats.FILE_METADATA] = json.dumps(meta)
    import hashlib

    raw = json.dumps(manifest).encode()
    digest = hashlib.sha256(raw).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(raw)
    d.update(digest=f"sha256:{digest}", size=len(raw))
    (layout / "index.json").write_text(json.dumps(index))
    out = tmp_path / "pulled"
    transfer.pull(f"file://{layout}:v1", out)
    assert executables(out) == SCRIPTS



# ---------------------------------------------------------------------------------------------
# 3. user mistakes at the publishing layer are one line, never a traceback
# ---------------------------------------------------------------------------------------------
def _edited_kit(kit: Path, tmp_path: Path, edit) -> Path:
    import shutil

    d = tmp_path / "edited"
    shutil.copytree(kit, d)
    m = json.loads((d / "manifest.json").read_text())
    edit(m)
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def _edited_layout(kit: Path, tmp_path: Path, edit) -> str:
    """The kit pushed to a layout, then its index (edit(index, None)) or its OCI manifest
    (edit(None, manifest)) damaged in place."""
    from edgeport.publishing import transfer

    layout = tmp_path / "layout"
    transfer.push(kit, f"file://{layout}:v1")
    index = json.loads((layout / "index.json").read_text())
    blob = layout / "blobs" / "sha256" / index["manifests"][0]["digest"].removeprefix("sha256:")
    manifest = json.loads(blob.read_text())
    if edit(index, None) is not False:
        (layout / "index.json").write_text(json.dumps(index))
    else:
        blob.write_text(json.dumps(edit(None, manifest)))
    return f"file://{layout}:v1"


def _set(d: dict, **kw) -> dict:
    d.update(kw)
    return d


MISTAKES = {
    # push
    "push to a file:// path that is a file": lambda kit, tmp: ("push", kit, f"file://{kit / 'run.sh'}:v1"),
    "push a manifest without format": lambda kit, tmp: (
        "push", _edited_kit(kit, tmp, lambda m: m.pop("format")), f"file://{tmp / 'l'}:v1"),
    "push a manifest whose parity is a string": lambda kit, tmp: (
        "push", _edited_kit(kit, tmp, lambda m: m.update(parity="passed")), f"file://{tmp / 'l'}:v1"),
    "push a file entry whose path is a number": lambda kit, tmp: (
        "push", _edited_kit(kit, tmp, lambda m: m["files"].append({"path": 5, "bytes": 1, "sha256": "0" * 64})),
        f"file://{tmp / 'l'}:v1"),
    # pull
    "pull an index entry that is not a descriptor": lambda kit, tmp: (
        "pull", _edited_layout(kit, tmp, lambda i, m: i["manifests"].insert(0, "x") if i else False), None),
    "pull a manifest that is a JSON list": lambda kit, tmp: (
        "pull", _edited_layout(kit, tmp, lambda i, m: False if i else [1, 2]), None),
    "pull a layer descriptor without size": lambda kit, tmp: (
        "pull", _edited_layout(kit, tmp, lambda i, m: False if i else _set(
            m, layers=[{k: v for k, v in ly.items() if k != "size"} for ly in m["layers"]])), None),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_user_mistakes_are_one_line_errors(kit, tmp_path, mistake):
    from edgeport.publishing import transfer
    from edgeport.publishing.errors import PublishError

    verb, a, b = MISTAKES[mistake](kit, tmp_path)
    with pytest.raises(PublishError) as e:
        if verb == "push":
            transfer.push(a, b)
        else:
            transfer.pull(a, tmp_path / "out")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()
