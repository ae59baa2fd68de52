"""Hugging Face Hub: one atomic commit holding every artifact file and the generated model
card, an optional tag on that commit; pull pinned to one commit and verified against the
manifest.json it carries. `api` is an `HfApi` (tests pass a recorder)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from edgeport.core import manifest as mf
from edgeport.core.atomic import check_writable, staging
from edgeport.core.errors import EdgeportError

from . import modelcard
from .artifact import File, listed, load_manifest, restore_modes, sha256_of, verify_pulled
from .errors import PublishError
from .uri import HubRef

CARD = "README.md"


def default_api():
    """HfApi reading HF_TOKEN (or the login store) itself; the token never passes through us."""
    from huggingface_hub import HfApi

    return HfApi()


def _hub_error(e: Exception, what: str) -> PublishError:
    """A one-line error without the request's headers (which hold the token)."""
    status = getattr(getattr(e, "response", None), "status_code", None)
    kind = type(e).__name__
    if status in (401, 403):
        return PublishError(f"{what}: not authorized (HTTP {status}); set HF_TOKEN to a token with write access")
    if status == 404:
        return PublishError(f"{what}: not found on the Hub (HTTP 404)")
    msg = str(e).splitlines()[0] if str(e) else kind
    return PublishError(f"{what}: {kind}{f' (HTTP {status})' if status else ''}: {msg[:200]}")


def push(api, ref: HubRef, root: Path, m: dict, files: list[File]) -> str:
    """Create the repo if needed, commit every file plus README.md in one commit, tag it if
    the URI names a revision. Returns the commit id."""
    from huggingface_hub import CommitOperationAdd

    if any(f.path == CARD for f in files):
        raise PublishError(f"the artifact has its own {CARD}; the Hub card would replace it")
    card = modelcard.build(m, ref.repo_id).encode()
    ops = [CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=str(root / f.path)) for f in files]
    ops.append(CommitOperationAdd(path_in_repo=CARD, path_or_fileobj=card))
    print(f"pushing {len(files)} files + {CARD} to {ref} in one commit "
          f"({sum(f.size for f in files) / 2**20:.1f} MiB)", flush=True)
    try:
        api.create_repo(repo_id=ref.repo_id, repo_type="model", exist_ok=True)
        info = api.create_commit(repo_id=ref.repo_id, repo_type="model", operations=ops,
                                 commit_message=f"edgeport: {m['target']} artifact of {m['source'].get('model')}")
        if ref.revision:
            api.create_tag(repo_id=ref.repo_id, repo_type="model", tag=ref.revision, revision=info.oid)
    except EdgeportError:
        raise
    except Exception as e:  # huggingface_hub's HTTP errors, network errors
        raise _hub_error(e, str(ref)) from None
    return info.oid


def pull(api, ref: HubRef, out: Path, force: bool = False) -> tuple[Path, str]:
    """Resolve the revision to one commit, download manifest.json and then exactly the files it
    lists, hash each against it, and move the result to `out` only when all match."""
    check_writable(Path(out), force)  # before downloading anything
    try:
        sha = api.model_info(ref.repo_id, revision=ref.revision).sha
        with tempfile.TemporaryDirectory(prefix=".edgeport-hub-", dir=Path(out).absolute().parent) as dl:
            api.hf_hub_download(repo_id=ref.repo_id, filename=mf.NAME, revision=sha, local_dir=dl)
            m = _load(Path(dl))
            want = listed(m)
            api.snapshot_download(repo_id=ref.repo_id, revision=sha, local_dir=dl,
                                  allow_patterns=[f.path for f in want])
            with staging(Path(out), force) as tmp:
                got = []
                for f in [*want, File(mf.NAME, 0, "")]:
                    src = Path(dl) / f.path
                    if not src.is_file():
                        raise PublishError(f"{ref}: {f.path} is listed in manifest.json but not in the repository")
                    dst = tmp / f.path
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(src, dst)
                    got.append(File(f.path, dst.stat().st_size, sha256_of(dst)))
                verify_pulled(tmp, got)
                restore_modes(tmp, m)  # the Hub keeps no file modes; the manifest does
    except EdgeportError:
        raise
    except Exception as e:
        raise _hub_error(e, str(ref)) from None
    return Path(out), sha


def _load(root: Path) -> dict:
    return load_manifest(root)
