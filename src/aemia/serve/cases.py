"""Case images for the review app: read once, cached, sliced server-side into PNG views.

**Voxel order shared with the browser.** A 3D volume is held in RAS voxel order (as :func:`aemia.data.io.read_image`
returns it), ``(X, Y, Z)``; a 2D picture as ``(H, W)`` with ``X`` = column, ``Y`` = row, ``Z`` = 1. Masks and heat
maps travel as flat uint8 bytes with index ``x + nx * (y + ny * z)`` (``dims = [nx, ny, nz]``). A view maps its
canvas pixel ``(u, v)`` (column, row) to a voxel exactly as :func:`view_slice` does here and ``app.js`` does in
the browser:

* ``axial`` (slice ``z``): ``x = nx-1-u, y = ny-1-v`` — anterior up, the patient's right on the left
  (radiological convention, as ``aemia review``'s figure);
* ``coronal`` (slice ``y``): ``x = nx-1-u, z = nz-1-v`` — superior up;
* ``sagittal`` (slice ``x``): ``y = ny-1-u, z = nz-1-v`` — anterior on the left, superior up;
* ``2d``: ``x = u, y = v``.

**Why slices are PNGs made by the server.** A 512×512×130 CT is 68 MB as int16; windowing it in the browser
means sending all of it before the first paint. A PNG of one windowed slice is ~100-200 kB and takes a few ms
to make from the cached volume, so the first paint needs three small images; scrolling asks for one more.
Masks (which the browser edits) are sent whole, gzip-compressed (a mask compresses ~100×).

Window presets (width/level, HU): ``abdomen`` 400/40, ``liver`` 150/60, ``lung`` 1500/-600 (the usual radiology
soft-tissue, liver and lung windows); ``auto`` = the 0.5-99.5th percentile of the volume (MR and pictures).
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aemia.data.image import Image
from aemia.errors import InputError

__all__ = [
    "VIEWS_2D",
    "VIEWS_3D",
    "WINDOWS",
    "CaseCache",
    "CaseImage",
    "flat_bytes",
    "from_flat",
    "load_case",
    "png_bytes",
    "view_slice",
]

VIEWS_3D = ("axial", "coronal", "sagittal")
VIEWS_2D = ("2d",)
#: name → (width, level) in HU.
PNG_CACHE = 96  # slices kept per case (~100-200 kB each for a 512×512 CT)
WINDOWS: dict[str, tuple[float, float]] = {"abdomen": (400.0, 40.0), "liver": (150.0, 60.0), "lung": (1500.0, -600.0)}


@dataclass
class CaseImage:
    """One case's image as the app shows it (see the module docstring for the voxel order)."""

    case_id: str
    image: Image  # as read (RAS for 3D), kept to write labels back in the image's own geometry
    volume: np.ndarray  # 3D: (X, Y, Z) int16 (integer images such as CT in HU) or float32; 2D: (H, W, 3) uint8
    is3d: bool
    auto_window: tuple[float, float]  # (lo, hi) of the "auto" preset
    ct_like: bool
    start: np.ndarray | None = None  # the starting mask (the prediction), set by the app (:mod:`aemia.serve.masks`)
    start_source: str = ""
    start_gz: bytes | None = None  # the starting mask as sent to the browser (made once, when the case is read)
    heat_gz: bytes | None = None  # attention/uncertainty 0..255 as sent to the browser, or None
    saved: tuple[int, np.ndarray] | None = None  # (version, mask) of the last save made through the app
    pngs: OrderedDict[tuple[str, int, str], bytes] = field(default_factory=OrderedDict)  # recent slices made
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def dims(self) -> list[int]:
        return list(self.volume.shape) if self.is3d else [self.volume.shape[1], self.volume.shape[0], 1]

    @property
    def spacing(self) -> list[float]:
        return [float(s) for s in self.image.spacing] if self.is3d else [1.0, 1.0, 1.0]

    @property
    def mask_shape(self) -> tuple[int, ...]:
        """Shape of a mask of this case in the stored order: ``(X, Y, Z)`` or ``(H, W)``."""
        return tuple(self.volume.shape) if self.is3d else tuple(self.volume.shape[:2])

    def views(self) -> dict[str, dict[str, float]]:
        """Per view: canvas width/height in pixels, pixel width/height in mm, slice count."""
        if not self.is3d:
            h, w = self.volume.shape[:2]
            return {"2d": {"width": w, "height": h, "du": 1.0, "dv": 1.0, "slices": 1}}
        (nx, ny, nz), (sx, sy, sz) = self.volume.shape, self.spacing
        return {"axial": {"width": nx, "height": ny, "du": sx, "dv": sy, "slices": nz},
                "coronal": {"width": nx, "height": nz, "du": sx, "dv": sz, "slices": ny},
                "sagittal": {"width": ny, "height": nz, "du": sy, "dv": sz, "slices": nx}}

    def default_window(self) -> str:
        return "abdomen" if self.ct_like else "auto"

    def window_range(self, name: str) -> tuple[float, float]:
        if name == "auto" or not self.is3d:
            return self.auto_window
        if name not in WINDOWS:
            raise InputError(None, f"unknown window {name!r}; presets: auto, {', '.join(WINDOWS)}")
        width, level = WINDOWS[name]
        return level - width / 2, level + width / 2

    def render(self, view: str, index: int, window: str) -> bytes:
        """The PNG of one view's slice (grey for volumes, the picture itself in 2D); the last
        :data:`PNG_CACHE` slices made are kept (scrolling back and forth, the first paint after a prefetch)."""
        key = (view, int(index), window)
        with self._lock:
            png = self.pngs.get(key)
        if png is None:
            png = self._render(view, int(index), window)
            with self._lock:
                self.pngs[key] = png
                while len(self.pngs) > PNG_CACHE:
                    self.pngs.popitem(last=False)
        return png

    def first_views(self) -> None:
        """Make the PNGs the browser asks for first: every view's middle slice in the default window."""
        for view, info in self.views().items():
            self.render(view, int(info["slices"]) // 2, self.default_window())

    def _render(self, view: str, index: int, window: str) -> bytes:
        if not self.is3d:
            if view != "2d":
                raise InputError(None, f"a 2D case has one view '2d', not {view!r}")
            return png_bytes(self.volume)
        plane = view_slice(self.volume, view, index).astype(np.float32)
        lo, hi = self.window_range(window)
        scaled = (np.clip(plane, lo, hi) - lo) * (255.0 / max(hi - lo, 1e-6))
        return png_bytes(scaled.astype(np.uint8))


def view_slice(volume: np.ndarray, view: str, index: int) -> np.ndarray:
    """Rows × columns of one view of a ``(X, Y, Z)`` array (mapping in the module docstring)."""
    if view not in VIEWS_3D:
        raise InputError(None, f"unknown view {view!r}; views: {', '.join(VIEWS_3D)}")
    axis = {"axial": 2, "coronal": 1, "sagittal": 0}[view]
    if not 0 <= int(index) < volume.shape[axis]:
        raise InputError(None, f"{view} slice {index} is outside 0..{volume.shape[axis] - 1}")
    if view == "axial":
        return volume[::-1, ::-1, index].T
    if view == "coronal":
        return volume[::-1, index, ::-1].T
    return volume[index, ::-1, ::-1].T


def png_bytes(array: np.ndarray) -> bytes:
    """PNG of a uint8 ``(H, W)`` or ``(H, W, 3)`` array (fast compression: it is sent once, over a local link)."""
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def flat_bytes(mask: np.ndarray, is3d: bool) -> bytes:
    """A ``(X, Y, Z)`` or ``(H, W)`` uint8 array as flat bytes in the browser's index order (for a volume that is
    NIfTI's own Fortran order, so a volume read from NIfTI is copied without transposing)."""
    return np.asarray(mask, dtype=np.uint8).tobytes(order="F" if is3d else "C")


def from_flat(data: bytes, shape: tuple[int, ...], is3d: bool) -> np.ndarray:
    """Inverse of :func:`flat_bytes` (``len(data)`` must equal the number of voxels)."""
    return np.frombuffer(data, dtype=np.uint8).reshape(shape, order="F" if is3d else "C")


def load_case(case_id: str, path: str | Path) -> CaseImage:
    """Read one pool image (any format :func:`aemia.data.io.read_image` reads) for display."""
    from aemia.data.io import read_image, to_uint8

    img = read_image(path, copy=False)  # a RAS view of the stored voxels: no transposing copy of the volume
    arr = np.asarray(img.array)
    if img.spatial_dims == 3:
        vol = arr[0]  # the first channel (modality) of a multi-channel volume
        small_ints = np.issubdtype(vol.dtype, np.integer) and vol.min() >= -32768 and vol.max() <= 32767
        vol = np.asarray(vol, dtype=np.int16 if small_ints else np.float32)  # CT in HU: half the memory of float32
        sample = vol[::4, ::4, ::2]
        lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
        return CaseImage(case_id, img, vol, True, (lo, hi if hi > lo else lo + 1.0), float(sample.min()) < -500.0)
    if img.spatial_dims != 2:
        raise InputError(path, f"cannot show an image of shape {arr.shape}")
    pic = to_uint8(arr)
    pic = np.repeat(pic[:1], 3, 0) if pic.shape[0] == 1 else pic[:3]
    return CaseImage(case_id, img, np.ascontiguousarray(np.moveaxis(pic, 0, -1)), False, (0.0, 255.0), False)


class CaseCache:
    """The last few cases read, by case id (least recently used dropped), thread-safe; ``prefetch`` reads a case in
    a background thread so that the next case of the worklist is ready when the annotator moves on."""

    def __init__(self, loader: Callable[[str], CaseImage], size: int = 3) -> None:
        self._loader, self._size = loader, max(1, size)
        self._items: OrderedDict[str, CaseImage] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Event] = {}

    def get(self, case_id: str) -> CaseImage:
        while True:
            with self._lock:
                if case_id in self._items:
                    self._items.move_to_end(case_id)
                    return self._items[case_id]
                pending = self._loading.get(case_id)
                if pending is None:
                    self._loading[case_id] = threading.Event()
                    break
            pending.wait()  # another thread is reading it; then look again
        try:
            case = self._loader(case_id)
            with self._lock:
                self._items[case_id] = case
                while len(self._items) > self._size:
                    self._items.popitem(last=False)
            return case
        finally:
            with self._lock:
                self._loading.pop(case_id).set()

    def prefetch(self, case_id: str) -> None:
        with self._lock:
            if case_id in self._items or case_id in self._loading:
                return

        def run() -> None:
            try:
                self.get(case_id)
            except Exception:  # noqa: BLE001 - a bad case is reported when it is opened, not here
                pass

        threading.Thread(target=run, daemon=True, name=f"prefetch-{case_id}").start()

    def __len__(self) -> int:
        return len(self._items)
