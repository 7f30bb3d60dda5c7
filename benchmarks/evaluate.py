"""Speed and memory of evaluation (VI split / merge, adapted Rand) on a large uint64 pair, beside scikit-image.

Builds a synthetic pair of ``--shape`` volumes: a ground truth of about ``--labels`` Voronoi
cells (computed on a grid 2 x 8 x 8 coarser, upsampled; one-voxel unlabelled membranes) and a
segmentation that splits a fifth of the cells in two, merges a tenth of the pieces into others
and shifts every boundary by one voxel along x; ids are distinct, random and spread up to
2**63. Both go to one zarr store (or HDF5 file) written by the project's writer (64^3 chunks,
compressed) in a temporary folder. Then, in one run:

* ``cli``: the real ``melecole evaluate --json`` on the stored pair (a subprocess; peak resident
  memory of its process tree sampled from /proc); it streams the volumes block by block.
* ``in_memory``: ``melecole.evaluate.evaluate_volumes`` on the arrays (the path of
  ``evaluate_segmentation``), blocks of ``--slab`` voxels.
* ``skimage``: ``skimage.metrics.variation_of_information`` and ``adapted_rand_error`` on the
  same arrays. scikit-image indexes its table by label value and fails on ids of 2**63
  (``raw_ids_error``), so it gets the pair relabelled to compact ids (timed apart).

In-process peaks are the process's high-water mark (VmHWM, reset before each call) and the part
above the memory held before the call (``peak_above_inputs_mib``). CPU seconds (all threads)
beside wall seconds tell how much a busy machine slowed a run. ``--peer-shape`` crops the
pair for the in-memory runs (skimage took 2.9 GiB above its uint16 inputs at 1e8 voxels); the CLI
always scores the whole volume.

Usage: python benchmarks/evaluate.py [--shape 100 1024 1024] [--labels 1000] [--slab VOXELS] [--seed 0]
       [--peer-shape Z Y X] [--format zarr|hdf5]
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine_load import load_report  # noqa: E402
from process_memory import run_measured  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COARSE = (2, 8, 8)  # the Voronoi cells are computed on a grid this much coarser, then upsampled
MIB = 2**20


def synthetic_pair(shape: tuple[int, int, int], labels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A segmentation and a ground truth, both uint64 ``shape``, ids spread up to 2**63 (see the module)."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    coarse = tuple(-(-s // f) for s, f in zip(shape, COARSE))
    seeds = rng.random((labels, 3)) * np.array(shape)  # (L, 3) in voxels of the full grid
    centres = np.stack(np.meshgrid(*[(np.arange(c) + 0.5) * f for c, f in zip(coarse, COARSE)], indexing="ij"), axis=-1)
    _, cell = cKDTree(seeds).query(centres.reshape(-1, 3), workers=-1)
    cell = cell.reshape(coarse)  # (z, y, x) coarse, seed index
    split = rng.random(labels) < 0.2
    upper = split[cell] & (centres[..., 0] >= seeds[cell, 0])
    pieces = np.where(upper, cell + labels, cell)  # split cells: the part above the seed is new
    target = np.arange(2 * labels)
    merged = rng.random(2 * labels) < 0.1
    target[merged] = rng.integers(0, 2 * labels, int(merged.sum()))
    ids = np.unique(rng.integers(1, 2**63, size=4 * labels, dtype=np.uint64, endpoint=True))
    ids = rng.permutation(ids)[: 3 * labels]
    gt_ids, seg_ids = ids[:labels].copy(), ids[labels:]
    gt_ids[0] = 2**63  # the largest id of the range appears

    def upsampled(volume: np.ndarray) -> np.ndarray:
        for axis, factor in enumerate(COARSE):
            volume = np.repeat(volume, factor, axis=axis)
        return np.ascontiguousarray(volume[: shape[0], : shape[1], : shape[2]])

    gt = upsampled(gt_ids[cell])
    seg = np.roll(upsampled(seg_ids[target[pieces]]), 1, axis=2)
    membrane = np.zeros(shape, dtype=bool)
    membrane[:, :, :-1] = gt[:, :, 1:] != gt[:, :, :-1]
    membrane[:, :-1, :] |= gt[:, 1:, :] != gt[:, :-1, :]
    gt[membrane] = 0
    return seg, gt


def _memory_status(key: str) -> int | None:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def _trim_heap() -> None:
    """Returns freed heap memory to the system (glibc), so reused pages do not hide a call's peak."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measured(call) -> tuple[object, dict]:
    """``call()``'s result, wall and CPU seconds, and memory: high-water mark, reset first, and its
    part above what the process held before."""
    _trim_heap()
    before = _memory_status("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
        reset = True
    except OSError:
        reset = False
    start, cpu_start = time.perf_counter(), time.process_time()
    result = call()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = _memory_status("VmHWM") if reset else None
    figures = {"seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3),
               "peak_process_mib": None if peak is None else round(peak / MIB),
               "peak_above_inputs_mib": None if peak is None or before is None else round((peak - before) / MIB)}
    return result, figures


def skimage_scores(seg: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Our keys from scikit-image: its VI(image0=gt, image1=seg) is [H(seg | gt), H(gt | seg)]."""
    from skimage.metrics import adapted_rand_error, variation_of_information

    split, merge = variation_of_information(gt, seg, ignore_labels=[0])
    return {"vi_split": float(split), "vi_merge": float(merge), "arand": float(adapted_rand_error(gt, seg)[0])}


def raw_ids_error(seg: np.ndarray, gt: np.ndarray) -> str | None:
    """What scikit-image says of the original ids, tried on a few voxels that hold the largest."""
    largest = np.unravel_index(np.argmax(gt), gt.shape)
    sample_gt = np.r_[gt[largest], gt.reshape(-1)[:1000]]
    sample_seg = np.r_[seg[largest], seg.reshape(-1)[:1000]]
    try:
        skimage_scores(sample_seg, sample_gt)
    except Exception as error:  # noqa: BLE001 - any failure is the finding
        return f"{type(error).__name__}: {error}"
    return None


def _rate(voxels: int, seconds: float) -> float:
    return round(voxels / max(seconds, 1e-3))


def _ratio(numerator: float, denominator: float) -> float:
    return float(f"{numerator / denominator:.3g}")


def _difference(ours: dict, theirs: dict) -> float:
    return max(abs(ours[key] - theirs[key]) for key in ("vi_split", "vi_merge", "arand"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[100, 1024, 1024])
    parser.add_argument("--labels", type=int, default=1000, help="ground-truth objects (Voronoi cells)")
    parser.add_argument("--slab", type=int, default=None, help="voxels per block of the in-memory run (default: "
                        "melecole.evaluate.streaming.BLOCK_VOXELS, which the CLI always uses: it has no option for it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peer-shape", type=int, nargs=3, help="crop for the in-memory runs, ours and skimage "
                        "(default: the whole --shape)")
    parser.add_argument("--format", choices=("zarr", "hdf5"), default="zarr", help="storage of the CLI's pair")
    args = parser.parse_args()

    import fastremap
    import skimage

    from melecole.evaluate.metrics import evaluate_volumes
    from melecole.evaluate.streaming import BLOCK_VOXELS
    from melecole.io import open_volume, write_volumes

    load_before, cores = os.getloadavg(), os.cpu_count() or 1
    shape = tuple(args.shape)
    peer_shape = tuple(min(p, s) for p, s in zip(args.peer_shape or shape, shape))
    slab = args.slab or BLOCK_VOXELS
    voxels, peer_voxels = int(np.prod(shape)), int(np.prod(peer_shape))
    start = time.perf_counter()
    seg, gt = synthetic_pair(shape, args.labels, args.seed)
    report: dict = {
        "shape": list(shape), "voxels": voxels, "seed": args.seed, "format": args.format,
        "labels": {"ground_truth": int(np.unique(gt[gt != 0]).size), "segmentation": int(np.unique(seg).size)},
        "max_id": int(max(seg.max(), gt.max())), "unlabelled_fraction": round(float(np.mean(gt == 0)), 4),
        "inputs_mib": round((seg.nbytes + gt.nbytes) / MIB), "make_seconds": round(time.perf_counter() - start, 1),
    }

    with tempfile.TemporaryDirectory(prefix="melecole-evaluate-") as folder:
        path = Path(folder) / ("pair.zarr" if args.format == "zarr" else "pair.h5")
        start = time.perf_counter()
        write_volumes(path, {"segmentation": seg, "labels": gt})
        report["write_seconds"] = round(time.perf_counter() - start, 1)
        separator = "/" if args.format == "zarr" else ":"
        with open_volume(f"{path}{separator}labels") as stored:
            report["chunks"] = list(stored.chunks or ())
        melecole = [sys.executable, "-m", "melecole.cli"]
        imports = run_measured([sys.executable, "-c", "import melecole.cli, melecole.stages.evaluate"], cwd=REPO,
                               interval=0.1)
        command = [*melecole, "evaluate", "--seg", f"{path}{separator}segmentation", "--gt", f"{path}{separator}labels",
                   "--json"]
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        cli = run_measured(command, cwd=REPO, interval=0.1)
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if cli["returncode"] != 0:
            raise SystemExit(cli["stderr_tail"])
    # The CLI also gives vi_sum, the volume's name and warnings; the peers give the three scores.
    cli_metrics = {k: v for k, v in json.loads(cli["stdout"].strip().splitlines()[-1]).items()
                   if k in ("vi_split", "vi_merge", "arand")}
    report["cli"] = {"command": "melecole evaluate --seg PAIR/segmentation --gt PAIR/labels --json",
                     "block_voxels": BLOCK_VOXELS, "seconds": cli["seconds"],
                     "cpu_seconds": round(sum(getattr(children_after, field) - getattr(children_before, field)
                                              for field in ("ru_utime", "ru_stime")), 2),
                     "voxels_per_second": _rate(voxels, cli["seconds"]),
                     # Of the CLI's figures, the interpreter and imports alone:
                     "import_seconds": imports["seconds"],
                     "import_peak_mib": round(imports["peak_process_bytes"] / MIB),
                     "peak_process_mib": round(cli["peak_process_bytes"] / MIB),
                     "peak_total_mib": round(cli["peak_total_bytes"] / MIB), "metrics": cli_metrics}

    crop = tuple(slice(0, size) for size in peer_shape)
    seg, gt = seg[crop].copy(), gt[crop].copy()  # the crop alone stays in memory
    ours, figures = measured(lambda: evaluate_volumes([seg], gt, block_voxels=slab)[0])
    report["in_memory"] = {"function": "melecole.evaluate.metrics.evaluate_volumes (arrays)", "shape": list(peer_shape),
                           "slab_voxels": slab, **figures,
                           "voxels_per_second": _rate(peer_voxels, figures["seconds"]), "metrics": ours}

    error = raw_ids_error(seg, gt)
    (compact_seg, compact_gt), relabel = measured(
        lambda: (fastremap.renumber(seg, preserve_zero=False)[0], fastremap.renumber(gt, preserve_zero=True)[0]))
    del seg, gt  # skimage gets the compact pair alone
    theirs, figures = measured(lambda: skimage_scores(compact_seg, compact_gt))
    report["skimage"] = {"version": skimage.__version__, "shape": list(peer_shape), **figures,
                         "voxels_per_second": _rate(peer_voxels, figures["seconds"]), "metrics": theirs,
                         "relabelled": True, "raw_ids_error": error, "relabel_seconds": relabel["seconds"],
                         "relabelled_dtypes": [str(compact_seg.dtype), str(compact_gt.dtype)],
                         "relabel_note": "fastremap.renumber to ids 1..n (ground truth 0 kept), not timed "
                                         "in skimage's seconds; skimage sizes its table by the largest id"}

    report["speed_ratio_in_memory_to_skimage"] = _ratio(report["in_memory"]["voxels_per_second"],
                                                        report["skimage"]["voxels_per_second"])
    report["speed_ratio_cli_to_skimage"] = _ratio(report["cli"]["voxels_per_second"],
                                                  report["skimage"]["voxels_per_second"])
    report["max_abs_difference_vs_skimage"] = {
        "in_memory": _difference(ours, theirs),
        "cli": _difference(cli_metrics, theirs) if peer_shape == shape else None,  # None: different crops
    }
    report["cores"] = cores
    report.update(load_report(load_before, cores, "the times are upper bounds"))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
