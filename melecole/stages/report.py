"""report: the metrics of a run as a table, beside the published rows for the bundled test block."""

from __future__ import annotations

import json
from pathlib import Path

from melecole.data.bundled import REFERENCE_SEGMENTATIONS
from melecole.errors import MelecoleError
from melecole.evaluate import evaluate_segmentation
from melecole.io import VolumeSpec, read_volume


def reference_rows(bundled_root: str | Path) -> dict[str, dict[str, float]]:
    """Scores the published segmentations shipped with flyem-fib-small against its test labels."""
    folder = Path(bundled_root) / "flyem-fib-small"
    gt = read_volume(VolumeSpec(folder / "test-gt.lzf.h5"))
    return {name: evaluate_segmentation(read_volume(VolumeSpec(folder / file)), gt)
            for name, file in REFERENCE_SEGMENTATIONS.items()}


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A fixed-width table with VI split, VI merge, their sum and adapted Rand error."""
    width = max(len(name) for name in rows) + 2
    lines = [f"{'segmentation':<{width}}{'VI split':>10}{'VI merge':>10}{'VI sum':>10}{'arand':>10}"]
    for name, m in rows.items():
        lines.append(f"{name:<{width}}{m['vi_split']:>10.4f}{m['vi_merge']:>10.4f}"
                     f"{m['vi_split'] + m['vi_merge']:>10.4f}{m['arand']:>10.4f}")
    return "\n".join(lines)


def report(metrics_file: str | Path, dataset: str, bundled_root: str | Path) -> str:
    """The table for ``metrics_file``, with reference rows when the test block is flyem-fib-small's."""
    path = Path(metrics_file)
    if not path.is_file():
        raise MelecoleError(f"{path}: metrics file not found (run the pipeline first)")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise MelecoleError(f"{path}: not valid JSON ({error})") from None
    missing = {"vi_split", "vi_merge", "arand"} - set(metrics)
    if missing:
        raise MelecoleError(f"{path}: missing keys {', '.join(sorted(missing))}")
    rows = {f"melecole ({dataset} test block)": metrics}
    for name, scores in metrics.get("baselines", {}).items():
        rows[f"  same model, {name}"] = scores
    if dataset == "flyem-fib-small":
        rows.update(reference_rows(bundled_root))
    return format_table(rows)
