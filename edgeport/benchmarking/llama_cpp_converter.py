"""llama.cpp's own converter as a reference implementation (for the oracle test and the
benchmark): taken from the llama-cpp-python sdist at run time, never committed."""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
import tempfile
import textwrap
from pathlib import Path

from edgeport.core.llama_tools import sdist as llama_cpp_sdist

CACHE = Path.home() / ".cache" / "edgeport" / "oracle"
PRE = {"GptOssForCausalLM": "gpt-4o", "LlamaForCausalLM": "llama-bpe"}


def converter_script() -> Path:
    """Download (once) and extract convert_hf_to_gguf.py and its gguf-py. Any failure
    (network, a truncated archive, a layout without the script) raises RuntimeError with
    the cause, so the oracle can fail in CI instead of skipping."""
    import llama_cpp

    version = llama_cpp.__version__
    root = CACHE / f"llama_cpp_python-{version}"
    script = root / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    CACHE.mkdir(parents=True, exist_ok=True)
    sdist = llama_cpp_sdist()  # RuntimeError with the cause when it cannot be downloaded
    keep = ("vendor/llama.cpp/convert_hf_to_gguf.py", "vendor/llama.cpp/conversion/", "vendor/llama.cpp/gguf-py/")
    # extract beside the cache and move into place whole: an interrupted run leaves no half tree
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        try:
            with tarfile.open(sdist) as tf:
                members = [m for m in tf.getmembers() if m.name.split("/", 1)[-1].startswith(keep)]
                tf.extractall(tmp, members=members, filter="data")
        except (tarfile.TarError, OSError, EOFError) as e:
            sdist.unlink(missing_ok=True)  # fetched again next time
            raise RuntimeError(f"cannot read {sdist.name}: {e}") from None
        if not (Path(tmp) / root.name / script.relative_to(root)).is_file():
            raise RuntimeError(f"{sdist.name} has no vendor/llama.cpp/convert_hf_to_gguf.py")
        shutil.rmtree(root, ignore_errors=True)
        os.replace(Path(tmp) / root.name, root)
    return script


def converter_command(script: Path, model: Path, out: Path, arch: str, outtype: str = "f16") -> list[str]:
    """Their converter, with its pre-tokenizer hash lookup answered with the name our
    tokenizer's regex has in llama.cpp (a home-made vocabulary has no registered hash)."""
    code = textwrap.dedent(f"""
        import runpy, sys
        sys.path.insert(0, {str(script.parent)!r})
        sys.path.insert(1, {str(script.parent / 'gguf-py')!r})
        import conversion.base as base
        base.TextModel.get_vocab_base_pre = lambda self, tokenizer: {PRE[arch]!r}
        sys.argv = ["convert_hf_to_gguf.py", {str(model)!r}, "--outfile", {str(out)!r}, "--outtype", {outtype!r}]
        runpy.run_path({str(script)!r}, run_name="__main__")
    """)
    return [sys.executable, "-c", code]
