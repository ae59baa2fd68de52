"""What the server supports over each engine: one table that the server refuses by, `edgeport show`
states per artifact and the README's table is checked against (tests/test_show.py), so the three
cannot disagree.

Keyed by the manifest's runtime name (the engine `engines.open_engine` picks for it). Tools need a
model that declares them in its prompt format (harmony, gpt-oss; a dense model's chat template in a
call format edgeport reads); that is the model's property, not the engine's, so `features` takes both.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeport.core.template_tools import FORMAT_NAMES


@dataclass(frozen=True)
class EngineSupport:
    engine: str  # as the README and `edgeport show` name it
    constrains: bool  # decodes under a JSON schema or grammar: response_format, tool_choice required/named
    how: str  # how it constrains (shown beside "enforced")
    run_here: bool = True  # measured on this project's machines (vLLM needs a GPU)
    serves: bool = True  # `edgeport serve` serves it at all


ENGINES: dict[str, EngineSupport] = {
    "llama.cpp": EngineSupport("llama-server (GGUF)", True, "llama-server's JSON-schema grammar"),
    "onnxruntime": EngineSupport("ONNX in-process", True, "llguidance token mask"),
    "tensorrt-llm": EngineSupport("TensorRT-LLM in-process (Jetson)", False, "", run_here=False),
    "vllm": EngineSupport("vLLM (GPU, not yet run)", False, "", run_here=False),
    # generates whole responses, not tokens: the kit's run.sh, not the server (engines.open_engine refuses it)
    "edgellm": EngineSupport("TensorRT Edge-LLM (Jetson)", False, "", run_here=False, serves=False),
}
README_ENGINES = ("llama.cpp", "onnxruntime", "vllm")  # the rows of the README's table
COLUMNS = ("tools auto/none", "tool_choice required/named", "response_format json_object/json_schema",
           "/v1/responses")


def support(runtime: str) -> EngineSupport:
    """The table's row for a runtime (an unknown one constrains nothing: refused, never faked)."""
    return ENGINES.get(runtime, EngineSupport(runtime, False, "", run_here=False))


# a dense model's tools: its chat template's call format, as edgeport/core/template_tools.py reads it
ANY_TEMPLATE = "any"  # the README's generic dense row: whatever a template declares


def features(runtime: str, harmony: bool, calls: str | None = ANY_TEMPLATE) -> dict[str, str]:
    """What a server over `runtime` supports for a model (harmony: gpt-oss), one word or phrase per column
    (empty where `edgeport serve` does not serve the runtime). For a dense model, `calls` is its chat
    template's call format (template_tools.call_format's name; None: the template declares no tools
    edgeport reads), or ANY_TEMPLATE for the README's row."""
    s = support(runtime)
    if not s.serves:
        return {}
    enforced = f"enforced ({s.how})" if s.constrains else "400 (not supported by this engine yet)"
    if harmony:
        tools, forced = "yes", enforced
    elif calls == ANY_TEMPLATE:
        tools = f"where the chat template declares them ({FORMAT_NAMES}); else 400 unsupported_tools"
        forced = f"{enforced}, where the template declares tools"
    elif calls is None:
        tools = forced = "400 unsupported_tools (its chat template declares no tools edgeport reads)"
    else:
        tools, forced = f"yes ({calls} calls, as its chat template declares)", enforced
    return {
        "tools auto/none": tools,
        "tool_choice required/named": forced,
        "response_format json_object/json_schema": (enforced.replace(")", ", final channel)", 1)
                                                    if harmony and s.constrains else enforced),
        "/v1/responses": "yes",
    }


def markdown_table() -> str:
    """The README's table of what each engine supports, from ENGINES."""
    rows = ["| engine | model | " + " | ".join(f"`{c}`" for c in COLUMNS) + " |",
            "|---" * (len(COLUMNS) + 2) + "|"]
    for rt in README_ENGINES:
        for harmony, model in ((True, "gpt-oss"), (False, "dense (Llama)")):
            f = features(rt, harmony)
            rows.append(f"| {ENGINES[rt].engine} | {model} | " + " | ".join(f[c] for c in COLUMNS) + " |")
    return "\n".join(rows)
