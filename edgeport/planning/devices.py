"""Device profiles (devices.toml beside this module), validated on load: a misspelt key would
silently plan with a default, so every key must be one the planner reads."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from edgeport import targets

from . import PlanError

PATH = Path(__file__).resolve().parent / "devices.toml"
GIB = 2**30
KINDS = ("discrete", "unified", "cpu")
REQUIRED = {"discrete": ("gpus", "gpu_memory_gib", "system_memory_gib", "system_usable_fraction"),
            "unified": ("unified_memory_gib",), "cpu": ("system_memory_gib",)}
KEYS = {"description": str, "memory": str, "gpus": int, "gpu_memory_gib": (int, float),
        "system_memory_gib": (int, float), "unified_memory_gib": (int, float), "usable_fraction": (int, float),
        "system_usable_fraction": (int, float), "reserve_reason": str, "gpu_arch": str,
        "recommended_target": str, "recommended_reason": str, "reference": dict}
REFERENCE_KEYS = {"model": str, "decode_tokens_per_s": (int, float), "runtime": str, "conditions": str, "source": str}


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    memory: str
    usable_fraction: float
    reserve_reason: str
    recommended_target: str
    recommended_reason: str = ""
    gpus: int = 0
    gpu_memory_gib: float = 0
    system_memory_gib: float = 0
    unified_memory_gib: float = 0
    system_usable_fraction: float = 0
    gpu_arch: str = ""
    reference: dict = field(default_factory=dict)

    @property
    def gpu_usable(self) -> int:
        """Bytes one GPU offers the model (discrete)."""
        return int(self.gpu_memory_gib * GIB * self.usable_fraction)

    @property
    def pool_usable(self) -> int:
        """Bytes the single pool offers (unified memory, or RAM on a CPU-only device)."""
        gib = self.unified_memory_gib if self.memory == "unified" else self.system_memory_gib
        return int(gib * GIB * self.usable_fraction)

    @property
    def ram_usable(self) -> int:
        """System RAM left for weights moved off the GPU (discrete)."""
        return int(self.system_memory_gib * GIB * self.system_usable_fraction)

    @property
    def is_jetson(self) -> bool:
        return self.gpu_arch == "sm87"


def load_all(path: Path = PATH) -> dict[str, Device]:
    where = path.name
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise PlanError(f"{where}: cannot read ({e})") from None
    if unknown := sorted(set(data) - {"devices"}):
        raise PlanError(f"{where}: unknown top-level key(s) {', '.join(unknown)}; only [devices.NAME] tables")
    return {name: _device(name, table, where) for name, table in data.get("devices", {}).items()}


def load(name: str, path: Path = PATH) -> Device:
    devices = load_all(path)
    if name not in devices:
        raise PlanError(f"unknown device {name!r}; known: {', '.join(devices)}")
    return devices[name]


def _device(name: str, t: dict, where: str) -> Device:
    at = f"{where} [devices.{name}]"
    _check_types(t, KEYS, at)
    if t.get("memory") not in KINDS:
        raise PlanError(f"{at}: memory must be one of {', '.join(KINDS)}, not {t.get('memory')!r}")
    need = ("description", "usable_fraction", "reserve_reason", "recommended_target", *REQUIRED[t["memory"]])
    if missing := [k for k in need if k not in t]:
        raise PlanError(f"{at}: missing {', '.join(missing)} (memory = {t['memory']!r} needs them)")
    for k in ("usable_fraction", "system_usable_fraction"):
        if k in t and not 0 < t[k] <= 1:
            raise PlanError(f"{at}: {k} must be in (0, 1], not {t[k]}")
    if t["recommended_target"] not in targets.available():
        raise PlanError(f"{at}: recommended_target {t['recommended_target']!r} is no target profile")
    if "reference" in t:
        _check_types(t["reference"], REFERENCE_KEYS, f"{at}.reference")
        if missing := [k for k in ("model", "decode_tokens_per_s", "source") if k not in t["reference"]]:
            raise PlanError(f"{at}.reference: missing {', '.join(missing)} (a figure needs its source)")
    return Device(name=name, **t)


def _check_types(t: dict, keys: dict, at: str) -> None:
    if unknown := sorted(set(t) - set(keys)):
        raise PlanError(f"{at}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(keys))}")
    for k, v in t.items():
        if not isinstance(v, keys[k]) or isinstance(v, bool):
            raise PlanError(f"{at}: {k} has the wrong type ({type(v).__name__})")
