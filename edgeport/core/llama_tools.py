"""llama.cpp's command-line tools (llama-server, llama-bench, llama-imatrix, llama-quantize),
built from the llama.cpp vendored in the pinned llama-cpp-python sdist.

That sdist is what our quantizer and runtime (the Python binding) were built from, so the
tools are the same llama.cpp commit: they read and write exactly the GGUFs the binding does.
This module is the one place that builds them: on first use (about 10 minutes on two cores),
with progress, into `$XDG_CACHE_HOME/edgeport/llama.cpp-tools/<version>/` (default `~/.cache`),
keeping only the four binaries, `build.log` and `build.json`; later uses reuse them. The build
runs in temp dirs beside the cache and moves into place only when complete (an interrupted or
failed build leaves no binaries), under a lock (two first uses build once).

GGML_NATIVE: the binaries are tuned to the CPU that built them (a cache shared between
different CPUs is not supported). On CPUs with Intel AMX, llama.cpp's repack path segfaults
on Q4_K/Q8_0 matmuls (ggml-org/llama.cpp#20824): pass `repack_args(tool)` to each tool.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from edgeport.core.atomic import staging
from edgeport.core.errors import RuntimeUnavailable
from edgeport.core.llama_log import extra_bufts_enabled
from edgeport.core.progress import console
from edgeport.core.toolenv import _tool_process

TOOLS = ("llama-server", "llama-bench", "llama-imatrix", "llama-quantize")

# the arguments that turn weight repacking off, per tool, as each one's --help spells them:
# llama-bench parses its own arguments (`--repack 0`, no -nr); llama-quantize runs no matmuls
_NO_REPACK = {"llama-server": ("--no-repack",), "llama-imatrix": ("--no-repack",),
              "llama-bench": ("--repack", "0")}
# sdist members the build does not need (vocab GGUFs, docs, images: ~120 MB)
_SKIP = ("models/", "docs/", "media/")
_NINJA = re.compile(r"^\[(\d+)/(\d+)\]")
_MAKE = re.compile(r"^\[\s*(\d+)%\]")


def version() -> str:
    """The llama-cpp-python version that pins the llama.cpp the tools are built from: the installed
    one, else (a base install serving GGUF with llama-server only) the one edgeport's cpu extra pins."""
    import importlib.metadata as md

    try:
        return md.version("llama-cpp-python")
    except md.PackageNotFoundError:
        pass
    for req in md.requires("edgeport") or []:
        m = re.match(r"llama[-_]cpp[-_]python\s*==\s*([\w.]+)", req)
        if m:
            return m[1]
    raise RuntimeUnavailable("llama-cpp-python is not installed and edgeport pins no version of it: "
                             "pip install 'edgeport[cpu]'")


def cache_root() -> Path:
    """edgeport's cache: $XDG_CACHE_HOME/edgeport, else ~/.cache/edgeport (a relative
    XDG_CACHE_HOME is ignored, as the XDG spec says)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "edgeport"


def tools_dir(cache: Path | None = None) -> Path:
    """Where this llama-cpp-python version's tools live (built or not)."""
    return (cache or cache_root() / "llama.cpp-tools") / version()


def sdist() -> Path:
    """The installed version's llama-cpp-python sdist, downloaded once (pip checks PyPI's hash).
    Any failure raises RuntimeError with the cause: callers choose to skip or fail (the
    converter oracle fails in CI)."""
    ver = version()
    cache = cache_root() / "oracle"  # named for its first user, the converter oracle; kept so caches stay valid
    path = cache / f"llama_cpp_python-{ver}.tar.gz"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            f"llama-cpp-python=={ver}", "-d", str(cache)],
                           capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"cannot download the llama-cpp-python {ver} sdist: pip timed out") from None
    if r.returncode != 0 or not path.is_file():
        raise RuntimeError(f"cannot download the llama-cpp-python {ver} sdist: {r.stderr[-300:]}")
    return path


def sdist_commit(path: Path) -> str:
    """The llama.cpp commit vendored in the sdist: its git submodule HEAD, which the sdist
    carries (.git/modules/vendor/llama.cpp/HEAD, read without unpacking the rest)."""
    name = f"{path.name.removesuffix('.tar.gz')}/.git/modules/vendor/llama.cpp/HEAD"
    head = ""
    try:
        with tarfile.open(path) as tf:
            for m in tf:  # .git comes first in the archive: stop there, not after 76 MB
                if m.name == name and (f := tf.extractfile(m)):
                    head = f.read().decode(errors="replace").strip()
                    break
    except (tarfile.TarError, OSError, EOFError) as e:
        raise RuntimeUnavailable(f"cannot read {path.name}: {e}") from None
    if not re.fullmatch(r"[0-9a-f]{40}", head):
        raise RuntimeUnavailable(f"{path.name} names no llama.cpp commit ({name}: {head[:60]!r})")
    return head


def cmake_args(commit: str) -> list[str]:
    """Static binaries (they move out of the build tree), native CPU code, none of the tests
    or examples, nothing fetched while building (the server's prebuilt web UI is downloaded
    unless LLAMA_USE_PREBUILT_UI=OFF), and the sdist's commit as the one `--version` prints,
    with or without git on the machine."""
    return ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=ON",
            "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
            "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF", f"-DLLAMA_BUILD_COMMIT={commit[:7]}"]


def installed(cache: Path | None = None) -> dict | None:
    """The build's build.json when all TOOLS are there, else None."""
    d = tools_dir(cache)
    try:
        info = json.loads((d / "build.json").read_text())
    except (OSError, ValueError):
        return None
    return info if all(os.access(d / t, os.X_OK) for t in TOOLS) else None


def tool(name: str, *, build: bool = True) -> Path:
    """One of TOOLS, building all four first if they are not there (once, about 10 minutes).
    RuntimeUnavailable if they cannot be built, or are not built and `build` is False."""
    if name not in TOOLS:
        raise ValueError(f"unknown llama.cpp tool {name!r}; known: {', '.join(TOOLS)}")
    if installed() is None:
        if not build:
            raise RuntimeUnavailable(f"llama.cpp's {name} is not built yet; `edgeport tools --build` builds it "
                                     "(about 10 minutes, once)")
        _build_all()
    return tools_dir() / name


def repack_args(tool: str) -> list[str]:
    """The arguments that turn llama.cpp's weight repacking off for `tool`, wherever the
    runtime turns it off too (core.llama_log.extra_bufts_enabled: on AMX CPUs, where
    repacked Q4_K/Q8_0 matmuls segfault, #20824, unless EDGEPORT_LLAMA_EXTRA_BUFTS overrides);
    empty elsewhere, and for a tool without such a flag."""
    return [] if extra_bufts_enabled() else list(_NO_REPACK.get(tool, ()))


def check_prerequisites() -> None:
    """cmake and a C++ compiler, or RuntimeUnavailable saying which is missing."""
    if not _program("cmake"):
        raise RuntimeUnavailable("building llama.cpp's tools needs cmake (apt install cmake, or pip install cmake)")
    cxx = os.environ.get("CXX")
    if not (shutil.which(cxx) if cxx else any(shutil.which(c) for c in ("c++", "g++", "clang++"))):
        raise RuntimeUnavailable("building llama.cpp's tools needs a C++ compiler (apt install build-essential)")
    if not (_program("ninja") or shutil.which("make")):
        raise RuntimeUnavailable("building llama.cpp's tools needs ninja or make (apt install ninja-build)")


def build(force: bool = False, *, extra_cmake_args: Sequence[str] = (), cache: Path | None = None,
          jobs: int | None = None) -> Path:
    """Build all TOOLS (one cmake configure, one build of the four targets) into the cache,
    unless they are built already (`force` rebuilds); returns their directory. Failure raises
    RuntimeUnavailable naming the build log. `extra_cmake_args` and `cache` are for tests
    (a build that fails, a private cache)."""
    dest = tools_dir(cache)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest):
        if force or installed(cache) is None:
            _remove_leftovers(dest)
            _build_into(dest, list(extra_cmake_args), jobs or len(os.sched_getaffinity(0)))
    return dest


def _build_all() -> Path:
    return build()  # tool()'s `build` argument hides the function there


def _program(name: str) -> str | None:
    """The venv's own (pip's cmake or ninja packages) first, then PATH."""
    own = Path(sys.executable).parent / name
    return str(own) if os.access(own, os.X_OK) else shutil.which(name)


@contextlib.contextmanager
def _locked(dest: Path) -> Iterator[None]:
    with open(dest.parent / f".{dest.name}.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            console.print(f"waiting for another process building llama.cpp's tools into {dest}", highlight=False)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _remove_leftovers(dest: Path) -> None:
    """What a killed build (SIGKILL, power loss) left; safe under the lock: no build is running."""
    for kind in ("partial", "old", "build"):
        for p in dest.parent.glob(f".{dest.name}.{kind}-*"):
            shutil.rmtree(p, ignore_errors=True)


def _build_into(dest: Path, extra: list[str], jobs: int) -> None:
    check_prerequisites()
    try:
        tarball = sdist()
    except RuntimeError as e:
        raise RuntimeUnavailable(f"cannot build llama.cpp's tools: {e}".replace("\n", " ")) from None
    commit = sdist_commit(tarball)
    cmake, ninja = _program("cmake"), _program("ninja")
    generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja else ["-G", "Unix Makefiles"]
    args = [*cmake_args(commit), *extra]
    log = dest.parent / f"{dest.name}.build.log"  # kept here if the build fails; moved into dest if not
    console.print(f"building llama.cpp {commit[:7]}'s tools from the llama-cpp-python {dest.name} sdist "
                  "(first use: about 10 minutes on 2 cores; reused after)", highlight=False)
    console.print(f"  into {dest}", highlight=False)
    t0 = time.monotonic()
    with (staging(dest, force=True) as out,
          tempfile.TemporaryDirectory(prefix=f".{dest.name}.build-", dir=dest.parent) as work,
          open(log, "w") as logf):
        src = _extract(tarball, Path(work))
        bld = Path(work) / "build"
        # git (llama.cpp asks it for the build number, ggml for its commit) must find the
        # sdist's submodule repository, never a repository around the cache
        env = {**os.environ, "GIT_CEILING_DIRECTORIES": work, "NINJA_STATUS": "[%f/%t] "}
        _run([cmake, "-S", str(src), "-B", str(bld), *generator, *args], logf, log, "cmake configure", env)
        _run([cmake, "--build", str(bld), "--target", *TOOLS, "-j", str(jobs)], logf, log,
             f"cmake --build (-j{jobs})", env, progress=True)
        for t in TOOLS:
            shutil.copy2(bld / "bin" / t, out / t)
        version_output = _version_output(out / "llama-server")
        seconds = round(time.monotonic() - t0, 1)
        info = {
            "llama-cpp-python": dest.name,
            "llama.cpp_commit": commit,
            "sdist": {"file": str(tarball), "sha256": _sha256(tarball)},
            "cmake_args": [*generator, *args],
            "jobs": jobs,
            "tools": {t: str(dest / t) for t in TOOLS},
            "version_output": version_output,
            "build_seconds": seconds,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "cpu": _cpu_model(),  # GGML_NATIVE: the binaries are for this CPU
        }
        (out / "build.json").write_text(json.dumps(info, indent=2) + "\n")
        logf.close()
        shutil.move(log, out / "build.log")
    console.print(f"[green]✓[/green] llama.cpp's tools built in {seconds / 60:.1f} min: {dest}", highlight=False)


def _extract(tarball: Path, work: Path) -> Path:
    """Unpack vendor/llama.cpp and its git submodule directory; returns the llama.cpp source."""
    top = tarball.name.removesuffix(".tar.gz")
    keep = (f"{top}/vendor/llama.cpp/", f"{top}/.git/modules/vendor/llama.cpp/")
    skip = tuple(f"{top}/vendor/llama.cpp/{s}" for s in _SKIP)
    console.print("  unpacking llama.cpp from the sdist", highlight=False)
    try:
        with tarfile.open(tarball) as tf:
            members = [m for m in tf.getmembers() if m.name.startswith(keep) and not m.name.startswith(skip)]
            tf.extractall(work, members=members, filter="data")
    except (tarfile.TarError, EOFError) as e:
        tarball.unlink(missing_ok=True)  # fetched again next time
        raise RuntimeUnavailable(f"cannot read {tarball.name}: {e}") from None
    src = work / top / "vendor" / "llama.cpp"
    if not (src / "CMakeLists.txt").is_file():
        raise RuntimeUnavailable(f"{tarball.name} has no vendor/llama.cpp/CMakeLists.txt")
    return src


def _run(cmd: list[str], logf: IO[str], log: Path, stage: str, env: dict[str, str], progress: bool = False) -> None:
    """Run one build step, its output into the log; progress from ninja's `[N/M]` (make's
    `[ NN%]`). Interrupted, the step and everything it started are stopped and reaped."""
    logf.write(f"$ {shlex.join(cmd)}\n")
    logf.flush()
    if not progress:
        console.print(f"  {stage}", highlight=False)
    with (_Progress(stage) if progress else contextlib.nullcontext() as bar,
          _tool_process(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                        env=env) as proc):
        assert proc.stdout is not None
        for line in proc.stdout:
            logf.write(line)
            if bar:
                bar.line(line)
        rc = proc.wait()
    logf.flush()
    if rc != 0:
        raise RuntimeUnavailable(f"building llama.cpp's tools failed at {stage} (exit {rc}): "
                                 f"{_first_error(log)}; full log: {log}")


class _Progress:
    """A bar on a terminal; elsewhere (CI logs) a line every 10%."""

    def __init__(self, stage: str):
        self.stage, self.t0, self.shown = stage, time.monotonic(), -1
        self.bar = self.task = None

    def __enter__(self) -> _Progress:
        if sys.stderr.isatty():
            self.bar = Progress(TextColumn(f"  {self.stage}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True)
            self.bar.start()
        else:
            console.print(f"  {self.stage}", highlight=False)
        return self

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.stop()

    def line(self, line: str) -> None:
        if m := _NINJA.match(line):
            done, total = int(m[1]), int(m[2])
        elif m := _MAKE.match(line):
            done, total = int(m[1]), 100
        else:
            return
        if self.bar:
            if self.task is None:
                self.task = self.bar.add_task("", total=total)
            self.bar.update(self.task, completed=done, total=total)
        elif total and (tenth := done * 10 // total) > self.shown:
            self.shown = tenth
            elapsed = time.monotonic() - self.t0
            console.print(f"  {tenth * 10:3d}% ({done}/{total} steps, {elapsed / 60:.1f} min)", highlight=False)


def _first_error(log: Path) -> str:
    """The log's first error, on one line (CMake's continue on indented lines)."""
    lines = log.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        if line.startswith("$ ") or not re.search(r"\berror\b", line, re.IGNORECASE):
            continue
        parts = [line]
        if line.startswith("CMake Error"):
            for nxt in lines[i + 1:i + 12]:
                if nxt and not nxt[0].isspace():
                    break
                parts.append(nxt)
        return _one_line(" ".join(parts))
    rest = [s for s in lines if s.strip() and not s.startswith("$ ")]
    return _one_line(rest[-1] if rest else "no output")


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _version_output(binary: Path) -> str:
    try:
        r = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeUnavailable(f"the built {binary.name} does not run: {e}") from None
    out = (r.stdout + r.stderr).strip()
    if r.returncode != 0:
        raise RuntimeUnavailable(f"the built {binary.name} does not run (exit {r.returncode}): {_one_line(out)}")
    return out


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return None
