"""Figures (matplotlib, Agg): one artifact's speed against its raw backend; the comparison of
one model's artifacts (size vs quality vs speed)."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def speed_figure(report: dict, out: Path) -> Path:
    plt = _plt()
    rows = report["workloads"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, key, label in zip(axes, ("prefill_tps", "decode_tps", "ttft_s"),
                              ("prefill tokens/s", "decode tokens/s", "time to first token (ms)"), strict=True):
        scale = 1000 if key == "ttft_s" else 1
        names = [f"{r['name']}\n({r['prompt_tokens']} tok)" for r in rows]
        ours = [r[key]["median"] * scale for r in rows]
        err = [[(r[key]["median"] - r[key]["min"]) * scale for r in rows],
               [(r[key]["max"] - r[key]["median"]) * scale for r in rows]]
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], ours, 0.4, yerr=err, label="edgeport runtime")
        if all("raw" in r for r in rows):
            ax.bar([i + 0.2 for i in x], [r["raw"][key] * scale for r in rows], 0.4,
                   label=rows[0]["raw"]["backend"])
        ax.set_xticks(list(x), names)
        ax.set_title(label)
    axes[0].legend(fontsize=8)
    a = report["artifact"]
    mach = report["machine"]
    fig.suptitle(f"{a['target']} / {a['runtime']} on {mach['cpu']} ({mach['threads']} threads)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def compare_figure(result: dict, out: Path) -> Path:
    """Size (x) against quality retained (y); marker area by decode tokens/s, labelled."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = [r for r in result["rows"] if r["quality_retained_pct"] is not None]
    top = max(r["decode_tps"] for r in rows)
    for r in rows:
        ax.scatter(r["bytes"] / 2**20, r["quality_retained_pct"], s=60 + 600 * r["decode_tps"] / top, alpha=0.6)
        ax.annotate(f"{Path(r['name']).name} ({r['runtime']}, {r['quantization']})\n"
                    f"{r['decode_tps']:.0f} tok/s, TTFT {r['ttft_ms']:.0f} ms",
                    (r["bytes"] / 2**20, r["quality_retained_pct"]), fontsize=7, xytext=(6, 4),
                    textcoords="offset points")
    ax.set_xlabel("size (MiB)")
    ax.set_ylabel("quality retained (%) = 100·exp(−mean KL)")
    ax.set_title(f"{result['model']}: size vs quality (marker area: decode tokens/s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
