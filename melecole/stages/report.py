"""report: the metrics of a run as a table, each volume named, the published rows beside theirs.

A metrics file of ``evaluate`` names its volume (``volume``, e.g. ``flyem-fib-small test``) and
holds the held-out test volumes under ``test_<name>``. The published segmentations shipped with
flyem-fib-small were scored on its test block only, so their rows appear under that volume and
nowhere else. A metrics file that does not name its volume (older runs, tuning trials) is shown
as an unnamed volume, without published rows.
"""

from __future__ import annotations

import json
from pathlib import Path

from melecole.data.bundled import REFERENCE_SEGMENTATIONS
from melecole.errors import MelecoleError
from melecole.evaluate import evaluate_segmentation
from melecole.io import VolumeSpec, read_volume
from melecole.stages.variants import knob_label

# The volume the published rows belong to (``volume`` as evaluate names it).
REFERENCE_VOLUME = "flyem-fib-small test"
SCORES = ("vi_split", "vi_merge", "arand")


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


def _checked(path: Path, where: str, metrics: dict) -> dict:
    missing = set(SCORES) - set(metrics)
    if missing:
        raise MelecoleError(f"{path}: {where}missing keys {', '.join(sorted(missing))}")
    return metrics


def volume_sections(path: Path, metrics: dict) -> list[tuple[str | None, dict]]:
    """(volume name or None, its metrics) for the main volume and every ``test_<name>``."""
    sections = [(metrics.get("volume"), _checked(path, "", metrics))]
    for key, value in metrics.items():
        if key.startswith("test_") and isinstance(value, dict):
            sections.append((value.get("volume", key[len("test_"):]), _checked(path, f"{key}: ", value)))
    return sections


def validation_table(calibration: dict) -> str:
    """The pooled validation scores of every calibrated variant at its knob, the choice marked."""
    rows = {f"{'* ' if name == calibration.get('choice') else '  '}{name} ({knob_label(scores)})": scores
            for name, scores in calibration.get("variants", {}).items()}
    return ("pooled validation (knobs chosen here, * = segment.method auto's choice)\n"
            + format_table(rows)) if rows else ""


def report(metrics_file: str | Path, bundled_root: str | Path) -> str:
    """One table per volume of ``metrics_file``: melecole, its baselines, and the published rows
    where they belong; then any warnings."""
    path = Path(metrics_file)
    if not path.is_file():
        raise MelecoleError(f"{path}: metrics file not found (run the pipeline first)")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise MelecoleError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(metrics, dict):
        raise MelecoleError(f"{path}: expected a JSON object of metrics, got {type(metrics).__name__}")
    tables, warnings = [], []
    if isinstance(metrics.get("validation"), dict):
        tables.append(validation_table(metrics["validation"]))
    for volume, scores in volume_sections(path, metrics):
        title = volume or f"unnamed volume ({path} does not say which; older evaluate)"
        rows = {f"melecole ({scores['method']})" if "method" in scores else "melecole": scores}
        for name, baseline in scores.get("baselines", {}).items():
            rows[f"  same model, {name}"] = baseline
        if volume == REFERENCE_VOLUME:
            rows.update(reference_rows(bundled_root))
        tables.append(f"{title}\n{format_table(rows)}")
        warnings += scores.get("warnings", [])
    text = "\n\n".join(tables)
    if warnings:
        text += "\n\n" + "\n".join(f"warning: {warning}" for warning in warnings)
    return text
