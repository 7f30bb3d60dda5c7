"""SNEMI3D (Kasthuri et al. 2015, Cell 162(3):648-661): fetching the archive, finding and loading its volumes.

Two layouts are recognised, anywhere below the unpacked folder (a wrapping folder is fine):

* The MeLeCoLe archive on TU Dresden's cloud storage (``SNEMI3D_URL``), as read by the original
  MeLeCoLe code: one HDF5 file per split in folders ``train/``, ``val/``, ``test/`` (for example
  ``val/AC3_val.hdf``), each file holding a ``volume`` (raw) and a ``labels`` dataset. Its raw
  volumes are padded on every side (MeLeCoLe's config uses a margin of (20, 64, 64)) around the
  labelled block; a raw volume larger than its labels by an even amount along each axis is
  cropped back to the labelled block, centred.
* The challenge's own files: ``train-input.tif`` and ``train-labels.tif`` (100 x 1024 x 1024,
  possibly in ``image/`` and ``seg/`` folders) and ``test-input.tif``, as TIFF stacks or as HDF5
  files with a single 3D dataset. The challenge never published test labels, so an unlabelled
  test volume is ignored.

A file's split comes from the last of the words ``train``/``training``, ``val``/``valid``/
``validation``, ``test``/``testing`` in its path relative to the folder; whether it is raw or
labels comes from the HDF5 dataset names or, for single-volume files, the words of its path
(``input``, ``image``, ``raw``, ``volume`` ... versus ``labels``, ``seg``, ``gt`` ...).

Splits the archive lacks are cut off the end of train along z (:func:`load_snemi3d`, which
also reads straight from the zip or tar file that ``dvc import-url`` downloads).
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from melecole.data.download import download, safe_extract
from melecole.data.splits import split_block
from melecole.errors import MelecoleError
from melecole.io import VolumeSpec, read_volume

logger = logging.getLogger(__name__)

SNEMI3D_SHARE = "https://cloudstore.zih.tu-dresden.de/index.php/s/DeWzTtfK7bQWea5"
SNEMI3D_URL = SNEMI3D_SHARE + "/download"  # a Nextcloud share's direct download (a zip of the folder)

SPLITS = ("train", "val", "test")
_SPLIT_WORDS = {"train": "train", "training": "train", "val": "val", "valid": "val",
                "validation": "val", "test": "test", "testing": "test"}
_RAW_WORDS = {"volume", "raw", "input", "image", "images", "img", "im", "em", "data"}
_LABEL_WORDS = {"labels", "label", "seg", "segmentation", "gt", "groundtruth", "neuron_ids"}
_HDF5 = {".h5", ".hdf", ".hdf5"}
_TIFF = {".tif", ".tiff"}


@dataclass(frozen=True)
class VolumeRef:
    """One volume on disk: a TIFF stack (``dataset`` None) or a dataset inside an HDF5 file."""

    path: Path
    dataset: str | None = None

    def __str__(self) -> str:
        return str(self.path) if self.dataset is None else f"{self.path}:{self.dataset}"


def find_volumes(folder: str | Path) -> dict[str, tuple[VolumeRef, VolumeRef]]:
    """Locates the raw and label volume of each split present in an unpacked archive.

    Returns:
        split name -> (raw, labels) for every split with both; ``train`` is always present.

    Raises:
        MelecoleError: the folder is missing, a split has two candidates for the same role,
            or there is no complete train pair; the message lists every volume file found.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MelecoleError(f"SNEMI3D folder {folder} does not exist")
    found: dict[tuple[str, str], list[VolumeRef]] = {}
    seen: list[str] = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if not path.is_file() or path.suffix.lower() not in _HDF5 | _TIFF:
            continue
        if any(part.startswith((".", "__MACOSX")) for part in relative.parts):
            continue
        roles = _roles(path, relative)
        if not roles:
            seen.append(f"{relative} (neither raw nor labels by name)")
        for role, ref in roles:
            split = _split_of(relative)
            seen.append(f"{relative}{':' + ref.dataset if ref.dataset else ''} ({split or 'no split'}, {role})")
            if split is not None:
                found.setdefault((split, role), []).append(ref)
    listing = "; ".join(seen) or "no .h5/.hdf/.hdf5/.tif/.tiff files"
    for (split, role), refs in found.items():
        if len(refs) > 1:
            names = ", ".join(str(ref) for ref in refs)
            raise MelecoleError(f"{folder}: several {split} {role} volumes ({names}); keep one")
    pairs = {}
    for split in SPLITS:
        raw, labels = found.get((split, "raw")), found.get((split, "labels"))
        if raw and labels:
            pairs[split] = (raw[0], labels[0])
        elif raw or labels:
            logger.info("SNEMI3D %s split has only %s; ignoring it", split, "raw" if raw else "labels")
    if "train" not in pairs:
        raise MelecoleError(f"{folder}: no SNEMI3D train raw + labels pair found (found: {listing})")
    return pairs


def _words(text: str) -> set[str]:
    text = text.lower()
    # Both with and without splitting at underscores, so "neuron_ids" and "AC3_val" both work.
    return {word for word in re.split(r"[^a-z0-9]+", text) + re.split(r"[^a-z0-9_]+", text) if word}


def _split_of(relative: Path) -> str | None:
    """The split named last in the path, so the file name beats its folders."""
    splits = [_SPLIT_WORDS[word] for part in relative.with_suffix("").parts
              for word in re.split(r"[^a-z0-9]+", part.lower()) if word in _SPLIT_WORDS]
    return splits[-1] if splits else None


def _role_of(*texts: str) -> str | None:
    """Raw or labels from the first text that names exactly one of the two."""
    for text in texts:
        words = _words(text)
        is_label, is_raw = bool(words & _LABEL_WORDS), bool(words & _RAW_WORDS)
        if is_label != is_raw:
            return "labels" if is_label else "raw"
    return None


def _roles(path: Path, relative: Path) -> list[tuple[str, VolumeRef]]:
    """The roles (raw, labels) one file can fill, with the volume that fills each."""
    folders = [part for part in reversed(relative.parent.parts)]  # nearest folder first
    if path.suffix.lower() in _TIFF:
        role = _role_of(path.stem, *folders)
        return [(role, VolumeRef(path))] if role else []
    try:
        with h5py.File(path, "r") as handle:
            datasets: list[str] = []
            handle.visititems(lambda name, node: datasets.append(name)
                              if isinstance(node, h5py.Dataset) and node.ndim == 3 else None)
    except OSError as error:
        raise MelecoleError(f"{path}: not a readable HDF5 file ({error})") from None
    if len(datasets) == 1:
        role = _role_of(path.stem, datasets[0], *folders)
        return [(role, VolumeRef(path, datasets[0]))] if role else []
    roles = []
    for role in ("raw", "labels"):
        matching = [name for name in datasets if _role_of(name) == role]
        if matching:
            roles.append((role, VolumeRef(path, matching[0])))
    return roles


def read_ref(ref: VolumeRef) -> np.ndarray:
    """Reads one 3D volume (z, y, x) from a TIFF stack or an HDF5 dataset."""
    if ref.dataset is not None:
        return read_volume(VolumeSpec(ref.path, ref.dataset))
    import tifffile  # a dependency of scikit-image; only TIFF layouts need it

    try:
        volume = tifffile.imread(ref.path)
    except (OSError, ValueError) as error:
        raise MelecoleError(f"{ref.path}: not a readable TIFF stack ({error})") from None
    if volume.ndim != 3:
        raise MelecoleError(f"{ref.path}: expected a 3D stack (z, y, x), found shape {volume.shape}")
    return volume


def _labelled_block(raw: np.ndarray, labels: np.ndarray, where: str) -> np.ndarray:
    """Crops a raw volume padded around its labels back to the labels' extent."""
    if raw.shape == labels.shape:
        return raw
    margin = np.subtract(raw.shape, labels.shape)
    if np.any(margin < 0) or np.any(margin % 2):
        raise MelecoleError(f"{where}: raw {raw.shape} and labels {labels.shape} do not line up "
                            "(raw must equal the labels or pad them evenly on every side)")
    lo = margin // 2
    return raw[tuple(slice(m, m + s) for m, s in zip(lo, labels.shape))].copy()  # drops the padding


def load_snemi3d(folder: str | Path, val_fraction: float = 0.25,
                 test_fraction: float = 0.25) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reads the SNEMI3D splits of an unpacked archive or archive file as (raw, labels uint64) pairs.

    Given the archive file (zip or tar, as ``dvc import-url`` downloads it), it is unpacked with
    :func:`~melecole.data.download.safe_extract` into a temporary folder beside it, read,
    and the folder removed again.

    A split the archive lacks is cut off the end of train along z: test first (the last
    ``test_fraction`` of train), then val (the last ``val_fraction`` of what is left), so
    train, val and test never share a section. The challenge files (train labels only) thus
    become train, val and test blocks; the MeLeCoLe archive keeps its own split.

    Args:
        folder: the unpacked archive (see the module docstring for the layouts recognised),
            or the archive file.
        val_fraction: share of train cut off for val when the archive has no val split.
        test_fraction: share of train cut off for test when the archive has no labelled test.

    Returns:
        "train", "val", "test" -> (raw (z, y, x), labels (z, y, x) uint64).

    Raises:
        MelecoleError: missing volumes, raw and labels that do not line up, negative or
            non-integer labels, or a train block too thin to split.
    """
    folder = Path(folder)
    if folder.is_file():
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.") as scratch:
            unpacked = Path(scratch) / "unpacked"
            safe_extract(folder, unpacked)
            return load_snemi3d(unpacked, val_fraction, test_fraction)
    volumes = {}
    for split, (raw_ref, label_ref) in find_volumes(folder).items():
        raw, labels = read_ref(raw_ref), read_ref(label_ref)
        if not np.issubdtype(labels.dtype, np.integer):
            raise MelecoleError(f"{label_ref}: labels must be integers, found {labels.dtype}")
        if np.issubdtype(labels.dtype, np.signedinteger) and labels.size and labels.min() < 0:
            raise MelecoleError(f"{label_ref}: negative label ids")
        raw = _labelled_block(raw, labels, f"{raw_ref} / {label_ref}")
        volumes[split] = (raw, labels.astype(np.uint64))
    for split, fraction in (("test", test_fraction), ("val", val_fraction)):
        if split not in volumes:
            volumes["train"], volumes[split] = split_block(*volumes["train"], axis=0, fraction=fraction)
            logger.info("SNEMI3D archive has no %s split: using the last %d sections of train", split,
                        volumes[split][0].shape[0])
    return {split: volumes[split] for split in SPLITS}


def fetch_snemi3d(dest_folder: str | Path, url: str = SNEMI3D_URL, sha256: str | None = None) -> Path:
    """Downloads the SNEMI3D archive and unpacks it into ``dest_folder``.

    The archive is stored beside ``dest_folder`` while unpacking and removed afterwards.

    Args:
        dest_folder: folder to create with the unpacked archive; must not exist or be empty.
        url: where the zip or tar archive is served.
        sha256: expected digest of the archive; ``None`` logs the digest instead.

    Returns:
        ``dest_folder``, ready for :func:`load_snemi3d`.

    Raises:
        MelecoleError: download failure, digest mismatch, or an unsafe or unreadable archive.
    """
    dest_folder = Path(dest_folder)
    if dest_folder.exists() and (not dest_folder.is_dir() or any(dest_folder.iterdir())):
        raise MelecoleError(f"{dest_folder} already exists; remove it to fetch SNEMI3D again")
    archive = dest_folder.with_name(f"{dest_folder.name}.archive")
    try:
        download(url, archive, sha256)
        safe_extract(archive, dest_folder)
    finally:
        archive.unlink(missing_ok=True)
    return dest_folder
