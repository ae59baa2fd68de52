"""`edgeport show` states what an artifact's server supports, from the same table the server refuses by
(edgeport/serving/support.py), and the README's table is that table: the three cannot disagree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from edgeport.cli.ship import serving_support
from edgeport.serving import guidance
from edgeport.serving.engines import LlamaServerEngine, RuntimeEngine, VLLMEngine
from edgeport.serving.support import features, markdown_table, support
from tests.conftest import ROOT

INVOKE = str(Path(sys.executable).parent / "invoke")


def _text(renderable) -> str:
    console = Console(record=True, width=200)
    console.print(renderable)
    return console.export_text()


def test_the_readme_table_is_the_code_table():
    assert markdown_table() in (ROOT / "README.md").read_text(), \
        "README's engine table differs from edgeport/serving/support.py: paste markdown_table()'s output"


def test_engines_constrain_as_the_table_says():
    """What the server refuses (Engine.constrains) is read from the table, for every engine it opens."""
    assert LlamaServerEngine.constrains is support("llama.cpp").constrains is True
    assert VLLMEngine.constrains is support("vllm").constrains is False

    class Tok:  # an in-process runtime's tokenizer (tokenizers.Tokenizer's two methods the engine reads)
        def get_vocab_size(self, with_added_tokens: bool) -> int:
            return 8

        def to_str(self) -> str:
            return "{}"

    class Runtime:
        from edgeport.runtimes.base import ModelInfo

        info = ModelInfo(architecture="x", chat_format="harmony", stop_token_ids=[1])
        tok = Tok()

        def __init__(self, name: str):
            self.name = name

        def detokenize(self, ids) -> str:
            return "".join(map(str, ids))

    for name in ("onnxruntime", "tensorrt-llm", "simulated"):
        engine = RuntimeEngine(Runtime(name), n_ctx=64)
        assert engine.constrains is (support(name).constrains and guidance.available()), name
    assert support("onnxruntime").constrains and not support("tensorrt-llm").constrains
    assert not support("an engine nobody wrote").constrains  # unknown: refused, never assumed


@pytest.mark.parametrize("runtime,harmony,says", [
    ("llama.cpp", True, ["llama-server (GGUF)", "enforced (llama-server's JSON-schema grammar, final channel)"]),
    ("llama.cpp", False, ["400 unsupported_tools (its chat template declares no tools edgeport reads)",
                          "enforced (llama-server's JSON-schema grammar)"]),
    ("onnxruntime", True, ["ONNX in-process", "enforced (llguidance token mask)"]),
    ("vllm", True, ["vLLM (GPU, not yet run)", "(not run here)", "400 (not supported by this engine yet)"]),
    ("edgellm", True, ["is not served by edgeport serve"]),
])
def test_serving_support_per_engine(runtime, harmony, says):
    shown = _text(serving_support({"runtime": {"name": runtime},
                                   "model": {"chat_format": "harmony" if harmony else "template"}}))
    for words in says:
        assert words in shown, shown
    for feature, how in features(runtime, harmony, None).items():
        assert feature in shown and how in shown


@pytest.mark.parametrize("case", [pytest.param("onnx-gpt-oss-mxfp4-int8", marks=pytest.mark.toolenv),
                                  pytest.param("onnx-llama-int8", marks=pytest.mark.toolenv)])
def test_show_states_what_the_server_supports(exported, case):
    path, manifest = exported(case)
    r = subprocess.run([INVOKE, "show", "--artifact", str(path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert "serving over ONNX in-process" in r.stdout
    harmony = manifest["model"]["chat_format"] == "harmony"
    for feature, how in features("onnxruntime", harmony, None).items():  # the tiny Llama's template: no tools
        assert feature in r.stdout and how in r.stdout, r.stdout[-1500:]


def test_show_states_tools_by_the_artifacts_chat_template():
    """A dense artifact whose template declares Llama 3.1 JSON calls serves tools; one whose template
    declares none is refused them (the same words the server's 400 uses)."""
    template = (ROOT / "tests" / "templates" / "llama3-tools.jinja").read_text()
    shown = _text(serving_support({"runtime": {"name": "llama.cpp"},
                                   "model": {"chat_format": "template", "chat_template": template}}))
    assert "yes (llama3_json calls, as its chat template declares)" in shown, shown
    plain = _text(serving_support({"runtime": {"name": "llama.cpp"},
                                   "model": {"chat_format": "template", "chat_template": "{{ messages }}"}}))
    assert "its chat template declares no tools edgeport reads" in plain, plain
