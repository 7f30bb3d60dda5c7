"""The pretrained models shipped in the box: listed, verified, loaded safely, reproducing their scores."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from melecole.cli import main
from melecole.config import params_from_dict
from melecole.errors import MelecoleError
from melecole.zoo import resolve_checkpoint, zoo_listing, zoo_models
from melecole.zoo.package import add_to_zoo, check_score
from tests.conftest import DATASETS, tiny_params_dict
from tests.predict_helpers import random_checkpoint

SHIPPED = "flyem-fib"


def test_the_shipped_model_loads_with_weights_only_and_reproduces_its_check_score():
    model = zoo_models()[SHIPPED]
    path = resolve_checkpoint(f"zoo:{SHIPPED}")
    assert path == model.checkpoint and path.stat().st_size < 8 * 2**20  # fits in git
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["extra"]["val_vi_split"] == model.manifest["validation"]["vi_split"]
    recorded = model.manifest["check"]
    scores = check_score(f"zoo:{SHIPPED}", DATASETS)
    for key in ("vi_split", "vi_merge", "arand"):
        assert scores[key] == pytest.approx(recorded["scores"][key], abs=recorded["tolerance"]), key
    card = (model.folder / "MODEL_CARD.md").read_text()
    assert "Creative Commons Attribution" in card and "BSD" in card and f"zoo:{SHIPPED}" in card
    # It carries its validation calibration, so `segment.method: auto` segments as the card says.
    calibration = state["extra"]["calibration"]
    assert calibration["choice"] == model.manifest["calibration"]["choice"] and calibration["choice"] in card
    assert set(calibration["variants"]) == set(model.manifest["calibration"]["variants"])


def test_zoo_lists_models_and_refuses_unknown_or_damaged_ones(tmp_path, capsys):
    assert main(["zoo"]) == 0
    assert f"zoo:{SHIPPED}" in capsys.readouterr().out
    with pytest.raises(MelecoleError, match=f"available: .*{SHIPPED}"):
        resolve_checkpoint("zoo:nothing")
    root = tmp_path / "zoo"
    shutil.copytree(zoo_models()[SHIPPED].folder, root / SHIPPED)
    with open(root / SHIPPED / "checkpoint.pt", "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(MelecoleError, match="SHA-256 .* differs"):
        resolve_checkpoint(f"zoo:{SHIPPED}", root)
    assert resolve_checkpoint(tmp_path / "plain.pt") == tmp_path / "plain.pt"  # a path stays a path


def test_a_checkpoint_joins_the_zoo_with_manifest_and_card(tmp_path, monkeypatch):
    import melecole.zoo.package as package

    whole = package.check_volume
    monkeypatch.setattr(package, "check_volume", lambda root: tuple(a[:16, :32, :24] for a in whole(root)))
    params = params_from_dict(tiny_params_dict(**{"data.extra_train": ["flyem-fib-medulla"]}))
    checkpoint = random_checkpoint(params, tmp_path / "ck.pt", threshold=0.5)
    with pytest.raises(MelecoleError, match="no validation scores"):
        add_to_zoo(checkpoint, "tiny", 1, "untrained", root=tmp_path / "zoo", bundled_root=DATASETS)
    state = torch.load(checkpoint, weights_only=True)
    state["extra"].update(val_vi_split=1.5, val_vi_merge=0.5, val_arand=0.3, best_step=3, calibration={
        "choice": "mws-embedding", "variants": {
            "mws-embedding": {"bias": -0.2, "map": ["00" * 256] * 9, "vi_split": 1.0, "vi_merge": 0.5, "arand": 0.3},
            "agglomeration-embedding": {"threshold": 0.4, "vi_split": 2.0, "vi_merge": 0.5, "arand": 0.4}}})
    torch.save(state, checkpoint)
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"vi_split": 1.0, "vi_merge": 0.5, "arand": 0.2, "volume": "flyem-fib-small test",
                                   "test_flyem-fib-medulla": {"vi_split": 2.0, "vi_merge": 1.0, "arand": 0.4,
                                                              "volume": "flyem-fib-medulla test"}}))
    folder = add_to_zoo(checkpoint, "tiny", 2, "an untrained test model", metrics, "abc123", root=tmp_path / "zoo",
                        bundled_root=DATASETS)
    manifest = json.loads((folder / "zoo.json").read_text())
    assert manifest["version"] == 2 and manifest["trained"]["data"] == ["flyem-fib-small", "flyem-fib-medulla"]
    assert set(manifest["test"]) == {"flyem-fib-small test", "flyem-fib-medulla test"}
    assert manifest["check"]["scores"] == pytest.approx(check_score(folder / "checkpoint.pt", DATASETS))
    assert resolve_checkpoint("zoo:tiny", tmp_path / "zoo") == folder / "checkpoint.pt"
    listing = zoo_listing(tmp_path / "zoo")
    assert "zoo:tiny  (version 2" in listing and "1.500 / 0.500" in listing and "flyem-fib-medulla test" in listing
    card = (folder / "MODEL_CARD.md").read_text()
    assert "abc123" in card
    assert "(`segment.method: auto`): mws-embedding" in card and "mws-embedding (bias -0.2, fitted map): 1.0000 / 0.5000" in card
    assert manifest["calibration"]["variants"]["mws-embedding"]["map"] == "fitted"  # the levels stay in the checkpoint
