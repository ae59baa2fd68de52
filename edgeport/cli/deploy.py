"""`edgeport deploy`: Kubernetes manifests (KServe or plain) for an artifact, sized by the planner."""

from __future__ import annotations

from pathlib import Path

from invoke import task

from .common import cli, number, plan_model
from .ship import URI_HELP


@task(help={
    "artifact": "an artifact directory made by `edgeport export` (or --from)",
    "from_": f"pull the artifact from here first (verified): {URI_HELP}",
    "to": "kserve (ServingRuntime + InferenceService for GGUF; InferenceService + LLMInferenceService for vLLM) "
          "or k8s (Deployment + Service + PodDisruptionBudget)",
    "device": "the node profile to size for (edgeport/planning/devices.toml), e.g. 1x-l4, 4x-l4, 2x-l40s, "
              "8x-h100-80gb, cpu-node-32gb",
    "modelcar": "push the artifact's modelcar image here, oci://host[:port]/repo[:tag]; the manifests name it "
                "by digest",
    "image": "the server image by digest (registry/name@sha256:…): llama.cpp's server for GGUF, vLLM for "
             "--to k8s; optional for vLLM on KServe (its runtimes bring theirs)",
    "replicas": "serving pods (vLLM on KServe: LLMInferenceService replicas behind the llm-d scheduler)",
    "context": "tokens per sequence (default: the target's n_ctx / max_model_len)",
    "slots": "sequences per pod at once (llama-server --parallel, vLLM --max-num-seqs)",
    "name": "the objects' name (default: model and target)",
    "secret": "the Secret holding the API key under api-key (default: NAME-api-key)",
    "model": "the config to plan with (default: the artifact's config.json or its source's)",
    "out": "directory for the manifests and plan.json (refused if it exists, unless --force)",
    "insecure": "oci://: plain HTTP (a lab registry without TLS)",
    "force": "replace --out; push a modelcar of an artifact whose parity is missing or failed",
})
@cli
def deploy(c, to, device, modelcar, artifact=None, from_=None, image=None, replicas=1, context=None, slots=1,
           name=None, secret=None, model=None, out="deploy", insecure=False, force=False):
    """Kubernetes manifests for an artifact: the modelcar image pushed by digest, KServe or plain
    objects sized by `plan` for the node profile (memory, GPUs, tensor / pipeline parallelism,
    context and slots), probes on /health, the API key from a Secret."""
    from edgeport.deploying.deploy import Request
    from edgeport.deploying.deploy import deploy as do_deploy

    req = Request(to=to, device=device, modelcar=modelcar, image=image,
                  replicas=number("replicas", replicas, least=1),
                  context=None if context is None else number("context", context, least=1),
                  slots=number("slots", slots, least=1), name=name, secret=secret,
                  model=plan_model(model) if model else None, insecure=insecure, force=force)
    r = do_deploy(req, Path(out), artifact=Path(artifact) if artifact else None, from_=from_)
    print(f"modelcar: {r.storage}")
    for n in r.notes:
        print(f"note: {n}")
    for f in r.files:
        print(f"wrote {f}")
