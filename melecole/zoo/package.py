"""Adds a trained checkpoint to the zoo: ``python -m melecole.zoo.package --checkpoint CK --name NAME``.

Copies the checkpoint into ``melecole/zoo/models/<name>/``, records its SHA-256, the data and
licences it was trained on, its pooled validation scores (from the checkpoint), the test scores
of the run (from its metrics.json), and a *check score*: the model's VI on flyem-fib-small's
validation slab, predicted, segmented and scored here with the checkpoint's own parameters.
The tests reproduce the check score from the shipped file, so a model that no longer loads or
predicts the same is caught. Writes ``zoo.json`` and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from melecole.errors import MelecoleError
from melecole.zoo.registry import MANIFEST, ZOO_ROOT

CHECK_VOLUME = "flyem-fib-small validation slab (train block, x 150-199: data.val_axis 2, data.val_fraction 0.25)"
LICENCES = {
    "flyem-fib-small": "HHMI Janelia FlyEM example data shipped with gala, BSD-style licence "
                       "(datasets/flyem-fib-small/LICENSE.txt); cite Nunez-Iglesias et al. 2013, 2014",
    "flyem-fib-medulla": "janelia-flyem/neuroproof_examples training_sample2, Creative Commons Attribution "
                         "(datasets/flyem-fib-medulla/LICENSE.txt)",
}


def check_volume(bundled_root: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(raw, labels) of flyem-fib-small's validation slab, cut as ``prepare`` cuts it by default."""
    from melecole.data.bundled import load_bundled
    from melecole.data.splits import split_block

    _, slab = split_block(*load_bundled(bundled_root, "flyem-fib-small")["train"], axis=2, fraction=0.25)
    return slab


def check_score(checkpoint: str | Path, bundled_root: str | Path = "datasets") -> dict[str, float]:
    """VI split / merge and adapted Rand of the checkpoint on :func:`check_volume`, on the CPU,
    with the predict and segment parameters it was trained with (agglomeration at its threshold)."""
    from melecole.checkpoint import read_checkpoint
    from melecole.config import params_from_dict
    from melecole.evaluate import evaluate_segmentation
    from melecole.io import VolumeSpec, read_volume, write_volumes
    from melecole.stages.predict import predict
    from melecole.stages.segment import segment

    stored = read_checkpoint(checkpoint)["params"]
    params = params_from_dict({**stored, "train": {**stored["train"], "device": "cpu"},
                               "tracking": {**stored.get("tracking", {}), "enabled": False}})
    segment_config = params.segment.model_copy(update={"method": "agglomeration", "baselines": []})
    raw, labels = check_volume(bundled_root)
    with tempfile.TemporaryDirectory(prefix="melecole-zoo-check-") as folder:
        folder = Path(folder)
        write_volumes(folder / "raw.h5", {"raw": raw})
        predict(params, checkpoint, VolumeSpec(folder / "raw.h5", "raw"), folder / "predictions.zarr")
        segment(segment_config, folder / "predictions.zarr", folder / "segmentation.h5", params.seed)
        segmentation = read_volume(f"{folder / 'segmentation.h5'}:segmentation")
    return evaluate_segmentation(segmentation, labels)


def _calibration_lines(calibration: dict | None) -> list[str]:
    """The card's lines on the variants calibrated on validation (``segment.method: auto`` uses the choice)."""
    if not calibration:
        return ["- no calibration of the segmentation variants (`melecole recalibrate` adds one)"]
    lines = [f"- segmentation chosen on validation (`segment.method: auto`): {calibration['choice']}; every variant "
             "at its knob, pooled validation VI split / merge (sum):"]
    from melecole.stages.variants import knob_label

    for name, scores in calibration["variants"].items():
        lines.append(f"  - {name} ({knob_label(scores)}): {scores['vi_split']:.4f} / {scores['vi_merge']:.4f} "
                     f"({scores['vi_split'] + scores['vi_merge']:.4f})")
    return lines


def _card(manifest: dict) -> str:
    def row(label: str, m: dict) -> str:
        return (f"| {label} | {m['vi_split']:.4f} | {m['vi_merge']:.4f} | {m['vi_split'] + m['vi_merge']:.4f} "
                f"| {m.get('arand', float('nan')):.4f} |")

    trained = manifest["trained"]
    lines = [f"# zoo:{manifest['name']} (version {manifest['version']})", "", manifest["description"], "",
             "```bash", f"melecole predict --checkpoint zoo:{manifest['name']} --raw my-volume.h5:raw --out pred.zarr",
             "melecole segment --predictions pred.zarr --out seg.h5", "```", "",
             "## Training", "",
             f"- data: {', '.join(trained['data'])} (the training parts only; validation slabs and the held-out "
             "test volumes were never trained on)",
             f"- {trained['steps']} steps, best validation step {trained['best_step']}, patch {trained['patch']}, "
             f"batch {trained['batch_size']}, learning rate {trained['lr']} ({trained['schedule']})",
             f"- model: {trained['model']}",
             f"- agglomeration threshold chosen on validation: {trained['threshold']}",
             *_calibration_lines(manifest.get("calibration")),
             f"- code: melecole commit {trained.get('commit', 'unknown')}", "",
             "## Scores (VI in bits, lower is better)", "",
             "| volume | VI split | VI merge | VI sum | arand |", "|---|---|---|---|---|",
             row("pooled validation (chosen on)", manifest["validation"])]
    for volume, scores in manifest.get("test", {}).items():
        lines.append(row(f"test: {volume}", scores))
    lines += [row(f"check: {manifest['check']['volume']}", manifest["check"]["scores"]), "",
              "The check row is recomputed by the test suite from the shipped file (tolerance "
              f"{manifest['check']['tolerance']} bits: float rounding of other CPUs may flip a few uint8 affinities).",
              "", "## Intended use and limits", "",
              "Isotropic FIB-SEM of insect neuropil at about 10 nm per voxel, intensities normalised per volume. "
              "Not trained on serial-section (anisotropic) EM, other tissue or other resolutions: check it on a "
              "labelled block of your own data before trusting it, and fine-tune (`melecole train`) if it falls short.",
              "", "## Licence of the training data", ""]
    lines += [f"- {name}: {LICENCES[name]}" for name in trained["data"] if name in LICENCES]
    return "\n".join(lines) + "\n"


def add_to_zoo(checkpoint: str | Path, name: str, version: int, description: str,
               metrics_file: str | Path | None = None, commit: str | None = None,
               root: str | Path = ZOO_ROOT, bundled_root: str | Path = "datasets") -> Path:
    """Copies ``checkpoint`` into ``root/<name>/`` with its manifest and model card; returns the folder."""
    from melecole.checkpoint import read_checkpoint
    from melecole.data.download import sha256sum
    from melecole.stages.variants import without_map_levels

    state = read_checkpoint(checkpoint)
    params, extra = state["params"], state["extra"]
    if "val_vi_split" not in extra:
        raise MelecoleError(f"{checkpoint}: no validation scores recorded; only a checkpoint of `melecole train` "
                            "that validated can join the zoo")
    test = {}
    if metrics_file is not None:
        from melecole.stages.report import SCORES, volume_sections

        path = Path(metrics_file)
        for volume, scores in volume_sections(path, json.loads(path.read_text())):
            test[volume or "test"] = {k: scores[k] for k in SCORES}
    data = params["data"]
    trained = {"data": [data["dataset"], *[n for n in data.get("extra_train", []) if n != data["dataset"]]],
               "steps": params["train"]["steps"], "best_step": extra.get("best_step"),
               "patch": params["train"]["patch"], "batch_size": params["train"]["batch_size"],
               "lr": params["train"]["lr"], "schedule": params["train"].get("schedule", "constant"),
               "model": {k: v for k, v in state["model_args"].items()},
               "threshold": extra.get("agglomeration_threshold"), "commit": commit}
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "checkpoint.pt"
    if Path(checkpoint).resolve() != target.resolve():
        shutil.copyfile(checkpoint, target)
    manifest = {"name": name, "version": version, "description": description, "checkpoint": target.name,
                "sha256": sha256sum(target), "trained": trained,
                "validation": {"vi_split": extra["val_vi_split"], "vi_merge": extra["val_vi_merge"],
                               "arand": extra.get("val_arand")},
                "test": test,
                # The fitted maps' levels stay in the checkpoint.
                "calibration": without_map_levels(extra["calibration"]) if extra.get("calibration") else None,
                "check": {"volume": CHECK_VOLUME, "tolerance": 0.01, "scores": check_score(target, bundled_root)}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    (folder / "MODEL_CARD.md").write_text(_card(manifest))
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m melecole.zoo.package", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by melecole train")
    parser.add_argument("--name", required=True, help="zoo name (zoo:NAME)")
    parser.add_argument("--version", type=int, required=True, help="version number, raised for every new model")
    parser.add_argument("--description", required=True, help="one line: what the model is for")
    parser.add_argument("--metrics", help="the run's metrics.json (test scores for the card; default: none)")
    parser.add_argument("--commit", help="git commit of the code that trained it (default: unknown)")
    parser.add_argument("--datasets", default="datasets", help="bundled datasets folder (default: datasets)")
    args = parser.parse_args(argv)
    try:
        print(add_to_zoo(args.checkpoint, args.name, args.version, args.description, args.metrics, args.commit,
                         bundled_root=args.datasets))
    except MelecoleError as error:
        print(f"melecole zoo: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
