"""What an exporter is given (Job) and what it hands back (Built)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgeport.core.architectures import Architecture
from edgeport.core.progress import Progress
from edgeport.core.source import Source
from edgeport.targets import TargetProfile


@dataclass
class Job:
    src: Source
    arch: Architecture
    profile: TargetProfile
    policy: dict
    quantization: str
    progress: Progress


@dataclass
class Built:
    """What an exporter made: files are already inside the staging dir."""

    runtime: dict
    quantization: dict
    parity_inputs: dict[str, Path]  # role -> model file (unquantized / quantized)
    variant: str | None = None
    tools: dict = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

