"""`edgeport bench --serve URL`: N concurrent streaming clients (asyncio + httpx) against an
OpenAI-compatible server on loopback. Per request: time to the first chunk of any kind (what
vLLM's `bench serve` calls TTFT: a role-only or reasoning chunk counts), time to the first
generated token (reasoning or answer), time to the first answer token (after reasoning), the
gaps between tokens (ITL), time per output token (TPOT) and end to end; then p50/p90/p99,
aggregate output tokens/s and errors."""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time

PROMPTS = [
    "Write a Python function that reverses a linked list.",
    "Explain what a binary search does, briefly.",
    "def fibonacci(n):",
    "List three uses of a hash map.",
]


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(p / 100 * (len(v) - 1))))]


def stats(values: list[float]) -> dict:
    return {"p50": _pct(values, 50), "p90": _pct(values, 90), "p99": _pct(values, 99),
            "mean": statistics.fmean(values) if values else None, "n": len(values)}


async def _one(client, url: str, model: str, prompt: str, max_tokens: int, api_key: str | None,
               endpoint: str, extra: dict | None) -> dict:
    body = {"model": model, "max_tokens": max_tokens, "stream": True, "temperature": 0,
            "stream_options": {"include_usage": True}, **(extra or {})}
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    t0 = time.perf_counter()
    first_chunk = first_token = first_answer = None
    stamps: list[float] = []
    usage_tokens = None
    async with client.stream("POST", f"{url}/v1/{'chat/completions' if endpoint == 'chat' else 'completions'}",
                             json=body, headers=headers) as r:
        if r.status_code != 200:
            return {"error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            now = time.perf_counter()
            first_chunk = first_chunk or now
            if chunk.get("usage"):
                usage_tokens = chunk["usage"].get("completion_tokens")
            for ch in chunk.get("choices") or []:
                d = ch.get("delta", {}) if endpoint == "chat" else {"content": ch.get("text")}
                answer = d.get("content")
                thought = d.get("reasoning_content") or d.get("reasoning")
                if answer or thought:
                    stamps.append(now)
                    first_token = first_token or now
                if answer:
                    first_answer = first_answer or now
    end = time.perf_counter()
    n = usage_tokens or len(stamps)
    return {"ttft_any_chunk": (first_chunk or end) - t0, "ttft": (first_token or end) - t0,
            "ttfat": (first_answer - t0) if first_answer else None, "e2e": end - t0, "tokens": n,
            "itl": [b - a for a, b in itertools.pairwise(stamps)],
            "tpot": ((end - first_token) / (n - 1)) if first_token and n > 1 else None}


async def _round(url: str, model: str, clients: int, requests_per_client: int, max_tokens: int,
                 api_key: str | None, endpoint: str, extra: dict | None) -> tuple[list[dict], float]:
    """`clients` closed-loop clients, `requests_per_client` requests each: (per-request results, wall s)."""
    import httpx

    results: list[dict] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(300, connect=5)) as client:
        async def worker(i: int) -> None:
            for j in range(requests_per_client):
                prompt = PROMPTS[(i + j) % len(PROMPTS)]
                try:
                    results.append(await _one(client, url, model, prompt, max_tokens, api_key, endpoint, extra))
                except (httpx.HTTPError, json.JSONDecodeError) as e:
                    results.append({"error": f"{type(e).__name__}: {e}"})

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        wall = time.perf_counter() - t0
    return results, wall


def summarize(clients: int, results: list[dict], wall: float) -> dict:
    ok = [r for r in results if "error" not in r]
    ms = lambda xs: [x * 1000 for x in xs if x is not None]
    return {"clients": clients, "requests": len(results), "errors": len(results) - len(ok),
            "error_samples": [r["error"] for r in results if "error" in r][:3],
            "wall_s": wall, "output_tokens": sum(r["tokens"] for r in ok),
            "throughput_tps": sum(r["tokens"] for r in ok) / wall if wall else None,
            "ttft_any_chunk_ms": stats(ms(r["ttft_any_chunk"] for r in ok)),
            "ttft_ms": stats(ms(r["ttft"] for r in ok)), "ttfat_ms": stats(ms(r["ttfat"] for r in ok)),
            "itl_ms": stats(ms(x for r in ok for x in r["itl"])), "tpot_ms": stats(ms(r["tpot"] for r in ok)),
            "e2e_ms": stats(ms(r["e2e"] for r in ok))}


async def _run(url: str, model: str, clients: int, requests_per_client: int, max_tokens: int,
               api_key: str | None, endpoint: str, extra: dict | None) -> dict:
    return summarize(clients, *await _round(url, model, clients, requests_per_client, max_tokens, api_key,
                                            endpoint, extra))


def model_id(url: str, api_key: str | None = None) -> str:
    import httpx

    r = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {api_key}"} if api_key else {}, timeout=10)
    r.raise_for_status()
    return r.json()["data"][0]["id"]


def load(url: str, clients: list[int], requests_per_client: int = 4, max_tokens: int = 64,
         api_key: str | None = None, endpoint: str = "chat", extra: dict | None = None) -> dict:
    """`extra`: more request fields (sampling a server should match, a logit_bias)."""
    url = url.rstrip("/")
    model = model_id(url, api_key)
    return {"url": url, "model": model, "endpoint": endpoint, "max_tokens": max_tokens,
            "runs": [asyncio.run(_run(url, model, n, requests_per_client, max_tokens, api_key, endpoint, extra))
                     for n in clients]}


def paired(servers: dict[str, tuple[str, dict]], clients: list[int], rounds: int, requests_per_client: int = 1,
           max_tokens: int = 64, endpoint: str = "completions") -> dict[str, list[dict]]:
    """The same load on several servers, alternated round by round (A B B A …): drift over the run
    (page cache, other work, the clock) falls on each server alike, where one server after the other
    would give it all to the last. `servers`: name -> (url, extra request fields). Returns each
    server's runs, one per concurrency, its rounds pooled."""
    urls = {name: (url.rstrip("/"), extra, model_id(url)) for name, (url, extra) in servers.items()}
    names = list(urls)
    out: dict[str, list[dict]] = {name: [] for name in names}
    for n in clients:
        pooled = {name: ([], 0.0) for name in names}
        for r in range(rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                url, extra, model = urls[name]
                res, wall = asyncio.run(_round(url, model, n, requests_per_client, max_tokens, None, endpoint, extra))
                pooled[name] = (pooled[name][0] + res, pooled[name][1] + wall)
        for name in names:
            out[name].append({**summarize(n, *pooled[name]), "rounds": rounds})
    return out
