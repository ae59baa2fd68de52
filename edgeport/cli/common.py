"""What every command shares: errors as one line (exit 2), option checks, model names, quiet libraries.

Imports nothing heavy at module level: `edgeport --help` must start fast."""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path

from invoke import Exit

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

DEFAULT_MODEL = "tiny-gpt-oss"  # a bundled checkpoint (edgeport/models), found from any directory
MXFP4_MODEL = "tiny-gpt-oss-mxfp4"  # built on demand by `edgeport models`
BUNDLED = ("tiny-gpt-oss", "tiny-llama", MXFP4_MODEL)


def cli(fn):
    """Expected failures print one line and exit 2; never a traceback. Ctrl-C and SIGTERM
    print one line and exit 128 + the signal (130, 143), as shells and CI runners expect."""
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        from edgeport.core.atomic import interrupts, signal_of
        from edgeport.core.errors import EdgeportError

        try:
            with interrupts():
                return fn(*a, **kw)
        except EdgeportError as e:
            print(f"edgeport: error: {e}", file=sys.stderr)
            raise Exit(code=2) from None
        except KeyboardInterrupt as e:
            sig = signal_of(e)
            print(f"edgeport: interrupted ({sig.name}); nothing half-written was left behind", file=sys.stderr)
            raise Exit(code=128 + sig) from None
    return wrapper


def one_line_usage_errors() -> None:
    """Invoke answers a malformed typed option (`--port abc`, `--temperature hot`) with a ValueError
    traceback, and its own parse errors (an unknown flag, a flag without its value, a missing
    --artifact) with exit 1. Every edgeport command answers a usage mistake with one line on stderr
    and exit 2, as `python -m edgeport.serving` (argparse) does: both become invoke's Exit(message, 2)."""
    from invoke.exceptions import ParseError
    from invoke.parser import Argument, Parser

    if getattr(Argument.set_value, "edgeport", False):
        return
    set_value, parse_argv = Argument.set_value, Parser.parse_argv

    def checked_set_value(self, value, cast=True):
        try:
            set_value(self, value, cast)
        except (TypeError, ValueError):
            kind = {int: "an integer", float: "a number"}.get(self.kind, getattr(self.kind, "__name__", "a value"))
            raise Exit(f"edgeport: error: --{self.name.replace('_', '-')} takes {kind}, not {value!r}",
                       code=2) from None

    def checked_parse_argv(self, argv):
        try:
            return parse_argv(self, argv)
        except ParseError as e:  # invoke names a flag by its repr: "<Argument: port (p) [int]>"
            msg = re.sub(r"<Argument: (\w+)[^>]*>", lambda m: "--" + m[1].replace("_", "-"), str(e))
            raise Exit(f"edgeport: error: {msg}", code=2) from None

    checked_set_value.edgeport = True
    Argument.set_value, Parser.parse_argv = checked_set_value, checked_parse_argv


def number(option: str, value, kind=int, *, least=None, most=None, above=None):
    """An option's value as `kind`, in range; a user mistake is an EdgeportError (one line, exit 2).
    `least`/`most`: inclusive bounds; `above`: exclusive lower bound."""
    from edgeport.core.errors import EdgeportError

    name = f"--{option.replace('_', '-')}"
    try:
        v = kind(str(value).strip()) if not isinstance(value, kind) or isinstance(value, bool) else value
    except ValueError:
        raise EdgeportError(f"{name} takes {'an integer' if kind is int else 'a number'}, not {value!r}") from None
    if kind is float and v != v:  # NaN compares false with every bound
        raise EdgeportError(f"{name} takes a number, not {value!r}")
    if least is not None and v < least:
        raise EdgeportError(f"{name} must be at least {least}, not {value}")
    if above is not None and v <= above:
        raise EdgeportError(f"{name} must be more than {above}, not {value}")
    if most is not None and v > most:
        raise EdgeportError(f"{name} must be at most {most}, not {value}")
    return v


def existing(option: str, path) -> Path:
    """A path the user named that must exist (an artifact, a model, a file)."""
    from edgeport.core.errors import EdgeportError

    p = Path(path)
    if not p.exists():
        raise EdgeportError(f"--{option.replace('_', '-')} {path}: no such file or directory")
    return p


def model_path(model: str) -> str:
    """--model as given, or a bundled checkpoint's directory for its name (tiny-gpt-oss, tiny-llama,
    tiny-gpt-oss-mxfp4): a local path of that name wins; anything else is a hub id."""
    if Path(model).exists() or model not in BUNDLED:
        return model
    from edgeport.models import bundled

    return str(bundled(model))


def plan_model(model: str) -> str:
    """plan's --model: a path, a bundled checkpoint, or a shipped config's name (gpt-oss-20b, gpt-oss-120b)."""
    if Path(model).exists():
        return model
    shipped = Path(__file__).resolve().parent.parent / "planning" / "configs" / f"{model}.json"
    return str(shipped) if "/" not in model and shipped.is_file() else model_path(model)


def stdout():
    """A command's result (tables, summaries) goes to stdout; progress and errors to stderr."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 140)


def quiet_libs() -> None:
    """transformers and gguf chatter on stderr; silence them where they are installed."""
    import importlib.util
    import logging

    logging.getLogger("gguf").setLevel(logging.WARNING)
    if importlib.util.find_spec("transformers") is None:  # a base install (no export extra)
        return
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def artifact_runtime(path) -> str | None:
    """The runtime `runtimes.load(path)` would pick, read without loading it (None: not known here)."""
    import json

    p = Path(path)
    if (p / "manifest.json").is_file():
        try:
            return json.loads((p / "manifest.json").read_text())["runtime"]["name"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # runtimes.load says what is wrong with it
    if (p / "config.json").is_file():
        return "transformers"
    return "llama.cpp" if p.suffix == ".gguf" else None


def require_runtime_of(path, what: str) -> None:
    """`what` runs the artifact's runtime in this process: its extra must be installed."""
    from edgeport.core.extras import require_runtime

    runtime = artifact_runtime(path)
    if runtime:
        require_runtime(runtime, what)
