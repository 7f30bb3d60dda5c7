"""A synthetic volume of SNEMI3D's size (100 x 1024 x 1024) through predict and segment,
blockwise with 2 workers: wall time and peak memory per stage, and VI against the labels.

The volume is a 100 x 256 x 256 block of melecole's synthetic generator mirrored 4 x 4 times
in (y, x) (mirroring keeps neurons continuous across the seams; each connected piece of the
mirrored labels is one neuron), written to zarr. Pass a checkpoint trained on synthetic data
(``experiments/synthetic.yaml``) and its parameter file.

Usage: python benchmarks/real_size.py --checkpoint CK --params PARAMS [--shape 100 1024 1024]
       [--workers 2] [--out FOLDER] [--stages predict segment evaluate]
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_load import load_report  # noqa: E402
from process_memory import run_measured  # noqa: E402


def make_volume(shape: tuple[int, int, int], folder: Path, synthetic, seed: int = 1) -> tuple[Path, Path]:
    """Raw and labels zarr stores; the generator's settings (and neurite density) are those the
    model was trained with (``data.synthetic`` of the parameter file)."""
    import cc3d

    from melecole.data.synthetic import make_synthetic_volume
    from melecole.io import write_volumes

    raw_path, gt_path = folder / "raw.zarr", folder / "gt.zarr"
    if raw_path.exists() and gt_path.exists():
        return raw_path, gt_path  # made by an earlier run with the same --out
    tile = (shape[0], min(256, shape[1]), min(256, shape[2]))
    density = synthetic.neurites / float(np.prod(synthetic.shape))
    raw, labels = make_synthetic_volume(tile, anisotropy=synthetic.anisotropy, neurites=max(1, round(density * np.prod(tile))),
                                        noise=synthetic.noise, blur=synthetic.blur, defects=synthetic.defects, seed=seed)
    reps = [-(-s // t) for s, t in zip(shape, tile)]

    def mirror(volume: np.ndarray) -> np.ndarray:
        # Every other copy flipped, so the content continues across each seam.
        row = np.concatenate([volume if j % 2 == 0 else volume[:, :, ::-1] for j in range(reps[2])], axis=2)
        tiled = np.concatenate([row if i % 2 == 0 else row[:, ::-1] for i in range(reps[1])], axis=1)
        return tiled[: shape[0], : shape[1], : shape[2]]

    big_raw, big_labels = mirror(raw), mirror(labels)
    big_labels = cc3d.connected_components(big_labels, connectivity=6, out_dtype=np.uint64)
    write_volumes(raw_path, {"raw": np.ascontiguousarray(big_raw)}, voxel_size=(30.0, 6.0, 6.0))
    write_volumes(gt_path, {"labels": big_labels}, voxel_size=(30.0, 6.0, 6.0))
    return raw_path, gt_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--params", required=True)
    parser.add_argument("--shape", type=int, nargs=3, default=[100, 1024, 1024])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="outputs/real-size")
    parser.add_argument("--stages", nargs="+", choices=("predict", "segment", "evaluate"),
                        default=["predict", "segment", "evaluate"],
                        help="stages to run; a later stage reuses the outputs an earlier run left in --out")
    args = parser.parse_args()
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    load_before, cores = os.getloadavg(), os.cpu_count() or 1
    report: dict = {"shape": args.shape, "voxels": int(np.prod(args.shape)), "workers": args.workers, "cores": cores}
    from melecole.config import load_params

    raw, gt = make_volume(tuple(args.shape), folder, load_params(args.params).data.synthetic)
    melecole = [sys.executable, "-m", "melecole.cli"]
    stages = {
        "predict": [*melecole, "predict", "--params", args.params, "--checkpoint", args.checkpoint,
                    "--raw", f"{raw}/raw", "--out", str(folder / "pred.zarr"), "--blockwise",
                    "--workers", str(args.workers), "--quiet"],
        "segment": [*melecole, "segment", "--params", args.params, "--predictions", str(folder / "pred.zarr"),
                    "--out", str(folder / "seg.zarr"), "--blockwise", "--workers", str(args.workers), "--quiet"],
        "evaluate": [*melecole, "evaluate", "--seg", str(folder / "seg.zarr/segmentation"), "--gt", f"{gt}/labels",
                     "--json"],
    }
    for name, command in stages.items():
        if name not in args.stages:
            continue
        measured = run_measured(command)
        if measured["returncode"] != 0:
            report[name] = measured
            break
        figures = json.loads(measured.pop("stdout").strip().splitlines()[-1])
        measured.pop("stderr_tail")
        report[name] = {**measured, "peak_process_gib": round(measured["peak_process_bytes"] / 2**30, 2),
                        "peak_total_gib": round(measured["peak_total_bytes"] / 2**30, 2), "figures": figures}
    report.update(load_report(load_before, cores, "the times are upper bounds"))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
