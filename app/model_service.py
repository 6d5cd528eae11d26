"""The SAM3 the studio proposes with: SAM3_MODEL, or the tiny random SAM3 when that cannot load.

    base   = load_predictor(SAM3_MODEL)                      first use, once per process
             on ModelLoadError, or at once when SAM3_MODEL is a hub id that is not cached and
             HF_HUB_OFFLINE is set or the hub does not answer in 1 s (hub_unreachable):
             DATA_DIR/models/tiny-sam3 (written once) and a banner
             saying the masks are random, with the reason
    choice = "base" | an adapter folder  -> load_predictor(base source, adapter)
             at most `max_loaded` predictors stay in memory (least recently used leaves)

    tracker = load_tracker(base source)                       first click; one per base SAM3 (adapters
             train the Sam3Model only; clicks read the chosen model's ViT features, cached
             in `cache` and shared with Find all)

One `ProposalModels` per studio process (Studio.models). Loading is serialised by a
lock; predictions on a loaded model run concurrently with other work. Jobs train on
`status().source`, so a fine-tune uses the same SAM3 the proposals came from.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from app.settings import Settings
from sam3_lora.model import ModelLoadError
from sam3_lora.interactive import load_tracker
from sam3_lora.predict import BackboneCache, load_predictor

logger = logging.getLogger(__name__)

BASE = "base"
TINY_FOLDER = "models/tiny-sam3"
HUB_PROBE_TIMEOUT_S = 1.0  # without network the hub client retries for 25-54 s before giving up


def hub_unreachable(requested: str, timeout_s: float = HUB_PROBE_TIMEOUT_S) -> str:
    """Why `requested` cannot come from the hub right now ("" when it may): it is not a local folder,
    not in the local Hugging Face cache, and HF_HUB_OFFLINE is set or the hub host does not answer
    a TCP connect within `timeout_s`."""
    if Path(requested).exists():
        return ""
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(requested, "config.json"), str):
            return ""  # cached: from_pretrained can load it without the network
    except Exception:  # not a valid repo id: the loader will name the problem
        return ""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return f"HF_HUB_OFFLINE is set and {requested} is not in the local Hugging Face cache"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as error:
        return f"no network: {host}:{port} did not answer within {timeout_s:g} s ({error.__class__.__name__})"
    return ""


@dataclass(frozen=True)
class ModelStatus:
    """Which SAM3 is loaded. `fallback_reason` is set when SAM3_MODEL failed and the tiny model runs."""

    requested: str
    source: str
    fallback_reason: str = ""

    @property
    def is_fallback(self) -> bool:
        return bool(self.fallback_reason)

    def banner(self) -> str:
        if self.is_fallback:
            return (f"⚠️ **Tiny random SAM3 in use**: its masks are noise, useful only to try the workflow. "
                    f"`{self.requested}` could not be loaded ({self.fallback_reason}). "
                    "Set SAM3_MODEL to a folder or hub id of the real weights and restart.")
        return f"Model: SAM3 from `{self.source}`"


def tiny_model_folder(settings: Settings) -> Path:
    """DATA_DIR/models/tiny-sam3, written on first call (seeded, so every studio gets the same weights);
    a folder written before the click tracker existed gets its tracker/ added."""
    from sam3_lora.tiny import TRACKER_SUBFOLDER, save_tiny_sam3, save_tiny_tracker

    folder = settings.DATA_DIR / TINY_FOLDER
    if not (folder / "config.json").is_file():
        save_tiny_sam3(folder)
    elif not (folder / TRACKER_SUBFOLDER / "config.json").is_file():
        save_tiny_tracker(folder)
    return folder


class ProposalModels:
    """Loaded predictors by choice ("base" or an adapter folder), a shared BackboneCache, the status."""

    def __init__(self, settings: Settings, load: Callable = load_predictor, max_loaded: int = 2,
                 load_click_tracker: Callable = load_tracker) -> None:
        self.settings = settings
        self.cache = BackboneCache(max_images=4)
        self.tracker_cache = BackboneCache(max_images=4)  # the tracker's neck maps of the same images
        self._load = load
        self._load_tracker = load_click_tracker
        self._tracker: tuple[str, object] | None = None
        self._max_loaded = max_loaded
        self._lock = threading.Lock()
        self._status: ModelStatus | None = None
        self._loaded: OrderedDict[str, tuple] = OrderedDict()

    def loaded_status(self) -> ModelStatus | None:
        """The status if the base model has been loaded, else None (does not load)."""
        return self._status

    def status(self) -> ModelStatus:
        """Load the base model if needed; return which SAM3 runs."""
        self.get(None)
        return self._status

    def get(self, adapter: str | Path | None) -> tuple:
        """(model, tokenizer) for the base SAM3 (`adapter` None) or the base plus the adapter folder."""
        key = BASE if adapter is None else str(adapter)
        with self._lock:
            if self._status is None:
                self._loaded[BASE] = self._load_base()
            if key not in self._loaded:
                base_source = self._status.source
                self._loaded[key] = self._load(base_source) if key == BASE else self._load(base_source, adapter=key)
            self._loaded.move_to_end(key)
            while len(self._loaded) > self._max_loaded:
                self._loaded.popitem(last=False)  # least recently used; never `key`, which is last
            return self._loaded[key]

    def tracker(self):
        """The click tracker (Sam3TrackerModel) of the base SAM3 in use; loaded on first call."""
        source = self.status().source
        with self._lock:
            if self._tracker is None or self._tracker[0] != source:
                self._tracker = (source, self._load_tracker(source))
            return self._tracker[1]

    def _load_base(self) -> tuple:
        requested = self.settings.SAM3_MODEL
        try:
            if unreachable := hub_unreachable(requested):  # fall back at once, not after the hub's retries
                raise ModelLoadError(unreachable)
            predictor = self._load(requested)
            self._status = ModelStatus(requested=requested, source=requested)
        except ModelLoadError as error:
            reason = str(error.__cause__ or error).splitlines()[0][:300]
            logger.warning("SAM3 from %r failed (%s); using the tiny random SAM3", requested, reason)
            tiny = str(tiny_model_folder(self.settings))
            predictor = self._load(tiny)
            self._status = ModelStatus(requested=requested, source=tiny, fallback_reason=reason)
        return predictor

    def forget(self, adapter: str | Path) -> None:
        """Drop a loaded adapter predictor (its folder was deleted)."""
        with self._lock:
            self._loaded.pop(str(adapter), None)

    def warm_up_in_background(self) -> threading.Thread:
        """Load the base model on a daemon thread, so the first "Find all" does not wait for it."""
        def warm() -> None:
            try:
                self.status()
            except Exception:  # reported again, with its message, on first use
                logger.exception("loading the proposal model failed")

        thread = threading.Thread(target=warm, name="model-warm-up", daemon=True)
        thread.start()
        return thread
