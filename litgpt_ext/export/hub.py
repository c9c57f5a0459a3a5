"""Upload a folder (an exported model, a dataset) to the Hugging Face Hub (token from ``HF_TOKEN`` only; ``HF_ENDPOINT`` is honoured)."""

from __future__ import annotations

import os
from pathlib import Path

from litgpt_ext.errors import UserError


def make_api(token: str):
    from huggingface_hub import HfApi

    return HfApi(token=token, endpoint=os.environ.get("HF_ENDPOINT"))


def push_folder(
    folder: Path,
    repo_id: str,
    private: bool,
    api=None,
    repo_type: str = "model",
    message: str = "Upload with litgpt-ext export_hf",
) -> str:
    token = os.environ.get("HF_TOKEN")
    if api is None:
        if not token:
            raise UserError("set HF_TOKEN in the environment to push to the Hub", field="push_to_hub")
        api = make_api(token)
    api.create_repo(repo_id=repo_id, repo_type=repo_type, private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type, commit_message=message)
    return str(getattr(info, "commit_url", info))
