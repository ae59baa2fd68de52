"""How a plan is shown: a rich table for people, JSON for machines, and the markdown matrix
of models x device profiles (one verdict line each)."""

from __future__ import annotations

from .devices import load_all
from .memory import GIB, Plan, plan


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def render(p: Plan) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    t = Table(title=f"{p.model} on {p.device}: target {p.target} ({p.precision}), {p.runtime}", show_lines=False)
    t.add_column("item")
    t.add_column("bytes", justify="right")
    t.add_column("note")
    w = p.weights
    t.add_row("weights (artifact files)", _gib(w.file_bytes), w.files)
    t.add_row("weights (resident)", _gib(w.resident_bytes), "in memory while it runs")
    t.add_row("KV cache", _gib(p.kv_bytes), f"context {p.context} x {p.concurrency} sequence(s)")
    t.add_row("runtime buffers", _gib(p.buffers_bytes), "compute buffer / activations / runtime overhead")
    for name, pool in p.pools.items():
        parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in pool.parts.items())
        style = "green" if pool.headroom >= 0 else "red"
        t.add_row(f"[{style}]{name}: need / usable[/{style}]", f"{_gib(pool.need)} / {_gib(pool.usable)}",
                  f"headroom {pool.headroom / GIB:+.2f} GiB ({parts})")
    console.print(t)
    console.print(f"[bold]{'FITS' if p.fits else 'DOES NOT FIT'}[/bold] - {p.verdict()}", highlight=False)
    for s in p.suggestions:
        mark = "[green]fits[/green]" if s["fits"] else "[yellow]not enough[/yellow]"
        cmd = f"\n      {s['command']}" if s.get("command") else ""
        console.print(f"  - {mark} {s['change']}: {s['what']}{cmd}", highlight=False)
    for n in [f"weights: {w.note}", *p.notes]:
        console.print(f"  note: {n}", highlight=False)
    if p.reference:
        r = p.reference
        console.print(f"  reference: {r['decode_tokens_per_s']} tok/s decode for {r['model']} "
                      f"({r.get('runtime', '')}; {r.get('conditions', '')}) - {r['source']}", highlight=False)


def matrix(models: list[str], context: int | None = None) -> str:
    """Markdown: one row per model x device, each verdict with the change that makes it fit."""
    rows = ["| model | device | target | weights | KV | buffers | need / usable (pool) | verdict |",
            "|---|---|---|---|---|---|---|---|"]
    for m in models:
        for name in load_all():
            p = plan(m, name, context=context)
            pool = p.pools[p.binding]
            rows.append(f"| {p.model} | {name} | {p.target} {p.precision} | {p.weights.resident_bytes / GIB:.1f} GiB "
                        f"| {p.kv_bytes / GIB:.2f} GiB | {p.buffers_bytes / GIB:.2f} GiB "
                        f"| {pool.need / GIB:.1f} / {pool.usable / GIB:.1f} GiB ({p.binding}) | {p.verdict()} |")
    return "\n".join(rows)
