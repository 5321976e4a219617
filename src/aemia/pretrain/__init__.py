"""Self-supervised pretraining from unannotated images (Models Genesis, TransVW, DiRA, CAiD; METHODS.md §1, §6).

:mod:`aemia.pretrain.genesis` holds the four published input transformations and :class:`GenesisTransform`;
:mod:`aemia.pretrain.cubes` extracts normalised training cubes / patches from images; :mod:`aemia.pretrain.moco`
is MoCo-v2 with restoration (CAiD; DiRA adds :mod:`aemia.pretrain.dira`'s adversary), on the views of
:mod:`aemia.pretrain.views`.
"""

from aemia.pretrain.cubes import (
    CPU_CUBES,
    PAPER_CUBES,
    CubeBatch,
    CubeConfig,
    extract_cubes,
    extract_patches_2d,
    normalize_image,
    passes_tissue_filter,
    tissue_fraction,
)
from aemia.pretrain.genesis import GenesisResult, GenesisTransform

__all__ = ["CPU_CUBES", "PAPER_CUBES", "CubeBatch", "CubeConfig", "GenesisResult", "GenesisTransform",
           "extract_cubes", "extract_patches_2d", "normalize_image", "passes_tissue_filter", "tissue_fraction"]
