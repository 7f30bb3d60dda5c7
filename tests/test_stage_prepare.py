"""prepare: bundled real volumes, splits, licences, synthetic source, and the SNEMI3D hint."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from melecole.config import params_from_dict
from melecole.errors import MelecoleError
from melecole.io import read_volume
from melecole.stages.prepare import prepare
from tests.conftest import DATASETS, tiny_params_dict


def _data_config(**overrides):
    return params_from_dict(tiny_params_dict(**overrides)).data


def test_bundled_default_splits_and_licences(tmp_path):
    config = _data_config(**{"data.extra_train": ["flyem-fib-medulla"]})
    prepare(config, 0, tmp_path / "data")
    out = tmp_path / "data"
    shapes = {path.name: read_volume(f"{path}:raw").shape for path in out.glob("*.h5")}
    assert shapes == {"train.h5": (50, 100, 150), "val.h5": (50, 100, 50), "test.h5": (50, 100, 200),
                      "train-flyem-fib-medulla.h5": (125, 250, 188), "val-flyem-fib-medulla.h5": (125, 250, 62)}
    for name, source_file, suffix in (("flyem-fib-small", "train-gt.lzf.h5", ""),
                                      ("flyem-fib-medulla", "train-gt.h5", "-flyem-fib-medulla")):
        source = read_volume(str(DATASETS / name / source_file))
        train = read_volume(f"{out / f'train{suffix}.h5'}:labels")
        val = read_volume(f"{out / f'val{suffix}.h5'}:labels")
        np.testing.assert_array_equal(np.concatenate([train, val], axis=2), source)
    for name in ("flyem-fib-small", "flyem-fib-medulla"):
        assert (out / "licences" / name / "LICENSE.txt").is_file()
    assert (out / "licences" / "flyem-fib-small" / "CITATION.bib").is_file()


def test_held_out_slab_is_cut_before_training_and_validation(tmp_path):
    config = _data_config(**{"data.extra_train": ["flyem-fib-medulla"], "data.test_extra": ["flyem-fib-medulla"]})
    prepare(config, 0, tmp_path / "data")
    out = tmp_path / "data"
    shapes = {path.name: read_volume(f"{path}:raw").shape for path in out.glob("*-flyem-fib-medulla.h5")}
    # z 0-99 train and validate (the validation slab cut off x as before), z 100-124 only test.
    assert shapes == {"train-flyem-fib-medulla.h5": (100, 250, 188), "val-flyem-fib-medulla.h5": (100, 250, 62),
                      "test-flyem-fib-medulla.h5": (25, 250, 250)}
    source = read_volume(str(DATASETS / "flyem-fib-medulla" / "train-gt.h5"))
    parts = {name: read_volume(f"{out / f'{name}-flyem-fib-medulla.h5'}:labels") for name in ("train", "val", "test")}
    np.testing.assert_array_equal(np.concatenate([parts["train"], parts["val"]], axis=2), source[:100])
    np.testing.assert_array_equal(parts["test"], source[100:])
    with h5py.File(out / "test-flyem-fib-medulla.h5") as handle:
        assert (handle.attrs["source"], handle.attrs["split"]) == ("flyem-fib-medulla", "test")
    from melecole.data.prepared import held_out_test_files, training_files

    assert held_out_test_files(out) == {"flyem-fib-medulla": out / "test-flyem-fib-medulla.h5"}
    train, val = training_files(out)
    assert not any(path.name.startswith("test") for path in train + val)


def test_held_out_dataset_with_a_test_block_gives_that_block(tmp_path):
    config = _data_config(**{"data.dataset": "flyem-fib-medulla", "data.test_extra": ["flyem-fib-small",
                                                                                       "flyem-fib-medulla"]})
    prepare(config, 0, tmp_path / "data")
    out = tmp_path / "data"
    # The main dataset's own test slab is test.h5: not repeated as a held-out volume.
    assert sorted(p.name for p in out.glob("test*.h5")) == ["test-flyem-fib-small.h5", "test.h5"]
    np.testing.assert_array_equal(read_volume(f"{out / 'test-flyem-fib-small.h5'}:labels"),
                                  read_volume(str(DATASETS / "flyem-fib-small" / "test-gt.lzf.h5")))
    assert (out / "licences" / "flyem-fib-small" / "LICENSE.txt").is_file()


def test_extra_volume_stays_whole_for_training_without_validate_extra(tmp_path):
    config = _data_config(**{"data.extra_train": ["flyem-fib-medulla"], "data.validate_extra": False})
    prepare(config, 0, tmp_path / "data")
    assert sorted(path.name for path in (tmp_path / "data").glob("*.h5")) == [
        "test.h5", "train-flyem-fib-medulla.h5", "train.h5", "val.h5"]
    assert read_volume(f"{tmp_path / 'data' / 'train-flyem-fib-medulla.h5'}:raw").shape == (125, 250, 250)


def test_prepared_folder_lists_own_validation_volume_first(tmp_path):
    from melecole.data.prepared import training_files

    prepare(_data_config(**{"data.extra_train": ["flyem-fib-medulla"]}), 0, tmp_path / "data")
    train, val = training_files(tmp_path / "data")
    assert [p.name for p in train] == ["train-flyem-fib-medulla.h5", "train.h5"]
    assert [p.name for p in val] == ["val.h5", "val-flyem-fib-medulla.h5"]
    (tmp_path / "data" / "val.h5").unlink()
    with pytest.raises(MelecoleError, match="val.h5: validation volume not found"):
        training_files(tmp_path / "data")


def test_dataset_without_test_block_gives_up_a_test_slab(tmp_path):
    prepare(_data_config(**{"data.dataset": "flyem-fib-medulla"}), 0, tmp_path / "d")
    shapes = [read_volume(f"{tmp_path / 'd' / n}.h5:labels").shape for n in ("train", "val", "test")]
    assert [s[2] for s in shapes] == [141, 62, 47]  # 250 -> 188 + 62, then 188 -> 141 + 47
    assert all(s[:2] == (125, 250) for s in shapes)


def test_synthetic_source_is_deterministic(tmp_path):
    config = _data_config(**{"data.dataset": "synthetic", "data.synthetic": {"shape": [8, 32, 32], "neurites": 6}})
    prepare(config, 3, tmp_path / "a")
    prepare(config, 3, tmp_path / "b")
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(read_volume(f"{tmp_path / 'a' / split}.h5:raw"),
                                      read_volume(f"{tmp_path / 'b' / split}.h5:raw"))
    assert not np.array_equal(read_volume(f"{tmp_path / 'a' / 'train'}.h5:raw"),
                              read_volume(f"{tmp_path / 'a' / 'val'}.h5:raw"))


def test_missing_snemi3d_download_explains_what_to_run(tmp_path):
    config = _data_config(**{"data.dataset": "snemi3d", "data.snemi3d": {"archive": str(tmp_path / "none")}})
    with pytest.raises(MelecoleError, match="dvc import-url https://.* .*none"):
        prepare(config, 0, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failed_prepare_keeps_previous_output(tmp_path):
    out = tmp_path / "data"
    prepare(_data_config(), 0, out)
    before = sorted(p.name for p in out.iterdir())
    bad = _data_config(**{"data.bundled_root": str(tmp_path / "nowhere")})
    with pytest.raises(MelecoleError, match="file not found"):
        prepare(bad, 0, out)
    assert sorted(p.name for p in out.iterdir()) == before
