"""Target profiles: one declarative TOML file per target/device in this folder.

A profile names the artifact format (which exporter in export.pipeline builds it), the
runtime that loads it, the default quantization, device defaults, per-architecture
policies and the parity thresholds, each with the reason for its value.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from edgeport.core.architectures import ARCHITECTURES
from edgeport.core.errors import TargetError
from edgeport.core.quant import PRECISIONS, SCHEMES, onnx_variants
from edgeport.parity.gate import STAGES
from edgeport.parity.metrics import validate_thresholds


class FallbackAvailable(TargetError):
    """The target cannot take this architecture, but another target makes what runs on the device."""

    def __init__(self, message: str, target: str, reason: str):
        super().__init__(message)
        self.target, self.reason = target, reason

HERE = Path(__file__).parent


@dataclass(frozen=True)
class TargetProfile:
    name: str
    description: str
    format: str
    runtime: str
    quantization: str
    unquantized: str = "F16"
    runtime_options: dict = field(default_factory=dict)
    architectures: dict = field(default_factory=dict)  # arch name -> policy table
    unsupported: dict = field(default_factory=dict)  # arch name -> why not, and what fits
    parity: dict = field(default_factory=dict)
    devices: dict = field(default_factory=dict)  # device name -> limits (jetson)
    stacks: dict = field(default_factory=dict)  # software stack -> what it takes (jetson)
    fallback: dict = field(default_factory=dict)  # arch -> {target, reason}: what runs it instead

    def policy(self, arch: str) -> dict:
        if arch in self.fallback:
            fb = self.fallback[arch]
            reason = f"target {self.name} cannot build {arch}: {' '.join(fb['reason'].split())}"
            raise FallbackAvailable(f"{reason} Pass --fallback to produce the --target {fb['target']} "
                                    "artifact instead.", fb["target"], reason)
        if arch in self.unsupported:
            raise TargetError(f"target {self.name} does not take {arch}: {self.unsupported[arch]}")
        if arch not in self.architectures:
            raise TargetError(
                f"target {self.name} does not support {arch}; it supports {', '.join(self.architectures)}"
            )
        return self.architectures[arch]

    def thresholds(self, arch: str, variant: str | None = None, quantization: str | None = None) -> dict[str, dict]:
        """Stage thresholds: the profile's defaults, overridden per architecture and variant
        (e.g. genai-int4, gpt-oss/mxfp4-source), then per quantization scheme (e.g. Q2_K: a
        2-bit type's own error); `reason` strings travel with them into the report."""
        keys = (arch, variant, f"{arch}/{variant}" if variant else None, quantization)
        return {stage: _overridden(values, keys) for stage, values in self.parity.get("thresholds", {}).items()}

    def device_thresholds(self, runtime: str, variant: str | None = None) -> dict | None:
        """`[parity.device.<runtime>]`: what a device's own output is judged by (parity/device.py),
        overridden by the variant's sub-table (e.g. edgellm-int4); None where the profile has none."""
        table = self.parity.get("device", {}).get(runtime)
        return _overridden(table, (variant,)) if table else None


def _overridden(table: dict, keys) -> dict:
    """A thresholds table's own values, then each sub-table named in `keys` on top, in order."""
    merged = {k: v for k, v in table.items() if not isinstance(v, dict)}
    for key in keys:
        if key and isinstance(table.get(key), dict):
            merged.update(table[key])
    return merged


def available() -> list[str]:
    """Target profiles: every TOML here."""
    return sorted(p.stem for p in HERE.glob("*.toml"))


def device_thresholds_for(manifest: dict) -> dict | None:
    """The profile's `[parity.device.<runtime>]` thresholds for an artifact's runtime and variant
    (what parity.device.compare judges a device's output by): the manifest's own copy could be
    edited, the profile is the rule. None where the profile has none."""
    return load(manifest["target"]).device_thresholds(
        manifest["runtime"]["name"], (manifest.get("quantization") or {}).get("variant"))


PARITY_KEYS = {"max_tokens", "greedy_tokens", "thresholds", "device"}
# the variants each format's exporter reports (Built.variant; the pipeline refuses any other),
# which threshold sub-tables may be named after (onnx's: `variants`, from its precisions)
VARIANTS = {
    "gguf": ("mxfp4-source", "bf16-experts-mxfp4", "bf16-experts-kquant"),
    "hf-mxfp4": ("mxfp4-passthrough", "bf16-to-mxfp4"),
    "jetson": ("edgellm-int8", "edgellm-int8-w8a16", "edgellm-int4", "edgellm-fp16", "trtllm-w8a16"),
}


def variants(fmt: str) -> tuple[str, ...]:
    """The variants an exporter of format `fmt` may report."""
    if fmt == "onnx":  # <graph kind>-<precision>[-mxfp4-experts], as export/onnx_export.py names them
        return onnx_variants()
    return VARIANTS.get(fmt, ())


def _quantizations(data: dict) -> set[str]:
    """The quantization schemes a profile's format takes."""
    fmt = data.get("format")
    names = {data.get("quantization")}
    if fmt == "gguf":
        names |= set(SCHEMES) | {data.get("unquantized", "F16")}
    elif fmt == "onnx":
        names |= {p for ps in PRECISIONS.values() for p in ps}
    elif fmt == "jetson":
        names |= {p for stack in data.get("stacks", {}).values() for p in stack.get("precisions", ())}
    return {n for n in names if n}


def override_names(data: dict) -> set[str]:
    """What a threshold sub-table may be named: an architecture, a variant of the profile's
    format (alone or as arch/variant), or one of its quantization schemes. Anything else (a
    typo: Q2_k, gpt-os) would silently fall back to the generic threshold."""
    archs = {a.name for a in ARCHITECTURES}
    kinds = set(variants(data.get("format")))
    return archs | kinds | {f"{a}/{v}" for a in archs for v in kinds} | _quantizations(data)


def load(name: str) -> TargetProfile:
    path = HERE / f"{name}.toml"
    if not path.is_file():
        raise TargetError(f"unknown target {name!r}; available targets: {', '.join(available())}")
    data = tomllib.loads(path.read_text())
    if base := data.pop("extends", None):
        data = _merge(_raw(base), data)
    validate(name, data)
    return TargetProfile(name=name, **data)


def validate(name: str, data: dict) -> None:
    """A misspelt key would silently disable what it configures (a typo in a threshold name
    turns that check off): every key must be one the code reads."""
    where = f"targets/{name}.toml"
    known = {f.name for f in fields(TargetProfile)} - {"name"}
    if unknown := sorted(set(data) - known):
        raise TargetError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    parity = data.get("parity", {})
    if unknown := sorted(set(parity) - PARITY_KEYS):
        raise TargetError(f"{where}: unknown [parity] key(s) {', '.join(unknown)}")
    names = override_names(data)
    for section in ("thresholds", "device"):
        for stage, table in parity.get(section, {}).items():
            if section == "thresholds" and stage not in STAGES:
                raise TargetError(f"{where}: unknown parity stage {stage!r}; stages: {', '.join(STAGES)}")
            _validate_table(table, f"{where} [parity.{section}.{stage}]")
            for sub, values in table.items():
                if isinstance(values, dict):
                    if sub not in names:
                        raise TargetError(f"{where}: [parity.{section}.{stage}.{sub}] names no architecture, variant "
                                          f"or quantization of this target; known: {', '.join(sorted(names))}")
                    if nested := [k for k, v in values.items() if isinstance(v, dict)]:
                        raise TargetError(f"{where} [parity.{section}.{stage}.{sub}]: nested table(s) "
                                          f"{', '.join(nested)}")
                    _validate_table(values, f"{where} [parity.{section}.{stage}.{sub}]")


def _validate_table(values: dict, where: str) -> None:
    try:
        validate_thresholds(values, where)
    except ValueError as e:
        raise TargetError(str(e)) from None


def _raw(name: str) -> dict:
    data = tomllib.loads((HERE / f"{name}.toml").read_text())
    if base := data.pop("extends", None):
        data = _merge(_raw(base), data)
    return data


def _merge(base: dict, over: dict) -> dict:
    """A device profile states only what differs from the profile it extends."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out
