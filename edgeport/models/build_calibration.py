"""Write export/data/calibration.jsonl: local calibration text for INT8 SmoothQuant / AWQ
(quantizers otherwise fetch cnn_dailymail from a hub). Chunks of the same kind of text the
tiny models were trained on (Python standard library sources), never the held-out files the
parity eval set comes from. Deterministic for a given Python version; the committed file is
what exports use."""

from __future__ import annotations

import json
import random
from pathlib import Path

from edgeport.models.build_tiny import corpus_files

OUT = Path(__file__).resolve().parent.parent / "export" / "data" / "calibration.jsonl"


def main(n: int = 128, chars: int = 1200, seed: int = 0) -> None:
    rng = random.Random(seed)
    files = [f for f in corpus_files() if f.stat().st_size > 4 * chars]
    lines = []
    for f in rng.sample(files, n):
        text = f.read_text(encoding="utf-8", errors="replace")
        start = rng.randrange(0, len(text) - chars)
        chunk = text[start:start + chars]
        lines.append(json.dumps({"article": chunk, "text": chunk, "source": f.name}))
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT} ({n} chunks of {chars} characters)")


if __name__ == "__main__":
    main()
