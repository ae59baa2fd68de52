"""edgeport: export Hugging Face LLM checkpoints to edge-device artifacts, prove parity, ship them.

One import root. `edgeport.core` is the ground floor (errors, manifest, source, architectures,
atomic writes, progress, log capture, tool environments); the rooms above it (runtimes, parity,
publishing, targets, export, planning, benchmarking, serving) depend downward only
(tests/test_layering.py). Importing this package imports nothing heavy.
"""

__version__ = "0.1.0"
