"""Commands that generate from an artifact: run, chat, serve."""

from __future__ import annotations

import inspect
import sys
import textwrap
from pathlib import Path

from invoke import task

from edgeport.serving.options import DESCRIPTION, OPTIONS

from .common import cli, existing, number, quiet_libs, require_runtime_of

ARTIFACT_HELP = "artifact directory, HF checkpoint directory or .gguf file"


def generation_options(artifact, effort, max_new_tokens, temperature, seed) -> tuple[int, float, int]:
    """run's and chat's shared options, checked before anything loads: (max_new_tokens, temperature, seed)."""
    from edgeport.serving.chat import effort_or_error

    effort_or_error(effort)
    existing("artifact", artifact)
    return (number("max_new_tokens", max_new_tokens, least=1),
            number("temperature", temperature, float, least=0.0, most=2.0),
            number("seed", seed, least=0, most=2**32 - 1))


@task(help={
    "artifact": ARTIFACT_HELP,
    "prompt": "the prompt text",
    "chat": "treat --prompt as a user chat message (harmony for gpt-oss, else the chat template); gpt-oss "
            "reasoning is shown after 'thinking:', apart from the answer after 'assistant:', as in edgeport chat",
    "raw": "with --chat: print the model's raw output, harmony markers (<|channel|>…) and all",
    "reasoning_effort": "gpt-oss: low|medium|high (or fast|balanced|deep)",
    "max_new_tokens": "tokens to generate", "temperature": "0 = greedy", "top_p": "nucleus sampling, in (0, 1]",
    "seed": "sampling seed", "stop": "a stop string",
})
@cli
def run(c, artifact, prompt, chat=False, reasoning_effort=None, max_new_tokens=64, temperature=0.0,
        top_p=1.0, seed=0, stop=None, raw=False):
    """Stream a completion from an artifact through its runtime."""
    max_new_tokens, temperature, seed = generation_options(artifact, reasoning_effort, max_new_tokens,
                                                           temperature, seed)
    top_p = number("top_p", top_p, float, above=0.0, most=1.0)
    require_runtime_of(artifact, "run")
    quiet_libs()
    from edgeport import runtimes
    from edgeport.serving.chat import Reply

    with runtimes.load(artifact) as rt:
        p = [{"role": "user", "content": prompt}] if chat else prompt
        pieces = rt.stream(p, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                           seed=seed, stop=[stop] if stop else [], reasoning_effort=reasoning_effort)
        if chat and not raw:  # gpt-oss: reasoning apart from the answer, no harmony marker shown
            reply = Reply(sys.stdout, harmony=rt.info.chat_format == "harmony", label_plain=False)
            for piece in pieces:
                reply.feed(piece)
            reply.finish()
            return
        for piece in pieces:
            print(piece, end="", flush=True)
        print()


@task(help={
    "artifact": ARTIFACT_HELP,
    "reasoning_effort": "gpt-oss: low|medium|high (or fast|balanced|deep); /effort changes it in the chat",
    "max_new_tokens": "tokens per answer", "temperature": "0 = greedy", "seed": "sampling seed",
    "tools": "a JSON file holding a list of OpenAI tool definitions (gpt-oss, or a model whose chat template "
             "declares tools as Hermes / Qwen <tool_call> blocks or Llama 3.1 JSON); each call is shown as it "
             "comes and its result asked for",
})
@cli
def chat(c, artifact, reasoning_effort=None, max_new_tokens=256, temperature=0.0, seed=0, tools=None):
    """Chat with an artifact in the terminal: multi-turn, streaming, gpt-oss reasoning shown
    apart from the answer, function calls as they stream. Commands: /effort low|medium|high, /reset,
    /exit (or Ctrl-D)."""
    max_new_tokens, temperature, seed = generation_options(artifact, reasoning_effort, max_new_tokens,
                                                           temperature, seed)
    from edgeport.serving.chat import load_tools

    declared = load_tools(tools)
    require_runtime_of(artifact, "chat")
    quiet_libs()
    from edgeport.serving.chat import chat as do_chat

    do_chat(artifact, reasoning_effort=reasoning_effort, max_new_tokens=max_new_tokens, temperature=temperature,
            seed=seed, tools=declared)


def _serve(c, **options):
    from edgeport.serving.server import serve as do_serve

    # every number checked before anything loads (serve() checks the ranges, the ports and the key);
    # Invoke hands an option without a default over as text
    for o in OPTIONS:
        if o.kind is int and options[o.name] is not None:
            options[o.name] = number(o.name, options[o.name])
    quiet_libs()
    do_serve(**{**options, "artifact": Path(options["artifact"])})


# the task's signature and help come from serving.options.OPTIONS, as python -m edgeport.serving's do
_serve.__signature__ = inspect.Signature([
    inspect.Parameter("c", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    *(inspect.Parameter(o.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                        default=inspect.Parameter.empty if o.required else o.default) for o in OPTIONS)])
_serve.__name__ = _serve.__qualname__ = "serve"
_serve.__doc__ = textwrap.fill(DESCRIPTION + " The same as `python -m edgeport.serving`.", 100)
# no one-letter flags: -h is help for serve as for every command (Invoke would make it --host)
serve = task(cli(_serve), name="serve", help={o.name: o.help for o in OPTIONS}, auto_shortflags=False)
