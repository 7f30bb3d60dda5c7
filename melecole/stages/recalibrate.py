"""recalibrate: a trained model's segmentation knobs chosen again, on labelled volumes of your own.

``melecole recalibrate --checkpoint zoo:flyem-fib --val my-block.h5 --out my-model.pt`` predicts
each labelled volume (datasets ``raw`` and ``labels``) with the checkpoint, calibrates every
variant of ``segment.choices`` on them pooled (:mod:`melecole.stages.calibration`: the
agglomeration thresholds, the Mutex Watershed's bias, affinity map and strides, every size filter, the
choice among them)
and writes a copy of the checkpoint that carries the new calibration; ``predict`` and ``segment``
then use it. The weights are unchanged. This is how a pretrained model is fitted to a new
acquisition when a small labelled block exists but training is out of reach, and how a
checkpoint from before the calibration existed gets one.

The model's own parameters (loss margins, offsets, predict settings) are used; ``segment``'s
search space (``choices``, candidates, margins, ``mws_map``) comes from the parameter file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from melecole.checkpoint import load_model, save_checkpoint
from melecole.config import Params, params_from_dict
from melecole.errors import MelecoleError
from melecole.stages.variants import checkpoint_facts

# segment keys that define the search, taken from the parameter file; the rest of the model's
# segment parameters (offsets, attractive, ...) must stay what its affinities were trained for.
SEARCH_KEYS = ("method", "choices", "baselines", "mws_bias", "mws_map", "mws_bias_candidates", "mws_bias_margin",
               "strides", "randomize_strides", "mws_stride_candidates", "min_size", "min_size_candidates",
               "agglomeration")


def recalibrate(params: Params, checkpoint: str | Path, val_files: Sequence[str | Path], out: str | Path) -> dict:
    """Calibrates ``checkpoint`` on ``val_files`` and writes the calibrated copy to ``out``.

    Returns:
        ``{"calibration": ..., "val": the main method's pooled scores, "volumes": [...]}``.
    """
    from melecole.stages.train import final_calibration, load_labelled

    if not val_files:
        raise MelecoleError("recalibrate needs at least one labelled volume (--val FILE with datasets raw and labels)")
    model, stored, extra = load_model(checkpoint)
    trained = params_from_dict(stored)
    search = {key: getattr(params.segment, key) for key in SEARCH_KEYS}
    calibrated_params = trained.model_copy(update={"segment": trained.segment.model_copy(update=search),
                                                   "seed": params.seed})
    volumes = [load_labelled(path) for path in val_files]
    calibration, final = final_calibration(calibrated_params, model, volumes)
    updated = {**extra, **checkpoint_facts(calibrated_params.segment, calibration, final),
               "calibrated_on": [str(path) for path in val_files]}
    stored = {**stored, "segment": calibrated_params.segment.model_dump(mode="json")}
    save_checkpoint(out, model.cpu(), stored, extra=updated)
    return {"calibration": calibration, "val": final, "volumes": [str(path) for path in val_files]}
