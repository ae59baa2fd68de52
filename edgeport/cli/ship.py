"""Commands that ship artifacts and describe them: push, pull, show."""

from __future__ import annotations

import json
from pathlib import Path

from invoke import task

from .common import cli, stdout

URI_HELP = ("hf://org/name[@revision] (Hugging Face Hub; HF_TOKEN), oci://host[:port]/repo[:tag] (any OCI "
            "registry; EDGEPORT_REGISTRY_USER / EDGEPORT_REGISTRY_PASSWORD or `docker login`), or "
            "file:///path[:tag] (an OCI image layout directory; tag latest when omitted)")


@task(help={
    "artifact": "an artifact directory made by `edgeport export`",
    "to": URI_HELP,
    "force": "push even if the artifact's parity failed or is missing, or its files no longer match its "
             "manifest (pull will then refuse what does not match)",
    "insecure": "oci://: plain HTTP (a lab registry without TLS)",
    "modelcar": "also push a KServe modelcar image (the files under /models, a static busybox for its shell) "
                "beside it, at the same repository with the tag suffixed -modelcar",
})
@cli
def push(c, artifact, to, force=False, insecure=False, modelcar=False):
    """Publish an artifact to a model registry: GGUF as Docker Model Runner models, the rest as
    CNCF ModelPack artifacts; on the Hub one commit with a model card. The OCI manifest (or the
    Hub commit) is written last: an interrupted push leaves no tag."""
    from edgeport.publishing.transfer import modelcar_uri, push_modelcar
    from edgeport.publishing.transfer import push as do_push

    car = modelcar_uri(to) if modelcar else None  # a Hub URI is refused before anything is pushed
    print(f"pushed {do_push(Path(artifact), to, force=force, insecure=insecure)}")
    if car:
        print(f"pushed modelcar {push_modelcar(Path(artifact), car, force=force, insecure=insecure)}")


@task(help={
    "from_": URI_HELP,
    "out": "directory to create (refused if it exists, unless --force)",
    "force": "replace --out if it exists",
    "insecure": "oci://: plain HTTP (a lab registry without TLS)",
})
@cli
def pull(c, from_, out, force=False, insecure=False):
    """Fetch an artifact onto this machine. Every byte is checked against its digest and every
    file against the artifact's manifest.json before --out appears; a mismatch leaves nothing."""
    from edgeport.publishing.transfer import pull as do_pull

    path, pinned = do_pull(from_, Path(out), force=force, insecure=insecure)
    print(f"pulled {pinned} -> {path}")


@task(help={"artifact": "artifact directory", "json_": "print the whole manifest as JSON instead"})
@cli
def show(c, artifact, json_=False):
    """One screen about an artifact: model, target, size, quantization with fallbacks, parity
    per stage, bench figures if any, and how to run, serve and ship it."""
    from edgeport.benchmarking.summary import render
    from edgeport.core import manifest as mf

    m = mf.load(Path(artifact))
    if json_:
        print(json.dumps(m, indent=2))
        return
    stdout().print(render(Path(artifact), m))
    stdout().print(serving_support(m))


def serving_support(m: dict):
    """What `edgeport serve` supports over this artifact's engine, from the table the server refuses by
    (edgeport/serving/support.py), so show and the server cannot disagree."""
    from rich.table import Table

    from edgeport.core.template_tools import call_format
    from edgeport.serving.support import features, support

    rt = m["runtime"]["name"]
    s = support(rt)
    fmt = call_format(m["model"].get("chat_template"))
    f = features(rt, m["model"].get("chat_format") == "harmony", fmt.name if fmt else None)
    if not f:
        return f"serving: {s.engine} is not served by edgeport serve (see the kit's run.sh)"
    t = Table(title=f"serving over {s.engine}" + ("" if s.run_here else " (not run here)"))
    t.add_column("feature")
    t.add_column("support")
    for name, how in f.items():
        t.add_row(name, how)
    return t
