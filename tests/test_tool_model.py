"""The bundled tiny gpt-oss calls tools itself (edgeport/models/build_tools.py taught it), served from its
GGUF export over llama-server through the real `openai` client and LangChain: on phrasings, numbers and
cities it never saw in training it calls the right tool with the right, schema-valid arguments, and after
the tool's result comes back it answers from it; a forced call is always valid, a code question with
tools offered gets no call, and LangChain's agent loop calls and answers. The rates are below 90 % for
the whole call and the answer (a strict xfail holds that goal)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from edgeport.models.build_tools import ADD, WEATHER, heldout_calls, run_tool
from tests.test_serving import _client, _model, server

TOOLS = [{"type": "function", "function": t} for t in (ADD, WEATHER)]
SCHEMAS = {t["name"]: t["parameters"] for t in (ADD, WEATHER)}
# Of the 40 held-out questions (greedy, Q4_K_M GGUF over llama-server). The metric, the right
# tool with schema-valid arguments: at least 36 (90 %). The whole call right (the values copied) and,
# given the right call and its result, an answer that holds it: regression bounds two below what the
# shipped weights measured (33 and 26 of 40, build_tools.py's Status), and 36 as a goal not met yet.
TOOL_BOUND = 36
CALL_BOUND, ANSWER_BOUND = 31, 24
GOAL = 36


@pytest.fixture(scope="module", params=[pytest.param("cpu-gpt-oss", marks=pytest.mark.slow)], ids=["gguf-gpt-oss"])
def served(request, exported):
    path, _ = exported(request.param)
    with server(path, "--ctx", "1024", "--parallel", "2") as url:
        yield url


def _checked(call) -> tuple[str, dict] | None:
    """(name, arguments) of a call whose arguments are JSON valid under its tool's schema; else None."""
    try:
        args = json.loads(call.function.arguments)
        jsonschema.validate(args, SCHEMAS[call.function.name])
    except (json.JSONDecodeError, jsonschema.ValidationError, KeyError):
        return None
    return call.function.name, args


@pytest.fixture(scope="module")
def held_out(served) -> dict:
    """Under `tool_choice` auto (nothing forced), each held-out question: the model's own call, right
    tool and schema-valid, then right whole (the values copied); and, given the right call and its
    result, whether its answer holds the result. Counts of 40, and the misses."""
    c = _client(served)
    model = _model(c)
    figs = {"tool": 0, "call": 0, "answer": 0, "misses": [], "unanswered": []}
    for i, (msgs, name, args) in enumerate(heldout_calls()):
        r = c.chat.completions.create(model=model, messages=msgs, tools=TOOLS, max_tokens=200, temperature=0)
        ch = r.choices[0]
        calls = ch.message.tool_calls or []
        made = _checked(calls[0]) if ch.finish_reason == "tool_calls" and len(calls) == 1 else None
        figs["tool"] += made is not None and made[0] == name
        figs["call"] += made == (name, args)
        if made != (name, args):
            figs["misses"].append((msgs[-1]["content"], ch.message.content,
                                   [(t.function.name, t.function.arguments) for t in calls]))
        result = run_tool(name, args)
        said = {"role": "assistant", "content": None,
                "tool_calls": [{"id": f"call_{i}", "type": "function",
                                "function": {"name": name, "arguments": json.dumps(args)}}]}
        follow = [*msgs, said, {"role": "tool", "tool_call_id": f"call_{i}", "content": result}]
        a = c.chat.completions.create(model=model, messages=follow, tools=TOOLS, max_tokens=200, temperature=0)
        ok = a.choices[0].finish_reason == "stop" and result in (a.choices[0].message.content or "")
        figs["answer"] += ok
        if not ok:
            figs["unanswered"].append((result, a.choices[0].message.content))
    print(f"held-out, of 40: the right tool, schema-valid {figs['tool']}; the whole call right {figs['call']}; "
          f"answered from the result {figs['answer']}")
    return figs


def test_held_out_questions_get_the_right_tool_with_valid_arguments(held_out):
    assert held_out["tool"] >= TOOL_BOUND, held_out["misses"]


def test_held_out_calls_and_answers_hold_their_measured_rates(held_out):
    assert held_out["call"] >= CALL_BOUND, held_out["misses"]
    assert held_out["answer"] >= ANSWER_BOUND, held_out["unanswered"]


@pytest.mark.xfail(strict=True, reason="not met: the shipped weights copy the values whole on 33/40 and "
                                       "answer from the result on 26/40 (build_tools.py's Status)")
def test_held_out_calls_and_answers_are_right_nine_times_in_ten(held_out):
    assert held_out["call"] >= GOAL and held_out["answer"] >= GOAL


def test_required_on_a_question_without_a_tool_still_yields_a_valid_call(served):
    from edgeport.models.build_harmony import EVAL_PROMPTS

    c = _client(served)
    model = _model(c)
    prompts = [*EVAL_PROMPTS, [{"role": "user", "content": "Write a haiku about the sea."}]]
    for i, msgs in enumerate(prompts * 2):  # greedy, then sampled
        r = c.chat.completions.create(model=model, messages=msgs, tools=TOOLS, tool_choice="required",
                                      max_tokens=400, temperature=0 if i < len(prompts) else 1, seed=i)
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls" and len(ch.message.tool_calls) == 1, ch
        assert _checked(ch.message.tool_calls[0]) is not None, ch.message.tool_calls


def test_a_code_question_with_tools_offered_is_answered_without_a_call(served):
    from edgeport.models.build_harmony import EVAL_PROMPTS

    c = _client(served)
    model = _model(c)
    for msgs in EVAL_PROMPTS:
        r = c.chat.completions.create(model=model, messages=msgs, tools=TOOLS, max_tokens=400, temperature=0,
                                      extra_body={"reasoning_effort": "low"})
        ch = r.choices[0]
        assert ch.finish_reason == "stop" and not ch.message.tool_calls and ch.message.content, (msgs, ch)


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def get_weather(city: str) -> str:
    """The weather in a city."""
    return run_tool("get_weather", {"city": city})


def test_langchain_forced_call_round_trips_through_an_agent_loop(served):
    """LangChain's ChatOpenAI against the server with the call forced (`tool_choice="any"`, OpenAI's
    `required`): a schema-valid call comes back as LangChain tool_calls, its ToolMessage goes back in
    with the call's id, and the model then answers instead of calling (what it answers is judged by the
    next test, on the model's own calls)."""
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{served}/v1", api_key="unused", model=_model(_client(served)), temperature=0,
                     max_tokens=200, max_retries=0)
    funcs = {"add": add, "get_weather": get_weather}
    history = [HumanMessage("How much is 31 plus 45?")]
    reply = llm.bind_tools([add, get_weather], tool_choice="any").invoke(history)
    assert len(reply.tool_calls) == 1, reply
    call = reply.tool_calls[0]
    jsonschema.validate(call["args"], SCHEMAS[call["name"]])
    history += [reply, ToolMessage(str(funcs[call["name"]](**call["args"])), tool_call_id=call["id"])]
    final = llm.bind_tools([add, get_weather]).invoke(history)
    assert not final.tool_calls and final.content.strip(), final


@pytest.mark.parametrize(("question", "name", "args"), [
    ("How much is 31 plus 45?", "add", {"a": 31, "b": 45}),
    ("How's the weather over in Kyoto?", "get_weather", {"city": "Kyoto"}),
], ids=["add", "get_weather"])
def test_langchain_bind_tools_and_an_agent_loop(served, question, name, args):
    """LangChain's ChatOpenAI against the server: bind_tools gets the model's own tool_calls (not forced),
    and a minimal agent loop (invoke, run the tool, ToolMessage, invoke) ends in an answer that holds the
    tool's result."""
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{served}/v1", api_key="unused", model=_model(_client(served)), temperature=0,
                     max_tokens=200, max_retries=0)
    bound = llm.bind_tools([add, get_weather])
    funcs = {"add": add, "get_weather": get_weather}
    history = [HumanMessage(question)]
    reply = bound.invoke(history)
    assert [(t["name"], t["args"]) for t in reply.tool_calls] == [(name, args)], reply
    for _ in range(3):  # the loop: until the model answers instead of calling
        if not reply.tool_calls:
            break
        history.append(reply)
        for t in reply.tool_calls:
            history.append(ToolMessage(str(funcs[t["name"]](**t["args"])), tool_call_id=t["id"]))
        reply = bound.invoke(history)
    assert not reply.tool_calls and str(funcs[name](**args)) in reply.content, reply
