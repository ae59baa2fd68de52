"""KServe objects, as KServe v0.20.0's CRDs and runtimes define them (schemas/README.md):

- GGUF: a ServingRuntime running llama-server (modelFormat gguf) and an InferenceService whose
  storageUri is the modelcar; KServe links the modelcar's /models at /mnt/models
  (kserve pkg/utils/storage.go) and the runtime reads the GGUF from there.
- vLLM: an InferenceService on KServe's own huggingface runtime (`--backend=vllm`); when the
  plan needs more than one node, the multi-node runtime (kserve-huggingfaceserver-multinode)
  with workerSpec.tensorParallelSize (GPUs per node) and pipelineParallelSize (nodes), which the
  validation webhook accepts only with an oci:// or pvc:// storageUri and autoscalerClass none.
- vLLM: an LLMInferenceService (serving.kserve.io/v1alpha2, the version the v0.20.0 CRD stores
  and the e2e-gpt-oss sample uses) for replicas behind the llm-d scheduler: `router.scheduler: {}`
  takes KServe's default endpoint-picker config, whose profile scores by prefix cache, queue and
  KV-cache use (controller_int_scheduler_config_test.go); the well-known template runs
  `vllm serve /mnt/models` with --tensor-parallel-size from spec.parallelism.tensor and appends
  $VLLM_ADDITIONAL_ARGS."""

from __future__ import annotations

import shlex

from . import DeployError, engines
from .objects import MODEL_DIR, annotations, api_key_env, labels, pinned, probes, resources
from .sizing import Sizing

GROUP = "serving.kserve.io"
STANDARD = {f"{GROUP}/deploymentMode": "Standard"}  # raw Deployments, no Knative (RawDeployment before v0.17)
HF_RUNTIME, HF_MULTINODE_RUNTIME = "kserve-huggingfaceserver", "kserve-huggingfaceserver-multinode"
GGUF_FORMAT = "gguf"


def _meta(name: str, s: Sizing, extra: dict | None = None) -> dict:
    return {"name": name, "labels": labels(name), "annotations": {**annotations(s), **(extra or {})}}


def llama_server_runtime(name: str, s: Sizing, image: str, model_file: str, served: str, secret: str) -> dict:
    return {
        "apiVersion": f"{GROUP}/v1alpha1", "kind": "ServingRuntime", "metadata": _meta(f"{name}-llama-server", s),
        "spec": {
            "supportedModelFormats": [{"name": GGUF_FORMAT, "version": "1", "autoSelect": False}],
            "containers": [{
                "name": "kserve-container", "image": pinned(image),
                "args": engines.llama_server_args(s, model_file, served, MODEL_DIR),
                "env": [api_key_env(engines.LLAMA_KEY, secret)],
                "ports": [{"containerPort": engines.LLAMA_PORT, "protocol": "TCP"}],
                **probes(engines.LLAMA_PORT),
            }],
        },
    }


def llama_server_isvc(name: str, s: Sizing, storage: str, replicas: int) -> dict:
    return {
        "apiVersion": f"{GROUP}/v1beta1", "kind": "InferenceService", "metadata": _meta(name, s, STANDARD),
        "spec": {"predictor": {
            "minReplicas": replicas, "maxReplicas": replicas,
            "model": {"modelFormat": {"name": GGUF_FORMAT}, "runtime": f"{name}-llama-server",
                      "storageUri": storage, "resources": resources(s)},
        }},
    }


def vllm_isvc(name: str, s: Sizing, storage: str, replicas: int, served: str) -> dict:
    model = {"modelFormat": {"name": "huggingface"}, "storageUri": storage, "resources": resources(s)}
    predictor: dict = {"model": model}
    extra = dict(STANDARD)
    if s.multi_node:  # one group of s.pipeline pods: deploy.refusal turns away --replicas > 1
        model |= {"runtime": HF_MULTINODE_RUNTIME, "args": [f"--model_name={served}", *engines.vllm_args(s, False)]}
        predictor["workerSpec"] = {"tensorParallelSize": s.tensor, "pipelineParallelSize": s.pipeline,
                                   "containers": [{"name": "worker-container", "resources": resources(s)}]}
        extra[f"{GROUP}/autoscalerClass"] = "none"  # the webhook refuses autoscaling for multi-node
    else:
        model |= {"runtime": HF_RUNTIME, "args": [f"--model_name={served}", "--backend=vllm", *engines.vllm_args(s)]}
        predictor |= {"minReplicas": replicas, "maxReplicas": replicas}
    return {"apiVersion": f"{GROUP}/v1beta1", "kind": "InferenceService", "metadata": _meta(name, s, extra),
            "spec": {"predictor": predictor}}


def llm_isvc(name: str, s: Sizing, storage: str, replicas: int, served: str, secret: str,
             image: str | None = None) -> dict:
    """Replicas of one vLLM pod each, routed by the llm-d endpoint picker. A layout over several
    nodes is refused: KServe's multi-node LLMInferenceService templates are data / expert
    parallel (LeaderWorkerSet), not the pipeline layout the planner sized."""
    if s.multi_node:
        raise DeployError(f"the plan spans {s.pipeline} nodes (pipeline parallel); KServe's LLMInferenceService "
                          "runs multi-node vLLM data/expert parallel only; use the InferenceService (workerSpec)")
    main: dict = {
        "name": "main",
        "env": [api_key_env(engines.VLLM_KEY, secret),
                {"name": "VLLM_ADDITIONAL_ARGS", "value": shlex.join(engines.vllm_args(s, parallel=False))}],
        "resources": resources(s),
    }  # probes: the template's, on /health over HTTP or HTTPS as KServe's TLS setting says
    if image:
        main["image"] = pinned(image)
    spec: dict = {
        "model": {"uri": storage, "name": served},
        "replicas": replicas,
        "router": {"scheduler": {}, "route": {}, "gateway": {}},
        "template": {"containers": [main]},
    }
    if s.tensor > 1:
        spec["parallelism"] = {"tensor": s.tensor}
    return {"apiVersion": f"{GROUP}/v1alpha2", "kind": "LLMInferenceService", "metadata": _meta(name, s),
            "spec": spec}
