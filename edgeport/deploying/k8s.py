"""Plain Kubernetes for clusters without KServe: a Deployment, a Service and a
PodDisruptionBudget. The modelcar is mounted as an image volume (Kubernetes' ImageVolume,
KEP-4639; `subPath: models` puts its /models at /mnt/models, as KServe's modelcar link does), so
no init copy and no shell are needed. ImageVolume is on by default from Kubernetes 1.35; 1.33-1.34
need the feature gate, and subPath on it needs 1.33 (the version checks of KServe v0.20.0's
pkg/controller/v1alpha2/llmisvc/controller.go). One pod is one node's worth of GPUs: a plan that needs
pipeline parallelism over nodes is refused (deploy.refusal: that takes KServe's multi-node runtime)."""

from __future__ import annotations

from . import engines
from .objects import MODEL_DIR, api_key_env, image_of, labels, pinned, probes, resources
from .sizing import Sizing


def _container(s: Sizing, image: str, model_file: str, served: str, secret: str) -> dict:
    if s.engine == "llama-server":  # llama.cpp's server images have llama-server as their entrypoint
        run = {"args": engines.llama_server_args(s, model_file, served, MODEL_DIR)}
        port, key = engines.LLAMA_PORT, engines.LLAMA_KEY
    else:
        run = {"command": ["vllm", "serve", MODEL_DIR, "--served-model-name", served,
                           "--port", str(engines.VLLM_PORT), *engines.vllm_args(s)]}
        port, key = engines.VLLM_PORT, engines.VLLM_KEY
    mounts = [{"name": "model", "mountPath": MODEL_DIR, "subPath": "models", "readOnly": True}]
    if s.tensor > 1:
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})  # NCCL between the pod's GPUs
    return {"name": "server", "image": pinned(image), **run,
            "env": [api_key_env(key, secret)], "ports": [{"name": "http", "containerPort": port}],
            "resources": resources(s), "volumeMounts": mounts, **probes(port)}


def objects(name: str, s: Sizing, image: str, storage: str, replicas: int, model_file: str, served: str,
            secret: str) -> list[dict]:
    """The three objects for a one-node plan (deploy.refusal turns away the others)."""
    sel = {"app.kubernetes.io/name": name}
    volumes = [{"name": "model", "image": {"reference": image_of(storage), "pullPolicy": "IfNotPresent"}}]
    if s.tensor > 1:
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}})
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels(name)},
        "spec": {"replicas": replicas, "selector": {"matchLabels": sel},
                 "template": {"metadata": {"labels": labels(name)},
                              "spec": {"containers": [_container(s, image, model_file, served, secret)],
                                       "volumes": volumes}}},
    }
    port = engines.LLAMA_PORT if s.engine == "llama-server" else engines.VLLM_PORT
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels(name)},
               "spec": {"selector": sel, "ports": [{"name": "http", "port": 80, "targetPort": port}]}}
    pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": name, "labels": labels(name)},
           "spec": {"maxUnavailable": 1, "selector": {"matchLabels": sel}}}
    return [deployment, service, pdb]
