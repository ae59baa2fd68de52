"""The Hub model card (README.md) of an artifact, from its manifest alone: YAML the Hub reads
(base model, quantized relation, license, pipeline, tags) and a body that says what was
applied, how well it held up, and how to run it."""

from __future__ import annotations

import re
from pathlib import Path

# Hub `library_name` only where the Hub has one for the format (gguf/onnx/vllm are not names)
LIBRARY = {"hf-mxfp4": "transformers"}
FORMAT_TAGS = {"gguf": ["gguf"], "hf-mxfp4": ["safetensors", "mxfp4", "vllm"], "onnx": ["onnx"],
               "jetson": ["onnx", "tensorrt", "jetson"]}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def source_license(m: dict) -> str | None:
    """The license the source checkpoint's own model card declares, as export recorded it (the
    source itself need not be on the machine that pushes)."""
    return m["source"].get("license")


def _fmt(x) -> str:
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"
    return str(x)


def parity_table(report: dict | None) -> str:
    if not report:
        return "No parity report: this artifact was published without one (`--force`)."
    rows = ["| stage | compares | mean KL | p99 KL | top-1 | top-1 regret | ΔPPL % | verdict |",
            "|---|---|---|---|---|---|---|---|"]
    for name, st in report["stages"].items():
        s = st.get("summary", {})
        rows.append(f"| {name} | {st.get('compares', '')} | {_fmt(s.get('mean_kl'))} | {_fmt(s.get('p99_kl'))} | "
                    f"{_fmt(s.get('top1'))} | {_fmt(s.get('top1_regret'))} | {_fmt(s.get('ppl_delta_pct'))} | "
                    f"{'passed' if st.get('passed') else 'FAILED: ' + ', '.join(st.get('failures', []))} |")
    verdict = "passed" if report.get("passed") else "FAILED"
    return "\n".join(rows) + (f"\n\nOverall: **{verdict}** on {report.get('prompts')} prompts "
                             f"(long ones {report.get('long_prompt_tokens')} tokens).")


def quantization_text(m: dict) -> str:
    q = m["quantization"]
    a = q.get("applied", {})
    lines = [f"- requested: `{q.get('requested')}`" + (f" (variant `{q['variant']}`)" if q.get("variant") else "")]
    if counts := a.get("counts"):
        lines.append("- tensor types actually written: " + ", ".join(f"{t} × {n}" for t, n in counts.items()))
    for kept, t in (q.get("kept") or {}).items():
        lines.append(f"- kept bit-exact in {t}: `{kept}`")
    for fb in a.get("fallbacks", []):
        lines.append(f"- fallback: `{fb['tensor']}` → {fb['type']} ({fb['reason']})")
    if "scheme" in a and "counts" not in a:
        lines.append(f"- scheme: {a['scheme']}")
    return "\n".join(lines)


def usage(m: dict, repo_id: str) -> str:
    fmt, rt = m["format"], m["runtime"]
    if fmt == "gguf":
        q = m["quantization"]["requested"]
        return (f"```bash\nllama-server -hf {repo_id}:{q}\nollama run hf.co/{repo_id}:{q}\n"
                f"docker model pull hf.co/{repo_id}:{q}\n```\n\nOr pull the artifact and serve it: "
                f"`edgeport pull --from hf://{repo_id} --out model && ollama create NAME -f model/Modelfile`.")
    if fmt == "hf-mxfp4":
        opts = rt.get("options", {})
        return (f"```bash\nvllm serve {repo_id} --quantization {opts.get('quantization', 'mxfp4')} "
                f"--max-model-len {opts.get('max_model_len', 8192)}\n```")
    if fmt == "onnx":
        return (f"```bash\nedgeport pull --from hf://{repo_id} --out model\n"
                f"edgeport run --artifact model --prompt \"Hello\"\n```\n\nThe directory is an onnxruntime-genai model "
                f"(`genai_config.json`); execution provider `{rt.get('options', {}).get('ep', 'cpu')}`.")
    if fmt == "jetson":
        kit = " ".join(f"./{s}" for s in rt.get("kit", []) if s.endswith(".sh"))
        return (f"On the Jetson:\n\n```bash\nedgeport pull --from hf://{repo_id} --out kit && cd kit\n{kit}\n```\n\n"
                "Then compare with the reference: `edgeport parity --artifact kit --device-output device_output.json`.")
    return "See manifest.json."


def build(m: dict, repo_id: str) -> str:
    """README.md text (YAML front matter + body) for `m` published as `repo_id`."""
    from huggingface_hub import ModelCard, ModelCardData

    base = m["source"].get("model")
    data = ModelCardData(
        base_model=base if base and m["source"].get("hub", _HUB_ID.match(base) and not Path(base).exists())
        else None,
        license=source_license(m),
        library_name=LIBRARY.get(m["format"]),
        pipeline_tag="text-generation",
        tags=["edgeport", *FORMAT_TAGS.get(m["format"], [m["format"]]), f"target:{m['target']}",
              m["quantization"].get("requested", "").lower(), m.get("architecture", "")],
    )
    if data.base_model:
        data.base_model_relation = "quantized"
    src = m["source"]
    body = f"""
# {repo_id.split('/')[-1]}

`{m['target']}` artifact of `{base}` (revision `{src.get('revision') or 'local'}`), built by
edgeport on {m.get('created')}: format `{m['format']}`, runtime `{m['runtime'].get('name')}`.

## Quantization actually applied

{quantization_text(m)}

## Parity against the original

{parity_table(m.get('parity'))}

## How to run it

{usage(m, repo_id)}

## Files

| file | bytes | sha256 |
|---|---|---|
""" + "\n".join(f"| {f['path']} | {f['bytes']} | `{f['sha256']}` |" for f in m["files"]) + "\n"
    return str(ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n{{ body }}", body=body))
