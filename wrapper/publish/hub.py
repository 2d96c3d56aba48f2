"""The Hugging Face side of `ftw publish`: the repository id, the token, the upload.

The token is huggingface_hub's own: HF_TOKEN, else what `hf auth login` saved (get_token()).
ftw only hands it to HfApi; it is never printed, logged or written, and the staged folder is
searched for it before anything is uploaded (stage.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx  # huggingface_hub's HTTP client (a dependency of it): its network errors are not OSErrors

from wrapper.core.errors import FtwError

HUB_URL = "https://huggingface.co"
LOGIN_HINT = (
    "Set HF_TOKEN for this shell, or log in once with huggingface_hub's CLI (in .venv; the token needs "
    "the write role): hf auth login"
)


def check_repo_id(repo_id: str, option: str = "--repo") -> None:
    """USER/NAME with the Hub's characters (huggingface_hub's validate_repo_id), the owner included."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    example = f"e.g. {option} alice/my-model"
    if repo_id.count("/") != 1:
        raise FtwError(f"{option} {repo_id!r}: give the repository as USER/NAME (or ORG/NAME), {example}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise FtwError(
            f"{option} {repo_id!r} is not a Hugging Face repository id: {exc} "
            f"Use USER/NAME with letters, digits, '-', '_' and '.', {example}"
        ) from None


def known_tokens() -> list[str]:
    """Every Hugging Face token this process could see (to search the staged files for them)."""
    found = {os.environ.get(name) for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    found.add(hub_token())
    return sorted(token for token in found if token)


def hub_token() -> str | None:
    from huggingface_hub import get_token

    try:
        return get_token()
    except Exception:  # noqa: BLE001 - an OIDC exchange that fails (HF_OIDC_RESOURCE set) is no token
        return None


def require_token() -> str:
    token = hub_token()
    if not token:
        raise FtwError(
            f"no Hugging Face token here: HF_TOKEN is not set and nobody is logged in (--dry-run needs none). "
            f"{LOGIN_HINT}"
        )
    return token


def repo_url(repo_id: str) -> str:
    return f"{HUB_URL}/{repo_id}"


def upload(folder: Path, repo_id: str, private: bool, token: str, commit_message: str) -> str:
    """Create the model repository if it is missing, then upload the folder as one commit (with
    huggingface_hub's progress bars). Returns the commit's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=folder, repo_type="model", commit_message=commit_message
        )
    except HfHubHTTPError as exc:
        raise FtwError(upload_failed(repo_id, exc)) from None
    except (httpx.HTTPError, OSError) as exc:  # no network, DNS, a proxy, offline mode
        raise FtwError(
            f"the upload to {repo_id} did not get through ({type(exc).__name__}: {exc}). The folder stays staged "
            f"in {folder}; re-run the same command when the Hub is reachable."
        ) from None
    return getattr(commit, "commit_url", None) or repo_url(repo_id)


def upload_failed(repo_id: str, exc) -> str:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status == 401:
        return f"the Hub refused the token (401 Unauthorized). {LOGIN_HINT}"
    if status == 403:
        return (
            f"the token may not write to {repo_id} (403 Forbidden): it needs the write role, and the owner "
            f"'{repo_id.split('/')[0]}' must be you or an organization you can write to. {LOGIN_HINT}"
        )
    return f"the upload to {repo_id} failed: {str(exc).splitlines()[0]}. Re-run the same command to try again."
