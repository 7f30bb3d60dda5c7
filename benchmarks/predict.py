"""Our predict stage against MONAI's sliding_window_inference: speed, peak memory, same outputs.

Both sides run the parameter file's model with random weights on the same raw volume (random
uint8 of ``--shape``, or ``--raw``), each in its own process whose resident memory is sampled
from /proc (:mod:`process_memory`), and both write the same stored outputs:

- ours: the whole ``melecole predict`` command a user runs (reading, intensity statistics and
  normalisation, tiles, per-tile embedding affinities, blending, uint8 encoding, zarr writing),
  block by block as the stage chooses;
- MONAI: the same steps around ``monai.inferers.sliding_window_inference``, the way a MONAI user
  writes them: read the whole volume, normalise it with the stage's statistics (identical
  input), run the window with the same patch, the same tile grid (overlap fraction
  ``overlap / patch``; the grids are checked equal) and the same blending window (ours, the
  separable sine window, passed as ``roi_weight_map``; ``--monai-mode gaussian|constant`` uses
  MONAI's own instead), with a predictor that returns, per tile, the boundary probabilities,
  the embedding affinities at ``segment.offsets`` computed from that tile's embedding
  (:func:`melecole.segment.affinities.embedding_affinities`) times their validity (the partner
  lies inside the tile), that validity itself, and the affinity head's probabilities. MONAI
  normalises by one weight per voxel, so the affinities' per-channel weights are blended as
  outputs of their own and divided afterwards: the result is our weighted mean. Pairs leaving
  the volume are set to 0, every output is encoded as the stage stores it (uint8) and written
  into a zarr store with the stage's chunks and compression.

Test-time augmentation is off on both sides (MONAI's window has none of ours) and the embedding
is not stored. Each side runs ``--repeats`` times, alternating (ours, MONAI, MONAI, ours, ...),
and its fastest run counts. Prints one JSON object: voxels/s of each (whole process wall time,
start-up included; also per CPU second of the process tree, steadier on a shared machine), their
ratios, peak memory of each and their ratio, the same after start-up (time after the imports,
memory above the imported modules' resident set), the largest absolute difference of every
stored output after decoding (units of probability; one uint8 step is 1/255), the settings,
cores and load average.

Usage: python benchmarks/predict.py [--params params.yaml] [--shape 64 256 256] [--device cpu]
       [--raw FILE[:dataset]] [--monai-mode window|gaussian|constant] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine_load import load_report  # noqa: E402
from process_memory import run_measured  # noqa: E402

MONAI_MODES = ("window", "gaussian", "constant")


def monai_overlap(patch: tuple[int, ...], overlap: tuple[int, ...]) -> tuple[float, ...]:
    """MONAI's overlap fractions giving our steps: MONAI steps by ``int(patch * (1 - fraction))``;
    half a voxel of slack keeps the float product from rounding one voxel short."""
    return tuple((o - 0.5) / p if o > 0 else 0.0 for p, o in zip(patch, overlap))


def same_grid(shape, patch, overlap) -> bool:
    """Whether MONAI's windows are exactly our tiles (the same starts, C order aside)."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    from melecole.inference.tiling import TileGrid

    image = tuple(max(s, p) for s, p in zip(shape, patch))
    interval = _get_scan_interval(image, patch, 3, monai_overlap(patch, overlap))
    theirs = {tuple(s.start for s in window) for window in dense_patch_slices(image, patch, interval)}
    return theirs == set(TileGrid.of(shape, patch, overlap).starts())


def resident_bytes() -> int:
    """This process's resident memory now."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# The stage's resident memory once its modules are imported (the MONAI side measures its own).
STAGE_STARTUP = ("import json, os, pathlib, melecole.cli, melecole.stages.predict; "
                 "print(json.dumps({'startup_bytes': int(pathlib.Path('/proc/self/statm').read_text().split()[1]) "
                 "* os.sysconf('SC_PAGE_SIZE')}))")


def monai_main(argv: list[str]) -> None:
    """The MONAI side, run in its own process: prints its phase timings as JSON."""
    parser = argparse.ArgumentParser(prog="predict.py _monai")
    for name in ("--params", "--checkpoint", "--raw", "--out", "--mode", "--device"):
        parser.add_argument(name, required=True)
    args = parser.parse_args(argv)
    start = time.perf_counter()

    import torch
    from monai.inferers import sliding_window_inference

    from melecole.checkpoint import load_model
    from melecole.config import load_params
    from melecole.data.normalize import apply_normalisation, check_normalisable, intensity_statistics
    from melecole.inference.blend import blend_window
    from melecole.inference.encoding import STORED_DTYPES, encode
    from melecole.inference.region import volume_pairs
    from melecole.io import VolumeSpec, create_container, open_volume
    from melecole.segment.affinities import cosine_affinities, embedding_affinities

    imported, startup_rss = time.perf_counter(), resident_bytes()
    params = load_params(args.params)
    cfg = params.predict
    device = torch.device(args.device)
    model, trained_with, _ = load_model(args.checkpoint, device)
    loss = trained_with["train"]["loss"]
    offsets = [tuple(int(d) for d in o) for o in params.segment.offsets]
    patch, overlap = tuple(cfg.patch), tuple(cfg.overlap)

    spec = VolumeSpec.parse(args.raw)
    raw = open_volume(spec, ndim=3)
    stats = intensity_statistics(raw.read, raw.shape)
    check_normalisable(stats, str(spec), raw.shape)
    shape = tuple(raw.shape)
    inputs = torch.from_numpy(apply_normalisation(raw.read(), stats))[None, None]  # (1, 1, Z, Y, X)
    raw.close()
    loaded = time.perf_counter()

    # Validity of each pair inside one tile (the partner lies in the tile), (C, Z, Y, X).
    inside = [np.stack([(np.arange(p) + o[axis] >= 0) & (np.arange(p) + o[axis] < p) for o in offsets])
              for axis, p in enumerate(patch)]
    validity = torch.from_numpy((inside[0][:, :, None, None] & inside[1][:, None, :, None]
                                 & inside[2][:, None, None, :]).astype(np.float32)).to(device)

    if cfg.affinity == "cosine":
        def tile_affinities(embedding):
            return cosine_affinities(embedding, offsets)
    else:
        def tile_affinities(embedding):
            return embedding_affinities(embedding, offsets, delta_d=loss["delta_d"], norm=loss["norm"])

    def predictor(tiles: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model(tiles)  # the tile's own embedding -> affinities, as the stage does
        affinities = torch.stack([torch.from_numpy(tile_affinities(e)) for e in out["embedding"]])
        result = {"boundary": torch.sigmoid(out["boundary"].float()),
                  "affinities": affinities.to(device) * validity,
                  # a copy: MONAI weights the outputs in place
                  "affinity_votes": validity.expand(len(tiles), *validity.shape).clone()}
        if "affinities" in out:
            result["predicted_affinities"] = torch.sigmoid(out["affinities"].float())
        return result

    window = dict(mode="constant", roi_weight_map=torch.from_numpy(blend_window(patch)).to(device)) \
        if args.mode == "window" else dict(mode=args.mode)
    with torch.inference_mode():
        outputs = sliding_window_inference(inputs, patch, cfg.batch_size, predictor,
                                           overlap=monai_overlap(patch, overlap), sw_device=device,
                                           device=torch.device("cpu"), **window)
    del inputs
    predicted = time.perf_counter()

    # Channel by channel, so the temporaries stay one channel large.
    whole = tuple(slice(0, s) for s in shape)
    values = {"boundary": outputs.pop("boundary")[0].numpy()}  # (1, Z, Y, X)
    affinities, votes = outputs.pop("affinities")[0].numpy(), outputs.pop("affinity_votes")[0].numpy()
    for channel, offset in enumerate(offsets):
        np.divide(affinities[channel], votes[channel], out=affinities[channel], where=votes[channel] > 0)
        affinities[channel][votes[channel] <= 0] = 0.0  # no tile had the pair
        affinities[channel] *= volume_pairs(shape, [offset], whole)[0]  # the partner lies outside the volume
    del votes
    values["affinities"] = affinities
    if "predicted_affinities" in outputs:
        values["predicted_affinities"] = outputs.pop("predicted_affinities")[0].numpy()
    combined = time.perf_counter()

    chunks = tuple(min(c, s) for c, s in zip(cfg.chunks, shape))
    container = create_container(args.out)
    for name in list(values):
        channels = values.pop(name)
        data = np.empty(channels.shape, dtype=STORED_DTYPES[name])
        for channel in range(len(channels)):
            data[channel] = encode(name, channels[channel])
        del channels
        if name == "boundary":
            data = data[0]
        container.create_dataset(name, data.shape, STORED_DTYPES[name], chunks=data.shape[:-3] + chunks).write(
            (0, 0, 0), data)
        del data
    container.close()
    done = time.perf_counter()
    print(json.dumps({"phases_seconds": {"imports": round(imported - start, 2),
                                         "read_normalise": round(loaded - imported, 2),
                                         "sliding_window": round(predicted - loaded, 2),
                                         "affinity_division": round(combined - predicted, 2),
                                         "encode_write": round(done - combined, 2)},
                      "seconds": round(done - start, 2), "startup_bytes": startup_rss}))


def compare(ours: Path, theirs: Path) -> dict:
    """Largest absolute difference of every stored output after decoding, read slab by slab."""
    from melecole.inference.encoding import decode
    from melecole.io import open_container

    report = {}
    with open_container(ours) as a, open_container(theirs) as b:
        for name in sorted(set(a.names()) & set(b.names())):
            x, y = a.dataset(name), b.dataset(name)
            if tuple(x.shape) != tuple(y.shape):
                raise SystemExit(f"{name}: ours {x.shape} and MONAI's {y.shape} differ")
            largest, differing = 0.0, 0
            z_size, rest = x.shape[-3], x.shape[-2:]
            for z0 in range(0, z_size, 16):
                region = (slice(z0, min(z_size, z0 + 16)), slice(0, rest[0]), slice(0, rest[1]))
                difference = np.abs(decode(x.read(region)) - decode(y.read(region)))
                largest = max(largest, float(difference.max()))
                differing += int(np.count_nonzero(difference))
            report[name] = {"max_abs_difference": round(largest, 6), "voxels_differing": differing,
                            "values": int(math.prod(x.shape))}
    return report


def _measured(command: list[str]) -> dict:
    """One run of ``command`` with its peak memory, wall time and CPU time (user + system, its
    whole process tree: less sensitive than the wall time to other work on the machine)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    measured = run_measured(command, interval=0.2)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if measured["returncode"] != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{measured['stderr_tail']}")
    measured["cpu_seconds"] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1)
    measured["figures"] = json.loads(measured["stdout"].strip().splitlines()[-1])
    return measured


def _side(runs: list[dict], voxels: int) -> dict:
    """The fastest run's figures (others' work on the machine only slows a run down), the largest
    peak memory of all runs."""
    best = min(runs, key=lambda run: run["seconds"])
    cpu = min(run["cpu_seconds"] for run in runs)
    return {"seconds": best["seconds"], "voxels_per_second": round(voxels / best["seconds"]),
            "cpu_seconds": cpu, "voxels_per_cpu_second": round(voxels / cpu),
            "seconds_of_runs": [run["seconds"] for run in runs],
            "peak_total_mib": round(max(run["peak_total_bytes"] for run in runs) / 2**20),
            "peak_process_mib": round(max(run["peak_process_bytes"] for run in runs) / 2**20)}, best


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_monai":
        monai_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="model, predict and offsets (default: params.yaml)")
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 256, 256], metavar=("Z", "Y", "X"),
                        help="shape of the random raw volume (default: 64 256 256)")
    parser.add_argument("--raw", help="a real raw volume FILE[:dataset] instead of a random one")
    parser.add_argument("--device", default="cpu", help="torch device of both sides: cpu, cuda, cuda:N (default: cpu)")
    parser.add_argument("--monai-mode", choices=MONAI_MODES, default="window",
                        help="MONAI's blending: window = our sine window as roi_weight_map (the same maths), "
                             "gaussian or constant = MONAI's own (default: window)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each side, in the order ours, MONAI, MONAI, ours, ...; the fastest of each "
                             "is compared (default: 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")

    import monai
    import yaml

    from melecole.config import load_params, params_as_dict, params_from_dict
    from melecole.io import VolumeSpec, open_volume, write_volumes
    from tests.predict_helpers import random_checkpoint

    load_before, cores = os.getloadavg(), os.cpu_count() or 1
    settings = params_as_dict(load_params(args.params))
    settings["train"]["device"] = args.device
    settings["predict"].update(augment="none", embedding=False)
    params = params_from_dict(settings)
    cfg = params.predict
    patch, overlap = tuple(cfg.patch), tuple(cfg.overlap)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        params_file = folder / "params.yaml"
        params_file.write_text(yaml.safe_dump(settings))
        checkpoint = random_checkpoint(params, folder / "checkpoint.pt", seed=args.seed)
        if args.raw:
            raw = str(VolumeSpec.parse(args.raw))
        else:
            rng = np.random.default_rng(args.seed)
            write_volumes(folder / "raw.zarr", {"raw": rng.integers(0, 256, tuple(args.shape), dtype=np.uint8)})
            raw = str(folder / "raw.zarr/raw")
        with open_volume(raw, ndim=3) as volume:
            shape = tuple(int(s) for s in volume.shape)
        if any(s < p for s, p in zip(shape, patch)):
            # MONAI pads such a volume on both sides with zeros, the stage at its end by reflection.
            raise SystemExit(f"volume {shape} is smaller than the patch {patch}: the two would pad it differently")
        voxels = math.prod(shape)
        commands = {
            "ours": [sys.executable, "-m", "melecole.cli", "predict", "--params", str(params_file), "--checkpoint",
                     str(checkpoint), "--raw", raw, "--out", str(folder / "ours.zarr"), "--quiet"],
            "monai": [sys.executable, str(Path(__file__).resolve()), "_monai", "--params", str(params_file),
                      "--checkpoint", str(checkpoint), "--raw", raw, "--out", str(folder / "monai.zarr"),
                      "--mode", args.monai_mode, "--device", args.device],
        }
        runs: dict[str, list[dict]] = {"ours": [], "monai": []}
        for repeat in range(args.repeats):
            for side in ("ours", "monai") if repeat % 2 == 0 else ("monai", "ours"):
                for leftover in folder.glob(f"{side}.zarr*"):
                    shutil.rmtree(leftover)
                runs[side].append(_measured(commands[side]))
        difference = compare(folder / "ours.zarr", folder / "monai.zarr")
        startup = run_measured([sys.executable, "-c", STAGE_STARTUP], interval=0.2)
        ours_startup = json.loads(startup["stdout"].strip().splitlines()[-1])["startup_bytes"]

    ours, ours_best = _side(runs["ours"], voxels)
    theirs, theirs_best = _side(runs["monai"], voxels)
    ours["stage_seconds"] = ours_best["figures"]["predict_seconds"]
    theirs["phases_seconds"] = theirs_best["figures"]["phases_seconds"]
    # After start-up: ours from the stage's own clock (model loading on), MONAI's without its imports.
    theirs["seconds_after_imports"] = round(theirs_best["figures"]["seconds"] - theirs["phases_seconds"]["imports"], 2)
    ours["startup_mib"] = round(ours_startup / 2**20)
    theirs["startup_mib"] = round(theirs_best["figures"]["startup_bytes"] / 2**20)
    offsets = len(params.segment.offsets)
    vote_mib = round(offsets * voxels * 4 / 2**20)
    blending = {"window": "our sine window passed as roi_weight_map",
                "gaussian": "MONAI's gaussian window (sigma_scale 0.125)",
                "constant": "MONAI's constant window"}[args.monai_mode]
    report = {
        "settings": {"params": args.params, "shape": list(shape), "voxels": voxels,
                     "raw": args.raw or f"random uint8 (seed {args.seed})", "device": args.device,
                     "patch": list(patch), "overlap": list(overlap),
                     "monai_overlap": [round(f, 6) for f in monai_overlap(patch, overlap)],
                     "same_tile_grid": same_grid(shape, patch, overlap), "batch_size": cfg.batch_size,
                     "offsets": offsets, "test_time_augmentation": "none", "repeats": args.repeats,
                     "blending": {"ours": "separable sine window x per-channel pair validity",
                                  "monai": f"{blending}; the affinities' pair validity blended as {offsets} extra "
                                           "output channels and divided out afterwards"},
                     "block": ours_best["figures"]["block"], "blocks": ours_best["figures"]["blocks"],
                     "memory_gb": cfg.memory_gb, "monai_version": monai.__version__,
                     "torch_threads": _torch_threads()},
        "ours": ours,
        "monai": {**theirs, "validity_channels_mib": vote_mib},
        "speed_ratio_ours_to_monai": round(ours["voxels_per_second"] / theirs["voxels_per_second"], 3),
        "cpu_speed_ratio_ours_to_monai": round(ours["voxels_per_cpu_second"] / theirs["voxels_per_cpu_second"], 3),
        "memory_ratio_ours_to_monai": round(ours["peak_total_mib"] / theirs["peak_total_mib"], 3),
        "memory_ratio_without_monai_validity_channels": round(
            ours["peak_total_mib"] / max(1, theirs["peak_total_mib"] - vote_mib), 3),
        "after_startup": {
            "speed_ratio_ours_to_monai": round(theirs["seconds_after_imports"] / ours["stage_seconds"], 3),
            "working_memory_ratio_ours_to_monai": round((ours["peak_total_mib"] - ours["startup_mib"])
                                                        / max(1, theirs["peak_total_mib"] - theirs["startup_mib"]), 3),
            "what": "time after the imports (ours: the stage's own clock, model loading included) and peak memory "
                    "above the resident memory once the modules are imported"},
        "max_abs_difference": max(d["max_abs_difference"] for d in difference.values()),
        "difference": difference,
        "cores": cores,
    }
    report["meets_target"] = report["speed_ratio_ours_to_monai"] >= 1.0 and report["memory_ratio_ours_to_monai"] <= 1.0
    report.update(load_report(load_before, cores, "the wall-time speeds are lower bounds; the CPU-time ratio "
                                                  "is the steadier figure"))
    print(json.dumps(report, indent=2))


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
