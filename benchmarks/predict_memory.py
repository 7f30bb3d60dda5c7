"""Peak memory of `melecole predict` at two volume sizes 8x apart: it must not grow with the volume.

Runs the predict stage (one process, and optionally blockwise with workers) of the parameter
file's model with random weights on random volumes of ``--small`` and 8x its voxels (each axis
doubled), and prints the peak resident memory of each run, their ratio, the wall time and the
voxels per second, as JSON.

Usage: python benchmarks/predict_memory.py [--params params.yaml] [--small 64 128 128] [--workers 1]
       [--block Z Y X]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine_load import load_report  # noqa: E402
from process_memory import run_measured  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--small", type=int, nargs=3, default=[64, 128, 128])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--block", type=int, nargs=3, help="block shape (default: predict's choice within "
                        "predict.memory_gb; a volume that fits one block grows the memory with it)")
    args = parser.parse_args()

    from melecole.config import load_params
    from melecole.io import write_volumes
    from tests.predict_helpers import random_checkpoint

    load_before, cores = os.getloadavg(), os.cpu_count() or 1
    params = load_params(args.params)
    report: dict = {"params": args.params, "workers": args.workers, "memory_gb": params.predict.memory_gb}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        checkpoint = random_checkpoint(params, folder / "checkpoint.pt")
        rng = np.random.default_rng(0)
        for name, factor in (("small", 1), ("large", 2)):
            shape = tuple(s * factor for s in args.small)
            write_volumes(folder / f"{name}.zarr", {"raw": rng.integers(0, 256, shape, dtype=np.uint8)})
            command = [sys.executable, "-m", "melecole.cli", "predict", "--params", args.params, "--checkpoint",
                       str(checkpoint), "--raw", str(folder / f"{name}.zarr/raw"), "--out",
                       str(folder / f"{name}-pred.zarr"), "--quiet", "--workers", str(args.workers)]
            if args.block:
                command += ["--block", *map(str, args.block)]
            measured = run_measured(command)
            if measured["returncode"] != 0:
                raise SystemExit(measured["stderr_tail"])
            figures = json.loads(measured["stdout"].strip().splitlines()[-1])
            report[name] = {"shape": shape, "voxels": int(np.prod(shape)), "seconds": measured["seconds"],
                            "voxels_per_second": round(np.prod(shape) / measured["seconds"]),
                            "block": figures["block"], "blocks": figures["blocks"],
                            "peak_process_mib": round(measured["peak_process_bytes"] / 2**20),
                            "peak_total_mib": round(measured["peak_total_bytes"] / 2**20)}
    report["voxel_ratio"] = report["large"]["voxels"] / report["small"]["voxels"]
    report["peak_ratio_large_to_small"] = round(report["large"]["peak_total_mib"] / report["small"]["peak_total_mib"], 3)
    report.update(load_report(load_before, cores, "the times are upper bounds"))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
