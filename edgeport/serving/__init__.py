"""Serving: an OpenAI-compatible front (FastAPI) over the best engine for an artifact."""
