"""Measure what was built: speed of one artifact on this machine against its raw backend
(`speed.py`, `raw.py`), the comparison table across artifacts of one model (`compare.py`),
and load on a running OpenAI-compatible server (`serve_load.py`)."""
