"""Jetson Orin exporter: what runs on the device, plus the kit that builds its engine there.

- JetPack 7.2 (default): TensorRT Edge-LLM. Quantize with its ModelOpt quantizer on CPU (INT8
  SmoothQuant W8A8 by default, its int8 weights with fp16 activations, INT4 AWQ, or FP16),
  export its ONNX, check both, and write
  `build_engine.sh` (llm_build) / `run.sh` (llm_inference) with limits sized for the device.
- `--jetpack 6`: TensorRT-LLM v0.12.0-jetson, W8A16: the TensorRT-LLM checkpoint (FP16
  weights; trtllm-build quantizes them on the Orin, see export/trtllm_checkpoint.py) and the
  trtllm-build / ModelRunner scripts.

Engines only build on the device, so parity here is *simulated*: the artifact's own weights
and scales computed in torch (runtimes/simulated.py), labelled as such; the kit's run.sh
writes the device's outputs for `edgeport parity --device-output`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edgeport.core import toolenv
from edgeport.core.errors import QuantizationError, TargetError
from edgeport.core.progress import step
from edgeport.export import edgellm, jetson_kit, trtllm_checkpoint
from edgeport.parity.gate import load_evalset
from edgeport.runtimes.base import load_tokenizer
from edgeport.runtimes.reference import model_info_from_hf

from .formats import ExporterBase
from .jobs import Built, Job

EDGELLM = "edgellm"  # the JetPack 7.2 runtime, whose shipped llm/ graph is checked bit for bit
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja")


def _option(job: Job, key: str) -> str:
    return str(job.policy.get(key) or job.profile.runtime_options[key])


def eval_requests(job: Job, tokens: int) -> list[dict]:
    """The parity eval set's short prompts as chat requests, for the device's runtime."""
    prompts, _ = load_evalset()
    return [{"id": p["id"], "messages": [{"role": "user", "content": p["text"]}], "max_new_tokens": tokens}
            for p in prompts if p["kind"] == "short"]


class JetsonExporter(ExporterBase):
    def _stack(self, job: Job) -> tuple[str, dict, str, dict]:
        jetpack, device = _option(job, "jetpack"), _option(job, "device")
        if jetpack not in job.profile.stacks:
            raise TargetError(f"--jetpack {jetpack}: edgeport knows JetPack {' and '.join(job.profile.stacks)}")
        if device not in job.profile.devices:
            raise TargetError(f"unknown device {device!r}; known: {', '.join(job.profile.devices)}")
        stack = job.profile.stacks[jetpack]
        if job.quantization not in stack["precisions"]:
            raise TargetError(f"{stack['name']} (JetPack {jetpack}) on Orin takes precision "
                              f"{' | '.join(stack['precisions'])}, not {job.quantization!r} "
                              "(Orin has no FP8/FP4 tensor cores)")
        if job.arch.name not in stack["architectures"]:
            raise TargetError(f"{stack['name']} is set up here for {', '.join(stack['architectures'])}, "
                              f"not {job.arch.name}")
        return jetpack, stack, device, job.profile.devices[device]

    def export(self, job: Job, out: Path, work: Path) -> Built:
        jetpack, _, device, dev = self._stack(job)
        if jetpack == "6":
            return self._trtllm(job, out, work, device, dev)
        return self._edgellm(job, out, work, device, dev)

    def unquantized(self, job: Job, work: Path) -> None:
        return None  # simulated parity compares the reference with the artifact's own weights

    def artifact_check(self, job: Job, runtime: dict, inputs: dict[str, Path], root: Path) -> dict | None:
        """Edge-LLM's parity is simulated from the checkpoint: the shipped llm/ graph must hold it."""
        if runtime["name"] != EDGELLM:
            return None
        return edgellm.artifact_check(root / runtime["model_file"], inputs["quantized"], job.quantization)

    # --- TensorRT Edge-LLM (JetPack 7.2) ------------------------------------------------------
    def _edgellm(self, job: Job, out: Path, work: Path, device: str, dev: dict) -> Built:
        precision = job.quantization
        ckpt = job.src.root
        weights: dict[str, str] = {}
        if precision != "fp16":
            ckpt = out / "checkpoint"
            samples = int(job.policy.get("calibration_samples")
                          or job.profile.runtime_options.get("calibration_samples", 64))
            edgellm.quantize(job.src.root, ckpt, precision, samples, work / "quantize.log")
            weights = edgellm.checkpoint_weights(ckpt)
        extra = list(edgellm.EXPORT_FLAGS.get(precision, []))
        if precision == "int4" and dev.get("int4_externalize"):
            extra += ["--externalize-weights", dev["int4_externalize"]]
        llm = edgellm.export_onnx(ckpt, work / "onnx", work / "export.log", extra)
        rep = edgellm.check_graph(llm / "model.onnx", precision, job.src.config["num_hidden_layers"], weights)
        # op counts cannot see a wrong number: the graph must hold the checkpoint parity scores
        if problems := edgellm.verify_graph(llm, ckpt, precision):
            raise QuantizationError(f"Edge-LLM's {precision} graph does not hold {ckpt.name}/ bit for bit "
                                    f"({len(problems)} problems): " + "; ".join(problems[:3]))
        shutil.copytree(llm, out / "llm")
        weight_bytes = sum(f.stat().st_size for f in (out / "llm").iterdir()
                           if f.name.endswith((".data", ".safetensors")))
        limits = jetson_kit.size_limits(device, dev, job.src.config, weight_bytes)
        files = jetson_kit.write_edgellm_kit(out, limits, device, precision,
                                             eval_requests(job, job.profile.parity.get("greedy_tokens", 16)))
        env = toolenv.get("tensorrt-edgellm")
        parity_model = "checkpoint" if precision != "fp16" else None
        return Built(
            runtime={"name": EDGELLM, "model_file": "llm", "engine_dir": "engine", "parity_runtime": "simulated",
                     "parity_model": parity_model,
                     "parity_options": {"quantize_activations": precision != "int8-w8a16"},
                     "options": {"jetpack": "7.2", "device": device, "limits": limits}, "kit": files},
            quantization={"requested": precision, "variant": f"edgellm-{precision}",
                          "applied": {"stack": "TensorRT Edge-LLM",
                                      "scheme": edgellm.QUANTIZATION.get(precision, "fp16"),
                                      "ops": rep.ops, "calibration": str(edgellm.CALIBRATION.name) if weights else None,
                                      "unquantized_in_checkpoint": sorted(k for k, v in weights.items()
                                                                          if not v.startswith(("int8", "int4")))},
                          "per_tensor": weights},
            parity_inputs={"quantized": out / parity_model} if parity_model else {"quantized": job.src.root},
            variant=f"edgellm-{precision}",
            tools={p: env.version(p)
                   for p in ("tensorrt-edgellm", "nvidia-modelopt", "transformers", "torch", "onnx")},
            messages=[f"engine limits for {device}: batch {limits['max_batch_size']}, input {limits['max_input_len']}, "
                      f"KV cache {limits['max_kv_cache_capacity']} tokens; "
                      "on the Jetson: ./build_engine.sh && ./run.sh",
                      "parity below is SIMULATED on CPU (the artifact's own int weights and scales in torch; "
                      "llm/ was checked to hold them bit for bit); "
                      "run.sh's device_output.json gives the device's own: edgeport parity --device-output"],
        )

    # --- TensorRT-LLM v0.12 (JetPack 6) -------------------------------------------------------
    def _trtllm(self, job: Job, out: Path, work: Path, device: str, dev: dict) -> Built:
        with step("writing the TensorRT-LLM v0.12 checkpoint (FP16 weights, quant_algo W8A16)"):
            records = trtllm_checkpoint.write(job.src, out / "trtllm_checkpoint", "W8A16")
        hf = out / "hf"
        hf.mkdir()
        shutil.copy2(job.src.root / "config.json", hf / "config.json")
        for f in TOKENIZER_FILES:
            if (job.src.root / f).is_file():
                shutil.copy2(job.src.root / f, hf / f)
        # int8 weights on the device: half of FP16 for the quantized ones
        weight_bytes = sum(2 * _numel(r["shape"]) // (2 if r["quantized_on_device"] else 1)
                           for r in records.values())
        limits = jetson_kit.size_limits(device, dev, job.src.config, weight_bytes)
        files = jetson_kit.write_trtllm_kit(out, limits, device, self._eval_inputs(job, limits))
        per_tensor = {k: ("int8 W8A16 per-channel, quantized by trtllm-build on the device" if r["quantized_on_device"]
                          else "float16") for k, r in records.items()}
        return Built(
            runtime={"name": "tensorrt-llm", "model_file": "trtllm_checkpoint", "engine_dir": "engine",
                     "parity_runtime": "simulated", "parity_model": "trtllm_checkpoint",
                     "parity_options": {"hf_dir": "{root}/hf"},
                     "options": {"jetpack": "6", "device": device, "limits": limits}, "kit": files},
            quantization={"requested": job.quantization, "variant": "trtllm-w8a16",
                          "applied": {"stack": "TensorRT-LLM v0.12.0-jetson", "quant_algo": "W8A16",
                                      "where": "trtllm-build on the device (TensorRT-LLM's symmetric_quantize)",
                                      "tensors": records},
                          "per_tensor": per_tensor},
            parity_inputs={"quantized": out / "trtllm_checkpoint"}, variant="trtllm-w8a16",
            messages=[f"engine limits for {device}: batch {limits['max_batch_size']}, input {limits['max_input_len']}, "
                      f"sequence {limits['max_kv_cache_capacity']}; on the Jetson: ./build_engine.sh && ./run.sh",
                      "parity below is SIMULATED on CPU (TensorRT-LLM's W8A16 formula in torch on the kit's "
                      "weights); run.sh's device_output.json gives the device's own: edgeport parity --device-output"],
        )

    def _eval_inputs(self, job: Job, limits: dict) -> dict:
        tok = load_tokenizer(job.src.root)
        info = model_info_from_hf(job.src)
        bos = [info.bos_token_id] if info.add_bos and info.bos_token_id is not None else []
        prompts, sha = load_evalset()
        cfg = job.src.config
        eos = cfg.get("eos_token_id")
        eos = eos[0] if isinstance(eos, list) else eos
        return {"evalset_sha256": sha, "greedy_tokens": job.profile.parity.get("greedy_tokens", 16),
                "end_id": eos, "pad_id": cfg.get("pad_token_id", eos), "vocab_size": cfg["vocab_size"],
                "prompts": [{"id": p["id"], "kind": p["kind"],
                             "ids": (bos + tok.encode(p["text"], add_special_tokens=False).ids)[
                                 :limits["max_input_len"] - 32]}
                            for p in prompts]}


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n

