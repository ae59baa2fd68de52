"""Re-vendor KServe's CRD schemas: `python edgeport/deploying/schemas/vendor.py KSERVE_CHECKOUT TAG`
writes, for each CRD version edgeport writes, its openAPIV3Schema as gzipped JSON, descriptions
dropped (they are most of the bytes and validate nothing). See README.md beside this file."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
# (path in kserve/kserve, served version) -> the file written here
CRDS = {("config/crd/full/serving.kserve.io_inferenceservices.yaml", "v1beta1"): "inferenceservice-v1beta1",
        ("config/crd/full/serving.kserve.io_servingruntimes.yaml", "v1alpha1"): "servingruntime-v1alpha1",
        ("config/crd/full/llmisvc/serving.kserve.io_llminferenceservices.yaml", "v1alpha2"):
            "llminferenceservice-v1alpha2"}


def strip(node, under_properties: bool = False):
    """The schema without `description` keywords (a property named description is kept)."""
    if isinstance(node, dict):
        return {k: strip(v, k == "properties" and not under_properties)
                for k, v in node.items() if under_properties or k != "description" or not isinstance(v, str)}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def main(checkout: str, tag: str) -> None:
    for (path, version), name in CRDS.items():
        text = subprocess.run(["git", "-C", checkout, "show", f"{tag}:{path}"], check=True, capture_output=True,
                              text=True).stdout
        crd = yaml.safe_load(text)
        schema = next(v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == version)
        out = {"kserve_release": tag, "source": f"https://github.com/kserve/kserve/blob/{tag}/{path}",
               "group": crd["spec"]["group"], "kind": crd["spec"]["names"]["kind"], "version": version,
               "openAPIV3Schema": strip(schema)}
        data = json.dumps(out, sort_keys=True, separators=(",", ":")).encode()
        (HERE / f"{name}.json.gz").write_bytes(gzip.compress(data, mtime=0))
        print(f"{name}.json.gz: {len(data)} bytes of JSON")


if __name__ == "__main__":
    main(*sys.argv[1:3])
