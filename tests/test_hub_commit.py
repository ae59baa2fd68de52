"""`invoke push --to hf://...` through the REAL huggingface_hub client (HfApi, reading HF_TOKEN
and HF_ENDPOINT as a user's shell would set them) against a small local Hub server written
here: it speaks the part of the Hub's HTTP API our push uses (repo create, README metadata
validation, preupload, the NDJSON commit endpoint, tag) and records every request, headers and
bodies included. Every file is answered `uploadMode: regular`, so file contents travel inside
the commit body (base64); the LFS / Xet upload paths (hf_xet, a Rust client talking to a CAS
server) are not exercised here.

Checked: the commit holds exactly the artifact's files, byte for byte, plus the model card; the
token reaches the server (the Authorization header: proof the test can see it) and appears in
nothing uploaded (request bodies, decoded file contents, the card, URLs) nor in our output."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.test_publishing import assert_same_tree
from tests.test_publishing_faults import make_kit

ROOT = Path(__file__).resolve().parent.parent
HF_SECRET = "hf_edgeportTESTSECRET123"
OID = "0123456789abcdef0123456789abcdef01234567"


class LocalHub:
    """Enough of huggingface.co for HfApi.create_repo / create_commit / create_tag."""

    def __init__(self, root: Path):
        self.root = root  # repositories are materialized under root/<org>/<name>
        self.requests: list[dict] = []
        self.unknown: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _any(self):
                hub.handle(self)

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LocalHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def _body(h: BaseHTTPRequestHandler) -> bytes:
        if "chunked" in (h.headers.get("Transfer-Encoding") or "").lower():
            out = b""
            while (n := int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                out += h.rfile.read(n)
                h.rfile.readline()
            h.rfile.readline()
            return out
        return h.rfile.read(int(h.headers.get("Content-Length") or 0))

    def _reply(self, h: BaseHTTPRequestHandler, status: int, obj) -> None:
        data = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.send_header("Connection", "close")
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        import re

        body = self._body(h)
        path = h.path.split("?")[0]
        self.requests.append({"method": h.command, "url": h.path, "headers": dict(h.headers.items()), "body": body})
        if (h.command, path) == ("POST", "/api/repos/create"):
            req = json.loads(body)
            return self._reply(h, 200, {"url": f"{self.endpoint}/{req['organization']}/{req['name']}"})
        if (h.command, path) == ("POST", "/api/validate-yaml"):
            return self._reply(h, 200, {"errors": [], "warnings": []})
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit|tag)/([^/]+)", path)
        if h.command == "POST" and m:
            repo, kind, _rev = m.groups()
            if kind == "preupload":
                files = json.loads(body)["files"]
                return self._reply(h, 200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False, "oid": None} for f in files]})
            if kind == "commit":
                assert h.headers.get("Content-Type") == "application/x-ndjson"
                for line in body.splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        v = item["value"]
                        assert v["encoding"] == "base64"
                        dst = self.root / repo / v["path"]
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        dst.write_bytes(base64.b64decode(v["content"]))
                    else:
                        assert item["key"] == "header", item["key"]
                return self._reply(h, 200, {"commitUrl": f"{self.endpoint}/{repo}/commit/{OID}", "commitOid": OID,
                                            "pullRequestUrl": None})
            return self._reply(h, 200, {})  # tag
        self.unknown.append(f"{h.command} {h.path}")
        return self._reply(h, 404, {"error": "not served by the test Hub"})

    def decoded_uploads(self) -> list[bytes]:
        """Every file content that arrived, decoded (a token in a file would hide in base64)."""
        out = []
        for r in self.requests:
            if "/commit/" in r["url"]:
                for line in r["body"].splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        out.append(base64.b64decode(item["value"]["content"]))
        return out


@pytest.fixture
def kit(tmp_path) -> Path:
    return make_kit(tmp_path / "kit", weights_bytes=2**20)


@pytest.mark.parametrize("rev", [None, "v1"])
def test_hub_push_through_the_real_client_leaks_no_token(kit, tmp_path, rev):
    with LocalHub(tmp_path / "hub") as hub:
        env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("HF_", "HUGGING"))}
        env.update(HF_ENDPOINT=hub.endpoint, HF_TOKEN=HF_SECRET, HF_HOME=str(tmp_path / "hf-home"),
                   HF_HUB_DISABLE_TELEMETRY="1")
        uri = "hf://edgeport-test/kit" + (f"@{rev}" if rev else "")
        r = subprocess.run([sys.executable, "-m", "invoke", "push", "--artifact", str(kit), "--to", uri], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert f"pushed hf://edgeport-test/kit@{OID}" in r.stdout
    assert hub.unknown == [], f"the push called endpoints the test Hub does not serve: {hub.unknown}"

    calls = [(q["method"], q["url"].split("?")[0]) for q in hub.requests]
    assert ("POST", "/api/repos/create") in calls
    assert ("POST", "/api/models/edgeport-test/kit/commit/main") in calls
    assert [c for c in calls if "/commit/" in c[1]] == [("POST", "/api/models/edgeport-test/kit/commit/main")]
    tags = [q for q in hub.requests if "/tag/" in q["url"]]
    if rev:
        (tag,) = tags
        assert tag["url"] == f"/api/models/edgeport-test/kit/tag/{OID}" and json.loads(tag["body"])["tag"] == rev
    else:
        assert tags == []

    # what was committed: the artifact, byte for byte, and the card
    repo = tmp_path / "hub" / "edgeport-test" / "kit"
    card = repo / "README.md"
    assert card.is_file() and "edgeport" in card.read_text()
    card.unlink()
    assert_same_tree(kit, repo)

    # the token: in the Authorization header of every API call (so this test can see it) ...
    for q in hub.requests:
        assert q["headers"].get("authorization", q["headers"].get("Authorization")) == f"Bearer {HF_SECRET}", q["url"]
    # ... and nowhere else
    secret = HF_SECRET.encode()
    for q in hub.requests:
        assert secret not in q["body"], f"the token in the body of {q['url']}"
        assert HF_SECRET not in q["url"]
        others = {k: v for k, v in q["headers"].items() if k.lower() != "authorization"}
        assert HF_SECRET not in json.dumps(others), f"the token in another header of {q['url']}"
    uploads = hub.decoded_uploads()
    assert len(uploads) == len(list(p for p in kit.rglob("*") if p.is_file())) + 1
    assert not any(secret in u for u in uploads), "the token in an uploaded file"
    assert HF_SECRET not in r.stdout + r.stderr, "the token in our output"
