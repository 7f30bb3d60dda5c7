"""Active learning simulated with the ground truth as proofreader: uncertainty against random selection.

A labelled volume is cut into a pool of candidate blocks (the grid of ``melecole active select``),
a validation slab (checkpoint and agglomeration threshold, as in training) and a fixed test slab.
Each seed starts from the same ``--initial`` random blocks for both strategies; every round adds
``--per-round`` blocks, chosen by the uncertainty of the previous round's model (the ranking of
``melecole active select``: same views, scores and grid) or at random, with their ground-truth
labels written as ``melecole active add`` writes them, and trains on all labelled blocks
(``melecole train``, ``--steps`` steps): by default fine-tuning that strategy's previous model
(``train.init_from``), as a proofreading loop would, or afresh from random weights
(``--training afresh``). Each model is scored on the test slab:
VI split / merge in bits against its labelled voxels (ground truth 0 ignored), by the configured
``segment.method`` at the threshold chosen on validation. Both strategies label the same number
of blocks at every point; the spread is over the seeds.

Sources: ``flyem-fib-medulla`` (default, bundled real FIB-SEM, 125 x 250 x 250; x 0..150 the
pool, 150..200 validation, 200..250 test) or ``synthetic`` (three generator volumes; pass
``--experiment experiments/synthetic.yaml`` for the anisotropic model). ``--smoke``: a tiny model
on tiny synthetic volumes, for the test suite.

Usage: python benchmarks/active_learning.py [--source flyem-fib-medulla] [--steps 300] [--training continue]
       [--rounds 4] [--initial 2] [--per-round 2] [--seeds 3] [--first-seed 0] [--score tta-disagreement]
       [--threads N] [--out outputs/active-learning]
       python benchmarks/active_learning.py --merge RUN/active_learning.json ... --out OUT
Prints one JSON object (also OUT/active_learning.json): both strategies' curves (mean, spread and every
seed's scores, with the corners of the blocks each round added), and the paired gain of uncertainty
over random (random's VI sum minus uncertainty's, seed by seed: mean, standard error, seeds won) at
every point. Writes OUT/active_learning.png: VI sum, split and merge against labelled blocks, and
the paired gains.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_load import load_report  # noqa: E402

STRATEGIES = ("uncertainty", "random")
SMOKE = {  # a base-2 U-Net without normalisation on 16^3 tiles: seconds per training
    "model": {"base_channels": 2, "embedding_dim": 2, "downsample": [[2, 2, 2]], "norm": "none"},
    # One thread: tiny convolutions on two threads of a shared machine wait more than they compute.
    "train": {"patch": [16, 16, 16], "min_labelled": 0.0, "log_every": 1, "augment": {"enabled": False},
              "threads": 1},
    "predict": {"patch": [16, 16, 16], "overlap": [4, 4, 4]},
    "segment": {"min_size": 5, "baselines": [], "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-3, 0, 0],
                                                            [0, -3, 0], [0, 0, -3]]},
    "data": {"synthetic": {"shape": [16, 32, 32], "neurites": 6}},
}


def load_settings(args: argparse.Namespace):
    from melecole.config import load_params, params_as_dict, params_from_dict, read_yaml
    from melecole.experiments import merge

    base = params_as_dict(load_params(args.params)) if Path(args.params).is_file() else {}
    for experiment in args.experiment:
        base = merge(base, read_yaml(experiment, "experiment file"))
    if args.smoke:
        base = merge(base, SMOKE)
    base = merge(base, {"tracking": {"enabled": False},
                        "train": {"steps": args.steps, "val_every": args.steps, "checkpoint_every": 0}})
    return params_from_dict(base, "active-learning settings")


def volumes(source: str, params) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """pool, val and test (raw, labels) pairs; the same for every seed."""
    if source == "synthetic":
        from melecole.data.synthetic import make_synthetic_volume

        s = params.data.synthetic
        shapes = {"pool": (s.shape[0], 3 * s.shape[1] // 2, 3 * s.shape[2] // 2), "val": s.shape, "test": s.shape}
        density = s.neurites / float(np.prod(s.shape))
        return {name: make_synthetic_volume(shape, s.anisotropy, max(1, round(density * np.prod(shape))), s.noise,
                                            s.blur, s.defects, seed=100 + i)
                for i, (name, shape) in enumerate(shapes.items())}
    from melecole.data.bundled import load_bundled

    raw, labels = load_bundled(params.data.bundled_root, source)["train"]
    cuts = {"pool": slice(0, 150), "val": slice(150, 200), "test": slice(200, 250)}
    return {name: (raw[:, :, cut].copy(), labels[:, :, cut].copy()) for name, cut in cuts.items()}


def write_pair(path: Path, raw: np.ndarray, labels: np.ndarray) -> Path:
    from melecole.io import write_volumes

    write_volumes(path, {"raw": raw, "labels": labels.astype(np.uint64)})
    return path


def train_on(params, blocks, pool, val_file: Path, folder: Path, start: Path | None = None) -> Path:
    """A model trained on the labelled blocks, written as ``melecole active add`` would: afresh,
    or fine-tuned from the checkpoint ``start`` (``train.init_from``)."""
    from melecole.active.proofread import write_training_volumes
    from melecole.config import with_train
    from melecole.stages.train import train

    if start is not None:
        params = with_train(params, init_from=str(start))
    raw, labels = pool
    shutil.rmtree(folder, ignore_errors=True)  # a rerun with the same --out starts this round afresh
    files = write_training_volumes([(raw[b.region], labels[b.region]) for b in blocks], folder / "data", "sim")
    checkpoint = folder / "checkpoint.pt"
    with contextlib.redirect_stdout(sys.stderr):
        train(params, files, [val_file], checkpoint, resume="never")
    return checkpoint


def test_scores(params, checkpoint: Path, test) -> dict:
    """VI of the configured method (auto: the one chosen on validation) on the test slab, at its calibrated knob."""
    from melecole.checkpoint import load_model
    from melecole.data.normalize import normalize_raw
    from melecole.evaluate import evaluate_pooled
    from melecole.inference.encoding import round_trip
    from melecole.inference.volume import predict_volume
    from melecole.stages.segment import run_variant
    from melecole.stages.variants import Knobs

    model, trained_with, facts = load_model(checkpoint)
    cfg, loss = params.predict, trained_with["train"]["loss"]
    raw, labels = test
    predictions = round_trip(predict_volume(model, normalize_raw(raw), cfg.patch, cfg.overlap, cfg.batch_size,
                                            params.segment.offsets, loss["delta_d"], loss["norm"], cfg.augment,
                                            cfg.affinity, embedding=False))
    # As `segment` does: the method chosen on validation (auto) with its calibrated knob.
    knobs = Knobs(params.segment, facts.get("calibration"), facts.get("agglomeration_threshold"))
    segmentation = run_variant(knobs.main(), knobs, predictions, params.seed)
    metrics = evaluate_pooled([(segmentation, labels)])
    return {"vi_split": metrics["vi_split"], "vi_merge": metrics["vi_merge"],
            "vi_sum": metrics["vi_split"] + metrics["vi_merge"]}


def most_uncertain(params, checkpoint: Path, pool_raw: np.ndarray, labelled: list, count: int, args) -> list:
    """The ``count`` unlabelled blocks of the pool the model is least sure about (``active select``'s ranking)."""
    from melecole.checkpoint import load_model
    from melecole.data.normalize import normalize_raw
    from melecole.stages.active import rank_volume, volume_uncertainty

    model, trained_with, _ = load_model(checkpoint)
    uncertainty = volume_uncertainty(params, model, trained_with["train"]["loss"], normalize_raw(pool_raw),
                                     args.score, args.augment)
    ranking = rank_volume(uncertainty, args.block)
    return [r.block for r in ranking if r.block not in labelled][:count]


def simulate_seed(params, seed: int, data: dict, candidates: list, args, work: Path) -> dict:
    """One seed: the VI curve of each strategy, as lists of (labelled blocks, scores)."""
    params = params.model_copy(update={"seed": seed})
    rng = np.random.default_rng(seed)
    val_file = write_pair(work / "val.h5", *data["val"])
    initial = [candidates[i] for i in rng.choice(len(candidates), args.initial, replace=False)]
    first = train_on(params, initial, data["pool"], val_file, work / "round-0")
    start = {"labelled_blocks": len(initial), **test_scores(params, first, data["test"]), "added": corners(initial)}
    curves = {}
    for strategy in STRATEGIES:
        choice = np.random.default_rng([seed, STRATEGIES.index(strategy)])
        labelled, checkpoint, curve = list(initial), first, [start]
        for round_ in range(1, args.rounds + 1):
            if strategy == "uncertainty":
                new = most_uncertain(params, checkpoint, data["pool"][0], labelled, args.per_round, args)
            else:
                rest = [b for b in candidates if b not in labelled]
                new = [rest[i] for i in choice.choice(len(rest), min(args.per_round, len(rest)), replace=False)]
            labelled += new
            warm = checkpoint if args.training == "continue" else None
            checkpoint = train_on(params, labelled, data["pool"], val_file, work / f"{strategy}-{round_}", warm)
            curve.append({"labelled_blocks": len(labelled), **test_scores(params, checkpoint, data["test"]),
                          "added": corners(new)})
            print(f"seed {seed} {strategy} round {round_}: {curve[-1]}", file=sys.stderr, flush=True)
        curves[strategy] = curve
    return curves


def corners(blocks) -> list[list[int]]:
    """The blocks' corners (z, y, x) in the pool, as the JSON records which blocks a round labelled."""
    return [list(b.offset) for b in blocks]


def summarise(per_seed: list[dict], block_voxels: int) -> dict:
    out = {}
    for strategy in STRATEGIES:
        points = []
        for i, first in enumerate(per_seed[0][strategy]):
            count = first["labelled_blocks"]
            entry = {"labelled_blocks": count, "labelled_voxels": count * block_voxels}
            for key in ("vi_split", "vi_merge", "vi_sum"):
                values = [seed[strategy][i][key] for seed in per_seed]
                entry.update({f"{key}_mean": float(np.mean(values)), f"{key}_std": float(np.std(values)), key: values})
            points.append(entry)
        out[strategy] = points
    return out


def plot(strategies: dict, gains: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for ax, key in zip(axes, ("vi_sum", "vi_split", "vi_merge")):
        for strategy, colour, style in zip(STRATEGIES, ("tab:red", "tab:blue"), ("o-", "s--")):
            x = [p["labelled_blocks"] for p in strategies[strategy]]
            mean = np.array([p[f"{key}_mean"] for p in strategies[strategy]])
            std = np.array([p[f"{key}_std"] for p in strategies[strategy]])
            ax.plot(x, mean, style, color=colour, label=strategy)
            ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.2)
        ax.set_xlabel("labelled blocks")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel(f"test {key.replace('_', ' ')} (bits)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    ax = axes[3]  # seed by seed: random's VI sum minus uncertainty's, so above 0 uncertainty helped
    x = np.array([g["labelled_blocks"] for g in gains], dtype=float)
    for seed in range(len(gains[0]["per_seed"])):
        ax.plot(x, [g["per_seed"][seed] for g in gains], "-", color="grey", alpha=0.4, lw=1)
    ax.errorbar(x, [g["mean"] for g in gains], yerr=[g["sem"] for g in gains], fmt="o-", color="black",
                capsize=3, label="mean +- s.e.m.")
    ax.axhline(0.0, color="tab:red", lw=1)
    ax.set_xlabel("labelled blocks")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("VI sum: random - uncertainty (bits)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="flyem-fib-medulla", choices=("flyem-fib-medulla", "synthetic"),
                        help="labelled volume cut into pool, validation and test (default: flyem-fib-medulla)")
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    parser.add_argument("--experiment", action="append", default=[],
                        help="overrides merged on top in the order given, e.g. experiments/synthetic.yaml; "
                             "repeatable (default: none)")
    parser.add_argument("--steps", type=int, default=300, help="training steps per model (default: 300)")
    parser.add_argument("--training", default="continue", choices=("continue", "afresh"),
                        help="each round fine-tunes the strategy's previous model on all its labelled blocks, as a "
                             "proofreading loop does (continue), or trains a new model from random weights "
                             "(afresh) (default: continue)")
    parser.add_argument("--rounds", type=int, default=4, help="selection rounds after the initial set (default: 4)")
    parser.add_argument("--initial", type=int, default=2, help="random blocks labelled first (default: 2)")
    parser.add_argument("--per-round", type=int, default=2, help="blocks labelled per round (default: 2)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds FIRST .. FIRST+N-1 (default: 3)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="first seed, to run seeds in parallel processes (default: 0)")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                        help="only join the active_learning.json files of runs of other seeds with the same "
                             "settings into OUT (curves, spread, figure); trains nothing")
    parser.add_argument("--block", type=int, nargs=3, metavar=("Z", "Y", "X"),
                        help="candidate block shape (default: train.patch)")
    parser.add_argument("--score", default="tta-disagreement",
                        choices=("tta-disagreement", "boundary-entropy", "affinity-entropy"),
                        help="uncertainty score (default: tta-disagreement)")
    parser.add_argument("--augment", default="flips", choices=("flips", "permutations", "none"),
                        help="test-time views of the selection (default: flips)")
    parser.add_argument("--threads", type=int,
                        help="torch threads of every training and prediction (default: train.threads, else torch's)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny model and synthetic volumes for the test suite (default: off)")
    parser.add_argument("--out", default="outputs/active-learning",
                        help="work folder (default: outputs/active-learning)")
    args = parser.parse_args()
    if args.merge:
        merge_runs(args.merge, Path(args.out))
        return
    if args.smoke:
        args.source = "synthetic"

    from melecole.active.blocks import block_grid
    from melecole.config import with_train

    cores, load_before, started = os.cpu_count() or 1, os.getloadavg(), time.perf_counter()
    params = load_settings(args)
    if args.threads:
        params = with_train(params, threads=args.threads)
    if params.train.threads:
        import torch

        torch.set_num_threads(params.train.threads)
    args.block = tuple(args.block) if args.block else tuple(params.train.patch)
    data = volumes(args.source, params)
    candidates = block_grid(data["pool"][0].shape, args.block)
    needed = args.initial + args.rounds * args.per_round
    if needed > len(candidates):
        parser.error(f"{needed} blocks to label but the pool {data['pool'][0].shape} holds {len(candidates)} "
                     f"of {args.block}")
    out = Path(args.out)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    per_seed = {seed: simulate_seed(params, seed, data, candidates, args, out / f"seed-{seed}") for seed in seeds}
    settings = {k: getattr(args, k) for k in ("steps", "training", "rounds", "initial", "per_round", "score",
                                              "threads", "experiment", "augment", "smoke")}
    figures = {
        "source": args.source, "pool": list(data["pool"][0].shape), "test": list(data["test"][0].shape),
        "block": list(candidates[0].shape), "candidates": len(candidates), "settings": settings,
        **outcome(per_seed, int(np.prod(candidates[0].shape))),
        "seconds": round(time.perf_counter() - started, 1), "cores": cores,
        **load_report(load_before, cores, "the times are upper bounds"),
    }
    report(figures, out)


def paired_gain(random: list[float], uncertainty: list[float]) -> dict:
    """Random's VI minus uncertainty's, seed by seed (> 0: uncertainty better): the per-seed gains,
    their mean, population spread (std), standard error of the mean (sample std / sqrt(n); 0 for
    one seed) and the seeds uncertainty won."""
    gains = np.asarray(random, dtype=np.float64) - np.asarray(uncertainty, dtype=np.float64)
    sem = float(np.std(gains, ddof=1) / np.sqrt(len(gains))) if len(gains) > 1 else 0.0
    return {"mean": float(np.mean(gains)), "std": float(np.std(gains)), "sem": sem,
            "wins": int((gains > 0).sum()), "seeds": len(gains), "per_seed": gains.tolist()}


def outcome(per_seed: dict[int, dict], block_voxels: int) -> dict:
    """The curves of every seed, their mean and spread, and the paired gain of uncertainty over
    random (VI sum) at every number of labelled blocks and at the last."""
    strategies = summarise(list(per_seed.values()), block_voxels)
    gains = [{"labelled_blocks": r["labelled_blocks"], **paired_gain(r["vi_sum"], u["vi_sum"])}
             for r, u in zip(strategies["random"], strategies["uncertainty"])]
    return {"seeds": sorted(per_seed), "strategies": strategies,
            "vi_sum_gain_of_uncertainty": gains,
            "final_vi_sum_gain_of_uncertainty": {k: v for k, v in gains[-1].items() if k != "labelled_blocks"},
            "per_seed": {str(seed): curves for seed, curves in per_seed.items()}}


def report(figures: dict, out: Path) -> None:
    s = figures["settings"]
    plot(figures["strategies"], figures["vi_sum_gain_of_uncertainty"], out / "active_learning.png",
         f"{figures['source']}: {len(figures['seeds'])} seeds, {s['steps']} steps per round "
         f"({s['training']}), score {s['score']}")
    (out / "active_learning.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))


def merge_runs(files: list[Path], out: Path) -> None:
    """Joins runs of disjoint seeds and equal settings (``--first-seed`` in parallel processes)."""
    runs = [json.loads(path.read_text()) for path in files]
    for path, run in zip(files[1:], runs[1:]):
        for key in ("source", "pool", "test", "block", "settings"):
            if run[key] != runs[0][key]:
                sys.exit(f"active_learning.py: {path}: {key} {run[key]} differs from {files[0]}'s {runs[0][key]}")
    per_seed = {int(seed): curves for run in runs for seed, curves in run["per_seed"].items()}
    if len(per_seed) != sum(len(run["per_seed"]) for run in runs):
        sys.exit(f"active_learning.py: the runs {', '.join(map(str, files))} share a seed")
    out.mkdir(parents=True, exist_ok=True)
    first = runs[0]["strategies"]["random"][0]
    block_voxels = first["labelled_voxels"] // first["labelled_blocks"]
    report({**{k: runs[0][k] for k in ("source", "pool", "test", "block", "candidates", "settings")},
            **outcome(dict(sorted(per_seed.items())), block_voxels),
            "seconds": [run["seconds"] for run in runs], "merged": [str(path) for path in files]}, out)


if __name__ == "__main__":
    main()
