"""Self-restoration pretraining (Models Genesis, Zhou et al. MICCAI 2019 / MedIA 2021) on unlabelled images.

An encoder-decoder (our UNet or UNet++, ``out_channels = in_channels``) learns to restore the original patch from
its Genesis-transformed copy: sigmoid output, MSE to the original (METHODS.md §1.4). The paper's optimiser is
the default: SGD lr 1.0, momentum 0.9, the rate halved every 40 epochs (``StepLR(step=int(0.8·patience)=40,
γ=0.5)``); Adam 1e-3 is the option §1.7 recommends for small CPU runs. The pool of clean patches is fixed;
every epoch draws fresh transformations from ``default_rng([seed, epoch, index])``, so a killed run resumes
exactly (the trainer's checkpoints). Validation restores a held-out 10% of the pool under fixed
transformations.

Data: a catalog name (its training split, labels ignored) or any folder of NIfTI / DICOM / NRRD / PNG / JPEG
(searched recursively, as ``aemia data check`` does; an MSD folder gives its images).
2D images are resized to ``size`` (whole images, the fine-tuning input) or cropped into ``size`` patches when
``patches_per_image > 0``; 3D volumes give Genesis cubes (``aemia.pretrain.cubes``, CPU preset 32×32×16).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aemia.data.image import Image
from aemia.errors import InputError
from aemia.nets import create_model
from aemia.pretrain.genesis import GenesisTransform
from aemia.runs.folder import RunFolder
from aemia.train.data import EpochDataset, sample_rng
from aemia.train.trainer import TrainConfig, Trainer
from aemia.utils.io import save_figure, write_json_atomic


@dataclass
class PretrainConfig:
    data: str
    dims: int = 2
    method: str = "genesis"
    model: str = "unetpp"
    preset: str = "cpu"
    features: list[int] | None = None
    size: list[int] = field(default_factory=lambda: [128, 128])  # 2D image size / 3D cube size
    patches_per_image: int = 0  # 2D: 0 = whole resized images; N = N random crops of `size` per image
    cubes_per_volume: int = 32  # 3D (paper: 32)
    val_fraction: float = 0.1
    seed: int = 0
    words: dict[str, Any] | None = None  # TransVW: VisualWordsConfig fields (None = the CPU preset for dims)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=100, batch_size=6, lr=1.0, optimizer="sgd", momentum=0.9, nesterov=False, schedule="step",
        step_epochs=40, step_gamma=0.5, deep_supervision=False))

    def widths(self) -> list[int]:
        from aemia.runs.config import PRESETS

        return list(self.features) if self.features else list(PRESETS[self.preset])


class RestorationDataset(EpochDataset):
    """(transformed, original) pairs from a fixed pool of clean patches (N, C, *S) in [0, 1]."""

    def __init__(self, pool: np.ndarray, transform: GenesisTransform, seed: int = 0, fixed_epoch: int | None = None) -> None:
        self.pool = pool
        self.transform = transform
        self.seed = seed
        self.fixed_epoch = fixed_epoch  # validation: the same transformations every epoch

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch = self.epoch if self.fixed_epoch is None else self.fixed_epoch
        x, y = self.transform(self.pool[idx], sample_rng(self.seed, epoch, idx))
        return torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(np.ascontiguousarray(y, np.float32))


def identity_pair(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A :class:`RestorationDataset` transform for autoencoders: the image is its own target."""
    return image, image


def _images(data: str) -> tuple[list[Image] | None, np.ndarray | None, str]:
    """Unlabelled images of a catalog data set's training split or of a folder (returns images or a 2D stack)."""
    from aemia.data.catalog import get_dataset, list_datasets

    if data in list_datasets():
        ds = get_dataset(data)
        if ds.dims == 2:
            return None, None, data  # handled by arrays() for speed
        return [ds.load(c).image for c in ds.splits["train"]], None, data
    from dataclasses import replace

    from aemia.data.check import Checker
    from aemia.data.io import read_image

    # the images `aemia data check` (and the CLI's pre-flight) plan for this path: a plain folder searched
    # recursively (DICOM series folders count as one image), or an MSD folder's images (channel files stacked)
    images = []
    for case in Checker(Path(data)).cases:
        parts = [read_image(p) for p in case.images]
        images.append(parts[0] if len(parts) == 1 else
                      replace(parts[0], array=np.concatenate([part.array for part in parts])))
    return images, None, str(data)


def build_pool(cfg: PretrainConfig, progress: bool = True) -> np.ndarray:
    """Clean patches (N, C, *S) float32 in [0, 1] for pretraining."""
    from aemia.data.catalog import get_dataset, list_datasets
    from aemia.data.transforms import resize
    from aemia.pretrain.cubes import CPU_CUBES, extract_cubes, extract_patches_2d, normalize_image
    from aemia.utils.progress import Bar

    rng = np.random.default_rng(cfg.seed)
    size = tuple(int(s) for s in cfg.size)
    if len(size) != cfg.dims:
        raise InputError(None, f"--size needs {cfg.dims} values for {cfg.dims}D pretraining, got {list(size)}")
    if cfg.dims == 2 and cfg.data in list_datasets() and get_dataset(cfg.data).dims == 2 and cfg.patches_per_image == 0:
        if size[0] != size[1]:
            raise InputError(None, "whole-image 2D pretraining needs a square --size")
        x, _, _ = get_dataset(cfg.data).arrays("train", size[0])
        return np.ascontiguousarray(np.clip(x, 0.0, 1.0), dtype=np.float32)
    images, _, name = _images(cfg.data)
    assert images is not None
    if not images:
        raise InputError(cfg.data, "no images to pretrain on")
    pool: list[np.ndarray] = []
    cube_cfg = CPU_CUBES.__class__(**{**CPU_CUBES.__dict__, "size": size, "cubes_per_volume": cfg.cubes_per_volume}) if cfg.dims == 3 else None
    with Bar("extracting patches", total=len(images), enabled=progress) as bar:
        for image in images:
            if image.spatial_dims != cfg.dims:
                raise InputError(image.path, f"is {image.spatial_dims}D; this is a {cfg.dims}D pretraining (--dims)")
            if cfg.dims == 3:
                batch = extract_cubes(image, rng, cube_cfg)
                if batch.modality == "ct" and len(batch.array) == 0:  # abdominal CT fails the chest-CT filter
                    batch = extract_cubes(image, rng, cube_cfg.tissue_rich())
                pool.append(batch.array)
            elif cfg.patches_per_image > 0:
                pool.append(extract_patches_2d(image, rng, size, cfg.patches_per_image))
            else:
                pool.append(resize(normalize_image(image), size, order=1)[None])
            bar.advance()
    channels = {p.shape[1] for p in pool if len(p)}
    if len(channels) > 1:
        raise InputError(cfg.data, f"images have different channel counts {sorted(channels)}")
    out = np.concatenate([p for p in pool if len(p)]) if any(len(p) for p in pool) else None
    if out is None or len(out) < 2:
        raise InputError(cfg.data, "fewer than 2 usable patches (images too small, or all rejected by the tissue filter)")
    return np.ascontiguousarray(out, dtype=np.float32)


def pretrain(cfg: PretrainConfig, run_dir: str | Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run self-restoration pretraining; writes the run folder and returns the summary (also ``metrics.json``)."""
    if cfg.method not in METHODS:
        raise InputError(None, f"unknown pretraining method {cfg.method!r}; available: {', '.join(METHODS)}")
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    if resume:
        cfg = load_pretrain_config(run_dir)
    elif folder.has_checkpoint("last"):
        raise InputError(run_dir, "run folder already holds a pretraining run: pass --resume or choose a new --out")
    pool = build_pool(cfg, progress) if cfg.method == "genesis" else None
    images = whole_images(cfg) if cfg.method == "transvw" else None
    torch.manual_seed(cfg.seed)
    channels = pool.shape[1] if pool is not None else images[0].shape[0]
    backbone = create_model(cfg.model, cfg.dims, channels, channels, features=cfg.widths())
    run_dir.mkdir(parents=True, exist_ok=True)
    folder.save_config(asdict(cfg))
    cfg.train.seed = cfg.seed
    extra: dict[str, Any] = {}
    if cfg.method == "genesis":
        model: torch.nn.Module = backbone
        clean = pool
        transform: Any = GenesisTransform()
        order = np.random.default_rng(cfg.seed).permutation(len(pool))
        n_val = max(1, int(round(cfg.val_fraction * len(pool))))
        val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        train_set: EpochDataset = RestorationDataset(pool[train_idx], transform, cfg.seed)
        val_set: EpochDataset = RestorationDataset(pool[val_idx], transform, cfg.seed + 1, fixed_epoch=0)
        loss = None
    else:
        from aemia.pretrain import visual_words as V

        vw = _words_config(cfg)
        ae_dir = run_dir / "self_discovery"
        words = _discover_words(images, vw, cfg.seed, progress, ae_dir,
                                resume and (ae_dir / "checkpoints" / "last.safetensors").exists(), cfg.train.amp)
        write_json_atomic(run_dir / "visual_words.json", {"config": V.config_dict(vw), "words": words.words})
        clean = words.patches
        order = np.random.default_rng(cfg.seed).permutation(len(clean))
        n_val = max(1, int(round(cfg.val_fraction * len(clean))))
        val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        model = V.YNet(backbone, n_classes=len(words.words))
        train_set = V.VisualWordDataset(words, train_idx, cfg.seed, elastic=vw.elastic_params())
        val_set = V.VisualWordDataset(words, val_idx, cfg.seed + 1, fixed_epoch=0, elastic=vw.elastic_params())
        loss = V.TransVWLoss(vw.lambda_cls, vw.lambda_rec)

        def transform(c: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
            return V.transvw_transform(c, rng, vw.elastic_params()), c

        extra = {"visual_words": len(words.words), "instances": int(len(clean)), "chance_class_acc": 1 / len(words.words)}
    trainer = Trainer(model, train_set, val_set, cfg.train, run_dir, task="restoration", loss=loss)
    # a run killed during self-discovery has no checkpoint of its own yet: it starts here
    result = trainer.fit(resume=resume and folder.has_checkpoint("last"))
    history = result["history"]
    summary = {"method": cfg.method, "data": cfg.data, "dims": cfg.dims,
               "patches": {"train": len(train_idx), "val": len(val_idx), "shape": list(clean.shape[1:])},
               "best_val_mse": -(result["best_metric"] or 0.0), "best_epoch": result["best_epoch"],
               "epochs_run": len(history), "first_val_mse": history[0].get("val_mse") if history else None, **extra}
    if history and "val_class_acc" in history[-1]:
        summary["val_class_acc"] = history[result["best_epoch"] or 0].get("val_class_acc")
    if trainer.is_main:
        from aemia.nets import load_weights

        load_weights(model, folder.checkpoint("best"), strict=True)
        summary["figure"] = str(restoration_figure(model, clean[val_idx[:6]], transform, cfg.seed,
                                                   folder.figures / "restoration.png"))
        folder.save_metrics(summary)
    return summary


METHODS = ("genesis", "transvw")


def whole_images(cfg: PretrainConfig) -> list[np.ndarray]:
    """Whole unlabelled images in [0, 1] for self-discovery: 2D resized to ``size``, 3D at native size."""
    from aemia.data.catalog import get_dataset, list_datasets
    from aemia.data.transforms import resize
    from aemia.pretrain.cubes import normalize_image

    if cfg.dims == 2 and cfg.data in list_datasets() and get_dataset(cfg.data).dims == 2:
        return list(build_pool(cfg, progress=False))
    images, _, _ = _images(cfg.data)
    assert images is not None
    out = []
    for image in images:
        if image.spatial_dims != cfg.dims:
            raise InputError(image.path, f"is {image.spatial_dims}D; this is a {cfg.dims}D pretraining (--dims)")
        arr = normalize_image(image)
        out.append(resize(arr, cfg.size, order=1) if cfg.dims == 2 else arr)
    return out


def _words_config(cfg: PretrainConfig) -> Any:
    """TransVW settings: the CPU preset for the dimensionality; 2D word patches are half the image size,
    3D word patches are ``--size`` cubes; ``cfg.words`` overrides any field."""
    from aemia.pretrain.visual_words import VisualWordsConfig

    base = VisualWordsConfig.cpu_2d() if cfg.dims == 2 else VisualWordsConfig.cpu_3d()
    base.patch = tuple(s // 2 for s in cfg.size) if cfg.dims == 2 else tuple(cfg.size)
    if cfg.words:
        base = VisualWordsConfig(**{**asdict(base), **cfg.words})
    base.patch = tuple(base.patch)
    base.ae_size = tuple(base.ae_size)
    return base


def _discover_words(images: list[np.ndarray], vw: Any, seed: int, progress: bool, run_dir: Path | None = None,
                    resume: bool = False, amp: str = "none") -> Any:
    """Self-discovery on whole images: autoencoder features (trained in ``run_dir``), then visual words."""
    from aemia.data.transforms import resize
    from aemia.pretrain import visual_words as V

    small = np.stack([resize(img, vw.ae_size, order=1) for img in images]).astype(np.float32)
    features = V.train_autoencoder(small, vw, seed, progress, run_dir=run_dir, resume=resume, amp=amp)
    return V.discover(images, features, vw, np.random.default_rng(seed))


def load_pretrain_config(run_dir: str | Path) -> PretrainConfig:
    folder = RunFolder(run_dir)
    if not folder.is_run():
        raise InputError(folder.config_path, "not a pretraining run folder (config.yaml missing)")
    d = folder.config_dict()
    train = TrainConfig(**d.pop("train", {}))
    return PretrainConfig(**d, train=train)


@torch.no_grad()
def restoration_figure(model: torch.nn.Module, clean: np.ndarray, transform: GenesisTransform, seed: int, path: Path) -> Path:
    """Rows: original / transformed / restored for a few held-out patches (3D: the middle axial slice).

    ``transform(clean, rng) -> (input, target)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model.eval()
    pairs = [transform(c, sample_rng(seed + 1, 0, i)) for i, c in enumerate(clean)]
    x = torch.from_numpy(np.stack([p[0] for p in pairs]).astype(np.float32))
    restored = torch.sigmoid(model(x).float()).numpy()

    def show(a: np.ndarray) -> np.ndarray:
        if a.ndim == 4:  # (C, X, Y, Z) → middle axial slice
            a = a[..., a.shape[-1] // 2]
        return np.moveaxis(a[:3], 0, -1) if a.shape[0] >= 3 else a[0]

    n = len(clean)
    fig, axes = plt.subplots(3, n, figsize=(2.0 * n, 6.2), dpi=90, squeeze=False)
    for j in range(n):
        for i, (img, title) in enumerate(((pairs[j][1], "original"), (pairs[j][0], "transformed"), (restored[j], "restored"))):
            ax = axes[i][j]
            shown = show(img)
            ax.imshow(np.clip(shown, 0, 1), cmap=None if shown.ndim == 3 else "gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(title)
    fig.suptitle("Self-restoration of held-out patches")
    fig.tight_layout()
    return save_figure(fig, path)
