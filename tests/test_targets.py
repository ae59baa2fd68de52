"""Target profiles: loading, inheritance, per-architecture policy and thresholds."""

import pytest

from edgeport import targets
from edgeport.core.errors import TargetError


def test_available_and_unknown():
    assert {"cpu", "apple"} <= set(targets.available())
    with pytest.raises(TargetError, match="available targets"):
        targets.load("nope")


def test_apple_extends_cpu_and_overrides_only_what_differs():
    cpu, apple = targets.load("cpu"), targets.load("apple")
    assert apple.quantization == cpu.quantization == "Q4_K_M"
    assert apple.runtime_options["n_gpu_layers"] == -1 and cpu.runtime_options["n_gpu_layers"] == 0
    assert apple.runtime_options["n_ctx"] == cpu.runtime_options["n_ctx"]
    assert apple.parity == cpu.parity


def test_thresholds_merge_per_architecture_and_carry_reasons():
    cpu = targets.load("cpu")
    for arch in ("llama", "gpt-oss"):
        th = cpu.thresholds(arch)
        for stage in ("fidelity", "quantization"):
            assert th[stage]["reason"] and th[stage]["mean_kl_max"] > 0
    assert cpu.thresholds("llama")["fidelity"]["mean_kl_max"] <= 1e-4


def test_policy_for_unsupported_architecture():
    with pytest.raises(TargetError, match="does not support"):
        targets.load("cpu").policy("mamba")
