"""Ollama's files in GGUF artifacts: the Modelfile points at the artifact's GGUF and carries the
template and stops; the Go template, rendered by Go's text/template as Ollama renders it
(tests/ollama_template/render.go), gives exactly the prompt the model's own Jinja chat template
gives, for every conversation shape and reasoning effort."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import gguf
import jinja2
import pytest

RENDER = Path(__file__).parent / "ollama_template" / "render.go"
DATE = "2026-11-25"

CONVERSATIONS = [
    [{"role": "user", "content": "def fib(n):"}],
    [{"role": "system", "content": "Answer in Python."}, {"role": "user", "content": "sort a list"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
     {"role": "user", "content": "write a loop"}],
]


def go_render(template: Path, messages: list[dict], effort: str | None) -> str:
    if not shutil.which("go"):
        pytest.fail("the Go toolchain renders Ollama templates here: apt-get install golang-go")
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    values = {"messages": messages, "system": system, "date": DATE, "think": effort is not None,
              "think_level": effort or "", "is_think_set": effort is not None}
    r = subprocess.run(["go", "run", str(RENDER), str(template)], input=json.dumps(values),
                       capture_output=True, text=True, cwd=RENDER.parent)
    assert r.returncode == 0, r.stderr
    return r.stdout


def jinja_render(artifact: Path, m: dict, messages: list[dict], effort: str | None) -> str:
    env = jinja2.Environment()
    kw = {"reasoning_effort": effort} if effort else {}
    text = env.from_string((artifact / "chat_template.jinja").read_text()).render(
        messages=messages, add_generation_prompt=True, conversation_date=DATE,
        bos_token=m["model"].get("bos_token", ""), **kw)
    # Ollama (llama.cpp's tokenizer) adds BOS itself when the GGUF says add_bos_token
    if m["model"].get("add_bos") and text.startswith(m["model"]["bos_token"]):
        text = text[len(m["model"]["bos_token"]):]
    return text


@pytest.mark.parametrize("case,efforts", [("cpu-gpt-oss", ["low", "medium", "high", None]),
                                          ("cpu-llama", [None])])
def test_template_renders_the_models_own_prompt(exported, case, efforts):
    artifact, m = exported(case)
    for messages in CONVERSATIONS:
        for effort in efforts:
            assert go_render(artifact / "template", messages, effort) == jinja_render(artifact, m, messages, effort)


@pytest.mark.parametrize("case", ["cpu-gpt-oss", "cpu-llama"])
def test_modelfile(exported, case):
    artifact, m = exported(case)
    text = (artifact / "Modelfile").read_text()
    frm = re.search(r"^FROM (\S+)$", text, re.M).group(1)
    assert (artifact / frm).resolve() == (artifact / m["runtime"]["model_file"]).resolve()
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.M | re.S).group(1)
    assert template == (artifact / "template").read_text()
    params = json.loads((artifact / "params").read_text())
    assert re.findall(r'^PARAMETER stop "(.*)"$', text, re.M) == params["stop"]
    # each stop string is a token of the model, so generation ends on it
    tokens = set(gguf.GGUFReader(artifact / m["runtime"]["model_file"]).fields["tokenizer.ggml.tokens"].contents())
    assert params["stop"] and set(params["stop"]) <= tokens
    assert {"Modelfile", "template", "params", "chat_template.jinja"} <= {f["path"] for f in m["files"]}


def test_gpt_oss_template_selects_ollamas_harmony_parser(exported):
    """ollama server/routes.go shouldUseHarmony: architecture gpt-oss and both markers."""
    artifact, m = exported("cpu-gpt-oss")
    arch = gguf.GGUFReader(artifact / m["runtime"]["model_file"]).fields["general.architecture"].contents()
    template = (artifact / "template").read_text()
    assert arch in ("gptoss", "gpt-oss") and "<|start|>" in template and "<|end|>" in template
    assert json.loads((artifact / "params").read_text())["stop"] == ["<|return|>", "<|call|>"]
