"""`edgeport show --artifact DIR`: the one screen a user wants about an artifact — what it is,
how it was quantized (fallbacks included), whether parity passed per stage, bench figures if
any, and how to run, serve and ship it."""

from __future__ import annotations

from pathlib import Path

from rich.console import Group
from rich.panel import Panel
from rich.table import Table


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def _how(artifact: Path, m: dict) -> list[str]:
    a, rt = str(artifact), m["runtime"]
    lines = [f"edgeport run --artifact {a} --prompt \"Hello\" --chat"]
    if m["format"] == "gguf":
        model = Path(a) / rt["model_file"]
        lines += [f"llama-server -m {model} --port 8000        # OpenAI-compatible server",
                  f"cd {a} && ollama create NAME -f Modelfile      # Ollama"]
    elif m["format"] == "hf-mxfp4":
        lines.append(rt.get("serve", f"vllm serve {a} --quantization mxfp4"))
    elif m["format"] == "jetson":
        lines = [f"on the Orin: cd {a} && " + " && ".join(f"./{s}" for s in rt.get("kit", []) if s.endswith(".sh")),
                 f"edgeport parity --artifact {a} --device-output device_output.json"]
    lines += [f"edgeport bench --artifact {a}", f"edgeport push --artifact {a} --to oci://HOST/REPO:TAG"]
    return lines


def render(artifact: Path, m: dict) -> Group:
    q, src = m["quantization"], m["source"]
    size = sum(f["bytes"] for f in m["files"])
    head = Table.grid(padding=(0, 2))
    head.add_row("model", f"{src.get('model')} ({m.get('architecture')}), revision {src.get('revision') or 'local'}")
    head.add_row("target", f"{m['target']} → {m['format']}, runtime {m['runtime']['name']}")
    head.add_row("size", f"{_mib(size)} in {len(m['files']) + 1} files; model file {m['runtime'].get('model_file')}")
    applied = q.get("applied", {})
    counts = ", ".join(f"{t}×{n}" for t, n in (applied.get("counts") or {}).items())
    head.add_row("quantization", f"{q.get('requested')}" + (f" ({q['variant']})" if q.get("variant") else "")
                 + (f": {counts}" if counts else ""))
    if fb := applied.get("fallbacks"):
        kinds: dict[str, int] = {}
        for f in fb:
            kinds[f["type"]] = kinds.get(f["type"], 0) + 1
        head.add_row("fallbacks", f"{len(fb)} tensors: " + ", ".join(f"{t}×{n}" for t, n in kinds.items())
                     + " (rows not multiples of 256)")
    for kept, t in (q.get("kept") or {}).items():
        head.add_row("kept", f"{t} bit-exact: {kept}")
    if fo := m.get("fallback"):
        head.add_row("note", f"--target {fo['requested_target']} could not build it: {fo['reason']}")
    parts = [Panel(head, title=str(artifact), expand=False)]

    p = m.get("parity")
    pt = Table(title="parity " + ("(none: exported with --no-parity)" if not p else
                                  f"— {'PASSED' if p['passed'] else 'FAILED'}, {p['prompts']} prompts"))
    for col in ("stage", "compares", "mean KL", "p99 KL", "top-1 regret", "top-1", "ΔPPL %", "result"):
        pt.add_column(col)
    for name, st in ((p or {}).get("stages") or {}).items():
        s = st.get("summary", {})
        f = lambda k, fmt, s=s: "-" if s.get(k) is None else format(s[k], fmt)
        pt.add_row(name, st.get("compares", ""), f("mean_kl", ".2e"), f("p99_kl", ".2e"), f("top1_regret", ".1e"),
                   f("top1", ".3f"), f("ppl_delta_pct", "+.2f"),
                   "reported" if not st.get("judged", True) else
                   "pass" if st.get("passed") else "FAIL: " + ", ".join(st.get("failures", [])))
    if p and (ac := p.get("artifact_check")):
        pt.add_row("artifact_check", ac.get("compares", "graph vs checkpoint"), "", "", "", "", "",
                   "pass" if ac.get("passed") else "FAIL")
    parts.append(pt)
    if b := m.get("bench"):
        bt = Table(title=f"bench on {b['machine']['cpu']} ({b['machine']['threads']} threads), {b['created']}")
        for col in ("prompt", "TTFT ms", "prefill tok/s", "decode tok/s", "decode vs raw"):
            bt.add_column(col, justify="right")
        for w in b["workloads"]:
            r = w.get("ratio") or {}
            bt.add_row(f"{w['name']} ({w['prompt_tokens']})", f"{w['ttft_s'] * 1000:.1f}", f"{w['prefill_tps']:.0f}",
                       f"{w['decode_tps']:.0f}", f"{r['decode']:.3f}×" if r else "-")
        parts.append(bt)
    parts.append(Panel("\n".join(_how(artifact, m)), title="run, serve, ship", expand=False))
    return Group(*parts)
