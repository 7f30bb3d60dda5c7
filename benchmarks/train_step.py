"""Training throughput with 1 and 2 DDP processes: patches/s, voxels/s, peak memory per process.

Times full optimiser steps as ``melecole train`` takes them (sampling + augmentation + targets,
forward, loss, backward, DDP gradient averaging, Adam) at the model, patch, batch size and
augmentation of params.yaml, on the bundled training volumes of the default pipeline. Each
setting runs in fresh processes (torchrun for 2): one process with torch's default thread count,
one process with one thread, and two processes with an equal share of the cores each. Prints
one JSON object; ``scaling_2_vs_1_process`` = 2-process patches/s / 1-process patches/s.

Run alone: ``python benchmarks/train_step.py`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a checkout without installing

import torch  # noqa: E402
from machine_load import load_report  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    """One rank: ``--warmup`` untimed steps, then ``--steps`` timed ones; rank 0 writes the figures."""
    from melecole import distributed
    from melecole.config import load_params
    from melecole.data.augment import build_augmenter, read_shape
    from melecole.data.bundled import load_bundled
    from melecole.data.normalize import normalize_raw
    from melecole.data.sampling import PatchSampler
    from melecole.stages.train import amp_dtype, build_model_for, resolve_device, seed_everything, supervised_loss
    from melecole.training import StepOptions, optimizer_step

    params = load_params(args.params)
    cfg = params.train
    context, device = distributed.init(resolve_device(cfg.device), timeout=900)
    try:
        rng = seed_everything(args.seed, context.rank)
        volumes = []
        for name in [params.data.dataset, *params.data.extra_train]:
            raw, labels = load_bundled(Path(args.root), name)["train"]
            volumes.append((normalize_raw(raw), labels))
        augment = cfg.augment
        sampler = PatchSampler(volumes, cfg.patch, rng, permute="none", flip=False, min_labelled=cfg.min_labelled,
                               augment=build_augmenter(augment, cfg.patch) if augment.enabled else None,
                               read=read_shape(augment, cfg.patch) if augment.enabled else None)
        model, offsets = build_model_for(params, device, context)
        network = model
        if context.distributed:
            network = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        loss_fn = supervised_loss(params, offsets)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        options = StepOptions(accumulate=cfg.accumulate, amp_dtype=amp_dtype(cfg.amp, device),
                              affinity_pieces=cfg.loss.affinity_targets == "pieces")

        def step(number: int) -> None:
            optimizer_step(network, loss_fn, sampler, optimizer, cfg.batch_size, device, offsets, options, number)

        for number in range(args.warmup):
            step(number + 1)
        distributed.barrier()
        start = time.perf_counter()
        for number in range(args.steps):
            step(args.warmup + number + 1)
        distributed.barrier()
        seconds = time.perf_counter() - start
        # ru_maxrss is in KiB on Linux: the peak resident memory of this process.
        mine = {"rank": context.rank, "seconds": seconds, "threads": torch.get_num_threads(),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        everyone = distributed.gather_objects(mine)
        if context.is_main:
            patches = args.steps * cfg.batch_size * cfg.accumulate * context.world_size
            slowest = max(rank["seconds"] for rank in everyone)
            voxels = patches * cfg.patch[0] * cfg.patch[1] * cfg.patch[2]
            Path(args.result).write_text(json.dumps({
                "processes": context.world_size, "threads_per_process": mine["threads"],
                "patches_per_second": round(patches / slowest, 3), "voxels_per_second": round(voxels / slowest),
                "seconds_per_step": round(slowest / args.steps, 3),
                "peak_rss_mb_per_process": [rank["peak_rss_mb"] for rank in everyone]}))
    finally:
        distributed.teardown()


def run_setting(args: argparse.Namespace, processes: int, threads: int | None) -> dict:
    """Runs the worker in fresh processes (torchrun for more than one) and returns its figures."""
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "result.json"
        env = dict(os.environ, PYTHONPATH=str(REPO))
        for name in ("LOCAL_RANK", "WORLD_SIZE", "RANK"):
            env.pop(name, None)
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        script = [str(Path(__file__)), "--worker", "--result", str(result), "--params", args.params,
                  "--root", args.root, "--steps", str(args.steps), "--warmup", str(args.warmup), "--seed", str(args.seed)]
        if processes == 1:
            command = [sys.executable, *script]
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       f"--nproc_per_node={processes}", *script]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{processes} process(es) failed:\n{done.stderr[-3000:]}")
        return json.loads(result.read_text())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"), help="parameters (model, patch, batch)")
    parser.add_argument("--root", default=str(REPO / "datasets"), help="bundled datasets folder")
    parser.add_argument("--steps", type=int, default=8, help="optimiser steps timed per setting")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocator, kernels)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return {}

    from melecole.config import load_params

    cfg = load_params(args.params)
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()
    settings = {
        "1_process": run_setting(args, 1, None),
        "1_process_1_thread": run_setting(args, 1, 1),
        "2_processes": run_setting(args, 2, max(1, cores // 2)),
    }
    load_after = os.getloadavg()
    results: dict = {
        "model": cfg.model.model_dump(mode="json"), "patch": list(cfg.train.patch),
        "batch_size_per_process": cfg.train.batch_size, "cores": cores, "device": "cuda" if torch.cuda.is_available() else "cpu",
        "steps_timed": args.steps, "settings": settings,
        "scaling_2_vs_1_process": round(settings["2_processes"]["patches_per_second"]
                                        / settings["1_process"]["patches_per_second"], 3),
        "scaling_2_vs_1_process_1_thread": round(settings["2_processes"]["patches_per_second"]
                                                 / settings["1_process_1_thread"]["patches_per_second"], 3),
    }
    results.update(load_report(load_before, cores, "the rates are low and the scaling only indicative"))
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
