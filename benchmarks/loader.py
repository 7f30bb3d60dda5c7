"""Does the data loader keep the model fed? Patches per second of loading vs of training.

Measures, on the bundled real volumes (flyem-fib-small's train block and flyem-fib-medulla) at
the default patch size, the patches per second of sampling + augmentation (default
AugmentConfig) + targets through the DataLoader with 0, 1 and 2 workers, and the patches per
second of one training step of the default model (batch 1, one Adam step per patch). Prints
one JSON object; ``ratio_1_worker_to_train_step`` should be at least 3.

Run alone: ``python benchmarks/loader.py`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

from machine_load import load_report  # noqa: E402
from melecole.data.augment import AugmentConfig, build_augmenter, read_shape  # noqa: E402
from melecole.data.bundled import load_bundled  # noqa: E402
from melecole.data.loader import PatchStream, make_loader, patch_targets  # noqa: E402
from melecole.data.normalize import normalize_raw  # noqa: E402
from melecole.data.sampling import PatchSampler  # noqa: E402
from melecole.losses import EmbeddingLoss  # noqa: E402
from melecole.models import build_model  # noqa: E402

PATCH = (48, 48, 48)


def load_volumes(root: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """The training volumes of the default pipeline, raw normalised."""
    small = load_bundled(root, "flyem-fib-small")["train"]
    medulla = load_bundled(root, "flyem-fib-medulla")["train"]
    return [(normalize_raw(raw), labels) for raw, labels in (small, medulla)]


def loader_rate(volumes, workers: int, patches: int, warmup: int, seed: int) -> float:
    """Patches per second through the DataLoader, after ``warmup`` patches (worker start-up)."""
    dataset = PatchStream(volumes, PATCH, seed, augment=AugmentConfig())
    iterator = iter(make_loader(dataset, batch_size=1, workers=workers))
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(patches):
        next(iterator)
    rate = patches / (time.perf_counter() - start)
    del iterator  # stops the workers
    return rate


def stage_costs(volumes, patches: int, seed: int) -> dict:
    """Milliseconds per patch of each part, in this process: sampling, augmentation, targets."""
    config = AugmentConfig()
    plain = PatchSampler(volumes, PATCH, np.random.default_rng(seed), permute="none", flip=False)
    augmented = PatchSampler(volumes, PATCH, np.random.default_rng(seed), permute="none", flip=False,
                             augment=build_augmenter(config, PATCH), read=read_shape(config, PATCH))
    timings = {}
    for name, sampler in (("sample_ms", plain), ("sample_and_augment_ms", augmented)):
        start = time.perf_counter()
        drawn = [sampler.sample() for _ in range(patches)]
        timings[name] = 1000 * (time.perf_counter() - start) / patches
    start = time.perf_counter()
    for raw, labels in drawn:
        patch_targets(raw, labels)
    timings["targets_ms"] = 1000 * (time.perf_counter() - start) / patches
    return {key: round(value, 2) for key, value in timings.items()}


def train_step_rate(volumes, steps: int, seed: int) -> float:
    """Patches per second of forward + loss + backward + Adam step, default model, batch 1."""
    torch.manual_seed(seed)
    model = build_model("unet3d", base_channels=16, downsample=[[2, 2, 2], [2, 2, 2]], embedding_dim=16)
    loss_fn = EmbeddingLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = iter(make_loader(PatchStream(volumes, PATCH, seed, augment=AugmentConfig()), batch_size=1))
    batches = [next(batches) for _ in range(steps + 1)]

    def step(batch):
        terms = loss_fn(model(batch["raw"]), batch["instances"], batch["boundary"])
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()

    step(batches[0])  # warm-up: allocator and kernels
    start = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    return steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(REPO / "datasets"), help="bundled datasets folder")
    parser.add_argument("--patches", type=int, default=60, help="patches timed per loader setting")
    parser.add_argument("--steps", type=int, default=5, help="training steps timed")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    cores = os.cpu_count() or 1
    load_before = os.getloadavg()
    volumes = load_volumes(Path(args.root))
    results: dict = {"patch": list(PATCH), "cores": cores, "torch_threads": torch.get_num_threads(),
                     "volumes": [list(raw.shape) for raw, _ in volumes]}
    results["loader_patches_per_second"] = {
        str(workers): round(loader_rate(volumes, workers, args.patches, 3 + 2 * workers, args.seed), 2)
        for workers in (0, 1, 2)
    }
    results["loader_ms_per_patch_in_process"] = stage_costs(volumes, max(10, args.patches // 3), args.seed)
    results["train_step_patches_per_second"] = round(train_step_rate(volumes, args.steps, args.seed), 3)
    results["ratio_1_worker_to_train_step"] = round(
        results["loader_patches_per_second"]["1"] / results["train_step_patches_per_second"], 1)
    results["target_ratio"] = 3
    results["meets_target"] = results["ratio_1_worker_to_train_step"] >= 3
    results.update(load_report(load_before, cores, "both rates are low and the ratio is only indicative"))
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
