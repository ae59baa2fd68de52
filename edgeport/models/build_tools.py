"""Teach the bundled tiny gpt-oss to call function tools (the shipped weights were made so: see Status).

build_harmony.py taught it harmony but never a tool: under `tool_choice` auto it answered a sum or a
weather question with code (0/40 held-out calls), and a forced call was the grammar's doing. This
continues its training, seeded, for a fixed number of steps, on (a) what build_harmony trains on
(code batches and harmony conversations, two steps in three short ones, so parity and the effort
behaviour stay), and (b) conversations with the tools `add(a, b)` and `get_weather(city)` declared,
each rendered by edgeport/core/harmony.py::render_harmony_own (the server's own renderer), with a
loss on the assistant's tokens only:

- a sum or weather question: an analysis that restates the values, then the call as the model writes
  it (the header edgeport/serving/constrained.py writes when a call is forced)
  `<|start|>assistant<|channel|>commentary to=functions.add <|constrain|>json<|message|>{"a": 12, "b": 7}<|call|>`;
- the same with the call and its result in the prompt (`functions.add to=assistant`): the analysis
  "The tool returned 19.", then the final answer "The sum is 19." / "The weather is sunny, 21 C.";
- a code question with the tools offered: build_harmony's answer, no call;

and (c) the copy task (`copy_batch_loss`: random strings written twice), which no call can do without;
optionally (d) short calls and short answers from a result (the user turn alone, filler words, made-up
cities and skies: `short_batch`, `answer_batch`), many values copied per step for little compute, and
(e) made-up lines and code written twice (`text_copy_batch`), the copy that text needs.

Phrasings, number pairs, cities and weather strings for evaluation (HELDOUT_*, `heldout_calls`,
`run_tool`; tests/test_tool_model.py uses them) are never trained on.

    python -m edgeport.models.build_tools --steps 800 --out /tmp/tools3   # ~20 min on 2 cores
    python -m edgeport.models.build_tools --check-only [--init DIR]       # a model's figures (slow)

Status (2026-12-07): shipped, the twelfth session's uk-step20 (at the end): served from its Q4_K_M
GGUF, the right tool with schema-valid arguments 38/40 held out, the whole call right 33/40, answers
from the result 26/40 (tests/test_tool_model.py holds these two below, and the 90 % goal as a strict
xfail); every harmony eval answer well formed over both engines. Its lineage, each run from the one
before (commands below): the committed harmony weights -> qa -> qt -> qb -> qd's step-100 save -> qf ->
ua -> ub -> ui -> uj -> uk's step-20 save. ua and ub ran before `--unlikely`'s prompts were half
build_harmony's (8a39124's code), qf on a draft of `--follow-up`/`--short-earlier`/`--name-weight`.

The sessions, in order. The one full run of the first session (250 steps without the copy task, seed 0, lr
3e-3, batches code 2 / chat 4 / tool 8) kept the effort lookup and learned the call's shape and mostly which
tool, but not to copy a value: the numbers and cities came out as frequent guesses, 0/40 held-out calls right
(1/20 training ones, teacher-forced). Served (Q4_K_M GGUF, tests/test_tool_model.py): the right tool with
made-up arguments, and tests/test_harmony_model.py's gguf case failed (one eval prompt ran to the token
limit). Those weights were not committed.

The second session found why: the tiny model could not copy at all (greedy accuracy 0.00 on a random
20-token string written twice). `copy_batch_loss` (random strings written twice, 32 per step) grows that
mechanism within ~200 steps alone (measured: accuracy 0.07 at step 100, 1.00 by step 250 at lr 1e-3)
and, mixed into this training, 0.94 at step 300 and 1.00 after. It did not carry over to the tool
conversations. Two runs, the second continuing the first (about 35 min on 2 cores in all):

    python -m edgeport.models.build_tools --steps 800 --out /tmp/tools3   # stopped after step 400's save
    python -m edgeport.models.build_tools --init /tmp/tools3 --seed 1 --steps 600 --lr 1.5e-3 \
        --tool-batch 16 --copy-batch 8 --out /tmp/tools5

Result (greedy, in-process, fp32; `--check-only` and a count of the tool named): on the 40 held-out
questions the right tool 37/40, but the whole call right 0/40 (`{"a": 44, "b": 44}` for "How much is
99 plus 56?", "Dallas" for "Quito"), and 0/20 on training questions too; answers from a result 0/40;
code questions with tools offered answered without a call 8/8; the effort behaviour kept (5 / 22 / 62
analysis words); eval-set perplexity 51.8 (the committed model: 45.1). Not committed.
A third run added short calls (`--short-batch`: the user turn alone, random filler words around the
values, made-up cities), 48 per step, so a step holds many more copies for the same compute:

    python -m edgeport.models.build_tools --init /tmp/tools5 --seed 2 --steps 500 --lr 1e-3 \
        --tool-batch 8 --copy-batch 8 --short-batch 48 --out /tmp/tools6   # 17 min

It moved a little (digits of the question begin to appear in the call) but not enough: held out, the
right tool 35/40 and the whole call 0/40; training questions 3/20; short questions 4/20. Not committed.
A variant that opened every tool analysis with the effort sentence was stopped after 230 steps:
at effort low that sentence is followed by the end of the analysis (weighted 10x by build_harmony), so
the two trainings pulled the same token apart, and the model stopped calling.

What I would try next: the copy the call needs is a choice (the first number of the question, then the
second), not the repeat the copy task teaches, and every number in this tokenizer follows the same
space token, so a repeat-copying head cannot tell them apart. A task that selects can be learned:
measured once by a throwaway script (the committed model, lr 1e-3, batch 32, the copy task alone for
150 steps, then with it short selection rows: `<|start|>user<|message|>{1-6 FILLER words around "a
plus|and|+ b"}<|end|><|start|>assistant<|channel|>analysis<|message|>The user wants the sum of` and
the target ` {a} and {b},`, a and b in 0-99), the greedy target whole and right on 64 fresh rows rose
to 0.22 after 250 selection steps, 0.61 after 650, 0.81 after 1050, and 0.67-0.86 from then to 1450
(14 min on 2 cores). The mixed runs above gave the selection a few rows per step; dedicated rows,
then the tool conversations, were the next run to try.

The fourth session (2026-12-06) tried it, in four runs each from the previous one's output (about 95
min on 2 cores in all, some of it beside other work):

    python -m edgeport.models.build_tools --steps 1200 --lr 1e-3 --code-batch 0 --chat-batch 0 \
        --tool-batch 0 --copy-batch 16 --short-batch 48 --out /tmp/sel1
    python -m edgeport.models.build_tools --init /tmp/sel1 --seed 1 --steps 700 --lr 1e-3 --code-batch 0 \
        --chat-batch 0 --tool-batch 0 --copy-batch 8 --short-batch 40 --answer-batch 24 --out /tmp/sel2
    python -m edgeport.models.build_tools --init /tmp/sel2 --seed 2 --steps 600 --lr 1e-3 --code-batch 2 \
        --chat-batch 8 --tool-batch 8 --copy-batch 4 --short-batch 24 --answer-batch 16 --out /tmp/sel3
    python -m edgeport.models.build_tools --init /tmp/sel3 --seed 3 --steps 700 --lr 7e-4 --code-batch 4 \
        --chat-batch 8 --tool-batch 8 --made-up 0.5 --copy-batch 4 --short-batch 16 --answer-batch 8 \
        --out /tmp/sel4

The log's `short` (teacher-forced, the whole short call right, 32 fresh questions) rose to 0.41 after
the first run and stayed near 0.4-0.56 after. The short calls alone cost what the other tasks hold:
after the first two runs, the code loss was 14.9 (about 3.3-3.8 when trained) and the effort lookup at
chance, and the third run's model still wrote tool-call text into its code answers (eval-set perplexity
72.4). After the fourth (`--check-only`, greedy, fp32): held-out calls right 14/40 (sums 14/20, weather
0/20), answers from the result 20/40, code questions with tools answered without a call 7/8, the effort
kept (5 / 22 / 62 words), harmony well formed, eval-set perplexity 56.1 (committed: 45.1). Not committed.
What is wrong is now narrow:
- every missed sum has a one-digit number, written twice ("I need 2 + 3." -> `{"a": 22, "b": 33}`):
  0-99 drawn uniformly gives 10 % one-digit numbers, the held-out pairs hold 7 of 20 sums with one;
  `--small-numbers` oversamples them;
- the held-out cities (real names: Helsinki, Quito, ...) come out as training cities (Milan for Manila)
  or made-up ones: "in <City>" is learnt as a choice among the cities seen, not a copy. Made-up
  cities (`--made-up`, and half the short rows) did not yet change that.
A fifth run from the fourth's output (`--init /tmp/sel4 --seed 4 --steps 500 --lr 5e-4 --code-batch 4
--chat-batch 8 --tool-batch 8 --made-up 0.8 --small-numbers 0.3 --copy-batch 4 --short-batch 16
--answer-batch 8`, 17 min alone after a slower start beside the test suite) fixed some one-digit sums
but not the cities and lost ground elsewhere: held-out calls 15/40 (sums 15/20, weather 0/20), answers
20/40, code questions without a call 8/8, eval-set perplexity 52.1, but at effort low half the code
answers again held tool-call text (`def _get_weather <|constrain|>...`: not harmony). Not committed.
Teaching selection apart from the rest wrecks the rest; the next run should mix everything from the
start (from the committed model), with one-digit numbers oversampled and most cities made up.

The sixth session (2026-12-06) found what stopped the cities: this tokenizer writes " Helsinki" as
`Ġ H e ls ink i`, so a copy must find "the letter after the space after `in`", and the space token and
the letters occur all over the prompt; the random-token copy task teaches a head that finds a token by
the one before it, which such text defeats (per-token greedy accuracy on 16 `text_line`s written
twice, by a throwaway script: 0.30, with the random-token copy at 0.98; the log's `text` is the share
of 32 lines copied whole). And no made-up city (16 syllables) began with H, Q or Z.
Made-up names now use any letters under any capital (`letters_word`), and `--text-copy` adds made-up
lines and code windows written twice (`text_copy_batch`). Runs, each from the previous one's output
(the first three stopped after the save named, so their schedules stopped early):

    python -m edgeport.models.build_tools --steps 1000 --lr 1e-3 --code-batch 4 --chat-batch 8 \
        --tool-batch 8 --made-up 0.7 --small-numbers 0.3 --copy-batch 4 --text-copy 16 --short-batch 24 \
        --answer-batch 12 --out /tmp/mix1                                  # stopped after step 650
    ... --init /tmp/mix1 --seed 1 --steps 1200 (the same, but --copy-batch 8 --text-copy 32) --out /tmp/mix2
                                                                          # stopped after step 300
    ... --init /tmp/mix2 --seed 2 --made-up 1.0 (else as mix2) --out /tmp/mix3  # stopped after step 200

Mixed in, the text copy did not move (0.30-0.31 per token after 650, 950 and 1150 steps), though the
random-token copy reached 0.99 and sums came right more often (teacher-forced 0.75-1.0 on 8). Alone it
did: a throwaway script (AdamW as `optimizer`, constant lr 1e-3, 48 `text_copy_batch` rows per step,
`random.Random(9)`, nothing else; nearest here: `--code-batch 0 --chat-batch 0 --tool-batch 0
--copy-batch 0 --text-copy 48 --lr 1e-3`, which has the cosine schedule) took it from 0.32 to 0.67 in
400 steps and 0.985 in 900 (8 min). That wrecked the rest again (code loss 15.3, effort at chance),
but the mixture below restored it within ~150 steps:

    python -m edgeport.models.build_tools --init /tmp/tc1 --seed 3 --steps 800 --lr 1e-3 --code-batch 4 \
        --chat-batch 8 --tool-batch 8 --made-up 1.0 --small-numbers 0.3 --copy-batch 4 --text-copy 16 \
        --short-batch 24 --answer-batch 12 --out /tmp/mix4                # 34 min

`--check-only --init /tmp/mix4`: held-out calls 18/40 (sums 15/20, weather 3/20), answers from the
result 35/40 (was 20/40), code questions without a call 8/8, eval-set perplexity 35.6 (committed: 45.1),
effort 4 / 22 / 54 words, but harmony broken on 3 of 24 eval answers (a final that loops, or holds
`final<|message|>`). The cities are now copies with one letter wrong, mostly the first ("Yuito",
"Yurich", "Oorto"; "Helsurei" where the analysis had "Helsinki"); the missed sums loop ("44 and 44 and
..."). Not committed. 600 more steps from it (`--init /tmp/mix4 --seed 4 --steps 600 --lr 5e-4`, batches
as mix4 but `--tool-batch 12 --answer-batch 8`; 29 min) did not help: calls 16/40 (sums 12/20, the new
misses writing the second number twice, `{"a": 30, "b": 30}`; weather 4/20, still the first letter:
"Zuito", "Hurich", "Oustin"), answers 31/40, code questions without a call 7/8, perplexity 30.2,
harmony broken on 3 of 24. What remains is choosing the first token of a value (the capital after the
space token, the first number rather than the second); what to try next: more steps of the mix4 mixture
with the short rows weighted on that token, and a check of whether a model of this size (4 layers, 288
wide) learns it at all on the short rows alone, before spending another session on mixtures.

The seventh session (2026-12-06) continued mix4 with twice the harmony conversations at half the lr:

    python -m edgeport.models.build_tools --init /tmp/mix4 --seed 5 --steps 550 --lr 5e-4 --code-batch 4 \
        --chat-batch 16 --tool-batch 8 --made-up 1.0 --small-numbers 0.3 --copy-batch 4 --text-copy 8 \
        --short-batch 16 --answer-batch 8 --out /tmp/mix6                  # 27 min

`--check-only --init /tmp/mix6`: held-out calls 18/40 (sums 15/20, weather 3/20), answers from the
result 40/40, code questions without a call 8/8, all 24 harmony eval answers well formed with the
effort kept (5 / 22 / 62 words), eval-set perplexity 30.5. Served (its Q4_K_M GGUF over llama-server,
tests/test_tool_model.py with these weights in place): the right tool with schema-valid arguments
33/40, the whole call right 18/40, answers from the result 40/40; but tests/test_harmony_model.py
failed over both engines (a medium-effort answer that does not end), a code question with tools got
a get_weather call, and LangChain's loop on a sum ended in reasoning text. The cause is the experts'
MXFP4 quantization, which every export applies to a BF16 gpt-oss: this training made the weights
3.5x more sensitive to it (the default cpu export's quantization KL 0.0064 -> 0.022, top-1 0.929 ->
0.889; vllm 0.0046 -> 0.019); `--check-only --mxfp4-experts` reproduces the broken answer in process.
Serving it also found two bugs in the front, both fixed with tests (harmony.HarmonyStream hung on
`<|start|>` and 256 characters without `<|message|>`; a forced call after a channel opened inside the
analysis came back as reasoning). Then, each measured once by `--check-only` (fp32, 40 held out, 24
harmony answers):
- `--first-weight 3` (from mix6, `--seed 6 --steps 450`, `--short-batch 24`, else as mix6; 27 min):
  26/40 (sums 16/20, weather 10/20: Quito, Zurich, Austin right; Manila, Porto, Kyoto, Helsinki not),
  answers 40/40, but 5 of 24 harmony answers broken (code finals that loop); 150 more steps at lr 2e-4
  with `--chat-batch 24`: 6 of 24.
- `--mxfp4-experts` (experts at their MXFP4 values and frozen; from mix6, `--seed 8 --steps 200 --lr
  3e-4`, batches as mix6): 19/40, 5 of 24 broken, 6/8 code questions without a call; with
  `--chat-batch 24 --short-batch 8 --answer-batch 4 --text-copy 4 --lr 2e-4 --steps 250 --snapshots`:
  18-20/40 at every 50-step save, 2-4 of the 8 low-effort answers broken at each (and one high-effort
  answer from step 150).
No weights shipped. What breaks is the one-line code answer's end at low effort (a greedy loop), which
this 5M model holds only narrowly; the mixtures that teach copying move it. Next: train with the
experts frozen at MXFP4 from the start of a run (mix4's), and weight the final's `<|return|>` in the
tool runs' chat batches as build_harmony weights its stop decisions.

The eighth session (2026-12-06, AMD EPYC, 2 cores) trained every expert quantization-aware from the start
(`--qat`, ExpertQAT: the forward pass at the experts' MXFP4 values, the gradient on fp32 masters, saved
at the MXFP4 values, so the exports add no expert error) and weighted each completion's `<|return|>` /
`<|call|>` 10x (`--stop-weight`). From the committed model, each run from the previous one's output:

    python -m edgeport.models.build_tools --steps 900 --lr 1e-3 --code-batch 0 --chat-batch 0 --tool-batch 0 \
        --copy-batch 32 --text-copy 32 --qat --out /tmp/run/qa                    # 16 min (beside a build)
    python -m edgeport.models.build_tools --init /tmp/run/qa --seed 1 --steps 700 --lr 1e-3 --code-batch 0 \
        --chat-batch 0 --tool-batch 0 --copy-batch 0 --text-copy 48 --qat --out /tmp/run/qt   # 6 min
    python -m edgeport.models.build_tools --init /tmp/run/qt --seed 3 --steps 800 --lr 1e-3 --code-batch 4 \
        --chat-batch 12 --tool-batch 8 --made-up 1.0 --small-numbers 0.3 --copy-batch 4 --text-copy 16 \
        --short-batch 24 --answer-batch 12 --qat --stop-weight 10 --first-weight 3 --out /tmp/run/qb   # 57 min

The first grew the random-token copy (0.00 -> 1.00 by step 350); the second the text copy (the log's
whole-line `text` 0.00 -> 0.72). `--check-only --init /tmp/run/qb` (its experts already MXFP4, so this is
what the exports run): held-out calls right 35/40 (sums 19/20, weather 16/20: "Hefore" for Helsinki
three times, "Kyoto right now" once), answers from the result 26/40, code questions with tools offered
answered without a call 8/8, eval-set perplexity 34.8, the effort kept (5 / 22 / 62 words), but one
harmony eval prompt of 8 broken at every effort: the two-turn one ("Now write a function called
rotate_grid.", no tools declared) got a weather call's analysis ("The user wants the weather in rawa").
150 more steps with twice the harmony conversations at a fifth of the lr:

    python -m edgeport.models.build_tools --init /tmp/run/qb --seed 7 --steps 150 --lr 2e-4 --code-batch 4 \
        --chat-batch 24 --tool-batch 8 --made-up 1.0 --small-numbers 0.3 --copy-batch 2 --text-copy 4 \
        --short-batch 8 --answer-batch 8 --qat --stop-weight 10 --first-weight 3 --snapshots --out /tmp/run/qd

Its step-100 save: in process 32/40 calls right, 26/40 answers, 8/8 code questions without a call, all 24
harmony answers well formed (5 / 22 / 62 words). Served from its Q4_K_M GGUF (the export's quantization
KL 0.0045, top-1 0.951: lower than the committed weights' 0.0064, since the experts no longer add any;
vllm's 2.5e-14) through tests/test_tool_model.py, measured once: the right tool with schema-valid
arguments 37/40, the whole call right 32/40 (16 sums, 16 cities), answers from the result 26/40, and
LangChain's agent loop right on both tools. Not shipped: Q4_K_M's other tensors tip the same two-turn
prompt back into a weather call at effort low (tests/test_harmony_model.py fails over GGUF; over ONNX it
passed), a code question with tools gets a call's analysis and no content, and under `tool_choice`
required that prompt's free analysis loops ("get_grid.add_grid.add…") until max_tokens, so no call is
forced. The final save (step 149) broke the two-turn prompt again in process. Candidates and logs:
~/.cache/edgeport/tool-candidates/ on that machine. Next: more two-turn harmony conversations without
tools in the tool runs (the eval's failing prompt has a previous turn; the tool questions after a
previous turn taught "a second turn -> a call"), and, in the front, an end to the free analysis under a
forced call before max_tokens runs out (the front's guarantee should not rest on the model ending it).

Ninth session (2026-12-07, AMD EPYC, 2 cores). The front now keeps a reserve for the constrained part
(constrained.py's RESERVE): with qd's step-100 save served, tests/test_tool_model.py's `required` test
failed on the old front (finish_reason "length" after "get_grid.add_grid.add…") and passed on the new
one. A new batch, `--multi-batch N`: harmony conversations with one or two earlier turns, answered
without a call, half of them with the tools offered (`multi_turn_batch`). Four runs from qd's step-100 save, each
`--qat --stop-weight 10 --first-weight 3 --code-batch 2 --chat-batch 24 --tool-batch 8 --copy-batch 2
--text-copy 4 --short-batch 8 --answer-batch 8 --snapshots`, every save checked with `--check-only`:

    qe: --seed 11 --steps 150 --lr 2e-4 --multi-batch 12   (a draft: half the later turns "Now write a
        function called X.", earlier turns short)          -> 3 of 24 broken at steps 50, 100 and 149
        (the Graph prompt at medium and high: its final loops "def _get_init_init…")
    qf: as qe, --seed 13 --steps 100, the name's tokens weighted x5   -> 2-3 of 24 (code finals now
        start with `def`: "def _sysis<|message|>…")
    qg: as qe's draft, --seed 17 --steps 100 --lr 1e-4 --multi-batch 6   -> 3-4 of 24
    qh: the code as committed (a tenth follow-ups, build_harmony's turns), --seed 19 --steps 60 --lr 1e-4
        --multi-batch 6                                     -> 2 of 24 (finals looping "def _get_module_…")

Held-out calls stayed 31-33/40 in process; none was served. qd's step-100 save sits on an edge every
further step so far has tipped. `--check-only --served-like GGUF` runs the check with the other weights
at the types the served Q4_K_M GGUF holds (ServedQAT: token_embd, attn_q/k and two attn_v Q5_0, two
attn_v and output Q8_0, attn_output Q4_K through gguf-py's Q4_0): qd's step-100 save kept 24/24 there,
so the served break of the two-turn prompt is not weight rounding alone (llama.cpp's kernels also round
activations to Q8 and its YaRN range). Next: check candidates served (export, then
tests/test_harmony_model.py and tests/test_tool_model.py) rather than in process; or train with
`--served-like`, which sees that noise at least.

Tenth session (2026-12-07, AMD EPYC, 2 cores). Candidates judged as served: `python -m
edgeport.benchmarking.served_check DIR --tools` (both exports behind the real server: broken harmony answers of 32,
the 8 eval prompts at three efforts and at low effort with the tools offered; and the held-out rates over
GGUF). In process and served disagree both ways. The ninth session's saves, served (GGUF / ONNX, broken of
32): qd's step-100 save 2 / 1 (the two-turn prompt at low effort), qe 3 / -, qf-step50 2 / -, qf 0 / 2,
qg-step50 1 / -, qg 2 / -, qh-step50 4 / -, qh 4 / -. qf (qd's step-100 save, then `--seed 13 --steps 100 --lr
2e-4 --multi-batch 12` in a draft whose options are now `--follow-up 0.5 --short-earlier --name-weight 5`, the
rest as qe) is the best candidate: over GGUF no broken answer, the right tool with schema-valid arguments
37/40, the whole call right 32/40, answers from the result 26/40, every tests/test_tool_model.py check but the
rates' bars passing; over ONNX (INT8, MXFP4 experts) two answers loop ("def _nc(self, follow_ween_ween…" at
medium effort; one at low effort with the tools offered), so tests/test_harmony_model.py's onnx case fails.
Not shipped. What did not help, each from qd's step-100 save and judged served:
- `--teacher DIR --distill 16`, DIR a copy of the committed model (KL to the committed model's distributions
  on harmony rows; seed 23, 100 steps, lr 1e-4, chat batch 8): harmony broken over both engines at every
  20-step save;
- `--teacher-answers 16` (the committed model's own greedy answers as targets; seed 29, 100 steps, lr 1e-4):
  the calls kept (34/40 whole at step 20), but 5 of 32 broken over GGUF at the end, finals looping ("def
  _get_decode_decode…"); `--teacher-answers 4` (seed 31, 60 steps): broken over both engines at every save;
- weight interpolation (committed and qd's step-100 save, 0.5-0.9 of the way): the calls lost (0/40 up to 0.8,
  22/40 at 0.9) and harmony broken.
From qf, with the code's own options (`--seed 37 --steps 60 --lr 5e-5 --multi-batch 6`, the rest as qh): the
step-10 and step-20 saves 1 / 2 and 0 / 2 broken, the later ones 3-4 / 2-3; with qf's own options at a quarter
of its lr (`--seed 41 --steps 30 --lr 5e-5 --multi-batch 12 --follow-up 0.5 --short-earlier --name-weight 5`,
saves every 5 steps): 1-3 / 2 at every save, the same two ONNX answers looping at each. Next: what makes the
ONNX export loop where the GGUF does not (its INT8 weights and fp32 activations) on those two prompts, then a
run that sees it (a FakeQuant of the ONNX export's INT8, as ServedQAT is of the GGUF's types).
Serving the candidates also found a front bug, now fixed: a sampled forced call's JSON string took `<|end|>`
(llama-server's grammar judges a special token by its text), and the call came back cut there with
finish_reason tool_calls; constrained.py now bans harmony's markers while a grammar decodes.

Eleventh session (2026-12-07, AMD EPYC, 2 cores). Why qf's ONNX export loops: it does not differ from
the model. Greedy over the two prompts, the fp32 reference (transformers) writes the same looping finals
token for token as the ONNX export (mean KL 1e-4, no argmax differs in 160 tokens); the GGUF escapes one
by a near-tie its Q4_K_M weights flip (0.313 vs 0.303 at one step). So a FakeQuant of the INT8 export
would not help: the model itself loops. Counted on 80 fresh prompts of the training distribution
(`harmony_prompt`, seed 12345, 240 tokens), answers that loop or do not end: the committed model 1, qd's
step-100 save 6, qf 8 (11 of 80 at seed 777). New: `--unlikely N`, unlikelihood training on the model's
own loops (`unlikely_batch`: N prompts a step answered greedily, -log(1 - p) on each repeated trigram's
token, and the data's answers to those prompts as likelihood rows). Runs, each qf's options (as in the
tenth session) plus the one named, judged served (broken of 32, GGUF / ONNX):
    ua: from qf, --unlikely 4 (harmony_prompt's prompts only), --seed 43 --steps 60 --lr 5e-5
        -> 1 / 1 (qf's two loops gone; EVAL_PROMPTS[4] at high effort now loops "def _get_init_init…");
        5-6 of 80 fresh prompts broken
    ub: from ua, --unlikely 8, --seed 47 --steps 40 --lr 5e-5 -> 1 / 1 (the same), 3 of 80; over GGUF
        the right tool 38/40, the whole call 33/40, answers 26/40 (best so far)
    uc: from ub, --unlikely 16, --seed 53 --steps 40 --lr 1e-4 -> 0 / 1 at steps 10, 30 and 40; but the
        right tool 31/40, the whole call 27/40 (the higher lr cost calls)
    ud: from ub, --unlikely 16, --seed 59 --steps 30 --lr 5e-5, saves every 5 steps -> ONNX 1 at each save
    ue: as ud with half the prompts build_harmony's conversations (developer messages, dates), --seed 61
        -> ONNX 1 at each save
    uf: as ue but from qf, --seed 67 -> ONNX 2, 1, then 1 at each later save
    ug: as ue, --unlikely 32 --seed 71 --steps 20 --lr 7e-5 -> ONNX 1 at each save
The "init_init" loop of EVAL_PROMPTS[4] at high effort survived every run (p("_") 0.56 against
p("(self") 0.11 after "def _get_init_"), the others came and went. None ships. Candidates and logs:
~/.cache/edgeport/tool-candidates/ (ua-ug) on that machine.

Twelfth session (2026-12-07, AMD EPYC, 2 cores). The loop was one of a class: given code that ends in a
`def` line, the tool-trained models make up a name and repeat its pieces ("def _get_init_init…",
"_doct_doct…"); ub loops on 3 of 40 such training-distribution prompts at high effort (the committed
harmony weights: 0). Two new options aim at it: `--unlikely-defs S` (a share S of --unlikely's prompts
are such code, `def_prompt`) and `--final-ul W` (token-level unlikelihood, Welleck et al. 2019, on the
harmony finals: at each label the tokens the final already wrote, less the label, made unlikely;
`loss_with_final_ul`). Runs, each with qf's options (`--qat --stop-weight 10 --first-weight 3 --code-batch 2
--chat-batch 24 --tool-batch 8 --made-up 1.0 --small-numbers 0.3 --copy-batch 2 --text-copy 4 --short-batch 8
--answer-batch 8 --multi-batch 12 --follow-up 0.5 --short-earlier --name-weight 5`) plus `--lr 5e-5 --steps 40
--every 10 --snapshots`, judged served (broken of 32, GGUF / ONNX):
    uh: from ub, --unlikely 8 --final-ul 1.0 --seed 79             -> ONNX 1 (the same loop) at steps 20, 39
    ui: from ub, --unlikely 24 --unlikely-defs 0.67 --final-ul 1.0 --seed 83
        -> ONNX 1 at every save; after "def _get_init_", p("init") 0.77 (ub) -> 0.28
    uj: from ui, as ui but --final-ul 2.0 --seed 89                -> 0 / 0 from step 20 on; over GGUF the
        right tool 37/40, the whole call 32/40, answers 26/40
    uk: from uj, as uj but --seed 97  -> step 20: 0 / 0, 38 / 33 / 26 (shipped); step 39: 0 / 0, 38 / 31 / 26
Both engines' mean analysis words stayed 5 / 22 / 62 (low / medium / high). Answers that loop or do not
end, greedy in process on 40 fresh high-effort prompts (a throwaway script; Conversations(seed=4242),
half with a developer message), code ending in a def line / any turn: ub 3 / 3, uj 2 / 2, uk-step20 2 / 2,
the committed harmony weights 0 / 1. The eval prompts pass, but the shipped model still loops more
than the one before the tool training did.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import GptOssForCausalLM

from edgeport.core import mxfp4
from edgeport.core.harmony import MARKERS, parse_calls, render_harmony_own
from edgeport.models.build_harmony import (
    DEVELOPER,
    EFFORT_SENTENCES,
    EVAL_PROMPTS,
    MODEL,
    Conversations,
    chat_batch,
    chat_row,
    check,
    code_batch_loss,
    code_stream,
    completion,
    effort_accuracy,
    evalset_ppl,
    optimizer,
    padded,
    schedule,
    update,
    weighted_ce,
    weighted_loss,
)

ADD = {"name": "add", "description": "Add two numbers.",
       "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                      "required": ["a", "b"]}}
WEATHER = {"name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
# tests/test_tools.py's variant (a described city, an optional unit): both are trained on
WEATHER_UNIT = {**WEATHER, "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 20, "description": "The city"},
                                     "unit": {"type": "string", "enum": ["c", "f"], "default": "c"}},
    "required": ["city"], "additionalProperties": False}}

ADD_TRAIN = ["What is {a} plus {b}?", "Add {a} and {b}.", "Compute {a} + {b}.", "What is the sum of {a} and {b}?",
             "Please add {a} to {b}.", "{a} + {b} = ?", "Can you add {a} and {b} for me?", "Calculate {a} plus {b}.",
             "add {a} {b}", "What's {a} + {b}?"]
ADD_HELDOUT = ["How much is {a} plus {b}?", "Sum {a} and {b}, please.", "I need {a} + {b}.",
               "What do {a} and {b} add up to?", "Work out {a} plus {b}."]
WEATHER_TRAIN = ["What is the weather in {city}?", "Weather in {city}?", "How is the weather in {city} today?",
                 "Is it raining in {city}?", "Tell me the weather for {city}.", "What's it like outside in {city}?",
                 "Get the weather in {city}.", "Forecast for {city}, please.", "weather {city}",
                 "Can you check the weather in {city}?"]
WEATHER_HELDOUT = ["How's the weather over in {city}?", "Do I need an umbrella in {city}?",
                   "What is the weather like in {city} right now?", "Look up the weather in {city}.",
                   "Is it cold in {city}?"]
CITIES = ["Paris", "London", "Tokyo", "Berlin", "Madrid", "Rome", "Oslo", "Cairo", "Lima", "Delhi", "Sydney",
          "Toronto", "Dublin", "Vienna", "Prague", "Lisbon", "Seoul", "Boston", "Denver", "Nairobi", "Athens",
          "Warsaw", "Bangkok", "Chicago", "Munich", "Geneva", "Milan", "Dallas"]
HELDOUT_CITIES = ["Helsinki", "Quito", "Manila", "Zurich", "Havana", "Austin", "Kyoto", "Porto"]
SKIES = ["sunny", "cloudy", "rainy", "windy", "snowy", "foggy"]
HELDOUT_SKIES = ["stormy", "clear"]
NUMBERS = range(100)

ANALYSIS = "<|channel|>analysis<|message|>"
CALL_HEADER = "<|end|><|start|>assistant<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>"
FINAL = "<|end|><|start|>assistant<|channel|>final<|message|>"
# The analysis restates what the call needs (the numbers, the city) and, after the result, the result:
# each copy is then from a few tokens back, within the 64-token sliding window, where a 5M-parameter
# model learns it (copied straight into the call, the numbers sat ~55 tokens back: nothing learnt it
# in 100 steps of a first try).
WHY = {"add": "The user wants the sum of {a} and {b}, so I call add.",
       "get_weather": "The user wants the weather in {city}, so I call get_weather."}
AFTER = "The tool returned {r}."
ANSWER = {"add": "The sum is {r}.", "get_weather": "The weather is {r}."}


def heldout_pairs() -> list[tuple[int, int]]:
    """The (a, b) pairs the eval uses; training never sees them."""
    rng = random.Random(1234)
    return [(rng.choice(NUMBERS), rng.choice(NUMBERS)) for _ in range(40)]


def weather(city: str, skies: list[str] = SKIES, seed: int = 0) -> str:
    """A made-up, deterministic weather string for a city: what the tool returns."""
    rng = random.Random(f"{city}/{seed}")
    return f"{rng.choice(skies)}, {rng.randint(0, 35)} C"


def call_args(name: str, a: int = 0, b: int = 0, city: str = "") -> dict:
    return {"a": a, "b": b} if name == "add" else {"city": city}


def heldout_calls() -> list[tuple[list[dict], str, dict]]:
    """(messages, tool, arguments) on held-out phrasings, pairs and cities: 20 sums, 20 weather questions."""
    out = []
    pairs = heldout_pairs()
    for i in range(20):
        a, b = pairs[i]
        out.append(([{"role": "user", "content": ADD_HELDOUT[i % len(ADD_HELDOUT)].format(a=a, b=b)}], "add",
                    {"a": a, "b": b}))
    for i in range(20):
        city = HELDOUT_CITIES[i % len(HELDOUT_CITIES)]
        out.append(([{"role": "user", "content": WEATHER_HELDOUT[(i // 2) % len(WEATHER_HELDOUT)].format(city=city)}],
                    "get_weather", {"city": city}))
    return out


def run_tool(name: str, args: dict) -> str:
    """What the eval's tools return (the weather from skies never trained on)."""
    return str(args["a"] + args["b"]) if name == "add" else weather(args["city"], HELDOUT_SKIES)


class ToolConversations:
    """Seeded tool conversations on the training phrasings, pairs and cities."""

    def __init__(self, conv: Conversations, seed: int = 0, made_up: float = 0.0, small: float = 0.0):
        self.conv = conv  # build_harmony's, for the code questions with tools offered
        self.made_up = made_up  # the share of weather questions about a made-up city
        self.small = small  # the share of one-digit numbers beyond NUMBERS' own
        self.rng = random.Random(seed + 1000)
        self.held = set(heldout_pairs())

    def tools(self, need: str | None) -> list[dict]:
        rng = self.rng
        w = rng.choice([WEATHER, WEATHER_UNIT])
        sets = [[ADD, w], [w, ADD], [ADD], [w]]
        sets = [s for s in sets if need is None or any(t["name"] == need for t in s)]
        return rng.choice(sets)

    def question(self, name: str) -> tuple[str, dict]:
        rng = self.rng
        if name == "add":
            a, b = number_pair(rng, self.held, self.small)
            return rng.choice(ADD_TRAIN).format(a=a, b=b), {"a": a, "b": b}
        city = made_up_city(rng) if self.made_up and rng.random() < self.made_up else rng.choice(CITIES)
        return rng.choice(WEATHER_TRAIN).format(city=city), {"city": city}

    def sample(self) -> tuple[str, str, list[str]]:
        """(prompt, completion, the values it copies): a call, an answer from a result, or (no
        values) a code question answered without a call."""
        rng = self.rng
        effort = rng.choice(list(EFFORT_SENTENCES))
        msgs: list[dict] = []
        if rng.random() < 0.25:
            msgs.append({"role": "developer", "content": rng.choice(DEVELOPER)})
        if rng.random() < 0.1:
            u, a = self.conv.turn(short=True)
            msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        kind = rng.choices(["call", "answer", "none"], [0.5, 0.35, 0.15])[0]
        if kind == "none":
            u, final = self.conv.turn(short=True)
            msgs.append({"role": "user", "content": u})
            return render_harmony_own(msgs, effort, None, self.tools(None)), completion(effort, final), []
        name = rng.choice(["add", "get_weather"])
        u, args = self.question(name)
        msgs.append({"role": "user", "content": u})
        if kind == "call":
            return render_harmony_own(msgs, effort, None, self.tools(name)), call_text(name, args), \
                [str(v) for v in args.values()]
        result = str(args["a"] + args["b"]) if name == "add" else weather(args["city"], SKIES, rng.randrange(10**6))
        msgs += called(name, args, result)
        return render_harmony_own(msgs, effort, None, self.tools(name)), answer_text(name, result), [result]


def called(name: str, args: dict, result: str) -> list[dict]:
    """The turns after a question: the assistant's call of `name`, and the tool's result."""
    return [{"role": "assistant", "content": None, "tool_calls": [{"name": name, "arguments": json.dumps(args)}]},
            {"role": "tool", "name": name, "content": result}]


def answer_text(name: str, result: str) -> str:
    """The completion after a result: the analysis that restates it, then the final answer from it."""
    return f"{ANALYSIS}{AFTER.format(r=result)}{FINAL}{ANSWER[name].format(r=result)}<|return|>"


def call_text(name: str, args: dict) -> str:
    """The completion that calls `name`: the analysis, then the call as the model writes it."""
    return f"{ANALYSIS}{WHY[name].format(**args)}{CALL_HEADER.format(name=name)}{json.dumps(args)}<|call|>"


# the tokens that decide a call: what is called and with what, and the answer's copy of the result
ARGS_WEIGHT = 5.0
# times ARGS_WEIGHT on a value's first token (`--first-weight`): after the rest of a value is copied right,
# what is wrong is its first token ("Kuito" for Quito, `{"a": 8, "b": 8}`), the one token a copy
# cannot find by the token before it
FIRST_WEIGHT = 1.0
# the loss weight of a completion's last token, `<|return|>` or `<|call|>` (`--stop-weight`): what the
# served candidates got wrong was the end of a one-line code answer at effort low (a greedy loop once
# the experts were MXFP4), a decision build_harmony weights at each sentence end but not here
STOP_WEIGHT = 1.0


def _weights(c: str, offsets: list[tuple[int, int]], values: list[str]) -> list[float]:
    """ARGS_WEIGHT on the tool's name in the call header and on every copy of a value (a number, the
    city, the result), times FIRST_WEIGHT on a value's first token; 1 elsewhere."""
    spans, firsts = [], []
    for v in values:
        i = c.find(v)
        while i >= 0:
            spans.append((i, i + len(v)))
            firsts.append(i)
            i = c.find(v, i + len(v))
    if "to=functions." in c:
        i = c.index("to=functions.")
        spans.append((i, c.index(" ", i)))
    return [ARGS_WEIGHT * (FIRST_WEIGHT if any(a <= f < b for f in firsts) else 1.0)
            if any(a < e and b > s for s, e in spans) else 1.0 for a, b in offsets]


def row(tok: Tokenizer, prompt: str, completion: str, values: list[str]) -> tuple[list[int], list[int], list[float]]:
    """(ids, labels, weights) of prompt + completion: no label on the prompt, `_weights` on the completion."""
    pi, enc = tok.encode(prompt).ids, tok.encode(completion)
    return pi + enc.ids, [-100] * len(pi) + enc.ids, [0.0] * len(pi) + _weights(completion, enc.offsets, values)


def stops_weighted(batch: tuple[torch.Tensor, ...], tok: Tokenizer) -> tuple[torch.Tensor, ...]:
    """(ids, labels, weights) with STOP_WEIGHT on every `<|return|>` and `<|call|>` label."""
    ids, labels, weights = batch
    stop = (labels == tok.token_to_id("<|return|>")) | (labels == tok.token_to_id("<|call|>"))
    return ids, labels, torch.where(stop, weights * STOP_WEIGHT, weights)


def tool_batch(tc: ToolConversations, tok: Tokenizer, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, labels (-100 on the prompt) and loss weights of n tool conversations."""
    return padded([row(tok, *tc.sample()) for _ in range(n)], tok)


# Random token strings: the ids below the first special token (1015 in this vocabulary)
COPY_VOCAB = 1015


def copy_batch_loss(model, gen: torch.Generator, n: int, length: int = 20) -> torch.Tensor:
    """The loss on the second copy of `n` random `length`-token strings written twice (after 4
    random tokens). No tool call can be right before the model copies a number or a city from the
    question, and the tiny model has no copying mechanism at all (greedy accuracy 0.00 on this task
    before training); this task grows one (induction heads) within ~200 steps on its own."""
    s = torch.randint(0, COPY_VOCAB, (n, length), generator=gen)
    ids = torch.cat([torch.randint(0, COPY_VOCAB, (n, 4), generator=gen), s, s], 1)
    labels = ids.clone()
    labels[:, : 4 + length + 1] = -100
    return model(input_ids=ids, labels=labels).loss


def copy_accuracy(model, n: int = 64, length: int = 20) -> float:
    """Greedy accuracy on the copied half of `copy_batch_loss`'s task (fixed seed)."""
    gen = torch.Generator().manual_seed(4321)
    s = torch.randint(0, COPY_VOCAB, (n, length), generator=gen)
    ids = torch.cat([torch.randint(0, COPY_VOCAB, (n, 4), generator=gen), s, s], 1)
    with torch.inference_mode():
        pred = model(input_ids=ids).logits[:, 4 + length : -1].argmax(-1)
    return (pred == ids[:, 4 + length + 1 :]).float().mean().item()


def text_line(rng: random.Random) -> str:
    """A line like the values a question holds: made-up names and words, numbers of one to three digits,
    filler words and punctuation, in random order."""
    parts = []
    for _ in range(rng.randint(3, 8)):
        k = rng.random()
        parts.append(made_up_city(rng) if k < 0.3 else letters_word(rng, 2, 7) if k < 0.5
                     else str(rng.randrange(10 ** rng.randint(1, 3))) if k < 0.75 else rng.choice(FILLER))
        if rng.random() < 0.2:
            parts[-1] += rng.choice(",.?!:")
    return " ".join(parts)


def text_copy_batch(rng: random.Random, tok: Tokenizer, data: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """n rows written twice (after a newline), the loss on the second copy: half `text_line`s, half
    24-token windows of the code corpus. `copy_batch_loss`'s random ids almost never repeat, so one
    token tells a head where it is; in text the letters, digits and the space token before every
    number repeat, and only the tokens before them do: the copy a call makes of "Helsinki" or "2"."""
    nl = tok.encode("\n").ids
    rows = []
    for i in range(n):
        if i % 2:
            s = rng.randrange(len(data) - 25)
            ids = data[s : s + 24].tolist()
        else:
            ids = tok.encode(text_line(rng)).ids
        head = len(ids) + len(nl)
        rows.append((ids + nl + ids, [-100] * head + ids, [0.0] * head + [1.0] * len(ids)))
    return padded(rows, tok)


def text_copy_accuracy(model, tok: Tokenizer, n: int = 32) -> float:
    """Greedy: the share of `text_line`s (fixed seed) whose second copy is right in every token."""
    rng = random.Random(4321)
    nl = tok.encode("\n").ids
    hits = 0
    with torch.inference_mode():
        for _ in range(n):
            ids = tok.encode(text_line(rng)).ids
            full = torch.tensor([ids + nl + ids])
            pred = model(input_ids=full).logits[0, len(ids) + len(nl) - 1 : -1].argmax(-1).tolist()
            hits += pred == ids
    return hits / n


FILLER = ["please", "can", "you", "tell", "me", "what", "is", "the", "now", "quick", "question", "hey", "so",
          "I", "want", "to", "know", "today", "right", "just", "ok", "thanks", "about", "then"]
CONSONANTS, VOWELS = "bcdfghjklmnpqrstvwxyz", "aeiou"
HELD_WORDS = [w.lower() for w in HELDOUT_CITIES + HELDOUT_SKIES]


def letters_word(rng: random.Random, least: int, most: int) -> str:
    """A made-up word from any letters (consonants and vowels mostly alternating), none holding a
    held-out city or sky. The tokenizer splits a name into letters and pairs of them, so a model
    that saw only 16 syllables' initials (the first five runs in the Status) learnt to choose among
    them, not to copy an H or a Q."""
    while True:
        n = rng.randint(least, most)
        v = rng.random() < 0.25
        w = "".join(rng.choice(VOWELS if (i % 2 == 0) == v or rng.random() < 0.15 else CONSONANTS)
                    for i in range(n))
        if not any(h in w for h in HELD_WORDS):
            return w


def made_up_city(rng: random.Random) -> str:
    """A made-up city: any letters under any capital."""
    return letters_word(rng, 3, 8).capitalize()


def number_pair(rng: random.Random, held: set, small: float = 0.0) -> tuple[int, int]:
    """A training (a, b) pair, not held out; each number, with probability `small`, of one digit
    (NUMBERS alone gives 10 %, and a model trained so writes "22" for "2")."""
    def one() -> int:
        return rng.randrange(10) if small and rng.random() < small else rng.choice(NUMBERS)

    while (pair := (one(), one())) in held:
        pass
    return pair


def short_question(rng: random.Random, held: set, small: float = 0.0, made_up: float = 0.5) -> tuple[str, str, dict]:
    """A sum or weather question in random filler words around its values (any number pair not held
    out, a training city or a made-up one): (question, tool, arguments). Many, short and varied, so
    the only thing they share is where the values are."""
    words = [rng.choice(FILLER) for _ in range(rng.randint(0, 5))]
    if rng.random() < 0.5:
        a, b = number_pair(rng, held, small)
        op = rng.choice(["plus", "and", "+", "add", "sum"])
        mid = [str(a), op, str(b)]
        name, args = "add", {"a": a, "b": b}
    else:
        city = made_up_city(rng) if rng.random() < made_up else rng.choice(CITIES)
        mid = [rng.choice(["weather", "forecast", "rain", "sunny"]), rng.choice(["in", "for", "at"]), city]
        name, args = "get_weather", {"city": city}
    cut = rng.randint(0, len(words))
    q = " ".join([*words[:cut], *mid, *words[cut:]])
    return q[0].upper() + q[1:] + rng.choice(["?", ".", "", "!"]), name, args


def short_batch(rng: random.Random, held: set, tok: Tokenizer, n: int, small: float = 0.0,
                made_up: float = 0.5) -> tuple[torch.Tensor, ...]:
    """n short calls: the user turn alone (as render_harmony_own ends a prompt), then the call. No
    system or developer message, so a step holds many more copies of a value for the same compute."""
    rows = []
    for _ in range(n):
        q, name, args = short_question(rng, held, small, made_up)
        rows.append(row(tok, f"<|start|>user<|message|>{q}<|end|><|start|>assistant", call_text(name, args),
                        [str(v) for v in args.values()]))
    return padded(rows, tok)


def short_sky(rng: random.Random) -> str:
    """A weather string as a tool might return it: a training sky or a made-up word, a temperature."""
    sky = rng.choice(SKIES) if rng.random() < 0.5 else letters_word(rng, 3, 8)
    return f"{sky}, {rng.randint(0, 35)} C"


def answer_batch(rng: random.Random, held: set, tok: Tokenizer, n: int,
                 small: float = 0.0, made_up: float = 0.5) -> tuple[torch.Tensor, ...]:
    """n short answers from a result: a short question, its call and the tool's result (rendered
    by render_harmony_own, from the user turn on), then the analysis "The tool returned R." and the
    final answer, both copying R (a sum, or a weather string with a sky often made up)."""
    rows = []
    for _ in range(n):
        q, name, args = short_question(rng, held, small, made_up)
        r = str(args["a"] + args["b"]) if name == "add" else short_sky(rng)
        p = render_harmony_own([{"role": "user", "content": q}, *called(name, args, r)], "low", None, [ADD, WEATHER])
        rows.append(row(tok, p[p.index("<|start|>user"):], answer_text(name, r), [r]))
    return padded(rows, tok)


def later_turn(conv: Conversations, follow_up: float = 0.1) -> tuple[str, str, str]:
    """A user turn after an earlier one, its answer and, for a follow-up, the function's name: a share of
    them a follow-up ("Now write a function called X."), the rest as build_harmony draws a turn (a fifth
    of them functions). Half of them follow-ups made the finals of code questions start with `def` too
    (the ninth session's runs)."""
    rng = conv.rng
    if rng.random() < follow_up:
        q, d = conv.function_turn()
        return rng.choice(["Now ", "And now ", "Next, ", "Then "]) + q[0].lower() + q[1:], d, d.split("(")[0][4:]
    return (*conv.turn(), "")


def harmony_prompt(conv: Conversations, tc: ToolConversations, earlier: tuple[int, ...] = (1, 1, 2),
                   follow_up: float = 0.1, short_earlier: bool = False) -> tuple[str, str, str, str]:
    """(prompt, effort, the data's final, the follow-up's function name or "") of a harmony conversation
    with `earlier` turns before (one count drawn; `short_earlier`: short ones), to be answered without a
    call; half of them offer the tools."""
    rng = conv.rng
    msgs: list[dict] = []
    for _ in range(rng.choice(earlier)):
        u, a = conv.turn(short=short_earlier)
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    u, final, name = later_turn(conv, follow_up)
    msgs.append({"role": "user", "content": u})
    effort = rng.choice(list(EFFORT_SENTENCES))
    tools = tc.tools(None) if rng.random() < 0.5 else None
    return render_harmony_own(msgs, effort, None, tools), effort, final, name


def multi_turn_batch(conv: Conversations, tc: ToolConversations, tok: Tokenizer, n: int,
                     earlier: tuple[int, ...] = (1, 1, 2), follow_up: float = 0.1, short_earlier: bool = False,
                     name_weight: float = 1.0) -> tuple[torch.Tensor, ...]:
    """n harmony conversations from `harmony_prompt`, answered without a call (the data's answer), a
    follow-up's function name in the final weighted `name_weight`. The tool rows put an earlier turn
    before a call more often than the chat rows put one before an answer, and the served candidates
    learned "a second turn means a call" (EVAL_PROMPTS' two-turn prompt got a weather call's analysis):
    here a later turn is a code question."""
    rows = []
    for _ in range(n):
        p, effort, final, name = harmony_prompt(conv, tc, earlier, follow_up, short_earlier)
        c = completion(effort, final)
        ids, labels, weights = chat_row(tok, p, c)
        if name and name_weight != 1.0:
            at = c.index(FINAL) + len(FINAL) + len("def ")
            span = (at, at + len(name))
            offsets = tok.encode(c).offsets
            start = len(ids) - len(offsets)
            weights = [w * name_weight if i >= start and offsets[i - start][0] < span[1]
                       and offsets[i - start][1] > span[0] else w for i, w in enumerate(weights)]
        rows.append((ids, labels, weights))
    return padded(rows, tok)


def teacher_answers(teacher, tok: Tokenizer, conv: Conversations, tc: ToolConversations,
                    n: int) -> list[tuple[str, str]]:
    """n (prompt, completion) pairs: `harmony_prompt`'s prompts (none to two earlier turns) answered by
    `teacher` greedily; an answer that does not end in a final message is dropped. The student can fit
    these exactly (they are a function of the prompt), and greedy answers are what the evals and tests
    judge: trained on the data's answers, every tool run left some greedy finals looping."""
    pairs = []
    for i in range(n):
        p, _, _, _ = harmony_prompt(conv, tc, (0, 0, 1, 2))
        c = generate(teacher, tok, p, 240)
        if c.endswith("<|return|>") and c.count(FINAL) == 1 and c.startswith(ANALYSIS):
            pairs.append((p, c))
        if (i + 1) % 128 == 0:
            print(f"  teacher answers: {i + 1}/{n}", flush=True)
    return pairs


def distill_loss(model, teacher, ids: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """KL(teacher || model) of the next-token distributions on the completion's tokens, weighted as the
    loss is (stops, the effort word). Trained on the data's answers alone, every tool run tipped some of
    the harmony answers the committed model gets right (a looping final, a call's analysis after a
    second turn); its distribution over every token, not one target, is what they keep."""
    with torch.no_grad():
        t = teacher(input_ids=ids).logits[:, :-1].float().log_softmax(-1)
    s = model(input_ids=ids).logits[:, :-1].float().log_softmax(-1)
    kl = (t.exp() * (t - s)).sum(-1)
    w = weights[:, 1:] * (labels[:, 1:] != -100)
    return (kl * w).sum() / w.sum()


def loop_positions(ids: list[int], special: set[int], n: int = 3) -> list[int]:
    """Indexes of `ids` whose n-gram (ending there, no special token in it) occurred earlier in `ids`: a
    loop's tokens ("_module_module_module…", "action, action, action…")."""
    seen: set[tuple[int, ...]] = set()
    out = []
    for i in range(n - 1, len(ids)):
        g = tuple(ids[i - n + 1:i + 1])
        if special.isdisjoint(g):
            if g in seen:
                out.append(i)
            seen.add(g)
    return out


def def_prompt(conv: Conversations) -> tuple[str, str]:
    """(prompt, the data's answer) of a code question whose snippet ends in a `def` line, a developer
    message in a third of them: where the tool-trained models make up a name that loops ("def
    _get_init_init…", "_doct_doct…"; ub: 3 of 40 such prompts at high effort, as against ~4 % of all)."""
    rng = conv.rng
    while True:
        u, nxt = conv.code_turn()
        if re.search(r"def \w+\(.*\):\s*(```)?$", u.strip()):
            break
    msgs = [{"role": "developer", "content": rng.choice(DEVELOPER)}] if rng.random() < 1 / 3 else []
    effort = rng.choice(list(EFFORT_SENTENCES))
    return render_harmony_own([*msgs, {"role": "user", "content": u}], effort, None), completion(effort, nxt)


def unlikely_batch(model, tok: Tokenizer, conv: Conversations, tc: ToolConversations, n: int,
                   max_new: int = 160, defs: float = 0.0,
                   ) -> tuple[torch.Tensor, list[tuple[list[int], list[int], list[float]]]]:
    """Unlikelihood training on the model's own loops (Welleck et al. 2019, "Neural text generation with
    unlikelihood training"): n prompts (half build_harmony's conversations, half `harmony_prompt`'s)
    answered greedily by the model as it is (a share `defs` of them `def_prompt`'s); where an
    answer loops or does not end in one final message, -log(1 - p) of each loop token (`loop_positions`)
    and, as rows for the likelihood loss, the data's answers to those prompts. Every tool run left ~10 %
    of such answers looping (qf: 11 of 80 fresh prompts, the committed model 1), and its fp32 reference
    loops exactly where its ONNX export does: the export is faithful, the model is not."""
    special = {tok.token_to_id(t) for t in (*MARKERS, "<|endoftext|>")}
    ul, rows = [], []
    for _ in range(n):
        if defs and conv.rng.random() < defs:  # no draw without it: the same prompts as before
            p, answer = def_prompt(conv)
        elif conv.rng.random() < 0.5:  # build_harmony's conversations (developer messages, dates)
            p, answer = conv.sample()
        else:  # or the tool runs' (the tools offered half the time)
            p, effort, final, _ = harmony_prompt(conv, tc, (0, 0, 1, 2))
            answer = completion(effort, final)
        prompt = tok.encode(p).ids
        was = model.training
        model.eval()
        out = greedy_ids(model, tok, prompt, max_new)
        model.train(was)
        text = tok.decode(out, skip_special_tokens=False)
        loops = loop_positions(out, special)
        if text.endswith("<|return|>") and text.count(FINAL) == 1 and not loops:
            continue
        rows.append(chat_row(tok, p, answer))
        if loops:
            logits = model(input_ids=torch.tensor([prompt + out])).logits[0, len(prompt) - 1:-1].float()
            at = torch.tensor(loops)
            prob = logits.softmax(-1)[at, torch.tensor(out)[at]]
            ul.append(-torch.log((1 - prob).clamp_min(1e-5)).mean())
    return (torch.stack(ul).mean() if ul else torch.zeros(())), rows


def final_labels(labels: torch.Tensor, message_id: int) -> torch.Tensor:
    """[rows, positions]: the labels of each row's final message (after its last labelled <|message|>)."""
    at = torch.arange(labels.shape[1])
    last = torch.where(labels == message_id, at, -1).max(1, keepdim=True).values
    return (at > last) & (last >= 0) & (labels != -100)


def final_candidates(labels: torch.Tensor, message_id: int, vocab: int) -> torch.Tensor:
    """[rows, positions, vocab] mask of token-level unlikelihood's negative candidates (Welleck et al.
    2019): at each label of a row's final message (`final_labels`), the tokens that message held before
    it, less the label itself. The answers' loops copy a token the final just wrote ("def _get_init_" ->
    "init"); the prompt's tokens are not candidates, so an answer may still copy a tool's result or the
    user's values."""
    mask = torch.zeros(*labels.shape, vocab, dtype=torch.bool)
    seen: dict[int, set[int]] = {}
    for b, i in final_labels(labels, message_id).nonzero().tolist():  # row by row, in order
        row, label = seen.setdefault(b, set()), int(labels[b, i])
        mask[b, i, list(row - {label})] = True
        row.add(label)
    return mask


def loss_with_final_ul(model, ids: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                       message_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted_loss, token-level unlikelihood on the finals' repeats) from one forward pass: the mean
    over final-message labels of -sum log(1 - p(c)), c each of `final_candidates`."""
    logits = model(input_ids=ids).logits[:, :-1].float()
    mask = final_candidates(labels, message_id, logits.shape[-1])[:, 1:]
    ul = -(torch.log((1 - logits.softmax(-1)).clamp_min(1e-5)) * mask).sum(-1)
    return weighted_ce(logits, labels, weights), ul.sum() / final_labels(labels, message_id)[:, 1:].sum().clamp_min(1)


def greedy_ids(model, tok: Tokenizer, prompt: list[int], max_new: int = 120) -> list[int]:
    """The greedy continuation's token ids, to <|call|>, <|return|> or <|endoftext|> (included)."""
    stops = {tok.token_to_id(t) for t in ("<|return|>", "<|endoftext|>", "<|call|>")}
    out: list[int] = []
    with torch.inference_mode():
        res = model(torch.tensor([prompt]), use_cache=True)
        for _ in range(max_new):
            out.append(int(res.logits[0, -1].argmax()))
            if out[-1] in stops:
                break
            res = model(torch.tensor([[out[-1]]]), cache=res.cache, use_cache=True)
    return out


def generate(model, tok: Tokenizer, prompt: str, max_new: int = 120) -> str:
    """Greedy continuation of `prompt` to <|call|>, <|return|> or <|endoftext|>."""
    return tok.decode(greedy_ids(model, tok, tok.encode(prompt).ids, max_new), skip_special_tokens=False)


def parsed_call(text: str) -> tuple[str, dict] | None:
    calls = parse_calls(text)
    if len(calls) != 1:
        return None
    try:
        return calls[0][0], json.loads(calls[0][1])
    except json.JSONDecodeError:
        return None


def tool_check(model, tok: Tokenizer, n: int = 40, verbose: bool = True) -> dict[str, float]:
    """Greedy, in-process: the held-out call rate, the answer-from-result rate, and how often a code
    question with tools offered is answered without a call."""
    tools = [ADD, WEATHER]
    cases = heldout_calls()
    cases = cases[: n // 2] + cases[20 : 20 + n // 2]
    calls = answers = 0
    for i, (msgs, name, args) in enumerate(cases):
        effort = list(EFFORT_SENTENCES)[i % 3]
        text = generate(model, tok, render_harmony_own(msgs, effort, None, tools))
        ok = parsed_call(text) == (name, args)
        calls += ok
        if not ok and verbose:
            print(f"  miss: {msgs[-1]['content']!r} -> {text[-90:]!r}")
        result = run_tool(name, args)
        text = generate(model, tok, render_harmony_own([*msgs, *called(name, args, result)], effort, None, tools))
        final = text.split("<|channel|>final<|message|>")[-1]
        answers += "<|channel|>final<|message|>" in text and result in final
    no_call = sum("to=functions" not in generate(model, tok, render_harmony_own(m, e, None, tools), 300)
                  for m in EVAL_PROMPTS for e in ("low",))
    figs = {"call_rate": calls / len(cases), "answer_rate": answers / len(cases),
            "no_call_on_code": no_call / len(EVAL_PROMPTS)}
    print(f"  tools: {figs} (n={len(cases)})", flush=True)
    return figs


def forced_rate(model, tok: Tokenizer, n: int = 12, kind: str | None = None) -> float:
    """Cheap check for the training log: on n held-out call cases (half sums, half weather; or n of
    one `kind`), teacher-forced, how often every token of the completion (analysis and call) is the
    greedy one."""
    cases = heldout_calls()
    cases = cases[: n // 2] + cases[20 : 20 + n // 2] if kind is None else \
        [c for c in cases if c[1] == kind][:n]
    hits = 0
    with torch.inference_mode():
        for msgs, name, args in cases:
            p = render_harmony_own(msgs, "low", None, [ADD, WEATHER])
            c = call_text(name, args)
            pi, enc = tok.encode(p).ids, tok.encode(c)
            ids = torch.tensor([pi + enc.ids])
            pred = model(input_ids=ids).logits[0, len(pi) - 1 : -1].argmax(-1).tolist()
            hits += pred == enc.ids
    return hits / len(cases)


def forced_answer_rate(model, tok: Tokenizer, n: int = 12) -> float:
    """As forced_rate, for the answer from the result (held-out skies) after the held-out calls."""
    cases = heldout_calls()
    cases = cases[: n // 2] + cases[20 : 20 + n // 2]
    hits = 0
    with torch.inference_mode():
        for msgs, name, args in cases:
            r = run_tool(name, args)
            p = render_harmony_own([*msgs, *called(name, args, r)], "low", None, [ADD, WEATHER])
            c = answer_text(name, r)
            pi, enc = tok.encode(p).ids, tok.encode(c)
            pred = model(input_ids=torch.tensor([pi + enc.ids])).logits[0, len(pi) - 1 : -1].argmax(-1).tolist()
            hits += pred == enc.ids
    return hits / len(cases)


def short_rate(model, tok: Tokenizer, n: int = 32) -> float:
    """Cheap check for the training log: on n fresh short questions (their own seed, held-out pairs
    allowed), teacher-forced, how often every token of the call is the greedy one."""
    ids, labels, _ = short_batch(random.Random(777), set(), tok, n)
    with torch.inference_mode():
        pred = model(input_ids=ids).logits[:, :-1].argmax(-1)
    lab = labels[:, 1:]
    return ((pred == lab) | (lab == -100)).all(1).float().mean().item()


def train(model, tok: Tokenizer, steps: int, lr: float, code_batch: int, chat_batch_n: int, tool_batch_n: int,
          seed: int = 0, out: Path | None = None, copy_batch: int = 32, short_batch_n: int = 0,
          answer_batch_n: int = 0, made_up: float = 0.0, small: float = 0.0, text_copy_n: int = 0,
          snapshots: bool = False, qat: bool = False, multi_batch_n: int = 0, served: Path | None = None,
          teacher=None, distill_n: int = 0, every: int = 50, teacher_n: int = 0, pool: int = 1024,
          follow_up: float = 0.1, short_earlier: bool = False, name_weight: float = 1.0,
          unlikely_n: int = 0, final_ul: float = 0.0, unlikely_defs: float = 0.0) -> None:
    """Every step: code (as build_tiny), harmony conversations (two steps in three short ones, as in
    build_harmony's last run, which keep the effort lookup), tool conversations, the copy task and
    the optional batches (short calls and answers, at least half their cities made up; text copies;
    multi-turn conversations answered without a call; harmony conversations distilled from `teacher`,
    with none to two earlier turns and half with the tools offered), the losses summed. With `qat`,
    every forward pass sees the experts at their MXFP4 values
    (ExpertQAT), and so do the log's figures and every save; with `served` (a GGUF of this model), the
    other weights at its types (ServedQAT), in the log's figures too, but saved as trained."""
    gen = torch.Generator().manual_seed(seed)
    experts = ExpertQAT(model) if qat else None
    fake = FakeQuant([*(experts.pairs if experts else []), *(ServedQAT(model, served).pairs if served else [])])
    conv = Conversations(seed=seed)
    mconv = Conversations(seed=seed + 5000) if multi_batch_n else None
    dconv = Conversations(seed=seed + 6000) if distill_n else None  # each reads the training files
    uconv = Conversations(seed=seed + 9000) if unlikely_n else None
    tc = ToolConversations(Conversations(seed=seed + 1), seed=seed, made_up=made_up, small=small)
    answers = teacher_answers(teacher, tok, Conversations(seed=seed + 7000), tc, pool) if teacher_n else []
    prng = random.Random(seed + 8000)
    data = code_stream(tok)
    srng = random.Random(seed + 2000)
    arng = random.Random(seed + 3000)
    trng = random.Random(seed + 4000)
    short_made_up = max(0.5, made_up)
    opt = optimizer(model, lr)
    message_id = tok.token_to_id("<|message|>")
    fuls: list[torch.Tensor] = []

    def chat_part(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """A harmony batch's loss; with `final_ul`, plus that times its finals' token-level unlikelihood."""
        if not final_ul:
            return weighted_loss(model, *stops_weighted(batch, tok))
        ce, ful = loss_with_final_ul(model, *stops_weighted(batch, tok), message_id)
        fuls.append(ful.detach())
        return ce + final_ul * ful

    model.train()
    start = time.time()
    for step in range(steps):
        schedule(opt, lr, step, steps)
        zero = torch.zeros(())
        fake.quantize()
        fuls.clear()
        code_loss = code_batch_loss(model, data, code_batch, gen) if code_batch else zero
        chat_loss = chat_part(chat_batch(conv, tok, chat_batch_n, short=step % 3 != 2)) if chat_batch_n else zero
        tool_loss = weighted_loss(model, *stops_weighted(tool_batch(tc, tok, tool_batch_n), tok)) \
            if tool_batch_n else zero
        if multi_batch_n:
            multi = multi_turn_batch(mconv, tc, tok, multi_batch_n, follow_up=follow_up, short_earlier=short_earlier,
                                     name_weight=name_weight)
            chat_loss = chat_loss + chat_part(multi)
        kl = distill_loss(model, teacher, *stops_weighted(multi_turn_batch(dconv, tc, tok, distill_n, (0, 0, 1, 2)),
                                                          tok)) if distill_n else zero
        if teacher_n:
            rows = [chat_row(tok, *prng.choice(answers)) for _ in range(teacher_n)]
            chat_loss = chat_loss + weighted_loss(model, *stops_weighted(padded(rows, tok), tok))
        ul = zero
        if unlikely_n:
            ul, mined = unlikely_batch(model, tok, uconv, tc, unlikely_n, defs=unlikely_defs)
            if mined:
                chat_loss = chat_loss + chat_part(padded(mined, tok))
        copy_loss = copy_batch_loss(model, gen, copy_batch) if copy_batch else zero
        if short_batch_n:
            copy_loss = copy_loss + weighted_loss(model, *short_batch(srng, tc.held, tok, short_batch_n, small,
                                                                          short_made_up))
        if answer_batch_n:
            copy_loss = copy_loss + weighted_loss(model, *answer_batch(arng, tc.held, tok, answer_batch_n, small,
                                                                           short_made_up))
        if text_copy_n:
            copy_loss = copy_loss + weighted_loss(model, *text_copy_batch(trng, tok, data, text_copy_n))
        # with `qat`, the masters are back before the step: the quantized values' gradient, on the masters
        update(model, opt, code_loss + chat_loss + tool_loss + copy_loss + kl + ul, fake.restore)
        if step % min(25, every) == 0 or step == steps - 1:
            line = (f"step {step:4d}  {time.time() - start:5.0f}s  code {code_loss.item():.3f}  "
                    f"chat {chat_loss.item():.3f}  tool {tool_loss.item():.3f}  copy {copy_loss.item():.3f}"
                    + (f"  kl {kl.item():.4f}" if distill_n else "") + (f"  ul {ul.item():.3f}" if unlikely_n else "")
                    + (f"  final-ul {torch.stack(fuls).mean().item():.3f}" if fuls else ""))
            if step % every == 0 or step == steps - 1:
                model.eval()
                fake.quantize()
                line += (f"  effort {effort_accuracy(model, tok):.2f}  copy {copy_accuracy(model):.2f}"
                         f"  text {text_copy_accuracy(model, tok):.2f}  short {short_rate(model, tok):.2f}"
                         f"  sums {forced_rate(model, tok, 8, 'add'):.2f}"
                         f"  weather {forced_rate(model, tok, 8, 'get_weather'):.2f}"
                         f"  answers {forced_answer_rate(model, tok):.2f}")
                model.train()
                if out is not None and step:
                    save(model, out)
                    if snapshots:
                        save(model, out.with_name(f"{out.name}-step{step}"))
                fake.restore()
            print(line, flush=True)
    if experts:
        experts.quantize()  # for good: what is saved and checked is what the exports keep
    model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--code-batch", type=int, default=2)
    ap.add_argument("--chat-batch", type=int, default=4)
    ap.add_argument("--tool-batch", type=int, default=8)
    ap.add_argument("--copy-batch", type=int, default=32, help="random strings to copy per step (0: none)")
    ap.add_argument("--text-copy", type=int, default=0,
                    help="text lines and code windows to copy per step (text_copy_batch; 0: none)")
    ap.add_argument("--short-batch", type=int, default=0, help="short calls (the user turn alone) per step")
    ap.add_argument("--answer-batch", type=int, default=0,
                    help="short answers from a tool's result (the user turn, call and result alone) per step")
    ap.add_argument("--multi-batch", type=int, default=0,
                    help="conversations with earlier turns, answered without a call, per step (multi_turn_batch)")
    ap.add_argument("--follow-up", type=float, default=0.1,
                    help="share of --multi-batch's last turns that are follow-ups (\"Now write a function called X.\")")
    ap.add_argument("--short-earlier", action="store_true", help="--multi-batch's earlier turns short ones")
    ap.add_argument("--name-weight", type=float, default=1.0,
                    help="loss weight of a follow-up's function name in --multi-batch's finals (default 1)")
    ap.add_argument("--made-up", type=float, default=0.0,
                    help="share of the weather questions about a made-up city (the short rows: at least half)")
    ap.add_argument("--small-numbers", type=float, default=0.0,
                    help="share of numbers drawn from 0-9 in the training questions (besides 0-99's own)")
    ap.add_argument("--first-weight", type=float, default=1.0,
                    help="extra loss weight on a value's first token, times ARGS_WEIGHT (default 1: none)")
    ap.add_argument("--mxfp4-experts", action="store_true",
                    help="set the experts to their MXFP4 values and keep them frozen (mxfp4_experts)")
    ap.add_argument("--qat", action="store_true",
                    help="train the experts quantization-aware: forward at MXFP4 values, saved at them (ExpertQAT)")
    ap.add_argument("--stop-weight", type=float, default=1.0,
                    help="loss weight of a completion's <|return|> / <|call|>, chat and tool batches (default 1)")
    ap.add_argument("--served-like", type=Path, metavar="GGUF",
                    help="a GGUF export of this model: its quantized types seen by every forward pass (ServedQAT), "
                         "and by --check-only")
    ap.add_argument("--teacher", type=Path, help="a model directory to distill harmony answers from (distill_loss)")
    ap.add_argument("--distill", type=int, default=0,
                    help="harmony conversations per step distilled from --teacher (0-2 earlier turns)")
    ap.add_argument("--teacher-answers", type=int, default=0,
                    help="harmony conversations per step answered by --teacher greedily (teacher_answers)")
    ap.add_argument("--pool", type=int, default=1024, help="how many teacher answers to draw them from")
    ap.add_argument("--unlikely-defs", type=float, default=0.0,
                    help="share of --unlikely's prompts that are code ending in a def line (def_prompt)")
    ap.add_argument("--final-ul", type=float, default=0.0,
                    help="weight of token-level unlikelihood on the harmony finals' repeats: the tokens a final "
                         "already wrote, other than the label, made unlikely (loss_with_final_ul; 0: none)")
    ap.add_argument("--unlikely", type=int, default=0,
                    help="harmony prompts per step answered by the model itself; its loops get unlikelihood "
                         "and the data's answers to them likelihood (unlikely_batch)")
    ap.add_argument("--every", type=int, default=50, help="steps between the log's figures and the saves (default 50)")
    ap.add_argument("--snapshots", action="store_true",
                    help="also keep every save (each --every steps), beside --out as OUT-stepN")
    ap.add_argument("--seed", type=int, default=0, help="seed of the data order and sampling (default 0)")
    ap.add_argument("--init", type=Path, help="start from this model directory's weights (default: the bundled)")
    ap.add_argument("--check-only", action="store_true", help="only print the eval figures of the model as it is")
    ap.add_argument("--out", type=Path, default=MODEL, help="where to write the model (default: in place)")
    a = ap.parse_args()
    global FIRST_WEIGHT, STOP_WEIGHT
    FIRST_WEIGHT, STOP_WEIGHT = a.first_weight, a.stop_weight
    torch.set_num_threads(2)
    torch.manual_seed(a.seed)
    tok = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    model = GptOssForCausalLM.from_pretrained(a.init or MODEL, dtype=torch.float32).eval()
    if a.mxfp4_experts:
        mxfp4_experts(model)
    if a.check_only:
        if a.served_like:
            served = ServedQAT(model, a.served_like)
            served.quantize()
            print(f"as served: {served.types}", flush=True)
        print(f"eval-set perplexity: {evalset_ppl(model, tok):.3f}", flush=True)
        print(f"teacher-forced held-out calls: {forced_rate(model, tok, 40):.3f}", flush=True)
        print(f"copy accuracy: {copy_accuracy(model):.3f}", flush=True)
        tool_check(model, tok)
        check(model, tok)
        return
    if (a.distill or a.teacher_answers) and not a.teacher:
        raise SystemExit("--distill and --teacher-answers need --teacher DIR")
    teacher = GptOssForCausalLM.from_pretrained(a.teacher, dtype=torch.float32).eval() if a.teacher else None
    t0 = time.time()
    train(model, tok, a.steps, a.lr, a.code_batch, a.chat_batch, a.tool_batch, a.seed,
          a.out if a.out.resolve() != MODEL.resolve() else None, a.copy_batch, a.short_batch, a.answer_batch, a.made_up,
          a.small_numbers, a.text_copy, a.snapshots, a.qat, a.multi_batch, a.served_like, teacher, a.distill,
          a.every, a.teacher_answers, a.pool, a.follow_up, a.short_earlier, a.name_weight, a.unlikely,
          a.final_ul, a.unlikely_defs)
    print(f"trained {a.steps} steps in {time.time() - t0:.0f} s", flush=True)
    save(model, a.out)
    print(f"wrote {a.out / 'model.safetensors'}; its figures: --check-only --init {a.out}", flush=True)


EXPERTS = ("experts.gate_up_proj", "experts.down_proj")  # [E, in, out] parameters; MXFP4 blocks run along `in`


def mxfp4_values(w: np.ndarray) -> np.ndarray:
    """[E, in, out] expert weights as the exporters' MXFP4 codec stores them (edgeport/core/mxfp4.py)."""
    return np.stack([mxfp4.dequantize(*mxfp4.quantize(np.ascontiguousarray(e.T))).T for e in w])


def expert_params(model) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if n.endswith(EXPERTS)]


def mxfp4_experts(model) -> None:
    """Set every expert weight to its MXFP4 value (as the cpu, vllm and onnx exports quantize a BF16
    gpt-oss) and freeze it. The rest then trains around that error, which the exports then do not add:
    tool training made these weights 3.5x more sensitive to it (Q4_K_M's KL 0.0064 -> 0.022), enough to
    break harmony answers served that were well formed in fp32. The values are exact in bf16 and
    quantize back to themselves."""
    for p in expert_params(model):
        p.data.copy_(torch.from_numpy(mxfp4_values(p.detach().float().numpy())))
        p.requires_grad_(False)


class FakeQuant:
    """Quantization-aware training: the forward pass sees each of `pairs`' parameters at `fn(weight)` (the
    values an export stores), and the gradient taken there updates an fp32 master copy (straight through)."""

    def __init__(self, pairs: list[tuple[torch.nn.Parameter, Callable[[np.ndarray], np.ndarray]]]):
        self.pairs = pairs
        self.masters: list[torch.Tensor] | None = None

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for p, _ in self.pairs]

    def quantize(self) -> None:
        self.masters = [p.data.clone() for p, _ in self.pairs]
        for p, fn in self.pairs:
            p.data.copy_(torch.from_numpy(fn(p.data.float().numpy())))

    def restore(self) -> None:
        for (p, _), m in zip(self.pairs, self.masters or [], strict=True):
            p.data.copy_(m)
        self.masters = None


class ExpertQAT(FakeQuant):
    """The experts at their MXFP4 values (`--qat`); the model ends at them. Unlike `mxfp4_experts` the
    experts keep learning, within the grid the exports keep exactly."""

    def __init__(self, model):
        super().__init__([(p, mxfp4_values) for p in expert_params(model)])


# gguf-py quantizes the legacy types only; a K-quant's stand-in has as many bits per weight or fewer
STAND_IN = {"Q4_K": "Q4_0", "Q5_K": "Q5_0", "Q6_K": "Q8_0"}


def gguf_values(qtype: str) -> Callable[[np.ndarray], np.ndarray]:
    """[rows, n] weights through gguf-py's reference quantizer of `qtype` (or its STAND_IN) and back."""
    t = gguf.GGMLQuantizationType[STAND_IN.get(qtype, qtype)]
    return lambda w: gguf.quants.dequantize(gguf.quants.quantize(w, t), t).reshape(w.shape)


class ServedQAT(FakeQuant):
    """The non-expert weights at the types a served GGUF of this model holds (`--served-like`): trained
    in fp32, a candidate with well-formed harmony in process broke once its Q4_K_M GGUF was served. The
    masters are what is saved (the export quantizes them itself)."""

    def __init__(self, model, gguf_path: Path):
        types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(gguf_path).tensors}
        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT_OSS, model.config.num_hidden_layers)
        self.types: dict[str, str] = {}  # parameter name -> the GGUF's type
        pairs = []
        for n, p in model.named_parameters():
            g = names.get_name(n.removesuffix(".weight"))
            qtype = types.get(f"{g}.weight") if g and n.endswith(".weight") and p.ndim == 2 else None
            if qtype and qtype not in ("F32", "F16", "BF16"):
                pairs.append((p, gguf_values(qtype)))
                self.types[n] = qtype
        if not pairs:
            raise SystemExit(f"{gguf_path}: no quantized tensor of this model's in it")
        super().__init__(pairs)


def save(model, out: Path) -> None:
    """The weights in bf16 (as committed) into `out`, beside a copy of the bundled model's other files."""
    with tempfile.TemporaryDirectory() as tmp:
        model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
        model.to(torch.float32)
        out.mkdir(parents=True, exist_ok=True)
        if out.resolve() != MODEL.resolve():
            for f in MODEL.iterdir():
                shutil.copy2(f, out / f.name)
        shutil.copy2(Path(tmp) / "model.safetensors", out / "model.safetensors")


if __name__ == "__main__":
    main()
