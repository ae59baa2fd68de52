"""Manifests checked by the schemas their API servers use: Kubernetes' built-in kinds by
kubernetes-validate (the OpenAPI schemas of a Kubernetes release, strict: an unknown field is an
error), KServe's kinds by the openAPIV3Schema of KServe's CRDs, vendored in schemas/ at the
release README.md names. A CRD schema admits unknown fields (the API server prunes them), so
they are made strict here: an object with properties and no additionalProperties or
x-kubernetes-preserve-unknown-fields takes no others, as `kubectl apply --validate=strict` does.

kubernetes-validate and jsonschema come with the dev extra (the tests run this); deploy itself
does not need them."""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

from edgeport.core.errors import MissingExtra

from . import DeployError

SCHEMAS = Path(__file__).resolve().parent / "schemas"
KUBERNETES = "1.37.0"  # the newest release kubernetes-validate 1.37 carries
KSERVE_FILES = {("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice-v1beta1",
                ("serving.kserve.io/v1alpha1", "ServingRuntime"): "servingruntime-v1alpha1",
                ("serving.kserve.io/v1alpha2", "LLMInferenceService"): "llminferenceservice-v1alpha2"}


def validate(obj: dict) -> str:
    """Raise DeployError on the first schema violation; returns what checked it."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in KSERVE_FILES:
        return crd(obj)
    return kubernetes(obj)


def kubernetes(obj: dict, version: str = KUBERNETES) -> str:
    try:
        import kubernetes_validate
    except ImportError:
        raise MissingExtra("validating manifests needs kubernetes-validate: pip install -e '.[dev]'") from None
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = "/".join(str(p) for p in e.path)
        raise DeployError(f"{obj.get('kind')}: {where}: {e.message}") from None
    return f"kubernetes-validate (Kubernetes {version}, strict)"


def crd(obj: dict) -> str:
    import jsonschema

    release, schema = crd_schema(obj["apiVersion"], obj["kind"])
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        raise DeployError(f"{obj['kind']}: {'/'.join(str(p) for p in e.path)}: {e.message}")
    return f"KServe {release} CRD schema ({obj['apiVersion']} {obj['kind']}, strict)"


@functools.cache
def crd_schema(api_version: str, kind: str) -> tuple[str, dict]:
    """(KServe release, strict schema) for a KServe kind."""
    name = KSERVE_FILES.get((api_version, kind))
    if name is None:
        raise DeployError(f"no vendored KServe schema for {api_version} {kind}")
    doc = json.loads(gzip.decompress((SCHEMAS / f"{name}.json.gz").read_bytes()))
    return doc["kserve_release"], strict(doc["openAPIV3Schema"])


def strict(node):
    if isinstance(node, list):
        return [strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: ({p: strict(v) for p, v in node[k].items()} if k == "properties" else strict(node[k])) for k in node}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out
