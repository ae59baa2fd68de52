"""invoke bench: one artifact against its raw backend (bench.json, manifest, PNG), the
comparison table across one model's artifacts, and load on a real running server
(`python -m edgeport.serving`, our front over llama-server, built by edgeport/core/llama_tools.py; and a scripted
server whose timing is known). Speeds are measured and written,
never asserted against a goal: those live in the note and bench/, not in timed tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeport.models import MODELS

ROOT = Path(__file__).resolve().parent.parent


def _copy(exported, case: str, tmp_path: Path) -> Path:
    src, _ = exported(case)
    dst = tmp_path / case
    shutil.copytree(src, dst)
    return dst


def _invoke(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=1200)


# GGUF's raw backend is llama-bench: built on a cold cache (~10 min), so those cases are slow
@pytest.mark.parametrize("case", [pytest.param("cpu-gpt-oss", marks=pytest.mark.slow),
                                  pytest.param("cpu-llama", marks=pytest.mark.slow),
                                  "onnx-llama-int8", "onnx-gpt-oss-mxfp4-int8"])
def test_bench_artifact_writes_report_manifest_and_figure(exported, tmp_path, case):
    from edgeport.core import manifest as mf
    from edgeport.publishing.artifact import for_push

    art = _copy(exported, case, tmp_path)
    r = _invoke("bench", "--artifact", str(art), "--reps", "2", "--new-tokens", "8")
    assert r.returncode == 0, r.stderr
    report = json.loads((art / "bench.json").read_text())
    m = mf.load(art)
    assert (art / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = [w["name"] for w in report["workloads"]]
    assert names == ["short", "long"]
    window = m["parity"]["sliding_window"]
    assert report["workloads"][1]["prompt_tokens"] >= max(512, 4 * (window or 0))  # past the window
    for w in report["workloads"]:
        for k in ("ttft_s", "prefill_tps", "decode_tps"):
            assert 0 < w[k]["min"] <= w[k]["median"] <= w[k]["max"] and w[k]["n"] == 2
        raw = w["raw"]
        assert raw["backend"] == ("llama-bench" if m["format"] == "gguf" else "onnxruntime-genai")
        assert raw["decode_tps"] > 0 and raw["prefill_tps"] > 0 and raw["peak_rss_mib"] > 0
        assert w["ratio"]["decode"] == pytest.approx(w["decode_tps"]["median"] / raw["decode_tps"])
    assert report["machine"]["threads"] >= 1 and report["peak_rss_mib"] > 0
    # the manifest carries the summary and lists the new files with their checksums: still pushable
    assert m["bench"]["workloads"][0]["prompt_tokens"] == report["workloads"][0]["prompt_tokens"]
    assert {"bench.json", "bench.png"} <= {f["path"] for f in m["files"]}
    for_push(art)
    shown = _invoke("show", "--artifact", str(art))
    assert shown.returncode == 0 and "decode tok/s" in shown.stdout


def test_bench_refuses_a_runtime_that_does_not_run_here(exported):
    art, _ = exported("jetson-llama-int8")
    r = _invoke("bench", "--artifact", str(art))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "does not run on this machine" in r.stderr


@pytest.mark.slow
def test_compare_tiny_gpt_oss_reference_gguf_onnx_int8_int4(exported, tmp_path):
    """The seed's table: reference, GGUF Q4_K_M, ONNX int8, ONNX int4 (int4 fails the gate on
    the tiny gpt-oss, so it is kept with --keep-failed and the table says so)."""
    from edgeport.export.pipeline import export

    gguf, _ = exported("cpu-gpt-oss")
    onnx8, _ = export(str(MODELS / "tiny-gpt-oss"), "onnx", tmp_path / "onnx-int8")
    onnx4, m4 = export(str(MODELS / "tiny-gpt-oss"), "onnx", tmp_path / "onnx-int4", quantization="int4",
                       keep_failed=True)
    out = tmp_path / "cmp"
    r = _invoke("bench", "--compare", f"{gguf},{onnx8}", "--compare", str(onnx4), "--reps", "2",
                "--new-tokens", "8", "--out", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(out.with_suffix(".json").read_text())
    rows = res["rows"]
    assert [x["runtime"] for x in rows] == ["transformers", "llama.cpp", "onnxruntime", "onnxruntime"]
    assert [x["quantization"] for x in rows] == ["source", "Q4_K_M", "int8", "int4"]
    assert rows[0]["quality_retained_pct"] == 100.0
    for x in rows[1:]:
        assert 0 < x["quality_retained_pct"] < 100 and x["bytes"] > 0 and x["decode_tps"] > 0
    assert rows[3]["parity"] == ("passed" if m4["parity"]["passed"] else "FAILED")
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "quality" in r.stdout and "reference" in r.stdout


def test_compare_refuses_artifacts_of_different_models(exported):
    a, _ = exported("cpu-gpt-oss")
    b, _ = exported("cpu-llama")
    r = _invoke("bench", "--compare", f"{a},{b}")
    assert r.returncode == 2 and "one model" in r.stderr


@pytest.fixture(scope="module")
def front(exported):
    """Our front (`python -m edgeport.serving`, what `invoke serve` runs) over llama-server, 4 slots, on the
    bundled tiny gpt-oss: it reasons (analysis channel) before it answers."""
    from tests.test_serving import server

    art, _ = exported("cpu-gpt-oss")
    with server(art, "--parallel", "4", "--ctx", "1024") as url:
        yield url


@pytest.mark.slow  # llama-server: built with the tools
def test_bench_serve_against_our_front(front, tmp_path):
    out = tmp_path / "serve.json"
    r = _invoke("bench", "--serve", front, "--clients", "1,4,8", "--requests", "2", "--new-tokens", "200",
                "--out", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert [x["clients"] for x in res["runs"]] == [1, 4, 8]
    for run in res["runs"]:
        assert run["errors"] == 0 and run["requests"] == 2 * run["clients"]
        assert run["output_tokens"] > 0 and run["throughput_tps"] > 0
        for k in ("ttft_any_chunk_ms", "ttft_ms", "ttfat_ms", "e2e_ms", "itl_ms"):
            s = run[k]
            assert s["n"] > 0 and s["p50"] <= s["p90"] <= s["p99"]
        # the model reasons first: its first answer token comes after its first reasoning token,
        # which only holds if the front keeps reasoning out of `content` and the client tells them apart
        assert run["ttfat_ms"]["p50"] > run["ttft_ms"]["p50"]
        assert run["e2e_ms"]["p99"] <= run["wall_s"] * 1000
    assert "TTFT" in r.stdout


SCRIPT = {"role_at": 0.0, "first_token_at": 0.6, "gap": 0.05, "reasoning": 3, "answer": 4}


@pytest.fixture(scope="module")
def scripted_server():
    """An OpenAI-compatible server whose timing is known: the role chunk at once, the first
    reasoning token after 0.6 s, then a token every 50 ms (3 reasoning, 4 answer)."""
    import asyncio

    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    from tests.conftest import asgi_server

    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "scripted", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat():
        def chunk(delta, **extra):
            return "data: " + json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                                          **extra}) + "\n\n"

        async def events():
            yield chunk({"role": "assistant", "content": ""})
            await asyncio.sleep(SCRIPT["first_token_at"])
            for i in range(SCRIPT["reasoning"]):
                if i:
                    await asyncio.sleep(SCRIPT["gap"])
                yield chunk({"reasoning_content": f"r{i} "})
            for i in range(SCRIPT["answer"]):
                await asyncio.sleep(SCRIPT["gap"])
                yield chunk({"content": f"a{i} "})
            n = SCRIPT["reasoning"] + SCRIPT["answer"]
            yield "data: " + json.dumps({"choices": [], "usage": {"completion_tokens": n}}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    with asgi_server(app, "the scripted server") as url:
        yield url


def test_bench_serve_measures_what_the_server_did(scripted_server):
    """Each figure against the server's known timing, not against another figure of the same run."""
    from edgeport.benchmarking.serve_load import load

    res = load(scripted_server, [1, 2], requests_per_client=2, max_tokens=16)
    first, gap = SCRIPT["first_token_at"] * 1000, SCRIPT["gap"] * 1000
    slack = 400  # a loaded 2-core machine; every lower bound below is exact (the server sleeps)
    for run in res["runs"]:
        assert run["errors"] == 0 and run["requests"] == 2 * run["clients"]
        assert run["output_tokens"] == run["requests"] * 7  # the usage chunk's count
        any_chunk, ttft, ttfat = run["ttft_any_chunk_ms"], run["ttft_ms"], run["ttfat_ms"]
        assert any_chunk["p99"] < first - 200  # the role chunk, sent at once
        assert first <= ttft["p50"] < first + slack  # the first reasoning token
        assert first + 3 * gap <= ttfat["p50"] < first + 3 * gap + slack  # the first answer token
        assert gap * 0.9 <= run["itl_ms"]["p50"] < gap + 100
        assert run["itl_ms"]["n"] == run["requests"] * 6
        assert first + 6 * gap <= run["e2e_ms"]["p50"] < first + 6 * gap + slack
        assert gap * 0.9 <= run["tpot_ms"]["p50"] < gap + 100


def test_bench_serve_unreachable_is_one_line(tmp_path):
    from edgeport.benchmarking.registry import free_port

    r = _invoke("bench", "--serve", f"http://127.0.0.1:{free_port()}", "--out", str(tmp_path / "x.json"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and r.stderr.startswith("edgeport: error:")


def test_paired_load_alternates_servers_and_pools_their_rounds():
    """front vs llama-server is measured on one engine, the load alternated A B B A …, so that drift
    over the run falls on both: the order each request arrived in and what each server's figures pool."""
    import asyncio

    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    from edgeport.benchmarking.serve_load import paired
    from tests.conftest import asgi_server

    app, arrived = FastAPI(), []

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "m", "object": "model"}]}

    @app.post("/v1/completions")
    async def completions(body: dict):
        arrived.append(body["tag"])
        delay = {"slow": 0.05, "fast": 0.0}[body["tag"]]

        async def events():
            for i in range(4):
                await asyncio.sleep(delay)
                yield "data: " + json.dumps({"choices": [{"index": 0, "text": f"t{i}"}]}) + "\n\n"
            yield "data: " + json.dumps({"choices": [], "usage": {"completion_tokens": 4}}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    with asgi_server(app, "the paired server") as url:
        out = paired({"slow": (url, {"tag": "slow"}), "fast": (url, {"tag": "fast"})}, [1, 2], rounds=4,
                     requests_per_client=2, max_tokens=4)
    one = ["slow"] * 2 + ["fast"] * 4 + ["slow"] * 4 + ["fast"] * 2  # 1 client: A B B A, 2 requests a round
    assert arrived[:12] == one
    for name in ("slow", "fast"):
        assert [r["clients"] for r in out[name]] == [1, 2]
        for r in out[name]:
            assert r["rounds"] == 4 and r["errors"] == 0 and r["requests"] == 4 * 2 * r["clients"]
            assert r["output_tokens"] == 4 * r["requests"]
    for s, f in zip(out["slow"], out["fast"], strict=True):
        assert s["e2e_ms"]["p50"] >= 200 > f["e2e_ms"]["p50"]  # each server's own requests, pooled


def test_memory_cage_holds_a_command_to_its_limit(tmp_path):
    """scale.py --memory-limit: the proof that a step fits a 16 GB machine is a cgroup of that size,
    so the cage must really hold: 300 MiB touched in a 200 MiB cage is killed, 100 MiB runs."""
    from edgeport.benchmarking.cage import CageUnavailable, MemoryCage
    from edgeport.benchmarking.scale import run_measured

    try:
        MemoryCage(2**30, f"edgeport-test-probe-{os.getpid()}").close()
    except CageUnavailable as e:
        pytest.skip(f"no writable memory cgroup here: {e}")
    touch = "import sys; b = bytearray({} * 2**20); b[::4096] = b'x' * len(b[::4096]); print('done')"
    big = run_measured([sys.executable, "-c", touch.format(300)], watch=[], log=tmp_path / "big.log",
                       cage_bytes=200 * 2**20)
    small = run_measured([sys.executable, "-c", touch.format(100)], watch=[], log=tmp_path / "small.log",
                         cage_bytes=200 * 2**20)
    assert big.returncode != 0 and big.cage["oom_kills"] >= 1
    assert big.cage["peak_charged_bytes"] <= 200 * 2**20
    assert small.returncode == 0 and small.cage["oom_kills"] == 0 and "done" in small.log_tail
    assert 100 * 2**20 < small.cage["peak_charged_bytes"] <= 200 * 2**20


def test_visible_bias_picks_plain_words_of_the_vocabulary(exported):
    """bench_serve --visible: a random-weight model's tokens biased to words, so first tokens are text."""
    from tokenizers import Tokenizer

    from edgeport.benchmarking.bench_serve import visible_bias

    art, manifest = exported("cpu-gpt-oss")
    bias = visible_bias(art / manifest["runtime"]["model_file"], 16)
    tok = Tokenizer.from_file(str(MODELS / "tiny-gpt-oss" / "tokenizer.json"))
    words = [tok.decode([int(t)]) for t in bias]
    assert len(bias) == 16 and set(bias.values()) == {30.0}
    assert all(w[0] == " " and w[1:].isascii() and w[1:].isalpha() and w[1:].islower() for w in words), words
