"""onnxruntime behind the common interface.

Two engines over one model directory:
- `logits` runs the graph once with an empty KV cache through a plain `InferenceSession`, so
  parity sees the full distribution at every position;
- generation goes through onnxruntime-genai when the directory has its `genai_config.json`
  (it owns the KV cache, as it does in deployment); other graphs (standard-op graphs for the
  TensorRT EP) are driven by a KV-cache loop over the same session.

Execution providers: `ep="cpu" | "cuda" | "tensorrt"`; an EP this onnxruntime build lacks falls
back to the next one with a warning naming the EP actually used.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Sequence
from pathlib import Path

import numpy as np

from export.errors import RuntimeUnavailable

from .base import ModelInfo, Runtime, TokenizerFileMixin, load_tokenizer

# our EP names -> onnxruntime provider chains (first available wins) and genai provider names
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
GENAI_PROVIDER = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "NvTensorRtRtx"}
ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}  # KV-cache input types


def _require_ort():
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise RuntimeUnavailable("the onnxruntime runtime needs onnxruntime: pip install -e '.[onnx]' "
                                 "(or '.[onnx-gpu]' on a CUDA machine)") from e
    return ort


def pick_providers(ep: str, available: Sequence[str]) -> list[str]:
    if ep not in PROVIDERS:
        raise RuntimeUnavailable(f"unknown execution provider {ep!r}; known: {', '.join(PROVIDERS)}")
    chain = [p for p in PROVIDERS[ep] if p in available]
    if chain[0] != PROVIDERS[ep][0]:
        from export.progress import console

        msg = (f"onnxruntime: {PROVIDERS[ep][0]} is not available in this onnxruntime build "
               f"(has: {', '.join(available)}); running on {chain[0]}")
        console.print(f"[yellow]warning:[/yellow] {msg}", highlight=False)
    return chain


class OnnxRuntime(TokenizerFileMixin, Runtime):
    name = "onnxruntime"

    def __init__(self, model_dir: str | Path, info: ModelInfo | None = None, *, ep: str = "cpu",
                 threads: int = 0, **_ignored):
        from .reference import model_info_from_hf

        ort = _require_ort()
        self.dir = Path(model_dir)
        self.model_file = self.dir / "model.onnx"
        if not self.model_file.is_file():
            raise RuntimeUnavailable(f"{self.dir}: no model.onnx")
        super().__init__(info or model_info_from_hf(self.dir))
        self.tok = load_tokenizer(self.dir)
        self.providers = pick_providers(ep, ort.get_available_providers())
        self.ep_used = self.providers[0]
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self._sess = ort.InferenceSession(str(self.model_file), opts, providers=self.providers)
        self._inputs = {i.name: i for i in self._sess.get_inputs()}
        self._past = sorted(n for n in self._inputs if n.startswith("past_key_values."))
        self._genai_config = self.dir / "genai_config.json"
        self._og_model = None
        self._head_dim = self._read_head_dim()

    def _read_head_dim(self) -> int:
        if self._genai_config.is_file():
            return json.loads(self._genai_config.read_text())["model"]["decoder"]["head_size"]
        cfg = json.loads((self.dir / "config.json").read_text())
        return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]

    # --- plain session --------------------------------------------------------------------
    def _feeds(self, ids: np.ndarray, past: dict[str, np.ndarray] | None, past_len: int) -> dict:
        feeds = {"input_ids": ids[None, :].astype(np.int64)}
        total = past_len + len(ids)
        if "attention_mask" in self._inputs:
            feeds["attention_mask"] = np.ones((1, total), np.int64)
        if "position_ids" in self._inputs:
            feeds["position_ids"] = np.arange(past_len, total, dtype=np.int64)[None, :]
        for name in self._past:
            if past is not None:
                feeds[name] = past[name]
            else:
                shape = [d if isinstance(d, int) else 0 for d in self._inputs[name].shape]
                shape[0], shape[-1] = 1, self._head_dim  # [batch, kv_heads, 0 past, head_dim]
                feeds[name] = np.zeros(shape, ORT_TYPES.get(self._inputs[name].type, np.float32))
        return feeds

    def _run(self, ids: np.ndarray, past: dict | None, past_len: int) -> tuple[np.ndarray, dict]:
        out_names = [o.name for o in self._sess.get_outputs()]
        outs = dict(zip(out_names, self._sess.run(None, self._feeds(ids, past, past_len)), strict=True))
        present = {n.replace("past_key_values.", "present."): n for n in self._past}
        return outs["logits"][0], {past_name: outs[p] for p, past_name in present.items()}

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        logits, _ = self._run(np.asarray(token_ids), None, 0)
        return logits.astype(np.float32)

    # --- generation -----------------------------------------------------------------------
    def _decode(self, prompt_ids: list[int]) -> Generator[np.ndarray, int, None]:
        if self._genai_config.is_file():
            yield from self._decode_genai(prompt_ids)
        else:
            yield from self._decode_session(prompt_ids)

    def _decode_session(self, prompt_ids: list[int]) -> Generator[np.ndarray, int, None]:
        logits, past = self._run(np.asarray(prompt_ids), None, 0)
        n = len(prompt_ids)
        while True:
            tok = yield logits[-1].astype(np.float32)
            logits, past = self._run(np.asarray([tok]), past, n)
            n += 1

    def _genai(self):
        if self._og_model is None:
            try:
                import onnxruntime_genai as og
            except ImportError as e:
                raise RuntimeUnavailable("generation needs onnxruntime-genai: pip install -e '.[onnx]'") from e
            cfg = og.Config(str(self.dir))
            cfg.clear_providers()
            if (p := GENAI_PROVIDER.get(self.ep_used)) is not None:
                cfg.append_provider(p)
            self._og_model = og.Model(cfg)
        return self._og_model

    def _decode_genai(self, prompt_ids: list[int]) -> Generator[np.ndarray, int, None]:
        import onnxruntime_genai as og

        model = self._genai()
        ctx = json.loads(self._genai_config.read_text())["model"].get("context_length", 4096)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=ctx, do_sample=False)
        gen = og.Generator(model, params)
        try:
            gen.append_tokens(np.asarray(prompt_ids, np.int32))
            while True:
                logits = np.asarray(gen.get_logits())  # [batch, 1, vocab]: the last position
                tok = yield logits.reshape(-1, logits.shape[-1])[-1].astype(np.float32)
                gen.append_tokens(np.asarray([tok], np.int32))
        finally:
            del gen

    def close(self) -> None:
        self._sess = None
        self._og_model = None
