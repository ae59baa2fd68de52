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


def test_distill_loss_is_zero_against_itself_and_counts_the_completion_only(tok):
    """`--distill`: KL(teacher || model) over the completion's tokens. A model against itself: 0; against
    other weights: > 0 and a gradient; a teacher that differs from the model on the prompt's positions
    alone (its logits there replaced) gives the same loss as the model itself."""
    import torch
    from transformers import GptOssForCausalLM

    model = GptOssForCausalLM.from_pretrained(bt.MODEL, dtype=torch.float32).eval()
    other = GptOssForCausalLM.from_pretrained(bt.MODEL, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids, labels, weights = bt.stops_weighted(
        bt.multi_turn_batch(Conversations(seed=5), bt.ToolConversations(Conversations(seed=6)), tok, 3, (0, 1)), tok)
    assert bt.distill_loss(model, model, ids, labels, weights).abs().item() < 1e-5
    kl = bt.distill_loss(model, other, ids, labels, weights)
    assert kl.item() > 1e-3
    kl.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

    class PromptOnly(torch.nn.Module):
        """The model's logits, but the other model's at every position before the completion."""

        def forward(self, input_ids):
            out = model(input_ids=input_ids)
            mask = (labels == -100)[:, 1:].unsqueeze(-1)
            out.logits[:, :-1] = torch.where(mask, other(input_ids=input_ids).logits[:, :-1], out.logits[:, :-1])
            return out

    assert bt.distill_loss(model, PromptOnly(), ids, labels, weights).abs().item() < 1e-5


def test_teacher_answers_are_the_teachers_greedy_answers_in_harmony(tok):
    """`--teacher-answers`: each kept pair is a prompt without a call in it and the teacher's own greedy
    answer, an analysis then one final message; a teacher that never ends its answer gives none."""
    import torch
    from transformers import GptOssForCausalLM

    teacher = GptOssForCausalLM.from_pretrained(bt.MODEL, dtype=torch.float32).eval()
    tc = bt.ToolConversations(Conversations(seed=8))
    pairs = bt.teacher_answers(teacher, tok, Conversations(seed=7), tc, 6)
    assert len(pairs) >= 4
    for p, c in pairs:
        assert c == bt.generate(teacher, tok, p, 240)
        assert c.startswith(bt.ANALYSIS) and c.count(bt.FINAL) == 1 and c.endswith("<|return|>")
        assert "to=functions" not in c and not _held_out_in(p)
    stop = torch.tensor([tok.token_to_id("<|return|>")])
    teacher.lm_head.register_forward_hook(lambda m, i, out: out.index_fill(-1, stop, float("-inf")))
    assert bt.teacher_answers(teacher, tok, Conversations(seed=7), tc, 3) == []


def test_follow_ups_and_their_weighted_names(tok):
    """`--follow-up 1 --name-weight 5`: every last turn asks for a function by name ("Now write a function
    called X."), its final is `def X(...`, and exactly the name's tokens there weigh 5x what they would;
    by default a tenth of the last turns are follow-ups."""
    args = (Conversations(seed=9), bt.ToolConversations(Conversations(seed=10)), tok, 12)
    plain = bt.multi_turn_batch(*args, follow_up=1.0)
    args = (Conversations(seed=9), bt.ToolConversations(Conversations(seed=10)), tok, 12)
    named = bt.multi_turn_batch(*args, follow_up=1.0, name_weight=5.0)
    assert bt.torch.equal(plain[0], named[0]) and bt.torch.equal(plain[1], named[1])
    for (whole, done), ids, w0, w1 in zip(_texts(named, tok), named[0], plain[2], named[2], strict=True):
        name = re.search(r"final<\|message\|>def (\w+)\(", done).group(1)
        last = whole.split("<|start|>user<|message|>")[-1].split("<|end|>")[0]
        assert last.startswith(("Now ", "And now ", "Next, ", "Then ")) and name in last
        changed = (w1 != w0).nonzero().flatten().tolist()
        assert changed and bt.torch.allclose(w1[changed], 5 * w0[changed])
        got = tok.decode(ids[changed].tolist())  # the tokens that overlap the name (one may hold its "(")
        assert name in got and set(got.replace(name, "", 1)) <= set(" (")
    few = bt.multi_turn_batch(Conversations(seed=9), bt.ToolConversations(Conversations(seed=10)), tok, 40)
    assert sum(whole.split("<|start|>user<|message|>")[-1].startswith(("Now ", "And now ", "Next, ", "Then "))
               for whole, _ in _texts(few, tok)) < 12


def test_loop_positions_are_the_tokens_of_a_repeated_n_gram():
    assert bt.loop_positions([1, 2, 3, 4, 5], set()) == []
    assert bt.loop_positions([7, 1, 2, 1, 2, 1, 2], set()) == [5, 6]  # (1, 2, 1) again at 5, (2, 1, 2) at 6
    assert bt.loop_positions([9, 1, 9, 1, 9, 1], {9}) == []  # n-grams with a special token are not judged


def test_unlikely_batch_penalises_a_models_loops_and_mines_their_prompts(tok):
    """`--unlikely`: an answer that ends with nothing repeated costs nothing; one that repeats gets
    -log(1 - p) on its repeated tokens (a gradient) and its prompt's data answer as a likelihood row; one
    that never ends is mined too. The committed model's two answers here (seed 2): one clean, one whose
    analysis loops ("Let me currently has to match the line that comes next. Let me currently has…")."""
    import torch
    from transformers import GptOssForCausalLM

    model = GptOssForCausalLM.from_pretrained(bt.MODEL, dtype=torch.float32).eval()
    tc = bt.ToolConversations(Conversations(seed=8))
    ul, rows = bt.unlikely_batch(model, tok, Conversations(seed=2), tc, 2)
    assert ul.item() > 0 and len(rows) == 1
    ul.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    stop = torch.tensor([tok.token_to_id("<|return|>")])
    model.lm_head.register_forward_hook(lambda m, i, out: out.index_fill(-1, stop, float("-inf")))
    _, rows = bt.unlikely_batch(model, tok, Conversations(seed=2), bt.ToolConversations(Conversations(seed=8)), 2,
                                max_new=60)
    assert len(rows) == 2  # neither ends: both mined
    for ids, labels, _ in rows:
        done = tok.decode([t for t, y in zip(ids, labels, strict=True) if y != -100], skip_special_tokens=False)
        assert done.startswith(bt.ANALYSIS) and done.endswith("<|return|>")


def test_final_ul_candidates_are_the_finals_earlier_tokens_less_the_label(tok):
    """`--final-ul`: at each label of a final message, the negatives are the tokens that final already
    wrote, other than the label; the analysis, the prompt and the padding get none. Its cross-entropy
    is weighted_loss's, from the same forward pass."""
    import torch
    from transformers import GptOssForCausalLM

    from edgeport.models.build_harmony import weighted_loss

    conv = Conversations(seed=3)
    ids, labels, weights = bt.padded([bt.chat_row(tok, *conv.sample()) for _ in range(3)], tok)
    message = tok.token_to_id("<|message|>")
    mask = bt.final_candidates(labels, message, tok.get_vocab_size())
    final_tokens = 0
    for b, lab in enumerate(labels.tolist()):
        start = max(i for i, t in enumerate(lab) if t == message) + 1
        assert not mask[b, :start].any()
        for i in range(start, len(lab)):
            want = set(lab[start:i]) - {lab[i]} if lab[i] != -100 else set()
            assert set(torch.nonzero(mask[b, i]).flatten().tolist()) == want, (b, i)
            final_tokens += lab[i] != -100
    assert mask.any() and final_tokens > 20
    model = GptOssForCausalLM.from_pretrained(bt.MODEL, dtype=torch.float32).eval()
    ce, ul = bt.loss_with_final_ul(model, ids, labels, weights, message)
    assert torch.isclose(ce, weighted_loss(model, ids, labels, weights))
    assert ul.item() > 0
    ul.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
