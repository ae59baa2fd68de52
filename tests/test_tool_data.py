"""The tool-training data (edgeport/models/build_tools.py) never holds what the eval holds out: no
held-out number pair, city, sky or phrasing in any training row, so tests/test_tool_model.py's rates are
rates on unseen questions; and a row's loss falls on the completion only."""

from __future__ import annotations

import random
import re

import pytest
from tokenizers import Tokenizer

from edgeport.models import build_tools as bt
from edgeport.models.build_harmony import Conversations


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_file(str(bt.MODEL / "tokenizer.json"))


def _texts(batch, tok) -> list[tuple[str, str]]:
    """(whole row, completion) texts of a padded batch."""
    ids, labels, _ = batch
    out = []
    for row, lab in zip(ids.tolist(), labels.tolist(), strict=True):
        done = [t for t, y in zip(row, lab, strict=True) if y != -100]
        out.append((tok.decode(row, skip_special_tokens=False), tok.decode(done, skip_special_tokens=False)))
    return out


def _held_out_in(text: str) -> list[str]:
    """The held-out values `text` holds: a pair as the analysis or the call writes it, a city, a sky as a
    weather result, a held-out phrasing."""
    pairs = bt.heldout_pairs()
    held = [rf"(?<!\d){a} and {b}," for a, b in pairs] + [rf'"a": {a}, "b": {b}}}' for a, b in pairs]
    held += [rf"\b{c}\b" for c in bt.HELDOUT_CITIES] + [rf"\b{s}, \d+ C" for s in bt.HELDOUT_SKIES]
    held += [re.escape(p.split("{")[0]) for p in bt.ADD_HELDOUT + bt.WEATHER_HELDOUT if len(p.split("{")[0]) > 6]
    return [h for h in held if re.search(h, text)]


@pytest.mark.parametrize("small,made_up", [(0.0, 0.0), (0.5, 0.8)])
def test_no_training_row_holds_a_held_out_value(tok, small, made_up):
    rng = random.Random(0)
    tc = bt.ToolConversations(Conversations(seed=1), seed=0, made_up=made_up, small=small)
    rows = [*_texts(bt.tool_batch(tc, tok, 200), tok), *_texts(bt.short_batch(rng, tc.held, tok, 300, small), tok),
            *_texts(bt.answer_batch(rng, tc.held, tok, 300, small), tok)]
    found = {h for whole, _ in rows for h in _held_out_in(whole)}
    assert not found, found
    one_digit = sum('"a": ' in c and c.split('"a": ')[1][1] == "," for _, c in rows)
    assert one_digit > 0


def test_the_check_finds_a_held_out_value():
    a, b = bt.heldout_pairs()[0]
    assert _held_out_in(f"The user wants the sum of {a} and {b}, so I call add.")
    assert _held_out_in("The weather is stormy, 3 C.") and _held_out_in('{"city": "Quito"}')
    assert not _held_out_in(f"the sum of 1{a} and {b}, so") and not _held_out_in("d.clear()")


def test_the_loss_is_on_the_completion_only(tok):
    rng = random.Random(1)
    for whole, done in _texts(bt.short_batch(rng, set(), tok, 20), tok):
        assert done.startswith("<|channel|>analysis<|message|>") and done.endswith("<|call|>")
        assert "<|start|>user" in whole and "<|start|>user" not in done
    for _, done in _texts(bt.answer_batch(rng, set(), tok, 20), tok):
        assert done.startswith("<|channel|>analysis<|message|>The tool returned ") and done.endswith("<|return|>")


def test_made_up_names_start_with_any_capital_and_hold_no_held_out_word():
    """A city in a call starts with a letter the model must copy, not pick: the held-out cities start
    with H, Q, Z, ..., which no training city did."""
    rng = random.Random(2)
    cities = [bt.made_up_city(rng) for _ in range(2000)]
    assert {c[0] for c in cities} == set("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    assert not any(h in c.lower() for c in cities for h in bt.HELD_WORDS)


def test_the_text_copy_task_trains_on_the_second_copy_only(tok):
    from edgeport.models.build_harmony import code_stream

    ids, labels, weights = bt.text_copy_batch(random.Random(3), tok, code_stream(tok), 8)
    nl = tok.encode("\n").ids
    for row, lab, w in zip(ids.tolist(), labels.tolist(), weights.tolist(), strict=True):
        done = [t for t in lab if t != -100]
        first = row[: len(done)]
        assert done == first and row[len(done) : len(done) + len(nl)] == nl
        assert sum(x > 0 for x in w) == len(done)


def _off_grid(params) -> None:
    """Seeded noise on weights, so that they are not MXFP4 values whatever they were."""
    import torch

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=gen) * 1e-2)


def test_mxfp4_experts_sets_values_every_export_keeps_and_freezes_them():
    """`--mxfp4-experts`: each expert weight becomes its MXFP4 value, which bf16 (the saved weights) holds
    exactly and the exporters' quantizer maps back to itself, so an export adds no expert error; frozen.
    The weights are moved off that grid first (a model saved by `--qat` is on it already)."""
    import numpy as np
    import torch
    from transformers import GptOssForCausalLM

    model = GptOssForCausalLM.from_pretrained(bt.MODEL, dtype=torch.float32)

    def round_trip_error(p: torch.Tensor) -> float:
        w = p.detach().float().numpy()
        return float(np.abs(bt.mxfp4_values(w) - w).max())

    experts = [p for n, p in model.named_parameters() if n.endswith(bt.EXPERTS)]
    assert len(experts) == 2 * model.config.num_hidden_layers
    _off_grid(experts)
    assert max(round_trip_error(p) for p in experts) > 0
    bt.mxfp4_experts(model)
    for p in experts:
        assert round_trip_error(p) == 0 and not p.requires_grad
        assert torch.equal(p.to(torch.bfloat16).float(), p)


def test_expert_qat_runs_forward_at_mxfp4_values_and_updates_the_masters():
    """`--qat`: inside a step the experts hold their MXFP4 values (what the exports keep), the gradient
    taken there lands on the fp32 masters restored before the optimizer step (straight through), and
    the masters move: the experts keep learning, unlike `--mxfp4-experts`."""
    import numpy as np
    import torch
    from transformers import GptOssForCausalLM

    model = GptOssForCausalLM.from_pretrained(bt.MODEL, dtype=torch.float32)
    fake = bt.ExpertQAT(model)
    assert len(fake.params) == 2 * model.config.num_hidden_layers
    _off_grid(fake.params)
    masters = [p.detach().clone() for p in fake.params]
    fake.quantize()
    for p, m in zip(fake.params, masters, strict=True):
        assert np.array_equal(p.detach().numpy(), bt.mxfp4_values(m.numpy())) and not torch.equal(p, m)
    ids = torch.tensor([list(range(10, 40))])
    model(input_ids=ids, labels=ids).loss.backward()
    fake.restore()
    for p, m in zip(fake.params, masters, strict=True):
        assert torch.equal(p, m) and p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0
    torch.optim.SGD(fake.params, lr=1e-2).step()
    assert all(not torch.equal(p, m) for p, m in zip(fake.params, masters, strict=True))



def test_served_qat_sees_the_types_a_served_gguf_holds(exported):
    """`--served-like GGUF`: every quantized non-expert weight of the export is seen at its type (a
    K-quant at gguf-py's nearest legacy type), and restore puts the masters back."""
    import numpy as np
    import torch
    from transformers import GptOssForCausalLM

    path, _ = exported("cpu-gpt-oss")
    model = GptOssForCausalLM.from_pretrained(bt.MODEL, dtype=torch.float32)
    fake = bt.ServedQAT(model, path if path.suffix == ".gguf" else next(path.glob("*-Q4_K_M.gguf")))
    layers = model.config.num_hidden_layers
    assert fake.types["model.embed_tokens.weight"] == "Q5_0"
    assert sum(n.endswith("o_proj.weight") for n in fake.types) == layers  # Q4_K: rows of 256
    assert sum(n.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")) for n in fake.types) == 3 * layers
    masters = [p.detach().clone() for p in fake.params]
    fake.quantize()
    for (p, fn), m in zip(fake.pairs, masters, strict=True):
        assert np.array_equal(p.detach().numpy(), fn(m.numpy())) and not torch.equal(p, m)
    fake.restore()
    assert all(torch.equal(p, m) for p, m in zip(fake.params, masters, strict=True))


def test_multi_turn_rows_have_an_earlier_turn_and_answer_without_a_call(tok):
    """`--multi-batch`: every row holds an earlier exchange, half of them offer the tools, and the loss is on
    an answer (final channel, `<|return|>`), never a call."""
    rows = _texts(bt.multi_turn_batch(Conversations(seed=3), bt.ToolConversations(Conversations(seed=4)), tok, 40),
                  tok)
    for whole, done in rows:
        assert whole.count("<|start|>user") >= 2 and whole.count("<|start|>assistant") >= 2
        assert done.startswith("<|channel|>analysis<|message|>") and done.endswith("<|return|>")
        assert "to=functions" not in done and "<|start|>user" not in done
        assert not _held_out_in(whole)
    offered = sum("namespace functions" in whole for whole, _ in rows)
    assert 10 <= offered <= 30, offered
