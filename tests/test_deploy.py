"""`edgeport deploy` and the modelcar, checked by real tools (issue #23):

- the planner's cluster answer: device profiles for 1/2/4/8 x L4, A10G, L40S, H100 nodes, and the
  vLLM tensor / pipeline layout of gpt-oss-120b with its reason, each layout the smallest that fits;
- the modelcar image pushed to a real registry (Debian's docker-registry, auth on), copied out
  with skopeo and unpacked with umoci: its /models is byte-identical to the artifact, its
  busybox runs KServe's modelcar command; a tampered layer is refused by our pull;
- every manifest `deploy` writes (GGUF and vLLM artifacts, --to kserve and --to k8s) validates
  against Kubernetes' schemas (kubernetes-validate, strict) and KServe v0.20.0's CRD schemas
  (vendored), and a wrong field type fails each schema;
- the manifests' sizing equals the planner's answer for the named device."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from edgeport.planning import devices, memory, model, parallel
from edgeport.targets import load as load_target
from tests.conftest import ROOT, unavailable

G120 = str(ROOT / "edgeport/planning/configs/gpt-oss-120b.json")
GPUS = {"l4": ("1x-l4", "2x-l4", "4x-l4", "8x-l4"), "a10g": ("1x-a10g", "2x-a10g", "4x-a10g", "8x-a10g"),
        "l40s": ("1x-l40s", "2x-l40s", "4x-l40s", "8x-l40s"),
        "h100": ("h100-80gb", "2x-h100-80gb", "4x-h100-80gb", "8x-h100-80gb")}
# a server image pinned by digest: the tests check the manifests name it so, nothing pulls it
LLAMA_IMAGE = "ghcr.io/ggml-org/llama.cpp@sha256:" + hashlib.sha256(b"edgeport test: llama.cpp server").hexdigest()
VLLM_IMAGE = "docker.io/vllm/vllm-openai@sha256:" + hashlib.sha256(b"edgeport test: vllm-openai").hexdigest()
MIB = 2**20


# ---------------------------------------------------------------------------------------------
# the planner on cluster nodes
# ---------------------------------------------------------------------------------------------
def test_cluster_node_profiles():
    known = devices.load_all()
    for gpu, names in GPUS.items():
        counts = [known[n].gpus for n in names]
        assert counts == [1, 2, 4, 8], (gpu, counts)
        assert {known[n].gpu_memory_gib for n in names} and all(known[n].memory == "discrete" for n in names)


def _vllm(spec, dev, tp, pp):
    prof = load_target("vllm")
    return memory._vllm(spec, dev, prof, prof.quantization, prof.runtime_options["max_model_len"], 1, False,
                        tp=tp, pp=pp)


@pytest.mark.parametrize("device, tp, pp, words", [
    ("2x-l40s", 2, 1, ("tensor parallel 2",)),
    ("4x-l4", 4, 1, ("tensor parallel 4",)),
    ("1x-l4", 1, 4, ("pipeline parallel over 4", "9 of 36 layers")),
    ("2x-l4", 2, 2, ("pipeline parallel over 2", "tensor parallel 2 inside")),
    ("h100-80gb", 1, 1, ("fits one GPU",)),
])
def test_gpt_oss_120b_layout_is_the_smallest_that_fits(device, tp, pp, words):
    """gpt-oss-120b (~61 GiB of MXFP4 weights): the layout vLLM needs on each node profile, with
    the reason; the next smaller layout (half the TP, one node fewer) does not fit."""
    spec, dev = model.load(G120), devices.load(device)
    lay = parallel.layout_for(spec, dev)
    assert (lay.tensor, lay.pipeline) == (tp, pp), lay.reason
    assert all(w in lay.reason for w in words), lay.reason
    assert lay.plan.fits and lay.plan.options["tensor_parallel_size"] == tp
    assert lay.plan.options.get("pipeline_parallel_size", 1) == pp
    if pp > 1:
        assert not _vllm(spec, dev, tp, pp - 1).fits
    elif tp > 1:
        assert not _vllm(spec, dev, tp // 2, 1).fits


def test_pipeline_stages_follow_vllm_and_tp_only_plans_are_unchanged():
    """Stages as vLLM's get_pp_indices splits layers (the remainder to the stages before the
    last); with one stage the plan is the tensor-parallel plan `plan` always made."""
    assert memory.pp_stages(36, 4) == [9, 9, 9, 9]
    assert memory.pp_stages(24, 5) == [5, 5, 5, 5, 4]
    assert memory.pp_stages(7, 3) == [2, 3, 2]
    spec, dev = model.load(G120), devices.load("4x-l4")
    p = _vllm(spec, dev, 4, 1)
    assert p.pools["gpu"].parts["weights"] == p.weights.resident_bytes // 4
    assert p.pools["gpu"].parts["kv_cache"] == p.kv_bytes // 4
    staged = _vllm(spec, dev, 1, 4)
    assert staged.pools["gpu"].parts["weights"] < p.weights.resident_bytes // 3  # a quarter, plus embedding


def test_plan_cluster_command():
    r = subprocess.run([sys.executable, "-m", "edgeport", "plan", "--device", "2x-l40s", "--model", "gpt-oss-120b",
                        "--cluster", "--json"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["tensor_parallel_size"], out["pipeline_parallel_size"], out["nodes"]) == (2, 1, 1)
    assert "tensor parallel 2" in out["reason"] and out["plan"]["fits"]


# ---------------------------------------------------------------------------------------------
# artifacts and the registry
# ---------------------------------------------------------------------------------------------
def _export(target: str, name: str, out: Path) -> Path:
    r = subprocess.run([sys.executable, "-m", "edgeport", "export", "--target", target, "--model", name,
                        "--out", str(out), "--no-parity"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """A GGUF (cpu target, tiny-llama) and a vLLM MXFP4 checkpoint (tiny-gpt-oss), exported
    without the parity gate (seconds; the modelcar is pushed with --force)."""
    from edgeport.publishing import modelcar
    from edgeport.publishing.errors import PublishError

    try:
        modelcar.busybox()
    except PublishError as e:
        unavailable("building modelcar images", str(e))
    root = tmp_path_factory.mktemp("deploy-artifacts")
    return {"gguf": _export("cpu", "tiny-llama", root / "gguf"), "vllm": _export("vllm", "tiny-gpt-oss", root / "vllm")}


@pytest.fixture(scope="module")
def reg():
    from edgeport.benchmarking.registry import LocalRegistry

    try:
        r = LocalRegistry()
    except RuntimeError as e:
        unavailable("the modelcar round trip through a real registry", str(e))
    with r:
        yield r


@pytest.fixture()
def creds(monkeypatch):
    from edgeport.benchmarking.registry import PASSWORD, USER

    monkeypatch.setenv("EDGEPORT_REGISTRY_USER", USER)
    monkeypatch.setenv("EDGEPORT_REGISTRY_PASSWORD", PASSWORD)
    return f"{USER}:{PASSWORD}"


def _tools(*names: str) -> None:
    missing = [n for n in names if not shutil.which(n)]
    if missing:
        unavailable(f"checking the modelcar with {', '.join(missing)}", f"apt-get install {' '.join(missing)}")


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def gguf_modelcar(reg, artifacts) -> str:
    from edgeport.benchmarking.registry import PASSWORD, USER
    from edgeport.publishing import transfer

    env = {"EDGEPORT_REGISTRY_USER": USER, "EDGEPORT_REGISTRY_PASSWORD": PASSWORD}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        return transfer.push_modelcar(artifacts["gguf"], f"oci://{reg.host}/edgeport/tiny-llama:v1-modelcar",
                                      insecure=True, force=True)


def test_modelcar_round_trip_through_skopeo_and_umoci(reg, artifacts, gguf_modelcar, creds, tmp_path):
    """The image as a cluster's runtime would get it: skopeo copies it by digest out of the
    registry into an OCI layout, umoci unpacks its layers into a root filesystem. /models is the
    artifact byte for byte; /bin/sh is busybox, and KServe's modelcar command runs in it."""
    _tools("skopeo", "umoci")
    assert re.fullmatch(rf"oci://{re.escape(reg.host)}/edgeport/tiny-llama@sha256:[0-9a-f]{{64}}", gguf_modelcar)
    src = "docker://" + gguf_modelcar.removeprefix("oci://")
    r = subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--src-creds", creds, src,
                        f"oci:{tmp_path / 'layout'}:car"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    unpack = ["umoci", "unpack"] + ([] if os.geteuid() == 0 else ["--rootless"])
    r = subprocess.run([*unpack, "--image", f"{tmp_path / 'layout'}:car", str(tmp_path / "bundle")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rootfs = tmp_path / "bundle" / "rootfs"
    assert _tree(rootfs / "models") == _tree(artifacts["gguf"])
    assert os.readlink(rootfs / "bin" / "sh") == "busybox" and (rootfs / "bin" / "busybox").stat().st_mode & 0o111
    if os.geteuid() == 0 and shutil.which("chroot"):  # KServe's command (pkg/utils/storage.go), sleep shortened
        run = subprocess.run(["chroot", str(rootfs), "/bin/sh", "-c",
                              "mkdir -p /mnt && ln -sf /proc/$$/root/models /mnt/models && sleep 0 && echo up"],
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 0 and run.stdout.strip() == "up", run.stderr
    # our own pull takes the same image back, verified
    from edgeport.publishing import transfer

    out, pinned = transfer.pull(gguf_modelcar, tmp_path / "pulled", insecure=True)
    assert pinned == gguf_modelcar and _tree(out) == _tree(artifacts["gguf"])


def test_tampered_modelcar_layer_is_refused(reg, artifacts, creds, tmp_path):
    """One byte of the GGUF's layer changed in the registry's storage: pull refuses it by its
    digest and leaves nothing at --out."""
    from edgeport.publishing import transfer
    from edgeport.publishing.errors import PublishError

    pinned = transfer.push_modelcar(artifacts["gguf"], f"oci://{reg.host}/edgeport/tampered:v1", insecure=True,
                                    force=True)
    manifest = json.loads(reg.blob_path(_manifest_digest(pinned)).read_bytes())
    gguf = json.loads((artifacts["gguf"] / "manifest.json").read_text())["runtime"]["model_file"]
    layer = next(x for x in manifest["layers"] if x["annotations"].get("org.cncf.model.filepath") == gguf)
    blob = reg.blob_path(layer["digest"])  # one blob for every repository holding it: restored after
    good = blob.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    try:
        with pytest.raises(PublishError, match=rf"{re.escape(gguf)}\.layer: content does not match its digest"):
            transfer.pull(pinned, tmp_path / "out", insecure=True)
    finally:
        blob.write_bytes(good)
    assert not (tmp_path / "out").exists()


def _manifest_digest(pinned: str) -> str:
    return pinned.rsplit("@", 1)[1]


def test_push_modelcar_beside_the_artifact(reg, artifacts, creds, tmp_path):
    """`edgeport push --modelcar`: the artifact at its tag, the modelcar at TAG-modelcar, both
    pulled back verified (the first as a DMR artifact, the second unpacked from the image)."""
    to = f"oci://{reg.host}/edgeport/side:v2"
    r = subprocess.run([sys.executable, "-m", "edgeport", "push", "--artifact", str(artifacts["gguf"]), "--to", to,
                        "--insecure", "--force", "--modelcar"], capture_output=True, text=True, timeout=180, cwd=ROOT,
                       env=os.environ.copy())
    assert r.returncode == 0, r.stderr
    assert re.search(rf"pushed oci://{re.escape(reg.host)}/edgeport/side@sha256:", r.stdout)
    assert "pushed modelcar oci://" in r.stdout
    from edgeport.publishing import transfer

    for ref, out in ((to, tmp_path / "a"), (to + "-modelcar", tmp_path / "b")):
        transfer.pull(ref, out, insecure=True)
        assert _tree(out) == _tree(artifacts["gguf"])


# ---------------------------------------------------------------------------------------------
# the manifests
# ---------------------------------------------------------------------------------------------
def _deploy(args: list[str], out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeport", "deploy", *args, "--out", str(out), "--insecure",
                           "--force"], capture_output=True, text=True, timeout=300, cwd=ROOT, env=os.environ.copy())


def _load(out: Path) -> dict[str, dict]:
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))}


CASES = {  # name -> (artifact, --to, --device, extra args, files written)
    "gguf-kserve-gpu": ("gguf", "kserve", "1x-l4", ["--image", LLAMA_IMAGE, "--slots", "4", "--replicas", "2"],
                        {"servingruntime", "inferenceservice"}),
    "gguf-k8s-cpu": ("gguf", "k8s", "cpu-node-32gb", ["--image", LLAMA_IMAGE, "--context", "2048"],
                     {"deployment", "service", "poddisruptionbudget"}),
    "vllm-kserve": ("vllm", "kserve", "2x-l40s", ["--replicas", "3", "--slots", "8"],
                    {"inferenceservice", "llminferenceservice"}),
    "vllm-k8s": ("vllm", "k8s", "1x-l4", ["--image", VLLM_IMAGE], {"deployment", "service", "poddisruptionbudget"}),
}


@pytest.fixture(scope="module")
def deployed(reg, artifacts, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """Each case through the command line, the modelcar pushed to the real registry."""
    from edgeport.benchmarking.registry import PASSWORD, USER

    root = tmp_path_factory.mktemp("deployed")
    done = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEPORT_REGISTRY_USER", USER)
        mp.setenv("EDGEPORT_REGISTRY_PASSWORD", PASSWORD)
        for name, (kind, to, device, extra, _) in CASES.items():
            car = f"oci://{reg.host}/edgeport/{kind}:car"
            r = _deploy(["--artifact", str(artifacts[kind]), "--to", to, "--device", device, "--modelcar", car,
                         *extra], root / name)
            assert r.returncode == 0, f"{name}: {r.stderr[-3000:]}"
            storage = re.search(r"^modelcar: (oci://\S+)$", r.stdout, re.M)[1]
            done[name] = (root / name, storage)
    return done


@pytest.mark.parametrize("case", CASES)
def test_deploy_manifests_validate(deployed, case):
    """Acceptance 1: each manifest passes its schema (Kubernetes built-ins: kubernetes-validate,
    strict; KServe kinds: the vendored v0.20.0 CRD schemas, strict). Images and the modelcar by
    digest, the API key only as a Secret reference, probes on /health."""
    from edgeport.deploying.validate import validate

    out, storage = deployed[case]
    objs = _load(out)
    assert set(objs) == CASES[case][4]
    for o in objs.values():
        checked = validate(o)
        assert ("KServe v0.20.0" in checked) == o["apiVersion"].startswith("serving.kserve.io"), checked
    text = "\n".join(p.read_text() for p in out.glob("*.yaml"))
    assert "&id" not in text  # plain YAML, no anchors
    assert re.fullmatch(r"oci://127\.0\.0\.1:\d+/edgeport/\w+@sha256:[0-9a-f]{64}", storage)
    assert storage in text or storage.removeprefix("oci://") in text
    images = re.findall(r"\bimage: (\S+)", text) + re.findall(r"\breference: (\S+)", text)
    assert all(re.search(r"@sha256:[0-9a-f]{64}$", i) for i in images), images
    assert images or case == "vllm-kserve"  # KServe's runtimes and llm-d's template bring their images
    assert "secretKeyRef" in text
    for o in objs.values():
        for c in _containers(o):
            for probe in ("readinessProbe", "livenessProbe"):
                if probe in c:
                    assert c[probe]["httpGet"]["path"] == "/health"
            for e in c.get("env", []):
                assert "value" not in e or "KEY" not in e["name"], e  # never a key's value


def _containers(o: dict) -> list[dict]:
    spec = o["spec"]
    if o["kind"] == "ServingRuntime":
        return spec["containers"]
    if o["kind"] == "Deployment":
        return spec["template"]["spec"]["containers"]
    if o["kind"] == "LLMInferenceService":
        return spec["template"]["containers"]
    if o["kind"] == "InferenceService":
        return [spec["predictor"]["model"]]
    return []


def _planned_gguf(artifact: Path, device: str, context: int | None, slots: int) -> memory.Plan:
    from edgeport.export.pipeline import source_location

    m = json.loads((artifact / "manifest.json").read_text())
    return memory.plan_for(model.load(source_location(m)), devices.load(device), m["target"], context, slots,
                           m["quantization"]["requested"], llama_server=True)


def _mib(n: int) -> str:
    return f"{-(-n // MIB)}Mi"


def test_sizing_equals_the_planner(deployed, artifacts):
    """Acceptance 3: memory, GPUs and the engine options in the manifests are the planner's
    answer for the named device, recomputed here from `plan` itself."""
    # llama-server on 1x-l4, 4 slots: ServingRuntime args and InferenceService resources
    p = _planned_gguf(artifacts["gguf"], "1x-l4", None, 4)
    objs = _load(deployed["gguf-kserve-gpu"][0])
    need = sum(x.need for x in p.pools.values())
    res = objs["inferenceservice"]["spec"]["predictor"]["model"]["resources"]
    assert res == {"requests": {"memory": _mib(need), "nvidia.com/gpu": 1},
                   "limits": {"memory": _mib(need + p.headroom), "nvidia.com/gpu": 1}}
    args = objs["servingruntime"]["spec"]["containers"][0]["args"]
    assert _opt(args, "--ctx-size") == str(p.context * 4) and _opt(args, "--parallel") == "4"
    assert _opt(args, "--n-gpu-layers") == "99" and _opt(args, "--flash-attn") == "on"
    assert objs["inferenceservice"]["spec"]["predictor"]["minReplicas"] == 2
    # llama-server on a CPU node, 2048 tokens: no GPU, RAM as planned
    p = _planned_gguf(artifacts["gguf"], "cpu-node-32gb", 2048, 1)
    c = _load(deployed["gguf-k8s-cpu"][0])["deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"] == {"requests": {"memory": _mib(p.pools["ram"].need)},
                              "limits": {"memory": _mib(p.pools["ram"].usable)}}
    assert _opt(c["args"], "--ctx-size") == "2048" and _opt(c["args"], "--n-gpu-layers") == "0"
    # vLLM on 2x-l40s, 8 sequences: the layout's per-GPU plan times the pod's GPUs
    lay = parallel.layout_for(model.load(str(artifacts["vllm"])), devices.load("2x-l40s"), None, 8)
    gpu = lay.plan.pools["gpu"]
    objs = _load(deployed["vllm-kserve"][0])
    want = {"requests": {"memory": _mib(gpu.need * lay.tensor), "nvidia.com/gpu": lay.tensor},
            "limits": {"memory": _mib(gpu.usable * lay.tensor), "nvidia.com/gpu": lay.tensor}}
    isvc = objs["inferenceservice"]["spec"]["predictor"]
    assert isvc["model"]["resources"] == want and isvc["minReplicas"] == isvc["maxReplicas"] == 3
    assert _opt(isvc["model"]["args"], "--tensor-parallel-size") == str(lay.tensor)
    assert _opt(isvc["model"]["args"], "--max-model-len") == str(lay.plan.context)
    assert _opt(isvc["model"]["args"], "--max-num-seqs") == "8"
    llm = objs["llminferenceservice"]["spec"]
    assert llm["template"]["containers"][0]["resources"] == want and llm["replicas"] == 3
    assert llm["router"] == {"scheduler": {}, "route": {}, "gateway": {}}
    plan_json = json.loads((deployed["vllm-kserve"][0] / "plan.json").read_text())
    assert plan_json["tensor_parallel_size"] == lay.tensor and plan_json["reason"] == lay.reason


def _opt(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def _render_120b(device: str, to: str, replicas: int = 1):
    from edgeport.deploying import deploy as d
    from edgeport.deploying import sizing

    s = sizing.vllm(model.load(G120), devices.load(device), None, 1)
    storage = "oci://registry.example/models/gpt-oss-120b@sha256:" + hashlib.sha256(b"gpt-oss-120b").hexdigest()
    return d.render(to, s, name="gpt-oss-120b-vllm", storage=storage, replicas=replicas, served="gpt-oss-120b",
                       secret="gpt-oss-120b-api-key", image=VLLM_IMAGE, model_file=".")


@pytest.mark.parametrize("device, tp", [("2x-l40s", 2), ("4x-l4", 4)])
def test_gpt_oss_120b_one_node_manifests(device, tp):
    """gpt-oss-120b on one 2xL40S or 4xL4 node: tensor parallel over the node's GPUs in every
    object, memory the planner's per-GPU need times the GPUs, the reason recorded, all valid."""
    from edgeport.deploying.validate import validate

    objs, notes = _render_120b(device, "kserve", replicas=2)
    isvc, llm = objs
    lay = parallel.layout_for(model.load(G120), devices.load(device))
    gpu = lay.plan.pools["gpu"]
    want = {"requests": {"memory": _mib(gpu.need * tp), "nvidia.com/gpu": tp},
            "limits": {"memory": _mib(gpu.usable * tp), "nvidia.com/gpu": tp}}
    assert isvc["spec"]["predictor"]["model"]["resources"] == want  # the planner's per-GPU answer x GPUs
    assert _opt(isvc["spec"]["predictor"]["model"]["args"], "--tensor-parallel-size") == str(tp)
    assert llm["spec"]["parallelism"] == {"tensor": tp}
    assert llm["spec"]["template"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == tp
    assert f"tensor parallel {tp}" in isvc["metadata"]["annotations"]["edgeport.dev/plan"]
    assert f"tensor parallel {tp}" in notes[0]
    k8s_objs, _ = _render_120b(device, "k8s")
    for o in [*objs, *k8s_objs]:
        validate(o)


def test_gpt_oss_120b_multi_node_manifests():
    """On 1xL4 nodes the plan needs 4 of them: KServe's multi-node runtime with workerSpec
    (pipeline parallel 4, tensor parallel 1), autoscaling off as its webhook requires; no
    LLMInferenceService and no plain Deployment (both refused or left out, saying why)."""
    from edgeport.deploying import DeployError
    from edgeport.deploying.validate import validate

    objs, notes = _render_120b("1x-l4", "kserve")
    assert [o["kind"] for o in objs] == ["InferenceService"]
    pred = objs[0]["spec"]["predictor"]
    assert pred["workerSpec"]["pipelineParallelSize"] == 4 and pred["workerSpec"]["tensorParallelSize"] == 1
    assert pred["model"]["runtime"] == "kserve-huggingfaceserver-multinode"
    assert "--tensor-parallel-size" not in pred["model"]["args"]  # the runtime takes it from workerSpec
    assert objs[0]["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "none"
    assert pred["model"]["storageUri"].startswith("oci://")  # the webhook takes oci:// or pvc:// only
    gpu = parallel.layout_for(model.load(G120), devices.load("1x-l4")).plan.pools["gpu"]
    for res in (pred["model"]["resources"], pred["workerSpec"]["containers"][0]["resources"]):
        assert res == {"requests": {"memory": _mib(gpu.need), "nvidia.com/gpu": 1},
                       "limits": {"memory": _mib(gpu.usable), "nvidia.com/gpu": 1}}
    assert any("LLMInferenceService" in n for n in notes)
    validate(objs[0])
    with pytest.raises(DeployError, match="pipeline parallel 4"):
        _render_120b("1x-l4", "k8s")
    with pytest.raises(DeployError, match="--replicas 1"):
        _render_120b("1x-l4", "kserve", replicas=2)


# one wrong field type per schema: a string where an integer goes, an integer where a string goes
WRONG = [
    ("ServingRuntime", lambda o: o["spec"]["containers"][0].update(image=7), "gguf-kserve-gpu", "servingruntime"),
    ("InferenceService", lambda o: o["spec"]["predictor"].update(minReplicas="two"), "gguf-kserve-gpu",
     "inferenceservice"),
    ("LLMInferenceService", lambda o: o["spec"].update(replicas="three"), "vllm-kserve", "llminferenceservice"),
    ("Deployment", lambda o: o["spec"].update(replicas="one"), "gguf-k8s-cpu", "deployment"),
    ("Service", lambda o: o["spec"]["ports"][0].update(port="eighty"), "gguf-k8s-cpu", "service"),
    ("PodDisruptionBudget", lambda o: o["spec"].update(selector="app"), "gguf-k8s-cpu", "poddisruptionbudget"),
]


@pytest.mark.parametrize("kind, break_it, case, file", WRONG, ids=[w[0] for w in WRONG])
def test_each_schema_refuses_a_wrong_field_type(deployed, kind, break_it, case, file):
    """The validation can fail: the same manifest that passed, with one field of the wrong type,
    is refused, naming the field; an unknown field is refused too (strict)."""
    from edgeport.deploying import DeployError
    from edgeport.deploying.validate import validate

    good = _load(deployed[case][0])[file]
    assert good["kind"] == kind
    validate(good)
    bad = copy.deepcopy(good)
    break_it(bad)
    with pytest.raises(DeployError, match=kind):
        validate(bad)
    typo = copy.deepcopy(good)
    typo["spec"]["replicaz"] = 2
    with pytest.raises(DeployError):
        validate(typo)


def test_deploy_from_a_registry_uri(reg, artifacts, creds, tmp_path):
    """--from: the artifact pulled (verified) from where `push` put it, then deployed; the
    modelcar it pushes holds the same files."""
    from edgeport.publishing import transfer

    src = transfer.push(artifacts["gguf"], f"oci://{reg.host}/edgeport/from:v1", insecure=True, force=True)
    r = _deploy(["--from", src, "--to", "k8s", "--device", "cpu-node-32gb", "--image", LLAMA_IMAGE,
                 "--modelcar", f"oci://{reg.host}/edgeport/from:v1-modelcar"], tmp_path / "out")
    assert r.returncode == 0, r.stderr
    storage = re.search(r"^modelcar: (oci://\S+)$", r.stdout, re.M)[1]
    dep = _load(tmp_path / "out")["deployment"]
    assert dep["spec"]["template"]["spec"]["volumes"][0]["image"]["reference"] == storage.removeprefix("oci://")
    out, _ = transfer.pull(storage, tmp_path / "car", insecure=True)
    assert _tree(out) == _tree(artifacts["gguf"])


def test_deploy_refuses_a_tag_only_image_and_a_model_that_does_not_fit(reg, artifacts, creds, tmp_path):
    """One line, exit 2, nothing written or pushed: a server image by tag, gpt-oss-120b planned
    onto a CPU node with vLLM, and its four-node layout asked of a plain Deployment."""
    car = f"oci://{reg.host}/edgeport/refused:car"
    r = _deploy(["--artifact", str(artifacts["gguf"]), "--to", "k8s", "--device", "1x-l4", "--modelcar", car,
                 "--image", "ghcr.io/ggml-org/llama.cpp:server-cuda"], tmp_path / "a")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "by digest" in lines[0], r.stderr
    r = _deploy(["--artifact", str(artifacts["vllm"]), "--to", "kserve", "--device", "cpu-node-32gb", "--modelcar",
                 car, "--model", "gpt-oss-120b"], tmp_path / "b")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "discrete-GPU" in lines[0], r.stderr
    r = _deploy(["--artifact", str(artifacts["vllm"]), "--to", "k8s", "--device", "1x-l4", "--modelcar", car,
                 "--model", "gpt-oss-120b", "--image", VLLM_IMAGE], tmp_path / "c")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "spans 4 nodes" in lines[0], r.stderr
    assert not any((tmp_path / d).exists() for d in "abc")
    from edgeport.benchmarking.registry import PASSWORD, USER

    ref = f"http://{reg.host}/v2/edgeport/refused/manifests/car"
    assert requests.get(ref, auth=(USER, PASSWORD), timeout=10).status_code == 404
