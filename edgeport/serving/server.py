"""Start the front and its engine: `edgeport serve` and `python -m edgeport.serving` both end here."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from edgeport.core import manifest as mf
from edgeport.core.errors import EdgeportError
from edgeport.core.progress import console

from .app import Settings, create_app
from .engines import open_engine
from .options import DESCRIPTION, OPTIONS


def _event_loop_runner():
    """uvloop's event loop where it is installed (a base dependency off Windows): the front's
    per-token work is mostly socket I/O, which it does in C (edgeport/benchmarking/front_cost.py)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


class ServeError(EdgeportError):
    """A bad serve option (port in use, missing API-key variable, …)."""


def model_id(artifact: Path) -> str:
    """The name clients pass as `model`: the source model's name (the artifact's manifest)."""
    m = mf.load(artifact)
    return str(m["source"].get("model") or artifact.name).rstrip("/").split("/")[-1]


def api_key_from(env_var: str | None) -> str | None:
    if not env_var:
        return None
    key = os.environ.get(env_var, "")
    if not key:
        raise ServeError(f"--api-key-env {env_var}: that environment variable is empty or not set")
    return key


def check_options(*, port: int, parallel: int | None, queue: int, ctx: int | None, threads: int | None) -> None:
    """Every number a user gives, before anything loads (one line each, exit 2)."""
    if not 1 <= port <= 65535:
        raise ServeError(f"--port must be 1 to 65535, not {port}")
    if parallel is not None and parallel < 1:
        raise ServeError(f"--parallel must be at least 1, not {parallel}")
    if queue < 0:
        raise ServeError(f"--queue must be 0 or more, not {queue}")
    if ctx is not None and ctx < 16:
        raise ServeError(f"--ctx must be at least 16 tokens, not {ctx}")
    if threads is not None and threads < 1:
        raise ServeError(f"--threads must be at least 1, not {threads}")


def check_artifact(artifact: Path) -> None:
    if not artifact.is_dir():
        raise ServeError(f"--artifact {artifact}: no such directory")
    if not (artifact / mf.NAME).is_file():
        raise ServeError(f"--artifact {artifact}: not an edgeport artifact (no {mf.NAME}; "
                         "make one with edgeport export or edgeport pull)")


def check_port(host: str, port: int) -> None:
    import socket

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except (OSError, OverflowError) as e:  # gaierror for a bad host is an OSError
            raise ServeError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}") from None


def serve(artifact: Path, *, host: str = "127.0.0.1", port: int = 8000, parallel: int | None = None,
          queue: int = 16, ctx: int | None = None, api_key_env: str | None = None, threads: int | None = None,
          ready_file: Path | None = None) -> None:
    """Serve until SIGINT/SIGTERM. `ready_file` (for scripts and tests) gets `host:port` once serving."""
    import uvicorn


    artifact = Path(artifact)
    check_options(port=port, parallel=parallel, queue=queue, ctx=ctx, threads=threads)
    key = api_key_from(api_key_env)
    check_artifact(artifact)
    check_port(host, port)
    engine = open_engine(artifact, n_ctx=ctx, slots=parallel, threads=threads)
    settings = Settings(model_id=model_id(artifact), parallel=engine.slots, queue=queue, api_key=key)

    async def main() -> None:
        console.print(f"starting {engine.name} for {artifact} …", highlight=False)
        await engine.start()
        app = create_app(engine, settings)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=3)
        server = uvicorn.Server(config)
        server.install_signal_handlers = lambda: None  # we own SIGINT/SIGTERM below
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        try:
            task = asyncio.create_task(server.serve())
            while not server.started and not task.done():
                await asyncio.sleep(0.05)
            if server.started:
                console.print(f"serving {settings.model_id!r} ({engine.name}, {engine.slots} parallel, "
                              f"queue {queue}, context {engine.n_ctx}) at http://{host}:{port}/v1",
                              highlight=False)
                if ready_file:
                    Path(ready_file).write_text(f"{host}:{port}\n")
            await task
        finally:
            await engine.close()

    _event_loop_runner()(main())


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (exit 2), like every edgeport error."""

    def error(self, message: str):
        self.exit(2, f"edgeport: error: {message} (python -m edgeport.serving --help)\n")


def parser() -> argparse.ArgumentParser:
    """`python -m edgeport.serving`'s options: the same table (options.OPTIONS) as `edgeport serve`."""
    ap = _Parser(prog="python -m edgeport.serving", description=DESCRIPTION)
    for o in OPTIONS:
        ap.add_argument(o.flag, type=o.kind, default=o.default, required=o.required, help=o.help)
    ap.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        serve(**{o.name: getattr(a, o.name) for o in OPTIONS}, ready_file=a.ready_file)
    except EdgeportError as e:
        print(f"edgeport: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
