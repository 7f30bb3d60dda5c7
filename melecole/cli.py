"""The ``melecole`` command: parses arguments, loads the config, calls one stage. Nothing else."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from melecole.errors import MelecoleError
from melecole.reproducibility import pin_cpu_kernels

PIPELINE = ("prepare -> train -> predict -> segment -> evaluate (each also runs alone on HDF5, zarr or TIFF "
            "volumes; predict and segment run blockwise on volumes larger than memory); "
            "tune searches hyper-parameters; active selects blocks to proofread and adds them to training")


def _params(path: str | None):
    from melecole.config import Params, load_params

    if path is not None:
        return load_params(path)
    return load_params("params.yaml") if Path("params.yaml").is_file() else Params()


def _volume(text: str):
    from melecole.io import VolumeSpec

    return VolumeSpec.parse(text)


def cmd_prepare(args: argparse.Namespace) -> None:
    from melecole.stages.prepare import prepare

    params = _params(args.params)
    for path in prepare(params.data, params.seed, args.out):
        print(path)


def _train_arguments(args: argparse.Namespace) -> list[str]:
    # The command line again, for the ranks torchrun starts.
    argv = ["train"]
    for flag, value in (("--params", args.params), ("--data", args.data), ("--out", args.out),
                        ("--run-file", args.run_file), ("--validation-log", args.validation_log),
                        ("--init-from", args.init_from)):
        if value is not None:
            argv += [flag, str(value)]
    if args.train:
        argv += ["--train", *[str(p) for p in args.train]]
    if args.val:
        argv += ["--val", *[str(p) for p in args.val]]
    argv += ["--resume"] if args.resume else ["--fresh"] if args.fresh else []
    return argv


def cmd_train(args: argparse.Namespace) -> None:
    from melecole.distributed import launched_by_torchrun, relaunch
    from melecole.data.prepared import training_files
    from melecole.config import with_train
    from melecole.stages.train import train

    params = _params(args.params)
    if args.init_from is not None:
        params = with_train(params, init_from=args.init_from)
    if args.train:
        train_files = [Path(p) for p in args.train]
        if not args.val:
            raise MelecoleError("--train needs --val (files with datasets raw and labels)")
        val_files = [Path(p) for p in args.val]
    else:
        train_files, val_files = training_files(args.data)
        if args.val:
            val_files = [Path(p) for p in args.val]
    if params.train.processes > 1 and not launched_by_torchrun():
        status = relaunch(params.train.processes, _train_arguments(args))
        if status != 0:
            raise MelecoleError(f"torchrun with {params.train.processes} processes exited with status {status} "
                                "(the ranks' own messages are above)")
        return
    mode = "always" if args.resume else "never" if args.fresh else "auto"
    summary = train(params, train_files, val_files, args.out, args.run_file, mode, args.validation_log)
    if summary is not None:
        print(json.dumps(summary, indent=2))


def _scheduling(args: argparse.Namespace):
    import shlex

    from melecole.blockwise.run import Scheduling

    if args.workers < 1:
        raise MelecoleError(f"--workers must be at least 1, got {args.workers}")
    return Scheduling(workers=args.workers, host=args.host, launcher=shlex.split(args.launcher) if args.launcher else None,
                      timeout=args.block_timeout, progress=not args.quiet)


def cmd_predict(args: argparse.Namespace) -> None:
    from melecole.stages.predict import predict

    figures = predict(_params(args.params), args.checkpoint, _volume(args.raw), args.out, scheduling=_scheduling(args),
                      block=tuple(args.block) if args.block else None, embedding=True if args.embedding else None,
                      voxel_size=tuple(args.voxel_size) if args.voxel_size else None, blockwise=args.blockwise)
    print(json.dumps(figures))


def cmd_segment(args: argparse.Namespace) -> None:
    from melecole.stages.segment import segment

    params = _params(args.params)
    figures = segment(params.segment, args.predictions, args.out, params.seed, blockwise=args.blockwise,
                      scheduling=_scheduling(args), block=tuple(args.block) if args.block else None,
                      context=args.context, chunks=tuple(params.predict.chunks))
    print(json.dumps(figures))
    _warn("segment", figures.get("warnings", []))


def _warn(command: str, warnings: list[str]) -> None:
    for warning in warnings:
        print(f"melecole {command}: warning: {warning}", file=sys.stderr)


def _blockwise_arguments(p: argparse.ArgumentParser, what: str) -> None:
    group = p.add_argument_group("blockwise (volumes larger than memory, several processes or machines)")
    group.add_argument("--blockwise", action="store_true",
                       help=f"{what} block by block on daisy into a zarr store; a killed run resumes (default: off)")
    group.add_argument("--workers", type=int, default=1, help="worker processes (default: 1, this process)")
    group.add_argument("--block", type=int, nargs=3, metavar=("Z", "Y", "X"),
                       help="block shape, a multiple of predict.chunks (default: the largest within "
                            + ("predict.memory_gb)" if what == "predict" else "2 GiB per worker, at 120 bytes per voxel)"))
    group.add_argument("--host", default="127.0.0.1",
                       help="address the scheduler listens on; this machine's name lets workers elsewhere connect "
                            "(default: 127.0.0.1, this machine only)")
    group.add_argument("--launcher", help="command prefix that starts one worker elsewhere, e.g. 'srun -N1 -n1' or "
                                          "'ssh node2' (needs a shared file system; default: local processes)")
    group.add_argument("--block-timeout", type=float, default=24 * 3600.0,
                       help="seconds a block may take before its worker is restarted (default: 86400)")
    group.add_argument("--quiet", action="store_true", help="no progress bar (default: progress on stderr)")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from melecole.stages.evaluate import evaluate
    from melecole.stages.report import format_table

    metrics = evaluate(_volume(args.seg), _volume(args.gt), args.out, args.run_file, args.baselines,
                       held_out=args.held_out, raw=_volume(args.raw) if args.raw else None, picture=args.picture)
    rows = {args.seg: metrics, **metrics.get("baselines", {})}
    print(json.dumps(metrics) if args.json else format_table(rows))
    _warn("evaluate", metrics["warnings"])


def cmd_heldout(args: argparse.Namespace) -> None:
    from melecole.stages.heldout import score_held_out

    results = score_held_out(_params(args.params), args.checkpoint, args.data, args.out,
                             say=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(results))
    for metrics in results.values():
        _warn("heldout", metrics.get("warnings", []))


def cmd_recalibrate(args: argparse.Namespace) -> None:
    from melecole.data.prepared import validation_files
    from melecole.stages.recalibrate import recalibrate

    files = [Path(p) for p in args.val] if args.val else validation_files(args.data)
    result = recalibrate(_params(args.params), args.checkpoint, files, args.out)
    print(json.dumps(result))


def cmd_zoo(args: argparse.Namespace) -> None:
    from melecole.zoo import zoo_listing

    print(zoo_listing())


def cmd_report(args: argparse.Namespace) -> None:
    from melecole.stages.report import report

    params = _params(args.params)
    print(report(args.metrics, params.data.bundled_root))


def cmd_tune(args: argparse.Namespace) -> None:
    from melecole.stages.tune import tune

    source = args.params or ("params.yaml" if Path("params.yaml").is_file() else "built-in defaults")
    print(tune(_params(args.params), args.space, args.study, args.trials, data_dir=args.data, out=args.out,
               storage=args.storage, heartbeat=args.heartbeat, best_file=args.write_best,
               references=args.reference or [], params_source=source, say=lambda line: print(line, flush=True)))


def cmd_tune_report(args: argparse.Namespace) -> None:
    from melecole.stages.tune import tune_report

    print(tune_report(args.study, out=args.out, storage=args.storage, references=args.reference or [],
                      best_file=args.write_best))


def cmd_fetch_snemi3d(args: argparse.Namespace) -> None:
    from melecole.data.download import download
    from melecole.data.snemi3d import SNEMI3D_URL

    print(download(args.url or SNEMI3D_URL, Path(args.out), args.sha256))


def cmd_overrides(args: argparse.Namespace) -> None:
    from melecole.experiments import dvc_set_arguments, read_overrides

    print(" ".join(dvc_set_arguments(read_overrides(args.experiment, args.params or "params.yaml"))))


def cmd_augment_preview(args: argparse.Namespace) -> None:
    from melecole.stages.augment_preview import augment_preview

    print(json.dumps(augment_preview(args.out, args.root, args.dataset, patch=args.patch, seed=args.seed)))


def cmd_active_select(args: argparse.Namespace) -> None:
    from melecole.stages.active import select

    print(json.dumps(select(_params(args.params), args.checkpoint, _volume(args.raw), args.out,
                            block=tuple(args.block) if args.block else None, top=args.top, score=args.score,
                            augment=args.augment)))


def cmd_active_add(args: argparse.Namespace) -> None:
    from melecole.stages.active import add

    params = _params(args.params)
    for path in add(args.blocks, args.data, args.name, min_shape=tuple(params.train.patch)):
        print(path)


def cmd_view(args: argparse.Namespace) -> None:
    from melecole.view import open_view

    if args.timeout is not None and args.timeout < 0:
        raise MelecoleError(f"--timeout must be at least 0 seconds, got {args.timeout}")
    with open_view(args.raw, args.seg, gt=args.gt, pred=args.pred, host=args.host, port=args.port,
                   voxel_size=tuple(args.voxel_size) if args.voxel_size else None) as session:
        print(session.url, flush=True)
        for note in session.notes:
            print(f"melecole view: note: {note}", file=sys.stderr)
        if args.no_wait:
            return
        until = f"for {args.timeout:g} s" if args.timeout is not None else "until Ctrl-C"
        print(f"melecole view: serving {until} (layers: {', '.join(layer.name for layer in session.plan.layers)})",
              file=sys.stderr, flush=True)
        try:
            session.wait(args.timeout)
        except KeyboardInterrupt:
            print("melecole view: stopped", file=sys.stderr)


def _checkpoint_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="outputs/checkpoint.pt",
                   help="model checkpoint, or zoo:NAME for a shipped pretrained model (`melecole zoo` lists them; "
                        "default: outputs/checkpoint.pt)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="melecole", description=f"Neuron segmentation in 3D EM. Pipeline: {PIPELINE}.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    params_help = "parameter file (default: ./params.yaml if present, else built-in defaults)"

    p = sub.add_parser("prepare", help="write train / val / test volumes from the configured dataset source",
                       description="Reads data.dataset (bundled real volume, synthetic generator or SNEMI3D) "
                                   "and writes OUT/train*.h5, OUT/val.h5, OUT/test.h5 (datasets raw, labels).")
    p.add_argument("--params", help=params_help)
    p.add_argument("--out", default="data", help="output folder (default: data)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train the U-Net; keep the checkpoint with the best validation VI",
                       description="Trains on raw/labels HDF5 files and writes a checkpoint loadable with "
                                   "torch.load(weights_only=True). Logs to MLflow. With train.processes > 1 it "
                                   "re-launches itself under torchrun (DDP); under torchrun it is one rank. "
                                   "Resumable checkpoints go to checkpoints/ beside --out.")
    p.add_argument("--params", help=params_help)
    p.add_argument("--data", default="data",
                   help="prepared folder with train*.h5, val.h5 and any val-*.h5 (default: data)")
    p.add_argument("--train", nargs="+", help="training files (datasets raw, labels) instead of --data")
    p.add_argument("--val", nargs="+", help="validation files (datasets raw, labels), scored pooled")
    p.add_argument("--out", default="outputs/checkpoint.pt", help="checkpoint path (default: outputs/checkpoint.pt)")
    p.add_argument("--run-file", help="write the MLflow run id here so evaluate can add to the same run")
    p.add_argument("--init-from", metavar="CHECKPOINT",
                   help="fine-tune: start from this checkpoint's weights (a path or zoo:NAME; the model settings "
                        "must be its own) (default: train.init_from, random weights when null)")
    p.add_argument("--validation-log", help="append one JSON line per validation ({\"step\": N, \"vi_split\": ...}) "
                                            "here as training goes (a hyper-parameter search watches it)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue from the newest periodic checkpoint (an error if none fits); by default a "
                            "compatible interrupted run is continued and anything else starts afresh")
    again.add_argument("--fresh", action="store_true", help="ignore and delete earlier periodic checkpoints")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="sliding-window inference: boundaries, affinities (uint8), embedding on request",
                       description="Writes datasets boundary (Z,Y,X) and affinities (C,Z,Y,X) as uint8 "
                                   "probabilities (x 255), predicted_affinities for a model with an affinity head and, "
                                   "with --embedding, embedding (E,Z,Y,X) float16, to an HDF5 file or zarr store, block "
                                   "by block: memory does not grow with the volume. Raw: HDF5, zarr, TIFF.")
    p.add_argument("--params", help=params_help)
    _checkpoint_argument(p)
    p.add_argument("--raw", required=True, help="raw volume: FILE.h5:dataset, STORE.zarr/array, stack.tif or a TIFF folder")
    p.add_argument("--out", default="outputs/predictions.zarr",
                   help="output .zarr or .h5, replaced when complete (default: outputs/predictions.zarr, the "
                        "pipeline's own output)")
    p.add_argument("--embedding", action="store_true", help="also store the embedding (default: predict.embedding)")
    p.add_argument("--voxel-size", type=float, nargs=3, metavar=("Z", "Y", "X"),
                   help="voxel size in nm written with the outputs (default: the raw volume's, if it has one)")
    _blockwise_arguments(p, "predict")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("segment", help="the agglomeration or Mutex Watershed variant chosen on validation "
                                       "(default), or a fixed method; baselines beside it",
                       description="Reads the predictions (affinities, boundary) and writes dataset segmentation "
                                   "(uint64) by segment.method (auto: the variant the checkpoint chose on validation, "
                                   "with its calibrated threshold or bias), plus one dataset per segment.baselines "
                                   "variant. "
                                   "--blockwise runs the agglomeration block by block and stitches it across blocks.")
    p.add_argument("--params", help=params_help)
    p.add_argument("--predictions", default="outputs/predictions.zarr", help="output of predict (default: outputs/predictions.zarr)")
    p.add_argument("--out", default="outputs/segmentation.h5", help="output .h5 or .zarr (default: outputs/segmentation.h5)")
    p.add_argument("--context", type=int, default=8, help="voxels read around each block for its fragments (default: 8)")
    _blockwise_arguments(p, "segment")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("evaluate", help="VI split / merge (bits) and adapted Rand error",
                       description="vi_split = H(seg|gt), vi_merge = H(gt|seg) in bits, adapted Rand error "
                                   "(SNEMI3D); ground-truth label 0 is ignored.")
    p.add_argument("--seg", required=True, help="segmentation FILE[:dataset]")
    p.add_argument("--gt", required=True, help="ground truth FILE[:dataset]")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--out", help="also write the metrics JSON here")
    p.add_argument("--run-file", help="MLflow run id file written by train: log the test metrics to that run")
    p.add_argument("--baselines", action="store_true",
                   help="also score every other dataset of the segmentation file (the baselines segment writes)")
    p.add_argument("--held-out", metavar="FOLDER",
                   help="output of `melecole heldout`: add each held-out test volume's metrics as test_<name> "
                        "(default: none)")
    p.add_argument("--raw", help="raw volume FILE[:dataset] of the ground truth's shape: the first panel of the "
                                 "test picture, under the error overlay (default: none, pictures without raw)")
    p.add_argument("--picture", metavar="PNG",
                   help="also write the test picture here: the middle z-slice of raw, ground truth, segmentation "
                        "and its split (red) / merge (blue) errors, as --run-file logs it to MLflow (default: none)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("heldout", help="predict, segment and score every held-out test volume (data/test-*.h5)",
                       description="Each extra test volume of the prepared folder (data.test_extra: another "
                                   "acquisition's test block or a slab held out of its training block) goes through "
                                   "predict, segment and evaluate with the pipeline's parameters into "
                                   "OUT/<name>/{predictions.zarr, segmentation.h5, metrics.json}; "
                                   "`evaluate --held-out OUT` adds them to the run's metrics.")
    p.add_argument("--params", help=params_help)
    _checkpoint_argument(p)
    p.add_argument("--data", default="data", help="prepared folder with test-*.h5 (default: data)")
    p.add_argument("--out", default="outputs/heldout", help="output folder (default: outputs/heldout)")
    p.set_defaults(func=cmd_heldout)

    p = sub.add_parser("recalibrate", help="choose a trained model's segmentation knobs again on your labelled volumes",
                       description="Predicts each labelled volume (datasets raw and labels) with the checkpoint, "
                                   "calibrates every segment.choices variant on them pooled (agglomeration thresholds, "
                                   "Mutex Watershed bias, affinity map and strides, every variant's size filter, the "
                                   "choice among them) and writes a copy of "
                                   "the checkpoint carrying the new calibration; the weights are unchanged. The search "
                                   "space (segment.choices, candidates, margins) comes from --params.")
    p.add_argument("--params", help=params_help)
    _checkpoint_argument(p)
    p.add_argument("--val", nargs="+", help="labelled volumes (default: the validation files of --data)")
    p.add_argument("--data", default="data", help="prepared folder whose val.h5 and val-*.h5 are used without --val "
                                                  "(default: data)")
    p.add_argument("--out", required=True, help="the calibrated checkpoint to write")
    p.set_defaults(func=cmd_recalibrate)

    storage_help = "Optuna storage URL shared by every worker, e.g. postgresql://user@host/db (default: sqlite:///OUT/optuna.db)"
    reference_help = "LABEL=metrics.json: also plot this run's validation VI split / merge (repeatable)"
    best_help = "write the Pareto front's trial with the smallest VI sum here as a params.yaml override"
    p = sub.add_parser("tune", help="Optuna search over params.yaml keys, minimising validation VI split and merge",
                       description="Each trial trains (under torchrun when train.processes > 1), predicts, segments and "
                                   "scores data/val.h5; the median rule on the validation VI during training stops "
                                   "poor trials. Workers with the same --study and --storage share the study and its "
                                   "budget of --trials finished trials; a killed worker's trial is retried. Prints "
                                   "the Pareto front and writes OUT/STUDY/pareto.csv and pareto.png.")
    p.add_argument("--study", required=True, help="study name (also its folder under --out)")
    p.add_argument("--trials", type=int, required=True, help="finished trials the study should hold in total")
    p.add_argument("--space", required=True, help="search-space YAML (fixed, space, pruning, sampler, enqueue)")
    p.add_argument("--params", help=params_help)
    p.add_argument("--data", default="data", help="prepared folder with train*.h5 and val.h5 (default: data)")
    p.add_argument("--storage", help=storage_help)
    p.add_argument("--out", default="outputs/tune", help="output folder (default: outputs/tune)")
    p.add_argument("--heartbeat", type=int, default=60,
                   help="seconds between a running trial's heartbeats; one silent for twice that is retried (default: 60)")
    p.add_argument("--write-best", metavar="FILE", help=best_help)
    p.add_argument("--reference", action="append", metavar="LABEL=FILE", help=reference_help)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("tune-report", help="print and plot the Pareto front of a study without running trials")
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", help=storage_help)
    p.add_argument("--out", default="outputs/tune", help="output folder (default: outputs/tune)")
    p.add_argument("--write-best", metavar="FILE", help=best_help)
    p.add_argument("--reference", action="append", metavar="LABEL=FILE", help=reference_help)
    p.set_defaults(func=cmd_tune_report)

    p = sub.add_parser("fetch-snemi3d", help="download the SNEMI3D archive (network needed; DVC users: dvc import-url, see README)",
                       description="Downloads the SNEMI3D train/val/test archive (MeLeCoLe's share) to OUT, atomically, "
                                   "verifying --sha256 when given.")
    p.add_argument("--out", default="downloads/snemi3d.zip", help="archive path (default: downloads/snemi3d.zip)")
    p.add_argument("--url", help="archive URL (default: the MeLeCoLe share on TU Dresden's cloud storage)")
    p.add_argument("--sha256", help="expected SHA-256 of the archive")
    p.set_defaults(func=cmd_fetch_snemi3d)

    p = sub.add_parser("overrides", help="print an experiment file as `dvc exp run -S` arguments",
                       description="Validates experiments/NAME.yaml on top of params.yaml and prints -S key=value "
                                   "pairs: dvc exp run -n NAME $(melecole overrides experiments/NAME.yaml)")
    p.add_argument("experiment", help="YAML file of parameter overrides")
    p.add_argument("--params", help=params_help)
    p.set_defaults(func=cmd_overrides)

    p = sub.add_parser("zoo", help="list the pretrained models shipped with melecole (use: --checkpoint zoo:NAME)",
                       description="Each model has a model card (data, steps, scores, licence of the training data); "
                                   "its checkpoint is verified by SHA-256 before use.")
    p.set_defaults(func=cmd_zoo)

    p = sub.add_parser("report", help="print a metrics file as a table beside the published reference rows")
    p.add_argument("metrics", nargs="?", default="metrics.json", help="metrics JSON written by evaluate (default: metrics.json)")
    p.add_argument("--params", help=params_help)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("augment-preview", help="PNG grid of every training augmentation on a real patch",
                       description="One row per augmentation (default parameters, each alone): the central "
                                   "section of raw and labels before and after, and a (z, x) cut of raw after.")
    p.add_argument("--out", default="outputs/augment-preview.png", help="PNG to write (default: outputs/augment-preview.png)")
    p.add_argument("--dataset", default="flyem-fib-small", help="bundled dataset whose train block is shown (default: flyem-fib-small)")
    p.add_argument("--root", default="datasets", help="folder of the bundled datasets (default: datasets)")
    p.add_argument("--patch", type=int, nargs=3, default=[48, 48, 48], metavar=("Z", "Y", "X"),
                   help="patch shape (default: 48 48 48)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the patch and augmentations (default: 0)")
    p.set_defaults(func=cmd_augment_preview)

    p = sub.add_parser("active", help="active learning: rank blocks by model uncertainty; add proofread blocks",
                       description="select writes the blocks of a volume the model is least sure about, ready to "
                                   "proofread; add folds proofread blocks into the training data.")
    active = p.add_subparsers(dest="active_command", required=True, metavar="ACTION",
                              help="select or add (melecole active ACTION --help)")
    p = active.add_parser("select", help="rank a volume's blocks by uncertainty and write the top K to proofread",
                          description="Predicts the volume once per test-time view, scores every voxel (--score), "
                                      "ranks the whole blocks of a grid of --block voxels from the origin by their "
                                      "mean score and writes OUT/block-NNN.h5 for the top K (datasets raw and "
                                      "uncertainty; rank, offset, shape and score as attributes) with "
                                      "OUT/ranking.json and OUT/ranking.csv (every block). Proofread by adding a "
                                      "dataset labels to each file, then run melecole active add.")
    p.add_argument("--params", help=params_help)
    _checkpoint_argument(p)
    p.add_argument("--raw", required=True, help="raw volume: FILE.h5:dataset, STORE.zarr/array, stack.tif or a TIFF folder")
    p.add_argument("--block", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help="block shape (default: train.patch, the smallest block training can use)")
    p.add_argument("--top", type=int, default=10, help="blocks to write (default: 10)")
    p.add_argument("--score", default="tta-disagreement",
                   choices=("tta-disagreement", "boundary-entropy", "affinity-entropy"),
                   help="tta-disagreement: variance of the boundary and nearest-neighbour affinities across "
                        "test-time views; boundary-entropy / affinity-entropy: entropy of their view average "
                        "(default: tta-disagreement)")
    p.add_argument("--augment", default="flips", choices=("flips", "permutations", "none"),
                   help="test-time views: 8 flips or 6 axis orders; none only for the entropies (default: flips)")
    p.add_argument("--out", default="outputs/active", help="output folder, replaced when complete "
                                                          "(default: outputs/active)")
    p.set_defaults(func=cmd_active_select)
    p = active.add_parser("add", help="fold proofread blocks (raw + labels) into the training data",
                          description="Checks every block (datasets raw and labels of equal shape, integer labels, "
                                      "something labelled, at least train.patch) and writes each as "
                                      "DATA/train-active-NAME-I.h5 (raw, labels uint64), atomically; nothing is "
                                      "written if any block is bad or any target exists.")
    p.add_argument("--blocks", nargs="+", required=True,
                   help="proofread block files (HDF5, datasets raw and labels) or folders of them")
    p.add_argument("--data", default="datasets/active",
                   help="folder of the new training volumes: datasets/active is copied into data/ by prepare, so "
                        "dvc repro retrains on them; a prepared folder such as data is used by the next "
                        "melecole train --data at once (default: datasets/active)")
    p.add_argument("--name", help="name inside the file names (default: the first --blocks folder's name)")
    p.add_argument("--params", help=params_help + "; train.patch is the smallest block accepted")
    p.set_defaults(func=cmd_active_add)

    p = sub.add_parser("view", help="look at raw, segmentation, ground truth and predictions in a local Neuroglancer",
                       description="Starts a Neuroglancer viewer (web server and bundled client, nothing downloaded) "
                                   "and prints its URL; open it in a browser. Layers: raw, segmentation, ground truth, "
                                   "boundary and affinities (z, y, x nearest neighbours as red, green, blue). Data are "
                                   "read chunk by chunk as the browser asks, so volumes larger than memory work. "
                                   "Serves until Ctrl-C.")
    p.add_argument("--raw", required=True, help="raw volume: FILE.h5:dataset, STORE.zarr/array, TIFF "
                                                "(a file with a dataset 'raw' may be named alone)")
    p.add_argument("--seg", required=True, help="segmentation FILE[:dataset] (default dataset: 'segmentation')")
    p.add_argument("--gt", help="ground truth FILE[:dataset] (default dataset: 'labels')")
    p.add_argument("--pred", help="predictions .zarr or .h5 written by predict (datasets boundary, affinities, "
                                  "predicted_affinities)")
    p.add_argument("--voxel-size", type=float, nargs=3, metavar=("Z", "Y", "X"),
                   help="voxel size in nm (default: the files'; unit-less 1 x 1 x 1 when they say nothing)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; from elsewhere use "
                        "ssh -L PORT:127.0.0.1:PORT; 0.0.0.0 serves the data to anyone who has the URL)")
    p.add_argument("--port", type=int, default=0, help="port to listen on (default: 0, any free port)")
    wait = p.add_mutually_exclusive_group()
    wait.add_argument("--timeout", type=float, metavar="SECONDS", help="stop after this many seconds (default: never)")
    wait.add_argument("--no-wait", action="store_true",
                      help="check the inputs, start, print the URL and stop at once (scripts and tests)")
    p.set_defaults(func=cmd_view)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    # First, before a stage imports torch: the same CPU kernels on any x86-64 machine (issue 14).
    pin_cpu_kernels()
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MelecoleError as error:
        print(f"melecole {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"melecole {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
