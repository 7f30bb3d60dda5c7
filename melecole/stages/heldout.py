"""heldout: every extra test volume of a prepared folder predicted, segmented and scored.

``prepare`` writes one ``test-<name>.h5`` per ``data.test_extra`` dataset: an acquisition's own
test block, or a slab held out of its training block that training and validation never see.
Each goes through the very functions the main test block goes through (predict, segment,
evaluate), with the same parameters and checkpoint, into ``OUT/<name>/``:
``predictions.zarr``, ``segmentation.h5`` (the method and its baselines) and ``metrics.json``.
``evaluate --held-out OUT`` then adds them to the run's metrics as ``test_<name>``. Nothing here
chooses anything: the checkpoint, threshold and method were chosen on validation.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from melecole.config import Params
from melecole.data.prepared import held_out_test_files
from melecole.io import VolumeSpec, atomic_output


def score_held_out(params: Params, checkpoint: str | Path, data_dir: str | Path, out: str | Path,
                   say: Callable[[str], None] = lambda line: None) -> dict[str, dict]:
    """Predicts, segments and scores every ``data_dir/test-<name>.h5``; returns ``{name: metrics}``.

    A volume finished by an earlier, interrupted run of the same job (the same checkpoint, volume
    and predict / segment parameters, recorded in ``job.json``) is kept; anything else is redone.
    Folders of volumes no longer in ``data_dir`` are removed.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = held_out_test_files(data_dir)
    for stale in out.iterdir():
        if stale.name not in files:
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    results = {}
    if not files:  # nothing held out (data.test_extra empty): no model to load
        return results
    from melecole.blockwise.partial import file_digest
    from melecole.stages.evaluate import evaluate
    from melecole.stages.predict import predict
    from melecole.stages.segment import segment
    from melecole.zoo import resolve_checkpoint

    checkpoint = resolve_checkpoint(checkpoint)
    for name, path in files.items():
        folder = out / name
        folder.mkdir(exist_ok=True)
        metrics_file, job_file = folder / "metrics.json", folder / "job.json"
        job = {"checkpoint": file_digest(checkpoint), "volume": file_digest(path), "seed": params.seed,
               "predict": params.predict.model_dump(mode="json"), "segment": params.segment.model_dump(mode="json")}
        if not (metrics_file.is_file() and job_file.is_file() and json.loads(job_file.read_text()) == job):
            metrics_file.unlink(missing_ok=True)
            predictions, segmentation = folder / "predictions.zarr", folder / "segmentation.h5"
            predict(params, checkpoint, VolumeSpec(path, "raw"), predictions)
            segment(params.segment, predictions, segmentation, params.seed)
            with atomic_output(job_file) as tmp:
                tmp.write_text(json.dumps(job, indent=2) + "\n")
            evaluate(VolumeSpec(segmentation, "segmentation"), VolumeSpec(path, "labels"), out=metrics_file,
                     baselines=True)
        results[name] = json.loads(metrics_file.read_text())
        m = results[name]
        say(f"{name}: VI split {m['vi_split']:.4f}, merge {m['vi_merge']:.4f}, arand {m['arand']:.4f}")
    return results
