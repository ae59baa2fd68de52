"""`edgeport deploy`: size the artifact for a node profile, push its modelcar, write the
manifests. Everything that can be refused (a tag-only image, a model that does not fit, a layout
the output cannot run) is refused before anything is written; the modelcar push comes first
among the side effects because the manifests name its digest."""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgeport.core.atomic import check_writable, staging
from edgeport.export.pipeline import source_location
from edgeport.planning import devices, model
from edgeport.publishing import transfer
from edgeport.publishing.artifact import load_manifest

from . import DeployError, k8s, kserve, sizing
from .objects import name_ok, pinned, storage_uri
from .sizing import Sizing

OUTPUTS = ("kserve", "k8s")
ENGINES = {"gguf": "llama-server", "hf-mxfp4": "vllm"}


@dataclass(frozen=True)
class Request:
    to: str  # kserve | k8s
    device: str
    modelcar: str  # where the modelcar image is pushed: oci://host/repo[:tag]
    image: str | None = None  # the server image, by digest
    replicas: int = 1
    context: int | None = None
    slots: int = 1
    name: str | None = None
    secret: str | None = None
    model: str | None = None  # the config to plan with (default: the artifact's own or its source's)
    insecure: bool = False
    force: bool = False


@dataclass(frozen=True)
class Result:
    files: list[Path]
    sizing: Sizing
    storage: str
    notes: list[str]


def deploy(req: Request, out: Path, artifact: Path | None = None, from_: str | None = None) -> Result:
    if (artifact is None) == (from_ is None):
        raise DeployError("give --artifact DIR or --from URI (one of them)")
    if from_ is None:
        return _deploy(req, Path(artifact), out)
    with tempfile.TemporaryDirectory(prefix="edgeport-deploy-") as t:
        pulled, _ = transfer.pull(from_, Path(t) / "artifact", insecure=req.insecure)
        return _deploy(req, pulled, out)


def _deploy(req: Request, artifact: Path, out: Path) -> Result:
    if req.to not in OUTPUTS:
        raise DeployError(f"--to {req.to!r}: one of {', '.join(OUTPUTS)}")
    if req.image:
        pinned(req.image)
    if not req.modelcar.startswith("oci://"):
        raise DeployError(f"--modelcar {req.modelcar}: a cluster pulls the modelcar from a registry; "
                          "give oci://host[:port]/repo[:tag]")
    check_writable(Path(out), req.force)
    m = load_manifest(artifact)
    engine = ENGINES.get(m.get("format"))
    if engine is None:
        raise DeployError(f"{artifact}: a {m.get('format')} artifact; deploy serves GGUF (llama-server) and "
                          "hf-mxfp4 (vLLM) artifacts")
    if not req.image and (engine == "llama-server" or req.to == "k8s"):
        server = "a llama.cpp server image (ghcr.io/ggml-org/llama.cpp)" if engine == "llama-server" \
            else "a vLLM image (vllm/vllm-openai)"
        raise DeployError(f"--image is required: {server}, referenced by digest (name@sha256:…)")
    served = m["source"]["model"]
    name = name_ok(req.name or _dns(f"{served.split('/')[-1]}-{m['target']}"))
    secret = req.secret or f"{name}-api-key"
    s = size(artifact, m, engine, req)
    if why := refusal(req.to, s, req.replicas):
        raise DeployError(why)  # before the push: nothing is left behind for a layout that cannot run
    storage = storage_uri(transfer.push_modelcar(artifact, req.modelcar, insecure=req.insecure, force=req.force))
    objs, notes = render(req.to, s, name=name, storage=storage, replicas=req.replicas, served=served,
                         secret=secret, image=req.image, model_file=m["runtime"].get("model_file", ""))
    files = _write(out, objs, s, storage, req.force)
    notes.append(f"create the API key first: kubectl create secret generic {secret} --from-literal=api-key=…")
    return Result(files, s, storage, notes)


def size(artifact: Path, m: dict, engine: str, req: Request) -> Sizing:
    """The planner's answer for this artifact on req.device: its own config.json (a vLLM
    checkpoint carries one), else the source it was exported from, unless --model names one."""
    where = req.model or (str(artifact) if (artifact / "config.json").is_file() else source_location(m))
    spec, dev = model.load(where), devices.load(req.device)
    if engine == "llama-server":
        q = m.get("quantization") or {}
        return sizing.llama_server(spec, dev, m["target"], q.get("requested"), req.context, req.slots)
    return sizing.vllm(spec, dev, req.context, req.slots)


def render(to: str, s: Sizing, *, name: str, storage: str, replicas: int, served: str, secret: str,
           image: str | None, model_file: str) -> tuple[list[dict], list[str]]:
    """The objects for `to` (kserve | k8s), and notes on what was left out and why."""
    if why := refusal(to, s, replicas):
        raise DeployError(why)
    storage_uri(storage)
    notes: list[str] = [f"{s.engine} on {s.device}: tensor parallel {s.tensor}, pipeline parallel {s.pipeline} "
                        f"({s.reason})"]
    if to == "k8s":
        return k8s.objects(name, s, image or "", storage, replicas, model_file, served, secret), notes
    if s.engine == "llama-server":
        return [kserve.llama_server_runtime(name, s, image or "", model_file, served, secret),
                kserve.llama_server_isvc(name, s, storage, replicas)], notes
    objs = [kserve.vllm_isvc(name, s, storage, replicas, served)]
    if s.multi_node:
        notes.append("no LLMInferenceService: its multi-node templates are data/expert parallel, not the "
                     "pipeline layout planned here")
    else:
        objs.append(kserve.llm_isvc(name, s, storage, replicas, served, secret, image))
    notes.append("the InferenceService runs KServe's huggingface runtime, which takes no API key: put it behind "
                 "an authenticating gateway; the LLMInferenceService's vLLM reads VLLM_API_KEY from the Secret")
    return objs, notes


def refusal(to: str, s: Sizing, replicas: int) -> str | None:
    """Why the layout cannot be written for `to`, if it cannot: a plan over several nodes needs
    KServe's multi-node runtime (a Deployment pod is one node), which runs one group."""
    if replicas < 1:
        return "--replicas must be at least 1"
    if s.multi_node and to == "k8s":
        return (f"the plan spans {s.pipeline} nodes (pipeline parallel {s.pipeline}); a Deployment pod runs on one "
                "node: use --to kserve (multi-node workerSpec) or a node profile with more GPUs")
    if s.multi_node and replicas != 1:
        return (f"the plan spans {s.pipeline} nodes per replica (pipeline parallel); KServe's multi-node "
                "InferenceService runs one such group: --replicas 1, or a node profile with more GPUs")
    return None


def _dns(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")[:50].strip("-") or "model"


def _write(out: Path, objs: list[dict], s: Sizing, storage: str, force: bool) -> list[Path]:
    import yaml  # PyYAML: installed with huggingface-hub, a base dependency

    names = []
    with staging(Path(out), force) as tmp:
        for o in objs:
            fname = f"{o['kind'].lower()}.yaml"
            (tmp / fname).write_text(yaml.safe_dump(o, sort_keys=False, width=120))
            names.append(fname)
        (tmp / "plan.json").write_text(json.dumps({**s.to_json(), "storage_uri": storage}, indent=2) + "\n")
        names.append("plan.json")
    return [Path(out) / n for n in names]
