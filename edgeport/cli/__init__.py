"""The `edgeport` command: the user tasks as one Invoke Collection, run by Invoke's own Program.

`edgeport export …` anywhere and `edgeport export …` in a checkout (tasks.py adds the dev chores to
this collection) run the same task. Task modules import nothing heavy at module level, so
`edgeport --help` starts fast; each command imports what it needs when it runs."""

from __future__ import annotations

from invoke import Collection, Program

from edgeport import __version__

from .bench import bench
from .build import export, models, parity, toolenvs, tools
from .common import one_line_usage_errors
from .deploy import deploy
from .generate import chat, run, serve
from .plan import plan
from .ship import pull, push, show

one_line_usage_errors()

TASKS = (export, parity, run, chat, serve, show, bench, plan, push, pull, deploy, tools, toolenvs, models)
namespace = Collection(*TASKS)

def help_first(argv: list[str], namespace: Collection) -> list[str]:
    """`edgeport COMMAND … --help` as Invoke reads it, `edgeport --help COMMAND` (otherwise Invoke
    first asks for COMMAND's required options). Only when a known command is named; `-h` too,
    unless it is that command's own short flag."""
    args = argv[1:]
    for i, a in enumerate(args):
        if a in namespace.task_names:
            rest = args[i + 1:]
            if "--help" in rest or ("-h" in rest and "h" not in _short_flags(namespace[a])):
                return [argv[0], *args[:i], "--help", a]
            break
    return argv


def _short_flags(task) -> set[str]:
    return {n for arg in task.get_arguments() for n in arg.names if len(n) == 1}


class EdgeportProgram(Program):
    """Invoke's Program, with `COMMAND --help` accepted as well as `--help COMMAND`."""

    def normalize_argv(self, argv) -> None:
        super().normalize_argv(argv)
        self.argv = help_first(list(self.argv), self.namespace)


program = EdgeportProgram(namespace=namespace, name="edgeport", binary="edgeport", version=__version__)


def main(argv: list[str] | None = None) -> None:
    """The console script: `edgeport COMMAND [--options]` (`edgeport --help` lists the commands)."""
    import os
    import sys

    try:
        program.run(argv)
    except BrokenPipeError:  # `edgeport --help | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
