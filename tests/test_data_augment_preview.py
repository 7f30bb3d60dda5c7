"""augment-preview: a PNG grid with one row per augmentation, on the bundled real data."""

from __future__ import annotations

import inspect
import json
import struct

from melecole.cli import main
from melecole.data.augment import AUGMENTATIONS
from melecole.stages.augment_preview import COLUMNS, write_preview
from tests.conftest import DATASETS


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    return width, height


def test_preview_writes_one_row_per_augmentation(tmp_path, capsys):
    out = tmp_path / "preview" / "grid.png"
    code = main(["augment-preview", "--out", str(out), "--root", str(DATASETS), "--patch", "24", "32", "32",
                 "--seed", "1"])
    assert code == 0, capsys.readouterr().err
    assert out.stat().st_size > 10_000
    width, height = _png_size(out)
    cell = inspect.signature(write_preview).parameters["cell"].default
    assert (height, width) == (len(AUGMENTATIONS) * cell, (1 + len(COLUMNS)) * cell)
    summary = json.loads(capsys.readouterr().out)
    assert summary["augmentations"] == list(AUGMENTATIONS) and summary["height"] == height
    assert [p.name for p in out.parent.iterdir()] == ["grid.png"]  # no temporary left behind


def test_preview_of_a_patch_too_large_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "grid.png"
    code = main(["augment-preview", "--out", str(out), "--root", str(DATASETS), "--patch", "64", "48", "48"])
    assert code == 2
    assert "patch (64, 48, 48) does not fit" in capsys.readouterr().err
    assert not out.exists()
