"""What every manifest shares: images pinned by digest, the model's storage URI, probes on the
server's /health, the API key from a Secret, resources from the sizing, labels."""

from __future__ import annotations

import re

from . import DeployError
from .sizing import Sizing, mib

_PINNED = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)+"
                     r"(?::[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?@sha256:[0-9a-f]{64}$")
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
GPU = "nvidia.com/gpu"
MODEL_DIR = "/mnt/models"  # where KServe links the modelcar's /models (constants.DefaultModelLocalMountPath)
API_KEY_FIELD = "api-key"


def pinned(ref: str, option: str = "--image") -> str:
    """An image reference with its digest (registry/name[:tag]@sha256:…): a tag can be moved to
    other bytes under a running service, a digest cannot."""
    if not _PINNED.match(ref or ""):
        raise DeployError(f"{option} {ref!r}: reference the image by digest (registry/name@sha256:<64 hex>), "
                          "not by tag alone")
    return ref


def storage_uri(modelcar: str) -> str:
    """`oci://host/repo@sha256:…`: the modelcar as KServe's storageUri names it, pinned."""
    if not modelcar.startswith("oci://"):
        raise DeployError(f"{modelcar}: a cluster pulls the modelcar from a registry; push it to oci://")
    pinned(modelcar.removeprefix("oci://"), "the modelcar")
    return modelcar


def image_of(storage: str) -> str:
    return storage.removeprefix("oci://")


def name_ok(name: str) -> str:
    if len(name) > 50 or not _DNS_LABEL.match(name):
        raise DeployError(f"--name {name!r}: a lowercase DNS label (a-z, 0-9, '-', at most 50 characters)")
    return name


def api_key_env(variable: str, secret: str) -> dict:
    """The server's API key as an environment variable read from the Secret; the key itself is
    never in a manifest (`kubectl create secret generic SECRET --from-literal=api-key=…`)."""
    return {"name": variable, "valueFrom": {"secretKeyRef": {"name": secret, "key": API_KEY_FIELD}}}


def probes(port: int, path: str = "/health") -> dict:
    """Readiness and liveness on the server's health endpoint (llama-server and vLLM answer 200
    once the model is loaded, 503 before); a startup probe gives the load up to 30 minutes
    before liveness counts."""
    def get() -> dict:  # a fresh dict each: shared ones would be written as YAML anchors
        return {"httpGet": {"path": path, "port": port}}

    return {"startupProbe": {**get(), "periodSeconds": 10, "failureThreshold": 180},
            "readinessProbe": {**get(), "periodSeconds": 10, "failureThreshold": 3},
            "livenessProbe": {**get(), "periodSeconds": 30, "failureThreshold": 3, "timeoutSeconds": 10}}


def resources(s: Sizing) -> dict:
    req = {"memory": mib(s.memory_request)}
    lim = {"memory": mib(s.memory_limit)}
    if s.gpus:
        req[GPU] = lim[GPU] = s.gpus
    return {"requests": req, "limits": lim}


def labels(name: str) -> dict:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "edgeport"}


def annotations(s: Sizing) -> dict:
    """The planner's answer, on the object, for whoever reads it in the cluster."""
    return {"edgeport.dev/device": s.device, "edgeport.dev/plan": s.reason[:250],
            "edgeport.dev/layout": f"tensor-parallel {s.tensor}, pipeline-parallel {s.pipeline}"}
