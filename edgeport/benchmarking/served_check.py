"""A tool-training candidate's figures as served: its exports (Q4_K_M GGUF over llama-server, INT8 ONNX
with MXFP4 experts in-process, as tests/test_harmony_model.py serves them), each behind the real server,
asked build_harmony's eval prompts at every effort and, at low effort, again with the tools offered.

In-process figures (`build_tools --check-only`) did not predict the served ones: the tenth session found
candidates with 2-3 broken answers in process that broke none over GGUF, and the reverse. An answer is
broken when it does not end ("length"), lacks its reasoning or its content, or makes a call.

    python -m edgeport.benchmarking.served_check DIR [DIR ...] [--engine gguf|onnx ...] [--tools]

Each engine's mean analysis length (words) per effort is printed too. `--tools` adds the held-out call and
answer rates over GGUF (tests/test_tool_model.py's 40 questions).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from edgeport.core.source import Source
from edgeport.export.hf_mxfp4 import write_mxfp4_checkpoint
from edgeport.models.build_harmony import EVAL_PROMPTS
from edgeport.models.build_tools import ADD, WEATHER, heldout_calls, run_tool
from edgeport.serving.engines import free_port

ENGINES = {"gguf": "cpu", "onnx": "onnx"}


def export_for(model: Path, engine: str, work: Path) -> Path:
    """The artifact tests/test_harmony_model.py serves for `engine`, from the model directory `model`."""
    if engine == "onnx":  # the case onnx-gpt-oss-mxfp4-int8: the experts stored as MXFP4 first
        mx = work / "mxfp4"
        write_mxfp4_checkpoint(Source.open(model), mx)
        model = mx
    out = work / engine
    done = subprocess.run([sys.executable, "-m", "edgeport", "export", "--model", str(model), "--target",
                           ENGINES[engine], "--out", str(out)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"exporting {engine} failed: {done.stderr.strip().splitlines()[-1:]}")
    return out


@contextlib.contextmanager
def serving(artifact: Path) -> Iterator[str]:
    """`python -m edgeport.serving` on a free port until the block ends; its base URL."""

    port = free_port()
    ready = artifact.parent / f".ready-{port}"
    p = subprocess.Popen([sys.executable, "-m", "edgeport.serving", "--artifact", str(artifact), "--port", str(port),
                          "--ctx", "1024", "--ready-file", str(ready)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        while not ready.exists():
            if p.poll() is not None:
                raise SystemExit(f"the server for {artifact.name} did not start")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        p.terminate()
        p.wait(20)


def eval_answers(url: str) -> list[tuple[str, int, object]]:
    """(effort, eval prompt index, the choice) of every eval answer, greedy: 8 prompts x 3 efforts, then 8
    at low effort with the tools offered (effort "tools-low")."""
    from openai import OpenAI

    c = OpenAI(base_url=f"{url}/v1", api_key="unused")
    model = c.models.list().data[0].id
    tools = [{"type": "function", "function": t} for t in (ADD, WEATHER)]
    runs = [("low", None), ("medium", None), ("high", None), ("tools-low", tools)]
    return [(effort, i, c.chat.completions.create(model=model, messages=msgs, max_tokens=400, temperature=0,
                                                  extra_body={"reasoning_effort": effort.removeprefix("tools-")},
                                                  **({"tools": offered} if offered else {})).choices[0])
            for effort, offered in runs for i, msgs in enumerate(EVAL_PROMPTS)]


def _reasoning(choice) -> str | None:
    return (choice.message.model_extra or {}).get("reasoning_content")


def broken_answers(answers: list[tuple[str, int, object]]) -> list[tuple[str, int, str]]:
    """(effort, eval prompt index, why) of each broken answer among `eval_answers`'."""
    broken = []
    for effort, i, ch in answers:
        reasoning = _reasoning(ch)
        why = ("finish " + ch.finish_reason if ch.finish_reason != "stop" else "a call" if ch.message.tool_calls
               else "no reasoning" if not reasoning else "no content" if not ch.message.content else "")
        if why:
            broken.append((effort, i, f"{why}: {(ch.message.content or reasoning or '')[-60:]!r}"))
    return broken


def analysis_words(answers: list[tuple[str, int, object]]) -> dict[str, float]:
    """Mean analysis length in words per effort (no tools offered) among `eval_answers`' (the README's
    harmony table, and tests/test_harmony_model.py's low < medium < high)."""
    words: dict[str, list[int]] = {}
    for effort, _, ch in answers:
        if not effort.startswith("tools-"):
            words.setdefault(effort, []).append(len((_reasoning(ch) or "").split()))
    return {e: sum(n) / len(n) for e, n in words.items()}


def call_rates(url: str) -> dict[str, int]:
    """tests/test_tool_model.py's held-out figures (of 40): the right tool with schema-valid arguments, the
    whole call right, and an answer that holds the result."""
    import jsonschema
    from openai import OpenAI


    c = OpenAI(base_url=f"{url}/v1", api_key="unused")
    model = c.models.list().data[0].id
    tools = [{"type": "function", "function": t} for t in (ADD, WEATHER)]
    schemas = {t["name"]: t["parameters"] for t in (ADD, WEATHER)}
    figs = {"tool": 0, "call": 0, "answer": 0}
    for i, (msgs, name, args) in enumerate(heldout_calls()):
        ch = c.chat.completions.create(model=model, messages=msgs, tools=tools, max_tokens=200,
                                       temperature=0).choices[0]
        calls = ch.message.tool_calls or []
        if ch.finish_reason == "tool_calls" and len(calls) == 1:
            with contextlib.suppress(ValueError, KeyError, jsonschema.ValidationError):
                got = json.loads(calls[0].function.arguments)
                jsonschema.validate(got, schemas[calls[0].function.name])
                figs["tool"] += calls[0].function.name == name
                figs["call"] += (calls[0].function.name, got) == (name, args)
        result = run_tool(name, args)
        said = {"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]}
        a = c.chat.completions.create(model=model, max_tokens=200, temperature=0, tools=tools, messages=[
            *msgs, said, {"role": "tool", "tool_call_id": f"call_{i}", "content": result}]).choices[0]
        figs["answer"] += a.finish_reason == "stop" and result in (a.message.content or "")
    return figs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path, help="model directories (a build_tools --out, or a save)")
    ap.add_argument("--engine", action="append", choices=list(ENGINES), help="default: both")
    ap.add_argument("--tools", action="store_true", help="also the held-out call and answer rates (over GGUF)")
    a = ap.parse_args()
    for model in a.models:
        if not (model / "model.safetensors").is_file():
            raise SystemExit(f"{model}: no model.safetensors there")
    with tempfile.TemporaryDirectory(prefix="edgeport-served-check-") as cache:
        # the exports' importance matrices are the candidate's own, never the user's cache
        os.environ.setdefault("EDGEPORT_IMATRIX_CACHE", cache)
        check(a.models, a.engine or list(ENGINES), a.tools)


def check(models: list[Path], engines: list[str], tools: bool) -> None:
    """Each model's broken answers per engine (and with `tools`, its held-out rates over GGUF), printed."""
    for model in models:
        with tempfile.TemporaryDirectory(prefix="edgeport-served-check-") as tmp:
            for engine in engines:
                with serving(export_for(model.resolve(), engine, Path(tmp) / engine)) as url:
                    answers = eval_answers(url)
                    broken = broken_answers(answers)
                    print(f"{model} {engine}: broken {len(broken)} of 32", flush=True)
                    for b in broken:
                        print(f"  {b}", flush=True)
                    words = " / ".join(f"{e} {n:.1f}" for e, n in analysis_words(answers).items())
                    print(f"{model} {engine}: mean analysis words {words}", flush=True)
                    if tools and engine == "gguf":
                        f = call_rates(url)
                        print(f"{model} gguf: held out, of 40: the right tool {f['tool']}, the whole call right "
                              f"{f['call']}, answers from the result {f['answer']}", flush=True)


if __name__ == "__main__":
    main()
