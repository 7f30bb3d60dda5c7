"""The Mutex Watershed side by side: ours (fast), python-elf's and mwatershed's, on one input.

Builds realistic predictions: a label volume of melecole's synthetic generator (the neurite
density of the parameter file's ``data.synthetic``), affinities at its ``segment.offsets``
= sigmoid(+-3 + smooth noise) of same-object pairs, stored like predictions (uint8, value x 255)
and decoded (float32). Each method runs in its own process (peak memory sampled from /proc, and
the process's own peak resident set) on the same input: seconds of the call alone, voxels/s,
VI split / merge and adapted Rand against the labels and between every pair of methods, and
the speed ratios of ours to the libraries. Then the ``melecole segment`` stage on the same
predictions written as a zarr container: whole volume (``segment.method: mws``, with the
agglomeration as baseline) and ``--blockwise --workers N`` (agglomeration).

Methods: ``fast`` (uint8 input), ``fast_float`` (decoded float32 input), ``elf``, ``mwatershed``
(decoded input, through melecole.segment.mutex_watershed), ``stage``, ``stage_blockwise``.

Usage: python benchmarks/segment.py [--shape 100 256 256] [--seed 0] [--methods ...] [--workers 2]
       [--params params.yaml] [--noise 1.5]
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine_load import load_report  # noqa: E402
from process_memory import run_measured  # noqa: E402

DIRECT = ("fast", "fast_float", "elf", "mwatershed")
STAGES = ("stage", "stage_blockwise")
MIB = 2**20


def predicted_affinities(labels: np.ndarray, offsets, rng: np.random.Generator, noise: float) -> np.ndarray:
    """(C, Z, Y, X) float32: sigmoid(3 * (+1 same object, -1 not) + noise * smooth unit noise),
    0 where the partner lies outside; one noise field per channel (sigma 0.5 in z, 2 in y, x)."""
    from scipy import ndimage as ndi

    from melecole.segment.affinities import shifted_pair

    affinities = np.zeros((len(offsets),) + labels.shape, dtype=np.float32)
    for channel, offset in enumerate(offsets):
        pair = shifted_pair(labels.shape, offset)
        if pair is None:
            continue
        field = ndi.gaussian_filter(rng.standard_normal(labels.shape, dtype=np.float32), (0.5, 2.0, 2.0))
        same = np.where(labels[pair[0]] == labels[pair[1]], 3.0, -3.0).astype(np.float32)
        logit = same + noise * (field[pair[0]] / max(float(field.std()), 1e-6))
        affinities[(channel,) + pair[0]] = 1.0 / (1.0 + np.exp(-logit))
    return affinities


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(method: str, folder: Path) -> None:
    """Runs one method on the stored input; prints its figures, saves its segmentation."""
    from melecole.inference.encoding import decode
    from melecole.segment.mutex import mutex_watershed

    setup = json.loads((folder / "setup.json").read_text())
    stored = np.load(folder / "affinities.npy")
    affinities = stored if method == "fast" else decode(stored)
    del stored
    implementation = "fast" if method.startswith("fast") else method

    def run(volume: np.ndarray) -> np.ndarray:
        return mutex_watershed(volume, setup["offsets"], attractive=setup["attractive"], strides=setup["strides"],
                               implementation=implementation)

    # A tiny first call: numba loads its cached machine code (or compiles) once per process.
    start = time.perf_counter()
    run(np.ascontiguousarray(affinities[:, :10, :16, :16]))  # mwatershed wants offsets inside the volume
    warm_up = time.perf_counter() - start
    before = _rss_bytes()
    start = time.perf_counter()
    segmentation = run(affinities)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    np.save(folder / f"{method}.npy", segmentation)
    print(json.dumps({"seconds": seconds, "warm_up_seconds": warm_up, "input_mib": affinities.nbytes / MIB, "rss_before_mib": before / MIB,
                      "process_peak_mib": peak / MIB}))


def _scores(seg: np.ndarray, reference: np.ndarray) -> dict:
    from melecole.evaluate import evaluate_segmentation

    return {k: round(v, 5) for k, v in evaluate_segmentation(seg, reference).items()}


def _write_inputs(folder: Path, args, params) -> tuple[np.ndarray, dict]:
    from melecole.data.synthetic import make_synthetic_volume
    from melecole.inference.encoding import encode

    synthetic = params.data.synthetic
    shape = tuple(args.shape)
    density = synthetic.neurites / float(np.prod(synthetic.shape))
    _, labels = make_synthetic_volume(shape, anisotropy=synthetic.anisotropy,
                                      neurites=max(1, round(density * np.prod(shape))), seed=args.seed)
    offsets = [list(o) for o in params.segment.offsets]
    rng = np.random.default_rng(args.seed)
    stored = encode("affinities", predicted_affinities(labels, offsets, rng, args.noise))
    np.save(folder / "affinities.npy", stored)
    setup = {"offsets": offsets, "attractive": params.segment.attractive, "strides": list(params.segment.strides)}
    (folder / "setup.json").write_text(json.dumps(setup))
    return labels.astype(np.uint64), setup


def _run_direct(method: str, folder: Path, voxels: int) -> dict:
    measured = run_measured([sys.executable, __file__, "--child", method, "--folder", str(folder)], interval=0.1)
    if measured["returncode"] != 0:
        raise SystemExit(f"{method}: {measured['stderr_tail']}")
    figures = json.loads(measured["stdout"].strip().splitlines()[-1])
    return {"seconds": round(figures["seconds"], 3), "voxels_per_second": round(voxels / figures["seconds"]),
            "first_tiny_call_seconds": round(figures["warm_up_seconds"], 3),
            "input_mib": round(figures["input_mib"]), "rss_before_call_mib": round(figures["rss_before_mib"]),
            "process_peak_mib": round(figures["process_peak_mib"]),
            "call_peak_above_before_mib": round(figures["process_peak_mib"] - figures["rss_before_mib"]),
            "sampled_peak_mib": round(measured["peak_process_bytes"] / MIB),
            "process_seconds": measured["seconds"]}


def _run_stages(methods, folder: Path, labels: np.ndarray, args, params_path: Path) -> dict:
    import yaml

    from melecole.inference.encoding import encode
    from melecole.io import open_container, write_volumes

    stored = np.load(folder / "affinities.npy")
    setup = json.loads((folder / "setup.json").read_text())
    boundary = encode("boundary", 1.0 - stored[:3].min(axis=0) / 255.0)
    write_volumes(folder / "predictions.zarr", {"affinities": stored, "predicted_affinities": stored,
                                                "boundary": boundary},
                  attrs={"offsets": json.dumps(setup["offsets"]), "agglomeration_threshold": 0.5})
    del stored
    raw = yaml.safe_load(params_path.read_text())
    runs = {}
    for method in methods:
        blockwise = method == "stage_blockwise"
        raw["segment"].update({"method": "agglomeration" if blockwise else "mws",
                               "baselines": [] if blockwise else ["agglomeration"],
                               "agglomeration": {**raw["segment"].get("agglomeration", {}), "source": "affinities",
                                                 "threshold": 0.5}})
        params = folder / f"{method}.yaml"
        params.write_text(yaml.safe_dump(raw))
        out = folder / f"{method}.zarr"
        command = [sys.executable, "-m", "melecole.cli", "segment", "--params", str(params), "--predictions",
                   str(folder / "predictions.zarr"), "--out", str(out), "--quiet"]
        if blockwise:
            command += ["--blockwise", "--workers", str(args.workers)]
        measured = run_measured(command, cwd=Path(__file__).resolve().parents[1], interval=0.2)
        if measured["returncode"] != 0:
            raise SystemExit(f"{method}: {measured['stderr_tail']}")
        figures = json.loads(measured["stdout"].strip().splitlines()[-1])
        container = open_container(out)
        run = {"command": " ".join(["melecole"] + command[3:]).replace(str(folder), "TMP"),
               "seconds": measured["seconds"], "stage_seconds": figures["seconds"],
               "peak_process_mib": round(measured["peak_process_bytes"] / MIB),
               "peak_total_mib": round(measured["peak_total_bytes"] / MIB),
               "segments": figures.get("segments")}
        for name in container.names():
            run[f"{name}_scores"] = _scores(container.dataset(name).read().astype(np.uint64), labels)
        runs[method] = run
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[100, 256, 256])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=list(DIRECT + STAGES), choices=DIRECT + STAGES)
    parser.add_argument("--workers", type=int, default=2, help="workers of the blockwise stage run")
    parser.add_argument("--params", default=str(Path(__file__).resolve().parents[1] / "params.yaml"))
    parser.add_argument("--noise", type=float, default=1.5, help="strength of the smooth noise on the logits")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.folder))
        return

    from melecole.config import load_params

    load_before, cores = os.getloadavg(), os.cpu_count() or 1
    params = load_params(args.params)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        labels, setup = _write_inputs(folder, args, params)
        voxels = labels.size
        report: dict = {"shape": list(labels.shape), "voxels": voxels, "seed": args.seed, "noise": args.noise,
                        "offsets": " ".join(",".join(map(str, o)) for o in setup["offsets"]),
                        "strides": setup["strides"],
                        "edges": int(voxels * len(setup["offsets"])), "labels": int(len(np.unique(labels))),
                        "methods": {}}
        segmentations = {}
        for method in [m for m in DIRECT if m in args.methods]:
            report["methods"][method] = _run_direct(method, folder, voxels)
            segmentations[method] = np.load(folder / f"{method}.npy")
            report["methods"][method]["segments"] = int(segmentations[method].max())
            report["methods"][method]["scores"] = _scores(segmentations[method], labels)
        report["between"] = {f"{a}~{b}": {**_scores(segmentations[a], segmentations[b]),
                                          "identical": bool(np.array_equal(segmentations[a], segmentations[b]))}
                             for a, b in combinations(segmentations, 2)}
        seconds = {m: f["seconds"] for m, f in report["methods"].items()}
        if "fast" in seconds:
            for other in ("elf", "mwatershed"):
                if other in seconds:
                    report[f"speed_ratio_fast_to_{other}"] = round(seconds[other] / seconds["fast"], 2)
        stages = [m for m in STAGES if m in args.methods]
        if stages:
            report["stages"] = _run_stages(stages, folder, labels, args, Path(args.params))
    report["cores"] = cores
    report["timing_note"] = ("seconds: the call alone, in a process that already made one tiny call "
                             "(first_tiny_call_seconds: numba loading its cached code, or compiling); single-threaded")
    report["memory_note"] = ("process_peak_mib: the method's process's own peak resident set (getrusage), "
                             "imports and input included; call_peak_above_before_mib: that peak minus the "
                             "resident set just before the call (the call's working memory, the segmentation "
                             "returned included); sampled_peak_mib: /proc sampled every 0.1 s")
    report.update(load_report(load_before, cores, "the times are upper bounds"))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
