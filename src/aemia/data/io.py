"""Reading and writing medical images.

Every reader returns an :class:`aemia.data.image.Image` (channels first) and every failure is an
:class:`aemia.errors.InputError` naming the file and the problem. Every writer is atomic (temp file + rename).

Supported inputs:

* NIfTI ``.nii`` / ``.nii.gz`` (nibabel),
* a DICOM series folder or a single DICOM file (SimpleITK), converted to the convention dcm2niix uses for the
  NIfTI it writes: RAS world affine, voxel axes (column, row, slice) with the row axis flipped. A DICOM series
  and a label map made from its dcm2niix NIfTI (e.g. by TotalSegmentator) therefore line up voxel for voxel;
* NRRD / MetaImage ``.nrrd .nhdr .mha .mhd`` (SimpleITK; voxel order as stored, affine converted LPS -> RAS),
* 2D pictures ``.png .jpg .jpeg .tif .tiff .gif .bmp`` (Pillow; ``(C, H, W)``, spacing ``(1.0, 1.0)``),
* one image of a MedMNIST ``.npz`` via the pseudo path ``file.npz#split/index`` (see :func:`read_npz_split`).

Every 3D volume is then brought to RAS voxel order (axis permutations and flips only; the stored affine is kept in
``Image.source_affine`` so predictions can be written back in the input's own orientation).
NaN / inf voxels are not an error here; :mod:`aemia.data.check` reports them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aemia.data.header import check_header
from aemia.data.image import Image
from aemia.data.orientation import to_ras
from aemia.errors import InputError
from aemia.utils.io import atomic_path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")

# DICOM (LPS) <-> NIfTI / nibabel (RAS) world axes.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_CORRUPT = "cannot read: file is truncated or corrupt"


def _lower_name(path: Path) -> str:
    return path.name.lower()


def is_dicom_file(path: str | Path) -> bool:
    """True if ``path`` is a file with a DICOM suffix or the ``DICM`` marker at byte 128."""
    path = Path(path)
    if not path.is_file():
        return False
    if _lower_name(path).endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def image_kind(path: str | Path) -> str | None:
    """Classify ``path`` as ``"nifti" | "itk" | "picture" | "npz" | "dicom"`` or ``None`` if not an image.

    Only the name is used, except for DICOM (folders holding DICOM files, or files with the DICOM marker).
    """
    path = Path(str(path).split("#", 1)[0])
    name = _lower_name(path)
    if path.is_dir():
        return "dicom" if any(is_dicom_file(p) for p in sorted(path.iterdir())[:50]) else None
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(ITK_SUFFIXES):
        return "itk"
    if name.endswith(PICTURE_SUFFIXES):
        return "picture"
    if name.endswith(".npz"):
        return "npz"
    if is_dicom_file(path):
        return "dicom"
    return None


def case_id(path: str | Path) -> str:
    """File name without its image suffix (longest known suffix, case-insensitive, e.g. ``.nii.gz``);
    a folder (DICOM series) is named by itself."""
    name = Path(path).name
    if Path(path).is_dir():
        return name
    lower = name.lower()
    for suffix in sorted(NIFTI_SUFFIXES + ITK_SUFFIXES + PICTURE_SUFFIXES + DICOM_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def read_image(path: str | Path, copy: bool = True) -> Image:
    """Read any supported image into an :class:`Image` (channels first, spacing in mm, RAS affine); 3D volumes
    come in RAS voxel order (:func:`aemia.data.orientation.to_ras`, stored affine in ``source_affine``).

    Example::

        img = read_image("../shared/data/totalsegmentator_example_ct/example_ct.nii.gz")
        img.array.shape  # (1, 122, 101, 112)

    ``copy=False`` returns 3D voxels as a RAS-ordered *view* of the stored array (no transposing copy; strides
    may be permuted or negative), for readers that only slice it (the review app).
    """
    return to_ras(_read_stored(path), copy=copy)


def _read_stored(path: str | Path) -> Image:
    """The image in its stored voxel order."""
    text = str(path)
    if "#" in text and text.split("#", 1)[0].lower().endswith(".npz"):
        return _read_npz_item(text)
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        if not any(path.iterdir()):
            raise InputError(path, "folder is empty")
        if image_kind(path) != "dicom":
            raise InputError(path, "folder holds no DICOM series (not a recognised image format)")
        return _read_dicom_series(path)
    kind = image_kind(path)
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty")
    check_header(path, kind or "")  # declared size vs payload and the voxel limit, before any allocation
    if kind == "nifti":
        return _read_nifti(path)
    if kind == "itk":
        return _read_itk(path)
    if kind == "picture":
        return _read_picture(path)
    if kind == "dicom":
        return _read_itk(path, dicom=True)
    if kind == "npz":
        raise InputError(path, "an .npz holds many images: use read_npz_split(path, split) or 'file.npz#split/index'")
    raise InputError(path, f"not a recognised image format (suffix '{''.join(path.suffixes) or 'none'}')")


# --------------------------------------------------------------------------- NIfTI


def _read_nifti(path: Path) -> Image:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types (EOFError, zlib.error, ImageFileError, ...)
        raise InputError(path, f"{_CORRUPT} ({type(exc).__name__}: {_short(exc, path)})") from exc
    zooms = tuple(float(z) for z in img.header.get_zooms())
    affine = np.asarray(img.affine, dtype=np.float64)
    if data.ndim == 2:
        return Image(data[None], zooms[:2], affine, str(path))
    if data.ndim == 3:
        return Image(data[None], zooms[:3], affine, str(path))
    if data.ndim == 5 and data.shape[3] == 1:  # (X, Y, Z, t=1, C): vector-valued NIfTI
        data = data[:, :, :, 0, :]
    if data.ndim == 4:
        return Image(np.ascontiguousarray(np.moveaxis(data, -1, 0)), zooms[:3], affine, str(path))
    raise InputError(path, f"unsupported NIfTI with {data.ndim} dimensions {data.shape}")


# --------------------------------------------------------------------------- SimpleITK (NRRD, MHA, DICOM)


def _itk_to_image(itk_img, path: Path, flip_rows: bool) -> Image:
    """Convert a SimpleITK image (LPS) to an :class:`Image` in NIfTI voxel order with a RAS affine."""
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(itk_img)  # (z, y, x[, c]) for 3D, (y, x[, c]) for 2D
    dim = itk_img.GetDimension()
    ncomp = itk_img.GetNumberOfComponentsPerPixel()
    if dim == 2:  # promote to a one-slice volume so geometry stays 3D
        arr = arr[None]
    if dim not in (2, 3):
        raise InputError(path, f"unsupported {dim}D image")
    spacing = list(itk_img.GetSpacing()) + ([1.0] if dim == 2 else [])
    origin = list(itk_img.GetOrigin()) + ([0.0] if dim == 2 else [])
    direction = np.asarray(itk_img.GetDirection(), dtype=np.float64).reshape(dim, dim)
    if dim == 2:
        direction = np.block([[direction, np.zeros((2, 1))], [np.zeros((1, 2)), np.ones((1, 1))]])
    # (z, y, x[, c]) -> (c, x, y, z)
    arr = np.transpose(arr, (3, 2, 1, 0)) if ncomp > 1 else np.transpose(arr, (2, 1, 0))[None]
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(spacing)
    lps[:3, 3] = origin
    affine = _LPS_TO_RAS @ lps
    if flip_rows:  # dcm2niix stores rows bottom-up: reverse voxel axis 1 and move the origin accordingly
        n_rows = arr.shape[2]
        affine[:3, 3] = affine[:3, 3] + affine[:3, 1] * (n_rows - 1)
        affine[:3, 1] = -affine[:3, 1]
        arr = arr[:, :, ::-1, :]
    return Image(np.ascontiguousarray(arr), tuple(float(v) for v in spacing), affine, str(path))


def _read_itk(path: Path, dicom: bool = False) -> Image:
    import SimpleITK as sitk

    try:
        itk_img = sitk.ReadImage(str(path))
    except Exception as exc:
        raise InputError(path, f"{_CORRUPT} ({_short(exc, path)})") from exc
    return _itk_to_image(itk_img, path, flip_rows=dicom)


def _read_dicom_series(folder: Path) -> Image:
    """Read the DICOM series in ``folder`` (the one with most files if there are several)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    try:
        series = reader.GetGDCMSeriesIDs(str(folder)) or ()
        files_per_series = [reader.GetGDCMSeriesFileNames(str(folder), s) for s in series]
    except Exception as exc:
        raise InputError(folder, f"cannot read DICOM series: {_short(exc)}") from exc
    files_per_series = [f for f in files_per_series if f]
    if not files_per_series:
        raise InputError(folder, "no readable DICOM series in folder")
    files = max(files_per_series, key=len)
    reader.SetFileNames(files)
    try:
        itk_img = reader.Execute()
    except Exception as exc:
        raise InputError(folder, f"cannot read DICOM series: {_short(exc)}") from exc
    return _itk_to_image(itk_img, folder, flip_rows=True)


# --------------------------------------------------------------------------- 2D pictures


def _read_picture(path: Path) -> Image:
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as pic:
            pic.load()
            mode = pic.mode
            if mode == "P":
                pic = pic.convert("RGBA" if "transparency" in pic.info else "RGB")
                mode = pic.mode
            if mode in ("RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
                pic = pic.convert("RGB")
            elif mode == "LA":
                pic = pic.convert("L")
            elif mode == "1":
                pic = pic.convert("L")
            arr = np.array(pic)
    except Exception as exc:
        raise InputError(path, f"{_CORRUPT} ({_short(exc, path)})") from exc
    if arr.ndim == 3:
        grey = np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])
        if mode == "P" and arr.shape[2] == 3 and grey:
            arr = arr[..., :1]  # palette image whose palette is grey
        arr = np.moveaxis(arr, -1, 0)
    else:
        arr = arr[None]
    return Image(np.ascontiguousarray(arr), (1.0, 1.0), np.eye(4), str(path))


# --------------------------------------------------------------------------- MedMNIST npz


def read_npz_split(path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one split of a MedMNIST-layout ``.npz`` (keys ``{split}_images``, ``{split}_labels``).

    Returns ``images`` uint8 ``(N, H, W)`` or ``(N, H, W, 3)`` and ``labels`` int64 ``(N,)`` (labels stored
    ``(N,)`` or ``(N, 1)`` are both accepted; multi-label ``(N, K)`` files are rejected).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            ik, lk = f"{split}_images", f"{split}_labels"
            if ik not in keys or lk not in keys:
                splits = sorted(k[: -len("_images")] for k in keys if k.endswith("_images"))
                raise InputError(path, f"no split '{split}' (keys {ik}/{lk} missing; splits present: {splits})")
            images = np.asarray(npz[ik])
            labels = np.asarray(npz[lk])
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, f"{_CORRUPT} ({_short(exc, path)})") from exc
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise InputError(path, f"labels of split '{split}' have shape {labels.shape}; expected (N,) or (N, 1)")
    if images.ndim not in (3, 4) or len(images) != len(labels):
        raise InputError(path, f"split '{split}': images {images.shape} do not match labels {labels.shape}")
    return images.astype(np.uint8, copy=False), labels.astype(np.int64)


def _read_npz_item(text: str) -> Image:
    file, _, item = text.partition("#")
    split, _, index = item.partition("/")
    try:
        i = int(index)
    except ValueError:
        raise InputError(text, "npz pseudo path must look like 'file.npz#split/index'") from None
    images, _ = read_npz_split(file, split)
    if not 0 <= i < len(images):
        raise InputError(text, f"index {i} out of range (split '{split}' has {len(images)} images)")
    arr = images[i]
    arr = np.moveaxis(arr, -1, 0) if arr.ndim == 3 else arr[None]
    return Image(np.ascontiguousarray(arr), (1.0, 1.0), np.eye(4), text)


# --------------------------------------------------------------------------- writers


def _nifti_dtype(arr: np.ndarray) -> np.ndarray:
    """Pick a NIfTI-friendly dtype without changing values (bool -> uint8, int64 -> smallest int that fits)."""
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer) and arr.dtype.itemsize == 8:
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        for dt in (np.uint8, np.int16, np.int32):
            info = np.iinfo(dt)
            if info.min <= lo and hi <= info.max:
                return arr.astype(dt)
        return arr  # genuinely 64-bit values: keep them
    if arr.dtype == np.float16:
        return arr.astype(np.float32)
    return arr


def write_nifti(image_or_array: Image | np.ndarray, path: str | Path, like: Image | None = None) -> Path:
    """Write an image or array to ``path`` (``.nii`` or ``.nii.gz``) atomically, keeping geometry.

    * An :class:`Image` is written with its own affine (or ``like``'s if given); channels ``C > 1`` go to the
      last (4th) axis as nibabel/nnU-Net expect, ``C == 1`` is dropped.
    * A plain array is either spatial (``like.spatial_shape``, e.g. a label map or prediction) or channels-first
      (``like.array.ndim`` dimensions). Without ``like`` it is taken as spatial with an identity affine.
    Returns ``path``.
    """
    import nibabel as nib

    path = Path(path)
    if not _lower_name(path).endswith(NIFTI_SUFFIXES):
        raise InputError(path, "write_nifti needs a .nii or .nii.gz file name")
    if isinstance(image_or_array, Image):
        arr = np.asarray(image_or_array.array)
        affine = (like or image_or_array).affine
        spatial = arr.shape[1:]
        channels_first = True
    else:
        arr = np.asarray(image_or_array)
        affine = like.affine if like is not None else np.eye(4)
        channels_first = like is not None and arr.ndim == like.array.ndim
        spatial = arr.shape[1:] if channels_first else arr.shape
    if like is not None and tuple(spatial) != like.spatial_shape:
        raise InputError(path, f"array spatial shape {tuple(spatial)} does not match reference {like.spatial_shape}")
    if channels_first:
        arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    arr = _nifti_dtype(np.asarray(arr))  # any memory layout: nibabel writes voxels in NIfTI (Fortran) order
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    if isinstance(image_or_array, Image) and len(image_or_array.spacing) == 2 and arr.ndim == 2:
        img.header.set_zooms(tuple(image_or_array.spacing))
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def to_uint8(array: np.ndarray, labels: bool = False) -> np.ndarray:
    """Convert an array to uint8 for viewing.

    bool and integer {0, 1} masks -> 0/255; uint8 unchanged; other integers in 0..255 unchanged;
    ``labels=True`` spreads label values 0..K over 0..255; floats in [0, 1] -> x255; anything else is
    min-max scaled. NaN/inf become 0.
    """
    arr = np.asarray(array)
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    finite = np.isfinite(arr) if np.issubdtype(arr.dtype, np.floating) else np.ones(arr.shape, bool)
    vals = arr[finite]
    lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 0.0)
    clean = np.where(finite, arr, 0).astype(np.float64)
    if labels and lo >= 0:
        return np.round(np.rint(clean) * (255.0 / max(hi, 1.0))).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        if lo >= 0 and hi <= 1:
            return arr.astype(np.uint8) * 255
        if lo >= 0 and hi <= 255:
            return arr.astype(np.uint8)
    elif lo >= 0 and hi <= 1:
        return np.round(clean * 255).astype(np.uint8)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.round((clean - lo) * scale).clip(0, 255).astype(np.uint8)


def write_png(array: np.ndarray, path: str | Path, labels: bool = False) -> Path:
    """Write a 2D array atomically as PNG: ``(H, W)``, ``(1, H, W)``, ``(3, H, W)`` or ``(H, W, 3)``.

    Values are converted with :func:`to_uint8` (masks become 0/255). Returns ``path``.
    """
    from PIL import Image as PILImage

    path = Path(path)
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise InputError(path, f"cannot write array of shape {np.shape(array)} as PNG")
    pic = PILImage.fromarray(np.ascontiguousarray(to_uint8(arr, labels=labels)))
    with atomic_path(path, suffix=".png") as tmp:
        pic.save(tmp, format="PNG")
    return path


def _short(exc: BaseException, path: Path | None = None) -> str:
    """One-line, shortened exception text (without repeating the file path)."""
    text = " ".join(str(exc).split())
    if path is not None:  # the error line names the file already ("cannot identify image file '/a/b.png'")
        text = text.replace(f'"{path}"', "").replace(f"'{path}'", "").replace(str(path), "the file")
        text = " ".join(text.split()).rstrip(" :")
    return text[:200] if text else type(exc).__name__
