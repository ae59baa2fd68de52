"""Which exporter builds each artifact format, as data: a target profile's `format` names an
entry here, and the exporter class is imported only when that format is built ("module:Class",
as vLLM's model registry keeps its models), so planning or a GGUF export never loads the
ONNX or Jetson toolchains. The pipeline asks this table, never a format or runtime name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edgeport.core.errors import TargetError

from .jobs import Built, Job


class Exporter(Protocol):
    """What the pipeline calls on an exporter (export/pipeline.py)."""

    runtime: str  # the runtime its artifacts run on
    def export(self, job: Job, out: Path, work: Path) -> Built: ...

    def unquantized(self, job: Job, work: Path) -> Path | None:
        """The unquantized model for parity's fidelity stage (None: there is none)."""

    def artifact_check(self, job: Job, runtime: dict, inputs: dict[str, Path], root: Path) -> dict | None:
        """A judged check of the shipped files beyond parity (None: parity scores the shipped
        files themselves)."""


class ExporterBase:
    """Defaults for the optional parts of Exporter."""

    def artifact_check(self, job: Job, runtime: dict, inputs: dict[str, Path], root: Path) -> dict | None:
        return None


@dataclass(frozen=True)
class Format:
    name: str  # a target profile's `format`
    exporter: str  # "module:Class", imported on first use
    # export options (policy keys) only this format takes, with the flag that sets each: any
    # other format refuses them rather than silently ignoring what the user asked for
    own_options: dict[str, str] = field(default_factory=dict)
    label: str = ""  # how a refusal names the targets of this format

    def load(self) -> Exporter:
        module, cls = self.exporter.split(":")
        return getattr(importlib.import_module(module), cls)()


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("gguf", "edgeport.export.gguf_export:GGUFExporter",
           own_options={"calibration": "--calibration", "imatrix": "--no-imatrix", "imatrix_file": "--imatrix",
                        "imatrix_tokens": "--imatrix-tokens"},
           label="GGUF targets (cpu, apple)"),
    Format("hf-mxfp4", "edgeport.export.vllm_export:VLLMExporter"),
    Format("onnx", "edgeport.export.onnx_export:OnnxExporter"),
    Format("jetson", "edgeport.export.jetson_export:JetsonExporter"),
)}


def get(fmt: str, target: str) -> Format:
    if fmt not in FORMATS:
        raise TargetError(f"target {target}: no exporter for format {fmt!r}")
    return FORMATS[fmt]


def exporter(fmt: str, target: str) -> Exporter:
    return get(fmt, target).load()


def check_options(fmt: str, target: str, policy: dict) -> None:
    """Refuse options that belong to another format's exporter (--no-imatrix for onnx)."""
    mine = set(get(fmt, target).own_options)
    for other in FORMATS.values():
        given = {k for k in other.own_options if policy.get(k) is not None} - mine
        if other.name != fmt and given:
            raise TargetError(f"{' / '.join(other.own_options.values())} are for {other.label}, not {target}")
