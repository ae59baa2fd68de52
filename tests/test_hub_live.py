"""The Hub for real: runs only where HF_TOKEN is set and huggingface.co answers (not on the
project's machines, which cannot reach it). Pushes a tiny artifact to a private repo of the
token's user, pulls it back byte for byte, and deletes the repo."""

from __future__ import annotations

import os
import uuid

import pytest


def _hub_reachable() -> bool:
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not os.environ.get("HF_TOKEN") or not _hub_reachable(),
                                reason="needs HF_TOKEN and network access to huggingface.co")


def test_push_pull_round_trip(exported, tmp_path):
    from huggingface_hub import HfApi

    from edgeport.publishing.transfer import pull, push

    artifact, _ = exported("cpu-llama")
    api = HfApi()
    repo = f"{api.whoami()['name']}/edgeport-live-{uuid.uuid4().hex[:8]}"
    api.create_repo(repo, private=True)
    try:
        pinned = push(artifact, f"hf://{repo}@v1", hub_api=api)
        out, got = pull(f"hf://{repo}@v1", tmp_path / "pulled", hub_api=api)
        assert got == pinned
        files = sorted(p.relative_to(artifact) for p in artifact.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
        assert all((artifact / f).read_bytes() == (out / f).read_bytes() for f in files)
    finally:
        api.delete_repo(repo)
