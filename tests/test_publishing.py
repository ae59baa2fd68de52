"""Publishing (`invoke push` / `invoke pull`), all real: a real OCI distribution registry
(Debian's docker-registry, bcrypt htpasswd auth, edgeport/benchmarking/registry.py), OCI image layouts on disk,
and Hugging Face Hub stand-ins that record or serve exactly what HfApi would be asked for.

What is checked:
1. round trips are byte-identical (registry with auth, file://), through the CLI and the API,
   with normal permissions and the Jetson kit's scripts still executable;
2. what lands in the registry is what Docker Model Runner (GGUF) and the CNCF ModelPack spec
   (everything else) define, field by field, read back over the registry's HTTP API; a file://
   layout is a valid OCI image layout (also to oras-py's own layout reader);
3. every refusal is one line on stderr, a non-zero exit, and nothing at --out;
4. the Hub model card and the Hub commit / pull;
5. no secret (HF_TOKEN, the registry password, its Basic-auth form) leaks into output, files,
   manifests, registry storage or layouts (the Hub commit and card: tests/test_hub_commit.py,
   through the real huggingface_hub client).
"""

from __future__ import annotations

import base64
import copy
import filecmp
import fnmatch
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from edgeport.benchmarking.registry import PASSWORD, USER, LocalRegistry, free_port

ROOT = Path(__file__).resolve().parent.parent

GGUF_CASE = "cpu-gpt-oss"
MODELPACK_CASES = ["vllm-gpt-oss", "onnx-llama-int8", "jetson-llama-int8"]
ALL_CASES = [GGUF_CASE, *MODELPACK_CASES]

HF_SECRET = "hf_edgeportTESTSECRET123"
WRONG_PASSWORD = "wr0ng-SECRET-registry-pw"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

# --- Docker Model Runner (github.com/docker/model-runner @642c721) -------------------------------
# pkg/distribution/types/config.go: MediaTypeModelConfigV01, MediaTypeGGUF, MediaTypeChatTemplate,
# and the annotation keys (identical to model-spec's specs-go/v1/annotations.go)
DMR_CONFIG_V01 = "application/vnd.docker.ai.model.config.v0.1+json"
DMR_GGUF = "application/vnd.docker.ai.gguf.v3"
DMR_CHAT_TEMPLATE = "application/vnd.docker.ai.chat.template.jinja"
DMR_FILE = "application/vnd.docker.ai.model.file"
A_FILEPATH = "org.cncf.model.filepath"
A_METADATA = "org.cncf.model.file.metadata+json"
A_UNTESTED = "org.cncf.model.file.mediatype.untested"
# internal/partial/layer.go NewLayer: FileMetadata{name, mode, uid, gid, size, mtime, typeflag}
METADATA_KEYS = {"name", "mode", "uid", "gid", "size", "mtime", "typeflag"}

# --- CNCF ModelPack (github.com/modelpack/model-spec; DMR pins v0.0.7) ----------------------------
# specs-go/v1/mediatype.go
MP_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
MP_CONFIG = "application/vnd.cncf.model.config.v1+json"
MP_WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
MP_RAW_TYPES = {MP_WEIGHT, "application/vnd.cncf.model.weight.config.v1.raw",
                "application/vnd.cncf.model.doc.v1.raw", "application/vnd.cncf.model.code.v1.raw"}
# schema/config-schema.json (v0.0.7, as summarised in /tmp/research/formats.md B.2): every
# object has additionalProperties: false, so these are the only keys allowed anywhere
MP_TOP_KEYS = {"descriptor", "config", "modelfs"}
MP_DESCRIPTOR_KEYS = {"createdAt", "authors", "family", "name", "docURL", "sourceURL", "datasetsURL", "version",
                      "revision", "vendor", "licenses", "title", "description"}
MP_CONFIG_KEYS = {"architecture", "format", "paramSize", "precision", "quantization", "capabilities"}
_STR, _STRS = {"type": "string"}, {"type": "array", "items": {"type": "string"}}
MP_CONFIG_SCHEMA = {  # the same schema as JSON Schema, to validate the whole config with jsonschema
    "type": "object", "additionalProperties": False, "required": ["descriptor", "config", "modelfs"],
    "properties": {
        "descriptor": {"type": "object", "additionalProperties": False, "properties": {
            "createdAt": {"type": "string", "format": "date-time"}, "authors": _STRS, "family": _STR,
            "name": {"type": "string", "minLength": 1}, "docURL": _STR, "sourceURL": _STR, "datasetsURL": _STRS,
            "version": _STR, "revision": _STR, "vendor": _STR, "licenses": _STRS, "title": _STR,
            "description": _STR}},
        "config": {"type": "object", "additionalProperties": False, "properties": {
            "architecture": _STR, "format": _STR, "paramSize": _STR, "precision": _STR, "quantization": _STR,
            "capabilities": {"type": "object", "additionalProperties": False, "properties": {
                "inputTypes": _STRS, "outputTypes": _STRS, "knowledgeCutoff": _STR, "reasoning": {"type": "boolean"},
                "toolUsage": {"type": "boolean"}, "reward": {"type": "boolean"}, "languages": _STRS}}}},
        "modelfs": {"type": "object", "additionalProperties": False, "required": ["type", "diffIds"], "properties": {
            "type": {"type": "string", "enum": ["layers"]}, "diffIds": {**_STRS, "minItems": 1}}},
    },
}

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
BINARY_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def sha256_file(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def current_umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def registry_env(password: str | None = PASSWORD, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEPORT_REGISTRY_USER", "EDGEPORT_REGISTRY_PASSWORD")}
    if password is not None:
        env.update(EDGEPORT_REGISTRY_USER=USER, EDGEPORT_REGISTRY_PASSWORD=password)
    env.update(extra)
    return env


def cli(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """`invoke ARGS` as a user runs it, under umask 022."""
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env or registry_env(),
                          capture_output=True, text=True, timeout=timeout, umask=0o022)


def assert_ok(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"


def assert_one_line_error(r: subprocess.CompletedProcess, *fragments: str, code: int | None = None) -> str:
    """Refused the way the CLI promises: a non-zero exit and exactly one non-empty stderr line,
    `edgeport: error: ...` (no traceback, no progress lines)."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0, f"expected a refusal, got exit 0\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    if code is not None:
        assert r.returncode == code, r.stderr
    assert len(lines) == 1 and lines[0].startswith("edgeport: error:"), f"stderr:\n{r.stderr}"
    for f in fragments:
        assert f.lower() in lines[0].lower(), lines[0]
    return lines[0]


def assert_nothing_at(out: Path) -> None:
    """Nothing at --out, and nothing left beside it (no `.partial` staging dir, no temp dir)."""
    assert not out.exists(), f"{out} exists after a refused pull"
    assert list(out.parent.iterdir()) == [], f"left behind: {list(out.parent.iterdir())}"


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() + ("/" if p.is_dir() else "") for p in root.rglob("*"))


def assert_same_tree(a: Path, b: Path) -> None:
    """Same paths, same bytes (filecmp with shallow=False reads both files), recursively."""
    assert tree(a) == tree(b)

    def walk(cmp: filecmp.dircmp) -> None:
        assert not cmp.left_only and not cmp.right_only and not cmp.funny_files, cmp.report()
        _, mismatch, errors = filecmp.cmpfiles(cmp.left, cmp.right, cmp.common_files, shallow=False)
        assert not mismatch and not errors, (cmp.left, mismatch, errors)
        for sub in cmp.subdirs.values():
            walk(sub)

    walk(filecmp.dircmp(a, b))


def executables(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.stat().st_mode & 0o100}


def assert_normal_modes(root: Path, executable: set[str], mask: int) -> None:
    """Directories and the listed executables 0o777 & ~umask, every other file 0o666 & ~umask
    (0o755 / 0o644 under umask 022): never mkdtemp's 0700 nor mkstemp's 0600."""
    for p in [root, *root.rglob("*")]:
        rel = p.relative_to(root).as_posix()
        want = 0o777 & ~mask if p.is_dir() or rel in executable else 0o666 & ~mask
        assert stat.S_IMODE(p.stat().st_mode) == want, f"{rel}: {oct(stat.S_IMODE(p.stat().st_mode))} != {oct(want)}"


def assert_rfc3339(s) -> None:
    assert isinstance(s, str) and RFC3339.match(s), f"not RFC 3339: {s!r}"
    datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))


def listed_sha(artifact: Path) -> dict[str, tuple[int, str]]:
    m = json.loads((artifact / "manifest.json").read_text())
    return {f["path"]: (f["bytes"], f["sha256"]) for f in m["files"]}


class Registry:
    """Reads what the registry holds over its HTTP API (plain requests, Basic auth)."""

    def __init__(self, reg: LocalRegistry):
        self.reg, self.auth = reg, (USER, PASSWORD)

    def url(self, repo: str, kind: str, ref: str) -> str:
        return f"http://{self.reg.host}/v2/{repo}/{kind}/{ref}"

    def manifest(self, repo: str, tag: str) -> tuple[dict, requests.Response]:
        r = requests.get(self.url(repo, "manifests", tag), auth=self.auth, headers={"Accept": OCI_MANIFEST}, timeout=30)
        r.raise_for_status()
        return json.loads(r.content), r

    def has_manifest(self, repo: str, tag: str) -> bool:
        r = requests.get(self.url(repo, "manifests", tag), auth=self.auth, headers={"Accept": OCI_MANIFEST}, timeout=30)
        assert r.status_code in (200, 404), r.status_code
        return r.status_code == 200

    def blob(self, repo: str, digest: str) -> bytes:
        r = requests.get(self.url(repo, "blobs", digest), auth=self.auth, timeout=30)
        r.raise_for_status()
        assert "sha256:" + hashlib.sha256(r.content).hexdigest() == digest
        return r.content

    def blob_size(self, repo: str, digest: str) -> int:
        r = requests.head(self.url(repo, "blobs", digest), auth=self.auth, timeout=30)
        assert r.status_code == 200, (digest, r.status_code)
        return int(r.headers["Content-Length"])


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reg():
    with LocalRegistry() as r:  # raises RuntimeError if docker-registry / htpasswd are missing
        yield r


@pytest.fixture(scope="module")
def api(reg) -> Registry:
    return Registry(reg)


def repo_of(case: str) -> str:
    return f"edgeport/{case}"


@pytest.fixture(scope="module")
def pushed(reg, exported) -> dict[str, str]:
    """Every case pushed to oci://<registry>/edgeport/<case>:v1 with auth on: the GGUF through
    the CLI (`invoke push --insecure`), the others through publishing.transfer.push."""
    from edgeport.publishing import transfer

    uris = {case: f"oci://{reg.host}/{repo_of(case)}:v1" for case in ALL_CASES}
    r = cli("push", "--artifact", str(exported(GGUF_CASE)[0]), "--to", uris[GGUF_CASE], "--insecure")
    assert_ok(r)
    assert re.search(rf"pushed oci://{re.escape(reg.host)}/{repo_of(GGUF_CASE)}@sha256:[0-9a-f]{{64}}", r.stdout)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEPORT_REGISTRY_USER", USER)
        mp.setenv("EDGEPORT_REGISTRY_PASSWORD", PASSWORD)
        for case in MODELPACK_CASES:
            pinned = transfer.push(exported(case)[0], uris[case], insecure=True)
            assert pinned.startswith(f"oci://{reg.host}/{repo_of(case)}@sha256:")
    return uris


@pytest.fixture
def creds(monkeypatch):
    monkeypatch.setenv("EDGEPORT_REGISTRY_USER", USER)
    monkeypatch.setenv("EDGEPORT_REGISTRY_PASSWORD", PASSWORD)


# ---------------------------------------------------------------------------------------------
# 1. byte-identical round trips, permissions
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ALL_CASES)
def test_exported_artifact_has_normal_permissions(exported, case):
    """The export staging dir (mkdtemp, 0700) must not leak into the artifact: dirs and the
    Jetson kit's scripts 0o777 & ~umask, other files 0o666 & ~umask."""
    path, _ = exported(case)
    exe = executables(path)
    assert exe == ({"build_engine.sh", "run.sh"} if case.startswith("jetson") else set())
    assert_normal_modes(path, exe, current_umask())


@pytest.mark.parametrize("case", ALL_CASES)
def test_registry_round_trip_is_byte_identical(reg, pushed, exported, case, tmp_path, creds):
    """push (above) then pull from the real registry (auth on): the same files, byte for byte;
    normal permissions; the kit's *.sh still executable. The GGUF goes through `invoke pull`."""
    from edgeport.publishing import transfer

    artifact = exported(case)[0]
    out = tmp_path / "pulled"
    if case == GGUF_CASE:
        r = cli("pull", "--from", pushed[case], "--out", str(out), "--insecure")
        assert_ok(r)
        assert re.search(rf"pulled oci://{re.escape(reg.host)}/{repo_of(case)}@sha256:[0-9a-f]{{64}} -> ", r.stdout)
        mask = 0o022
    else:
        path, pinned = transfer.pull(pushed[case], out, insecure=True)
        assert path == out and pinned.startswith(f"oci://{reg.host}/{repo_of(case)}@sha256:")
        mask = current_umask()
    assert_same_tree(artifact, out)
    want_exe = {p for p in listed_sha(artifact) if p.endswith(".sh")}
    assert executables(out) == want_exe, "the kit's scripts must stay executable after a pull"
    assert_normal_modes(out, want_exe, mask)
    assert sorted(os.listdir(tmp_path)) == ["pulled"]  # no staging dir left beside it


@pytest.mark.parametrize("case", [GGUF_CASE, "jetson-llama-int8"])
def test_layout_round_trip_is_byte_identical(exported, case, tmp_path):
    """file:// (an OCI image layout): push then pull, byte for byte, two tags in one layout; the
    Jetson kit through the CLI (executable bits restored), the GGUF through the API."""
    from edgeport.publishing import transfer

    artifact = exported(case)[0]
    layout = tmp_path / "layout"
    out = tmp_path / "dest" / "pulled"
    (tmp_path / "dest").mkdir()
    other = exported(GGUF_CASE if case != GGUF_CASE else "jetson-llama-int8")[0]
    transfer.push(other, f"file://{layout}:other")  # a second tag in the same layout
    if case.startswith("jetson"):
        assert_ok(cli("push", "--artifact", str(artifact), "--to", f"file://{layout}:v1"))
        assert_ok(cli("pull", "--from", f"file://{layout}:v1", "--out", str(out)))
        mask = 0o022
    else:
        transfer.push(artifact, f"file://{layout}:v1")
        transfer.pull(f"file://{layout}:v1", out)
        mask = current_umask()
    assert_same_tree(artifact, out)
    want_exe = {p for p in listed_sha(artifact) if p.endswith(".sh")}
    assert executables(out) == want_exe
    assert_normal_modes(out, want_exe, mask)
    assert os.listdir(out.parent) == ["pulled"]
    assert_valid_layout(layout, {"v1": artifact, "other": other})


def assert_valid_layout(layout: Path, tags: dict[str, Path]) -> None:
    """OCI image-layout spec: `oci-layout` {"imageLayoutVersion": "1.0.0"}, index.json an image
    index whose manifests carry the tag in org.opencontainers.image.ref.name, every blob at
    blobs/sha256/<hex> holding bytes with that sha256, every referenced blob present; and oras-py's
    own layout reader (oras.layout) accepts it and finds every blob of every tag."""
    import oras.layout

    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert index["schemaVersion"] == 2 and index["mediaType"] == OCI_INDEX
    by_tag = {d["annotations"]["org.opencontainers.image.ref.name"]: d for d in index["manifests"]}
    assert set(by_tag) == set(tags) and len(index["manifests"]) == len(tags)
    blobs = layout / "blobs" / "sha256"
    assert sorted(p.name for p in layout.iterdir()) == ["blobs", "index.json", "oci-layout"]
    for p in blobs.iterdir():  # no temp files left, every blob content-addressed
        assert re.fullmatch(r"[0-9a-f]{64}", p.name), p.name
        assert sha256_file(p) == p.name
    for tag, artifact in tags.items():
        d = by_tag[tag]
        assert d["mediaType"] == OCI_MANIFEST
        mblob = blobs / d["digest"].removeprefix("sha256:")
        assert mblob.stat().st_size == d["size"]
        manifest = json.loads(mblob.read_bytes())
        assert manifest["mediaType"] == OCI_MANIFEST
        referenced = [manifest["config"], *manifest["layers"]]
        for desc in referenced:
            p = blobs / desc["digest"].removeprefix("sha256:")
            assert p.is_file() and p.stat().st_size == desc["size"]
        assert {ly["annotations"][A_FILEPATH] for ly in manifest["layers"]} == {*listed_sha(artifact), "manifest.json"}
        # a second consumer: oras-py validates the layout and walks the tag's manifest
        lay = oras.layout.NewLayout(str(layout), validate=True)
        ordered = lay.get_ordered_blobs(tag)
        assert set(ordered) == {x["digest"] for x in referenced} | {d["digest"]}
        assert all(lay.blob_exists(dg) for dg in ordered)


# ---------------------------------------------------------------------------------------------
# 2. OCI manifests and configs, field by field
# ---------------------------------------------------------------------------------------------
def check_layers(manifest: dict, artifact: Path, created: str) -> None:
    """Every layer: one file of the artifact, raw, its digest the sha256 manifest.json lists
    (manifest.json's own layer: its file's sha256), annotated as DMR's partial.NewLayer and
    modctl annotate theirs (org.cncf.model.filepath / file.metadata+json / mediatype.untested)."""
    files = listed_sha(artifact)
    files["manifest.json"] = ((artifact / "manifest.json").stat().st_size, sha256_file(artifact / "manifest.json"))
    exe = executables(artifact)
    seen = []
    for layer in manifest["layers"]:
        ann = layer["annotations"]
        path = ann[A_FILEPATH]
        seen.append(path)
        size, sha = files[path]
        assert layer["digest"] == f"sha256:{sha}" and layer["size"] == size, path
        assert sha256_file(artifact / path) == sha, path
        meta = json.loads(ann[A_METADATA])
        assert set(meta) == METADATA_KEYS, meta
        assert meta["name"] == Path(path).name and meta["size"] == layer["size"]
        assert meta["mode"] == (0o755 if path in exe else 0o644), (path, oct(meta["mode"]))
        assert meta["uid"] == 0 and meta["gid"] == 0 and meta["typeflag"] == 0
        assert_rfc3339(meta["mtime"])
        assert meta["mtime"] == created
        assert ann[A_UNTESTED] == "false"
    assert sorted(seen) == sorted(files), "one layer per file, manifest.json included"


def test_gguf_manifest_and_config_are_docker_model_runner_v01(api, pushed, exported):
    """The GGUF artifact as Docker Model Runner reads it (model-runner @642c721):
    - distribution/client.go checkCompat: an OCI image manifest (remote.go parses the tag's
      descriptor as oci.Manifest: no index), config type v0.1;
    - types/config.go ConfigFile{config, descriptor, rootfs}, every Config field a string but
      context_size (*int32), gguf map[string]string; format/gguf.go for the values (size = the
      GGUF file in binary units, arrays > 50 elements skipped);
    - builder.go: rootfs.type "rootfs", diff_ids[i] == layers[i].digest (store/blobs.go
      re-hashes each blob against its diff_id);
    - internal/partial/partial.go GGUFPaths: GGUF layers found by media type, in manifest order."""
    import gguf

    artifact, m = exported(GGUF_CASE)
    repo = repo_of(GGUF_CASE)
    manifest, resp = api.manifest(repo, "v1")
    assert resp.headers["Content-Type"] == OCI_MANIFEST
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == OCI_MANIFEST
    assert "manifests" not in manifest, "an image index: DMR does not follow indexes"
    assert "artifactType" not in manifest  # partial.BaseModel leaves it empty (omitempty)
    assert manifest["config"]["mediaType"] == DMR_CONFIG_V01
    raw = api.blob(repo, manifest["config"]["digest"])
    assert len(raw) == manifest["config"]["size"]
    cfg = json.loads(raw)
    assert set(cfg) == {"config", "descriptor", "rootfs"}
    layers = manifest["layers"]
    for ly in layers:
        assert api.blob_size(repo, ly["digest"]) == ly["size"]

    # rootfs: builder.go fromFormat; diff_id == digest of the raw layer, same order and count
    assert cfg["rootfs"] == {"type": "rootfs", "diff_ids": [ly["digest"] for ly in layers]}
    # descriptor: types.Descriptor{Created *time.Time} -> RFC 3339
    assert set(cfg["descriptor"]) == {"created"}
    assert_rfc3339(cfg["descriptor"]["created"])

    # layers: GGUF first (and the only GGUF), exactly one chat template
    gguf_files = [p for p in listed_sha(artifact) if p.endswith(".gguf") and p != "imatrix.gguf"]
    assert len(gguf_files) == 1
    # the importance matrix ships as a plain file: DMR loads every GGUF layer as a model shard
    assert [ly["mediaType"] for ly in layers if ly["annotations"][A_FILEPATH] == "imatrix.gguf"] == [DMR_FILE]
    assert layers[0]["mediaType"] == DMR_GGUF and layers[0]["annotations"][A_FILEPATH] == gguf_files[0]
    assert [ly["mediaType"] for ly in layers].count(DMR_GGUF) == 1
    assert (artifact / "chat_template.jinja").is_file(), "GGUF artifacts ship chat_template.jinja"
    templates = [ly for ly in layers if ly["mediaType"] == DMR_CHAT_TEMPLATE]
    assert [ly["annotations"][A_FILEPATH] for ly in templates] == ["chat_template.jinja"]
    check_layers(manifest, artifact, m["created"])

    # config: types.Config, values as format/gguf.go computes them
    c = cfg["config"]
    assert set(c) <= {"format", "quantization", "parameters", "architecture", "size", "gguf", "safetensors",
                      "diffusers", "context_size"}
    assert c["format"] == "gguf"
    assert c["quantization"] == "Q4_K_M"
    for key in ("quantization", "parameters", "architecture", "size"):
        assert isinstance(c[key], str), key
    gpath = artifact / gguf_files[0]
    reader = gguf.GGUFReader(str(gpath))
    arch_field = reader.fields["general.architecture"]
    arch = bytes(arch_field.parts[arch_field.data[0]]).decode()
    assert c["architecture"] == arch == "gpt-oss"
    # parameters: normalizeUnitString(gguf-parser's Parameters): "<n>[.dd]<K|M|B|T>", no space
    hit = re.fullmatch(r"(\d+(?:\.\d+)?)([KMBT]?)", c["parameters"])
    assert hit, c["parameters"]
    n_params = sum(int(t.n_elements) for t in reader.tensors)
    scale = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}[hit[2]]
    assert abs(float(hit[1]) * scale - n_params) <= 0.01 * n_params, (c["parameters"], n_params)
    # size: the GGUF file's bytes in binary units, no space ("864B", "256.35MiB")
    hit = re.fullmatch(r"(\d+(?:\.\d+)?)(B|KiB|MiB|GiB)", c["size"])
    assert hit, c["size"]
    value, unit, nbytes = float(hit[1]), BINARY_UNITS[hit[2]], gpath.stat().st_size
    if unit == 1:
        assert value == nbytes and nbytes < 1024
    else:
        assert 1 <= value < 1024 and abs(value * unit - nbytes) <= 0.006 * unit, (c["size"], nbytes)
    # gguf: map[string]string of the header, arrays longer than 50 left out
    g = c["gguf"]
    assert isinstance(g, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in g.items())
    assert g["general.architecture"] == arch
    assert "tokenizer.ggml.tokens" not in g
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        long_array = field.types[0] == gguf.GGUFValueType.ARRAY and len(field.data) > 50
        assert (name in g) != long_array, name
    if "context_size" in c:  # *int32: a JSON number, never a string
        assert type(c["context_size"]) is int and 0 < c["context_size"] <= 2**31 - 1
        assert c["context_size"] == int(g[f"{arch}.context_length"])


@pytest.mark.parametrize("case", MODELPACK_CASES)
def test_modelpack_manifest_and_config(api, pushed, exported, case):
    """Non-GGUF artifacts as CNCF ModelPack (modelpack/model-spec docs/spec.md,
    specs-go/v1/mediatype.go, schema/config-schema.json): OCI manifest with artifactType
    application/vnd.cncf.model.manifest.v1+json, config application/vnd.cncf.model.config.v1+json
    holding exactly {descriptor, config, modelfs} with only the schema's keys, modelfs.diffIds =
    the raw layers' digests in order (docs/config.md; DMR requires it), raw layers only."""
    import jsonschema

    artifact, m = exported(case)
    repo = repo_of(case)
    manifest, resp = api.manifest(repo, "v1")
    assert resp.headers["Content-Type"] == OCI_MANIFEST
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == OCI_MANIFEST
    assert manifest["artifactType"] == MP_ARTIFACT
    assert manifest["config"]["mediaType"] == MP_CONFIG
    raw = api.blob(repo, manifest["config"]["digest"])
    assert len(raw) == manifest["config"]["size"]
    cfg = json.loads(raw)
    layers = manifest["layers"]
    for ly in layers:
        assert api.blob_size(repo, ly["digest"]) == ly["size"]

    assert set(cfg) == MP_TOP_KEYS
    assert set(cfg["descriptor"]) <= MP_DESCRIPTOR_KEYS, set(cfg["descriptor"]) - MP_DESCRIPTOR_KEYS
    assert set(cfg["config"]) <= MP_CONFIG_KEYS, set(cfg["config"]) - MP_CONFIG_KEYS
    assert cfg["modelfs"] == {"type": "layers", "diffIds": [ly["digest"] for ly in layers]}
    assert_rfc3339(cfg["descriptor"]["createdAt"])
    jsonschema.Draft202012Validator(MP_CONFIG_SCHEMA, format_checker=jsonschema.FormatChecker()).validate(cfg)
    assert cfg["config"]["format"] == {"hf-mxfp4": "safetensors", "onnx": "onnx", "jetson": "onnx"}[m["format"]]
    assert "licenses" not in cfg["descriptor"]  # the tiny source models declare none

    for ly in layers:
        path = ly["annotations"][A_FILEPATH]
        assert ly["mediaType"] in MP_RAW_TYPES, (path, ly["mediaType"])
        assert "tar" not in ly["mediaType"]
        if re.search(r"\.(safetensors|onnx|onnx\.data)$", path):
            assert ly["mediaType"] == MP_WEIGHT, path
    assert layers[0]["mediaType"] == MP_WEIGHT  # weights first
    check_layers(manifest, artifact, m["created"])


# ---------------------------------------------------------------------------------------------
# 3. refusals: one line, non-zero exit, nothing at --out
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def dest(tmp_path) -> Path:
    d = tmp_path / "dest"
    d.mkdir()
    return d / "model"


@pytest.fixture
def gguf_blob(reg, exported):
    """The GGUF pushed into a repository of its own; yields (uri, path of its blob's data file
    in the registry's storage) and puts the original bytes back afterwards (blobs are shared by
    every repository of the registry)."""
    from edgeport.publishing import transfer

    artifact = exported(GGUF_CASE)[0]
    uri = f"oci://{reg.host}/refuse/damaged:v1"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEPORT_REGISTRY_USER", USER)
        mp.setenv("EDGEPORT_REGISTRY_PASSWORD", PASSWORD)
        transfer.push(artifact, uri, insecure=True)
    sha = next(s for p, (_, s) in listed_sha(artifact).items() if p.endswith(".gguf"))
    data = reg.blob_path(f"sha256:{sha}")
    assert data.is_file()
    original = data.read_bytes()
    try:
        yield uri, data
    finally:
        data.write_bytes(original)


def test_pull_refuses_a_blob_corrupted_in_the_registry(gguf_blob, dest):
    uri, data = gguf_blob
    b = bytearray(data.read_bytes())
    for i in range(len(b) // 2, len(b) // 2 + 16):
        b[i] ^= 0xFF
    data.write_bytes(bytes(b))
    r = cli("pull", "--from", uri, "--out", str(dest), "--insecure")
    assert_one_line_error(r, "does not match its digest")
    assert_nothing_at(dest)


def test_pull_refuses_a_truncated_download(gguf_blob, dest):
    uri, data = gguf_blob
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size // 3)
    r = cli("pull", "--from", uri, "--out", str(dest), "--insecure")
    assert_one_line_error(r, "truncated")
    assert_nothing_at(dest)


def test_wrong_credentials_are_refused(reg, pushed, exported, api, dest):
    r = cli("pull", "--from", pushed[GGUF_CASE], "--out", str(dest), "--insecure",
            env=registry_env(password=WRONG_PASSWORD))
    assert_one_line_error(r, "credentials")
    assert_nothing_at(dest)
    r = cli("push", "--artifact", str(exported(GGUF_CASE)[0]), "--to", f"oci://{reg.host}/refuse/wrongpw:v1",
            "--insecure", env=registry_env(password=WRONG_PASSWORD))
    assert_one_line_error(r, "credentials")
    assert not api.has_manifest("refuse/wrongpw", "v1")


def test_missing_credentials_are_refused(reg, pushed, exported, api, dest, tmp_path):
    home = tmp_path / "home"  # no ~/.docker/config.json to fall back on
    home.mkdir()
    env = {k: v for k, v in registry_env(password=None, HOME=str(home)).items() if k != "DOCKER_CONFIG"}
    r = cli("pull", "--from", pushed[GGUF_CASE], "--out", str(dest), "--insecure", env=env)
    assert_one_line_error(r, "EDGEPORT_REGISTRY_USER")
    assert_nothing_at(dest)
    r = cli("push", "--artifact", str(exported(GGUF_CASE)[0]), "--to", f"oci://{reg.host}/refuse/nocreds:v1",
            "--insecure", env=env)
    assert_one_line_error(r, "EDGEPORT_REGISTRY_USER")
    assert not api.has_manifest("refuse/nocreds", "v1")


@pytest.mark.parametrize("where", ["closed-port", "unroutable"])
def test_unreachable_registry_fails_fast(where, dest):
    host = f"127.0.0.1:{free_port()}" if where == "closed-port" else "10.255.255.1:5000"
    t0 = time.monotonic()
    r = cli("pull", "--from", f"oci://{host}/x/y:t", "--out", str(dest), "--insecure", timeout=60)
    elapsed = time.monotonic() - t0
    line = assert_one_line_error(r)
    if where == "closed-port":
        assert "cannot reach registry" in line
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert_nothing_at(dest)


def test_pull_refuses_an_unknown_tag(pushed, reg, dest):
    r = cli("pull", "--from", f"oci://{reg.host}/{repo_of(GGUF_CASE)}:no-such-tag", "--out", str(dest), "--insecure")
    assert_one_line_error(r, "no-such-tag")
    assert_nothing_at(dest)


def test_push_refuses_an_artifact_edited_after_export(reg, exported, api, tmp_path, dest):
    """A byte appended to the GGUF of a copy: refused without --force, no tag appears. With
    --force it is pushed, and then pull refuses it (it no longer matches its manifest.json)."""
    copy_ = tmp_path / "edited"
    shutil.copytree(exported(GGUF_CASE)[0], copy_)
    g = next(copy_.glob("*.gguf"))
    with open(g, "ab") as f:
        f.write(b"\0")
    uri = f"oci://{reg.host}/refuse/edited:v1"
    r = cli("push", "--artifact", str(copy_), "--to", uri, "--insecure")
    assert_one_line_error(r, "changed after export", "--force")
    assert not api.has_manifest("refuse/edited", "v1")
    assert_ok(cli("push", "--artifact", str(copy_), "--to", uri, "--insecure", "--force"))
    assert api.has_manifest("refuse/edited", "v1")
    r = cli("pull", "--from", uri, "--out", str(dest), "--insecure")
    assert_one_line_error(r, g.name, "manifest.json")
    assert_nothing_at(dest)


@pytest.mark.parametrize("parity", ["failed", "missing"])
def test_push_refuses_an_artifact_without_passed_parity(reg, exported, api, tmp_path, parity):
    copy_ = tmp_path / "art"
    shutil.copytree(exported(GGUF_CASE)[0], copy_)
    mpath = copy_ / "manifest.json"  # not listed in itself: editing it keeps the file list valid
    m = json.loads(mpath.read_text())
    m["parity"] = {**m["parity"], "passed": False} if parity == "failed" else None
    mpath.write_text(json.dumps(m, indent=2))
    repo = f"refuse/parity-{parity}"
    uri = f"oci://{reg.host}/{repo}:v1"
    r = cli("push", "--artifact", str(copy_), "--to", uri, "--insecure")
    assert_one_line_error(r, "parity", "--force")
    assert not api.has_manifest(repo, "v1")
    assert_ok(cli("push", "--artifact", str(copy_), "--to", uri, "--insecure", "--force"))
    out = tmp_path / "pulled"
    assert_ok(cli("pull", "--from", uri, "--out", str(out), "--insecure"))
    assert_same_tree(copy_, out)


@pytest.mark.parametrize("uri", ["s3://x", "oci://host", "oci://127.0.0.1:5000/Upper/Case:t"])
def test_bad_uris_are_one_line_errors(exported, uri, dest):
    r = cli("push", "--artifact", str(exported(GGUF_CASE)[0]), "--to", uri)
    assert_one_line_error(r, code=2)
    r = cli("pull", "--from", uri, "--out", str(dest))
    assert_one_line_error(r, code=2)
    assert_nothing_at(dest)


def test_pull_refuses_an_existing_out_without_force(pushed, exported, tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = tree(out)
    r = cli("pull", "--from", pushed[GGUF_CASE], "--out", str(out), "--insecure")
    assert_one_line_error(r, "already exists", "--force")
    assert tree(out) == before and (out / "keep.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["existing"]
    assert_ok(cli("pull", "--from", pushed[GGUF_CASE], "--out", str(out), "--insecure", "--force"))
    assert_same_tree(exported(GGUF_CASE)[0], out)


def test_pull_refuses_a_tampered_layout_blob(exported, tmp_path, dest):
    from edgeport.publishing import transfer

    artifact = exported(GGUF_CASE)[0]
    layout = tmp_path / "layout"
    transfer.push(artifact, f"file://{layout}:v1")
    sha = next(s for p, (_, s) in listed_sha(artifact).items() if p.endswith(".gguf"))
    blob = layout / "blobs" / "sha256" / sha
    b = bytearray(blob.read_bytes())
    b[100] ^= 0x01
    blob.write_bytes(bytes(b))
    r = cli("pull", "--from", f"file://{layout}:v1", "--out", str(dest))
    assert_one_line_error(r, "does not match its digest")
    assert_nothing_at(dest)


# ---------------------------------------------------------------------------------------------
# 4. Hub: model card, commit, pull
# ---------------------------------------------------------------------------------------------
def card_of(m: dict, repo_id: str = "edgeport-test/tiny"):
    from huggingface_hub import ModelCard

    from edgeport.publishing import modelcard

    card = ModelCard(modelcard.build(m, repo_id))
    return card.data.to_dict(), card.text


def assert_card_body(m: dict, body: str) -> None:
    q = m["quantization"]
    assert f"`{m['target']}`" in body
    assert q["requested"] in body
    for fb in q.get("applied", {}).get("fallbacks", []):
        assert f"`{fb['tensor']}`" in body, fb["tensor"]
    for name, st in m["parity"]["stages"].items():
        row = next((ln for ln in body.splitlines() if ln.startswith(f"| {name} |")), None)
        assert row, f"no parity row for stage {name}"
        mean_kl = float(row.split("|")[3])
        want = st["summary"]["mean_kl"]
        assert abs(mean_kl - want) <= 0.01 * abs(want), (name, mean_kl, want)
    for f in m["files"]:
        assert f["sha256"] in body


def test_model_card_gguf(exported):
    _, m = exported(GGUF_CASE)
    assert m["source"].get("hub") is False or Path(m["source"]["model"]).is_dir()  # the tiny model is local
    data, body = card_of(m)
    assert data["pipeline_tag"] == "text-generation"
    assert "edgeport" in data["tags"] and "gguf" in data["tags"]
    assert "library_name" not in data  # the Hub has no library for GGUF
    assert "base_model" not in data and "base_model_relation" not in data
    assert "license" not in data
    assert len(m["quantization"]["applied"]["fallbacks"]) > 0
    assert_card_body(m, body)
    for cmd in ("llama-server -hf edgeport-test/tiny", "ollama run hf.co/edgeport-test/tiny",
                "docker model pull hf.co/edgeport-test/tiny"):
        assert cmd in body, cmd


def test_model_card_vllm(exported):
    _, m = exported("vllm-gpt-oss")
    data, body = card_of(m)
    assert data["pipeline_tag"] == "text-generation"
    assert "edgeport" in data["tags"] and "safetensors" in data["tags"]
    assert data["library_name"] == "transformers"
    assert "base_model" not in data and "license" not in data
    assert_card_body(m, body)
    assert "vllm serve edgeport-test/tiny" in body


def test_model_card_base_model_and_license(exported, tmp_path, llama_dir):
    """A hub source gives base_model + base_model_relation: quantized; a license in the source
    model card's front matter is recorded by export (the source need not be there at push) and
    copied to the card and to the ModelPack descriptor."""
    from edgeport.core.manifest import source_record
    from edgeport.core.source import Source
    from edgeport.publishing import formats

    _, m0 = exported(GGUF_CASE)
    m = copy.deepcopy(m0)
    m["source"].update(model="openai/gpt-oss-20b", hub=True)
    data, _ = card_of(m)
    assert data["base_model"] == "openai/gpt-oss-20b"
    assert data["base_model_relation"] == "quantized"
    assert "license" not in data
    m["source"]["hub"] = False  # a local directory that happens to be named like org/name
    assert "base_model" not in card_of(m)[0]

    src = shutil.copytree(llama_dir, tmp_path / "src")
    (src / "README.md").write_text("---\nlicense: apache-2.0\nlibrary_name: transformers\n---\n# A model\n")
    m["source"]["license"] = source_record(Source.open(src))["license"]
    assert m["source"]["license"] == "apache-2.0"
    data, _ = card_of(m)
    assert data["license"] == "apache-2.0"

    vpath, v0 = exported("vllm-gpt-oss")
    v = copy.deepcopy(v0)
    v["source"]["license"] = "apache-2.0"
    from edgeport.publishing.artifact import for_push

    _, files = for_push(vpath)
    assert formats.modelpack_config(v, files)["descriptor"]["licenses"] == ["apache-2.0"]


class HubRecorder:
    """Stands in for HfApi on push: records the calls, answers create_commit with a commit id."""

    OID = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id=None, **kw):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kw}))

    def create_commit(self, repo_id=None, operations=(), **kw):
        self.calls.append(("create_commit", {"repo_id": repo_id, "operations": list(operations), **kw}))
        return SimpleNamespace(oid=self.OID, commit_url="", pr_url=None)

    def create_tag(self, repo_id=None, **kw):
        self.calls.append(("create_tag", {"repo_id": repo_id, **kw}))

    def named(self, name: str) -> list[dict]:
        return [kw for n, kw in self.calls if n == name]


def materialize(operations, repo: Path) -> None:
    """What a commit of `operations` leaves in a repository checkout."""
    for op in operations:
        dst = repo / op.path_in_repo
        dst.parent.mkdir(parents=True, exist_ok=True)
        src = op.path_or_fileobj
        dst.write_bytes(src if isinstance(src, bytes) else Path(src).read_bytes())


class FakeHub:
    """Stands in for HfApi on pull: a local directory plays the repository at one commit."""

    def __init__(self, repo: Path, sha: str = HubRecorder.OID):
        self.repo, self.sha, self.revisions = repo, sha, []

    def model_info(self, repo_id, revision=None, **kw):
        self.revisions.append(revision)
        return SimpleNamespace(sha=self.sha)

    def hf_hub_download(self, repo_id, filename, revision=None, local_dir=None, **kw):
        assert revision == self.sha, "downloads must be pinned to the resolved commit"
        dst = Path(local_dir) / filename
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.repo / filename, dst)
        return str(dst)

    def snapshot_download(self, repo_id, revision=None, local_dir=None, allow_patterns=None, **kw):
        assert revision == self.sha
        for p in self.repo.rglob("*"):
            rel = p.relative_to(self.repo).as_posix()
            if p.is_file() and (allow_patterns is None or any(fnmatch.fnmatch(rel, pat) for pat in allow_patterns)):
                dst = Path(local_dir) / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, dst)
        return str(local_dir)


@pytest.mark.parametrize("case", [GGUF_CASE, "jetson-llama-int8"])
@pytest.mark.parametrize("rev", [None, "v1"])
def test_hub_push_is_one_commit(exported, case, rev):
    from huggingface_hub import CommitOperationAdd, ModelCard

    from edgeport.publishing import transfer

    artifact = exported(case)[0]
    rec = HubRecorder()
    uri = "hf://edgeport-test/tiny" + (f"@{rev}" if rev else "")
    pinned = transfer.push(artifact, uri, hub_api=rec)
    assert pinned == f"hf://edgeport-test/tiny@{HubRecorder.OID}"
    assert [n for n, _ in rec.calls] == ["create_repo", "create_commit", *(["create_tag"] if rev else [])]
    (repo_call,) = rec.named("create_repo")
    assert repo_call["repo_id"] == "edgeport-test/tiny" and repo_call["exist_ok"] is True
    (commit,) = rec.named("create_commit")
    ops = commit["operations"]
    assert all(isinstance(op, CommitOperationAdd) for op in ops)
    paths = [op.path_in_repo for op in ops]
    assert len(paths) == len(set(paths))
    want = listed_sha(artifact)
    want["manifest.json"] = ((artifact / "manifest.json").stat().st_size, sha256_file(artifact / "manifest.json"))
    assert set(paths) == {*want, "README.md"}
    for op in ops:
        src = op.path_or_fileobj
        data = src if isinstance(src, bytes) else Path(src).read_bytes()
        if op.path_in_repo == "README.md":
            assert isinstance(src, bytes)
            card = ModelCard(data.decode())
            assert "edgeport" in card.data.tags
            continue
        assert isinstance(src, str)
        assert (len(data), hashlib.sha256(data).hexdigest()) == want[op.path_in_repo], op.path_in_repo
    if rev:
        (tag,) = rec.named("create_tag")
        assert tag["tag"] == rev and tag["revision"] == HubRecorder.OID
    else:
        assert rec.named("create_tag") == []


def test_hub_pull_round_trip_and_tamper(exported, tmp_path):
    """The committed files served back: identical tree, the card (README.md) left behind,
    pinned to the resolved commit; a tampered file in the repo is refused with nothing at --out."""
    from edgeport.publishing import transfer
    from edgeport.publishing.errors import PublishError

    artifact, _ = exported("jetson-llama-int8")
    rec = HubRecorder()
    transfer.push(artifact, "hf://edgeport-test/tiny@v1", hub_api=rec)
    repo = tmp_path / "repo"
    materialize(rec.named("create_commit")[0]["operations"], repo)
    assert (repo / "README.md").is_file()

    hub = FakeHub(repo)
    out = tmp_path / "dest" / "pulled"
    out.parent.mkdir()
    path, pinned = transfer.pull("hf://edgeport-test/tiny@v1", out, hub_api=hub)
    assert path == out and pinned == f"hf://edgeport-test/tiny@{HubRecorder.OID}"
    assert hub.revisions == ["v1"]
    assert_same_tree(artifact, out)  # README.md is not in the artifact, so not pulled
    assert not (out / "README.md").exists()
    assert_normal_modes(out, executables(out), current_umask())
    assert os.listdir(out.parent) == ["pulled"]

    g = repo / "llm" / "model.onnx.data"
    b = bytearray(g.read_bytes())
    b[10] ^= 0xFF
    g.write_bytes(bytes(b))
    out2 = tmp_path / "dest2" / "pulled"
    (tmp_path / "dest2").mkdir()
    with pytest.raises(PublishError) as e:
        transfer.pull("hf://edgeport-test/tiny", out2, hub_api=FakeHub(repo))
    assert "\n" not in str(e.value) and "model.onnx.data" in str(e.value)
    assert_nothing_at(out2)


def test_hub_pull_keeps_the_kit_executable(exported, tmp_path):
    """The Hub stores no file modes, but the card tells Jetson users to run ./build_engine.sh
    and ./run.sh right after `invoke pull --from hf://...`: a Hub pull must make them executable
    as an OCI pull does."""
    from edgeport.publishing import transfer

    artifact = exported("jetson-llama-int8")[0]
    rec = HubRecorder()
    transfer.push(artifact, "hf://edgeport-test/tiny", hub_api=rec)
    repo = tmp_path / "repo"
    materialize(rec.named("create_commit")[0]["operations"], repo)
    out = tmp_path / "pulled"
    transfer.pull("hf://edgeport-test/tiny", out, hub_api=FakeHub(repo))
    want_exe = {p for p in listed_sha(artifact) if p.endswith(".sh")}
    assert executables(out) == want_exe
    assert_normal_modes(out, want_exe, current_umask())


def test_hub_pull_creates_the_parent_of_out(exported, tmp_path):
    """As an OCI pull does (export.atomic.check_writable): --out's parent need not exist yet."""
    from edgeport.publishing import transfer

    artifact = exported(GGUF_CASE)[0]
    rec = HubRecorder()
    transfer.push(artifact, "hf://edgeport-test/tiny", hub_api=rec)
    repo = tmp_path / "repo"
    materialize(rec.named("create_commit")[0]["operations"], repo)
    out = tmp_path / "new" / "dir" / "pulled"
    transfer.pull("hf://edgeport-test/tiny", out, hub_api=FakeHub(repo))
    assert_same_tree(artifact, out)


# ---------------------------------------------------------------------------------------------
# 5. secrets never leak
# ---------------------------------------------------------------------------------------------
def test_no_secret_leaks(reg, pushed, exported, tmp_path):
    """The registry password (and its Basic-auth form) and an HF_TOKEN in the environment appear in
    no output, pulled file, layout or registry blob. The Hub push's token is checked through the
    real huggingface_hub client against a local Hub server in tests/test_hub_commit.py."""
    secrets = [HF_SECRET, PASSWORD, WRONG_PASSWORD,
               base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
               base64.b64encode(f"{USER}:{WRONG_PASSWORD}".encode()).decode()]
    env = registry_env(HF_TOKEN=HF_SECRET)
    gguf_art, jetson_art = exported(GGUF_CASE)[0], exported("jetson-llama-int8")[0]
    layout = tmp_path / "layout"
    runs = [
        cli("push", "--artifact", str(gguf_art), "--to", f"oci://{reg.host}/secrets/cpu:v1", "--insecure", env=env),
        cli("push", "--artifact", str(jetson_art), "--to", f"file://{layout}:v1", env=env),
        cli("pull", "--from", f"oci://{reg.host}/secrets/cpu:v1", "--out", str(tmp_path / "p-oci"), "--insecure",
            env=env),
        cli("pull", "--from", f"file://{layout}:v1", "--out", str(tmp_path / "p-file"), env=env),
    ]
    for r in runs:
        assert_ok(r)
    failed = cli("push", "--artifact", str(gguf_art), "--to", f"oci://{reg.host}/secrets/wrong:v1", "--insecure",
                 env=registry_env(password=WRONG_PASSWORD, HF_TOKEN=HF_SECRET))
    assert_one_line_error(failed, "credentials")

    outputs = "".join(r.stdout + r.stderr for r in [*runs, failed])
    for s in secrets:
        assert s not in outputs, "a secret in the CLI's output"
    encoded = [s.encode() for s in secrets]
    checked = 0
    for top in (tmp_path, reg.storage):  # pulled trees, layout, Hub commit + card, registry blobs
        for p in top.rglob("*"):
            if p.is_file():
                data = p.read_bytes()
                checked += 1
                assert not any(s in data for s in encoded), f"a secret in {p}"
    assert checked > 50
