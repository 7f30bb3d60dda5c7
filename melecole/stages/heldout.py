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
from melecole.io import VolumeSpec


def score_held_out(params: Params, checkpoint: str | Path, data_dir: str | Path, out: str | Path,
                   say: Callable[[str], None] = lambda line: None) -> dict[str, dict]:
    """Predicts, segments and scores every ``data_dir/test-<name>.h5``; returns ``{name: metrics}``.

    A volume whose ``metrics.json`` is present was finished by an earlier, interrupted run and
    is kept; folders of volumes no longer in ``data_dir`` are removed.
    """
    from melecole.stages.evaluate import evaluate
    from melecole.stages.predict import predict
    from melecole.stages.segment import segment

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = held_out_test_files(data_dir)
    for stale in out.iterdir():
        if stale.name not in files:
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    results = {}
    for name, path in files.items():
        folder = out / name
        folder.mkdir(exist_ok=True)
        metrics_file = folder / "metrics.json"
        if not metrics_file.is_file():
            predictions, segmentation = folder / "predictions.zarr", folder / "segmentation.h5"
            predict(params, checkpoint, VolumeSpec(path, "raw"), predictions)
            segment(params.segment, predictions, segmentation, params.seed)
            evaluate(VolumeSpec(segmentation, "segmentation"), VolumeSpec(path, "labels"), out=metrics_file,
                     baselines=True)
        results[name] = json.loads(metrics_file.read_text())
        m = results[name]
        say(f"{name}: VI split {m['vi_split']:.4f}, merge {m['vi_merge']:.4f}, arand {m['arand']:.4f}")
    return results
