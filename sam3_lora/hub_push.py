"""Push an adapter folder (or a merged model folder) to the Hugging Face Hub with the user's token.

Before anything is sent, the folder is checked as the Hub will read it (`check_push_folder`):
  - README.md is a model card whose metadata `ModelCard.load` parses, with library_name peft
    (adapter) or transformers (merged) and base_model a Hub id (sam3_lora.hub_ids), never a path;
  - an adapter holds adapter_config.json (its base_model_name_or_path the same Hub id) and
    adapter_model.safetensors; a merged model holds config.json and model.safetensors
    (or its shard index).
Only PUSHED_PATTERNS go up (never checkpoints or optimiser states). The token is the one given,
else huggingface_hub's own (HF_TOKEN, or `hf auth login`); HF_ENDPOINT points at another Hub.
"""
from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import HfApi, ModelCard

from sam3_lora.adapter_io import CONFIG_FILE, WEIGHTS_FILE
from sam3_lora.hub_ids import is_hub_id
from sam3_lora.model_card import CARD_FILE

PUSHED_PATTERNS = ["*.json", "*.safetensors", "*.md", "*.png", "*.txt", "LICENSE"]
MERGED_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


class PushFolderError(ValueError):
    """The folder is not what the Hub expects; the message names the file and what to do."""


def _card_metadata(folder: Path) -> dict:
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise PushFolderError(f"{folder} has no {CARD_FILE} model card; `sam3-lora train` and the studio write one")
    try:
        metadata = ModelCard.load(card_path).data.to_dict()
    except ValueError as error:
        raise PushFolderError(f"{card_path}: the model card's metadata does not parse: {error}") from None
    if not metadata:
        raise PushFolderError(f"{card_path} has no metadata header (library_name, base_model, license); an adapter "
                              "trained before cards had one needs a new card: train it again, or write one with "
                              "sam3_lora.model_card.write_model_card")
    base = metadata.get("base_model")
    if not isinstance(base, str) or not is_hub_id(base):
        raise PushFolderError(
            f"{card_path}: base_model is {base!r}, not a Hub id; the Hub links an adapter to its base by that id. "
            "Train with model.base_model (or SAM3_BASE_MODEL in the studio) set to the id the weights came from, "
            "e.g. facebook/sam3")
    return metadata


def check_push_folder(folder: str | Path) -> str:
    """"adapter" or "merged": what `folder` holds, checked as above; PushFolderError otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PushFolderError(f"{folder} is not a folder")
    metadata = _card_metadata(folder)
    library = metadata.get("library_name")
    if library == "peft":
        missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
        if missing:
            raise PushFolderError(f"{folder} is missing {missing}; an adapter folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
        recorded = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8")).get("base_model_name_or_path")
        if recorded != metadata["base_model"]:
            raise PushFolderError(f"{folder / CONFIG_FILE}: base_model_name_or_path is {recorded!r} but the card names "
                                  f"{metadata['base_model']!r}; they must be the same Hub id")
        return "adapter"
    if library == "transformers":
        if not (folder / "config.json").is_file() or not any((folder / name).is_file() for name in MERGED_WEIGHTS):
            raise PushFolderError(f"{folder} is missing config.json or model.safetensors; export it with "
                                  "`sam3-lora export --merge`")
        return "merged"
    raise PushFolderError(f"{folder / CARD_FILE}: library_name is {library!r}; expected peft (an adapter) or "
                          "transformers (a merged model)")


def pushed_files(folder: str | Path) -> list[str]:
    """Names of the files of `folder` that a push sends (PUSHED_PATTERNS, top level only), sorted."""
    from fnmatch import fnmatch

    return sorted(path.name for path in Path(folder).iterdir()
                  if path.is_file() and any(fnmatch(path.name, pattern) for pattern in PUSHED_PATTERNS))


def is_hub_transport_error(error: Exception) -> bool:
    """An HTTP status the Hub answered (HfHubHTTPError is an OSError) or a connection that failed
    (the HTTP client's own error types, whichever client huggingface_hub uses)."""
    return isinstance(error, OSError) or type(error).__module__.split(".")[0] in ("httpx", "httpx2", "requests")


def push_folder(folder: str | Path, repo_id: str, token: str | None = None, private: bool = True,
                commit_message: str | None = None) -> str:
    """Check `folder`, create `repo_id` if needed (private by default) and upload; returns the commit URL."""
    if not is_hub_id(repo_id):
        raise PushFolderError(f"repository {repo_id!r} is not a Hub id; use your-name/model-name")
    kind = check_push_folder(folder)
    api = HfApi(token=token or None)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, allow_patterns=pushed_files(folder),
                             commit_message=commit_message or f"Upload SAM3 LoRA {kind} with sam3-lora")
    return info.commit_url
