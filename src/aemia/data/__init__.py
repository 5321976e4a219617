"""Data layer: image I/O, MSD/nnU-Net folders, the bundled data catalog and data checks."""

from aemia.data.catalog import Case, CatalogDataset, Sample, data_root, get_dataset, list_datasets
from aemia.data.check import Problem, check_path
from aemia.data.dataset import MSDCase, MSDDataset, read_msd, write_msd
from aemia.data.image import Image
from aemia.data.io import read_image, read_npz_split, write_nifti, write_png

__all__ = [
    "Case",
    "CatalogDataset",
    "Image",
    "MSDCase",
    "MSDDataset",
    "Problem",
    "Sample",
    "check_path",
    "data_root",
    "get_dataset",
    "list_datasets",
    "read_image",
    "read_msd",
    "read_npz_split",
    "write_msd",
    "write_nifti",
    "write_png",
]
