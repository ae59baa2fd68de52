"""Ollama's files, written into every GGUF artifact: a `Modelfile` (`ollama create NAME -f
Modelfile`), and the Hub's optional `template` (Go template) and `params` (JSON) that
`ollama run hf.co/org/name:Q4_K_M` reads from the repository root (hub-docs docs/hub/ollama.md).

Chat formats are data: a Jinja chat template is recognised by its markers and mapped to the Go
template Ollama needs. Ollama switches to its harmony parser when the GGUF's architecture is
gpt-oss and the template contains both `<|start|>` and `<|end|>` (ollama server/routes.go
`shouldUseHarmony`); the harmony template is edgeport.core.harmony's, built from the same
constants as the prompt we render.

Ollama passes system messages both as `.System` (collated) and inside `.Messages` (ollama
template/template.go `collate`): the templates render them once, from `.System`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgeport.core import harmony

LLAMA3 = """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range .Messages }}
{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}
{{- end }}{generation_prompt}"""


@dataclass(frozen=True)
class ChatFormat:
    name: str
    markers: tuple[str, ...]  # all present in the source's Jinja template
    template: str  # `{generation_prompt}`: what the Jinja template appends after the last turn
    stop: tuple[str, ...]
    temperature: float | None = None
    turn_end: str = ""  # the marker that ends a turn, before the generation prompt

    def render(self, jinja: str) -> str:
        if "{generation_prompt}" not in self.template:
            return self.template
        import jinja2

        text = jinja2.Environment().from_string(jinja).render(
            messages=[{"role": "user", "content": "x"}], add_generation_prompt=True, bos_token="")
        return self.template.replace("{generation_prompt}", text.rsplit(self.turn_end, 1)[-1])


# first match wins
FORMATS = (
    ChatFormat("harmony", ("<|start|>", "<|message|>", "<|end|>"), harmony.OLLAMA_TEMPLATE, harmony.STOP, 1.0),
    # Llama 3 writes "\n\n" after the assistant header; a template may trim it (the bundled
    # tiny Llama's does): the generation prompt is taken from the Jinja template itself
    ChatFormat("llama3", ("<|start_header_id|>", "<|eot_id|>"), LLAMA3, ("<|eot_id|>",), turn_end="<|eot_id|>"),
)


def chat_format(jinja: str | None) -> ChatFormat | None:
    for f in FORMATS:
        if jinja and all(m in jinja for m in f.markers):
            return f
    return None


def _quoted(text: str) -> str:
    if '"""' in text:
        raise ValueError('a Modelfile block cannot contain """')
    return f'"""{text}"""'


def write(out: Path, gguf_name: str, chat_template: str | None, license_text: str | None = None) -> list[str]:
    """Write Modelfile (and, for a known chat format, template + params) into `out`."""
    fmt = chat_format(chat_template)
    lines = ["# Ollama: ollama create NAME -f Modelfile  (run in this directory)", f"FROM ./{gguf_name}"]
    written = ["Modelfile"]
    if fmt:
        template = fmt.render(chat_template)
        lines.append(f"TEMPLATE {_quoted(template)}")
        lines += [f'PARAMETER stop "{s}"' for s in fmt.stop]
        params: dict = {"stop": list(fmt.stop)}
        if fmt.temperature is not None:
            lines.append(f"PARAMETER temperature {fmt.temperature:g}")
            params["temperature"] = fmt.temperature
        (out / "template").write_text(template)
        (out / "params").write_text(json.dumps(params, indent=2) + "\n")
        written += ["template", "params"]
    if license_text:
        lines.append(f"LICENSE {_quoted(license_text)}")
    (out / "Modelfile").write_text("\n".join(lines) + "\n")
    return written
