"""Download, safe unpacking and SNEMI3D import, against a loopback HTTP server (never the internet)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import logging
import tarfile
import threading
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from melecole.data.download import download, safe_extract, sha256sum
from melecole.data.snemi3d import SNEMI3D_URL, fetch_snemi3d, find_volumes, load_snemi3d
from melecole.errors import MelecoleError

PAD = (1, 2, 2)  # the MeLeCoLe archive pads raw around the labelled block like this, only larger


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path):
    """(served folder, base URL) of a loopback HTTP server, shut down after the test."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _volumes(seed: int, shape=(6, 10, 12)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(padded raw, labelled raw, labels) with the labelled raw centred in the padded one."""
    rng = np.random.default_rng(seed)
    padded = rng.integers(0, 256, size=tuple(s + 2 * p for s, p in zip(shape, PAD)), dtype=np.uint8)
    inner = padded[tuple(slice(p, p + s) for p, s in zip(PAD, shape))]
    labels = rng.integers(1, 1000, size=shape, dtype=np.uint32)
    return padded, inner, labels


def _melecole_zip(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A zip in the MeLeCoLe layout: SNEMI3D/{split}/<name>.hdf with 'volume' and 'labels'."""
    expected = {}
    with zipfile.ZipFile(path, "w") as archive:
        for seed, (split, name) in enumerate([("train", "AC4_train"), ("val", "AC3_val"), ("test", "AC3_test")]):
            padded, inner, labels = _volumes(seed)
            buffer = io.BytesIO()
            with h5py.File(buffer, "w") as handle:
                handle["volume"] = padded
                handle["labels"] = labels
            archive.writestr(f"SNEMI3D/{split}/{name}.hdf", buffer.getvalue())
            expected[split] = (inner, labels)
    return expected


def _files_under(folder: Path) -> set[Path]:
    return {path.relative_to(folder) for path in folder.rglob("*")}


def test_fetch_checks_digest_and_round_trips_the_volumes(server, tmp_path):
    root, base = server
    expected = _melecole_zip(root / "snemi.zip")
    digest = hashlib.sha256((root / "snemi.zip").read_bytes()).hexdigest()

    folder = fetch_snemi3d(tmp_path / "data" / "snemi3d", url=f"{base}/snemi.zip", sha256=digest)

    assert folder == tmp_path / "data" / "snemi3d"
    assert _files_under(tmp_path / "data") == {Path("snemi3d"), Path("snemi3d/SNEMI3D")} | {
        Path("snemi3d/SNEMI3D") / split for split in expected} | {
        Path("snemi3d/SNEMI3D") / split / name for split, name in
        [("train", "AC4_train.hdf"), ("val", "AC3_val.hdf"), ("test", "AC3_test.hdf")]}
    loaded = load_snemi3d(folder)
    assert set(loaded) == {"train", "val", "test"}
    for split, (raw, labels) in expected.items():
        np.testing.assert_array_equal(loaded[split][0], raw)
        np.testing.assert_array_equal(loaded[split][1], labels)


def test_load_reads_the_archive_file_itself(tmp_path):
    expected = _melecole_zip(tmp_path / "snemi3d.zip")
    loaded = load_snemi3d(tmp_path / "snemi3d.zip")
    for split, (raw, labels) in expected.items():
        np.testing.assert_array_equal(loaded[split][0], raw)
        np.testing.assert_array_equal(loaded[split][1], labels)
    assert _files_under(tmp_path) == {Path("snemi3d.zip")}  # the scratch folder is gone


def test_challenge_tiff_layout_in_a_tarball_splits_val_and_test_off_train(server, tmp_path):
    root, base = server
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 256, size=(20, 16, 16), dtype=np.uint8)
    labels = rng.integers(0, 50, size=(20, 16, 16), dtype=np.uint16)
    source = tmp_path / "src"
    (source / "image").mkdir(parents=True)
    (source / "seg").mkdir()
    tifffile.imwrite(source / "image" / "train-input.tif", raw)
    tifffile.imwrite(source / "seg" / "train-labels.tif", labels)
    tifffile.imwrite(source / "image" / "test-input.tif", raw[:5])  # unlabelled, as published
    with tarfile.open(root / "snemi.tar.gz", "w:gz") as archive:
        archive.add(source, arcname="snemi")

    archive_path = download(f"{base}/snemi.tar.gz", tmp_path / "snemi.tar.gz", sha256=None)
    extracted = safe_extract(archive_path, tmp_path / "unpacked")
    assert {path.name for path in extracted} == {"train-input.tif", "train-labels.tif", "test-input.tif"}
    assert set(find_volumes(tmp_path / "unpacked")) == {"train"}

    splits = load_snemi3d(tmp_path / "unpacked", val_fraction=0.25, test_fraction=0.2)
    depths = [splits[name][0].shape[0] for name in ("train", "val", "test")]
    assert depths == [12, 4, 4]
    np.testing.assert_array_equal(np.concatenate([splits[n][0] for n in ("train", "val", "test")]), raw)
    np.testing.assert_array_equal(np.concatenate([splits[n][1] for n in ("train", "val", "test")]), labels)


def test_wrong_checksum_raises_and_leaves_no_file(server, tmp_path):
    root, base = server
    (root / "blob.bin").write_bytes(b"not what you expected" * 100)
    actual = hashlib.sha256((root / "blob.bin").read_bytes()).hexdigest()
    wrong = "0" * 64
    dest_dir = tmp_path / "downloads"

    with pytest.raises(MelecoleError) as error:
        download(f"{base}/blob.bin", dest_dir / "blob.bin", sha256=wrong)

    message = str(error.value)
    assert f"{base}/blob.bin" in message and wrong in message and actual in message
    assert list(dest_dir.iterdir()) == []
    with pytest.raises(MelecoleError):
        fetch_snemi3d(tmp_path / "snemi", url=f"{base}/blob.bin", sha256=wrong)
    assert not (tmp_path / "snemi").exists() and not (tmp_path / "snemi.archive").exists()


def test_missing_url_gives_an_error_naming_it(server, tmp_path):
    _, base = server
    with pytest.raises(MelecoleError, match="404") as error:
        download(f"{base}/nothing-here.zip", tmp_path / "x.zip", sha256=None)
    assert f"{base}/nothing-here.zip" in str(error.value)
    assert list(tmp_path.iterdir()) == [tmp_path / "www"]


def test_download_without_checksum_logs_the_digest(server, tmp_path, caplog):
    root, base = server
    payload = bytes(range(256)) * 5000  # more than one read chunk
    (root / "data.bin").write_bytes(payload)
    with caplog.at_level(logging.INFO, logger="melecole.data.download"):
        dest = download(f"{base}/data.bin", tmp_path / "out" / "data.bin", sha256=None)
    digest = hashlib.sha256(payload).hexdigest()
    assert dest.read_bytes() == payload
    assert sha256sum(dest) == digest
    assert digest in caplog.text


def _zip_with(path: Path, name: str) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("fine.txt", "ok")
        archive.writestr(zipfile.ZipInfo(name), "evil")


def _tar_with(path: Path, members: list[tarfile.TarInfo]) -> None:
    with tarfile.open(path, "w") as archive:
        for member in members:
            data = b"evil" if member.isfile() else b""
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data) if data else None)


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize("case", ["zip-dotdot", "zip-absolute", "tar-dotdot", "tar-absolute",
                                  "tar-symlink-out", "tar-symlink-absolute", "tar-hardlink-out"])
def test_escaping_members_are_refused_and_nothing_lands_outside(tmp_path, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = tmp_path / ("bad.zip" if case.startswith("zip") else "bad.tar")
    if case == "zip-dotdot":
        bad = "../evil.txt"
        _zip_with(archive, bad)
    elif case == "zip-absolute":
        bad = str(outside / "evil.txt")
        _zip_with(archive, bad)
    else:
        bad, members = {
            "tar-dotdot": ("a/../../evil.txt", [_member("a/../../evil.txt")]),
            "tar-absolute": (str(outside / "evil.txt"), [_member(str(outside / "evil.txt"))]),
            "tar-symlink-out": ("link", [_member("link", tarfile.SYMTYPE, "../outside"),
                                         _member("link/evil.txt")]),
            "tar-symlink-absolute": ("link", [_member("link", tarfile.SYMTYPE, str(outside)),
                                              _member("link/evil.txt")]),
            "tar-hardlink-out": ("hard", [_member("hard", tarfile.LNKTYPE, "../outside/secret")]),
        }[case]
        _tar_with(archive, [_member("fine.txt")] + members)
    before = _files_under(tmp_path)

    with pytest.raises(MelecoleError, match="refusing member") as error:
        safe_extract(archive, tmp_path / "target")

    assert bad in str(error.value)
    assert _files_under(tmp_path) == before  # no target, no staging folder, nothing outside
    assert not any(path.name == "evil.txt" for path in tmp_path.rglob("*"))


def test_links_that_stay_inside_are_extracted(tmp_path):
    archive = tmp_path / "ok.tar"
    _tar_with(archive, [_member("dir/real.txt"), _member("dir/alias.txt", tarfile.SYMTYPE, "real.txt"),
                        _member("dir/copy.txt", tarfile.LNKTYPE, "dir/real.txt")])
    files = safe_extract(archive, tmp_path / "target")
    assert [path.relative_to(tmp_path / "target") for path in files] == [Path("dir/copy.txt"), Path("dir/real.txt")]
    assert (tmp_path / "target" / "dir" / "alias.txt").read_bytes() == b"evil"


def test_non_archives_and_occupied_targets_are_refused(tmp_path):
    plain = tmp_path / "plain.zip"
    plain.write_bytes(b"just text")
    with pytest.raises(MelecoleError, match="not a zip or tar"):
        safe_extract(plain, tmp_path / "target")
    assert not (tmp_path / "target").exists()
    good = tmp_path / "good.zip"
    _zip_with(good, "also-fine.txt")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(MelecoleError, match="already exists"):
        safe_extract(good, tmp_path / "busy")
    assert _files_under(tmp_path / "busy") == {Path("keep.txt")}


def test_find_volumes_lists_what_it_found_when_train_is_missing(tmp_path):
    (tmp_path / "val").mkdir()
    with h5py.File(tmp_path / "val" / "AC3_val.hdf", "w") as handle:
        handle["volume"] = np.zeros((2, 3, 3), np.uint8)
        handle["labels"] = np.ones((2, 3, 3), np.uint32)
    with pytest.raises(MelecoleError, match="no SNEMI3D train") as error:
        find_volumes(tmp_path)
    assert "AC3_val.hdf" in str(error.value)


def test_raw_and_labels_that_do_not_line_up_are_refused(tmp_path):
    (tmp_path / "train").mkdir()
    with h5py.File(tmp_path / "train" / "AC4.hdf", "w") as handle:
        handle["volume"] = np.zeros((5, 9, 9), np.uint8)  # odd margin: cannot be centred
        handle["labels"] = np.ones((4, 8, 8), np.uint32)
    with pytest.raises(MelecoleError, match=r"\(5, 9, 9\).*\(4, 8, 8\)"):
        load_snemi3d(tmp_path)


def test_default_url_is_the_shares_direct_download():
    assert SNEMI3D_URL == "https://cloudstore.zih.tu-dresden.de/index.php/s/DeWzTtfK7bQWea5/download"


def test_cli_fetch_then_prepare_with_checksum(server, tmp_path, capsys):
    from melecole.cli import main
    from melecole.config import params_from_dict
    from melecole.errors import MelecoleError
    from melecole.io import read_volume
    from melecole.stages.prepare import prepare
    from tests.conftest import tiny_params_dict

    root, base = server
    expected = _melecole_zip(root / "snemi3d.zip")
    digest = hashlib.sha256((root / "snemi3d.zip").read_bytes()).hexdigest()
    archive = tmp_path / "downloads" / "snemi3d.zip"
    assert main(["fetch-snemi3d", "--url", f"{base}/snemi3d.zip", "--out", str(archive), "--sha256", digest]) == 0
    capsys.readouterr()

    def config(sha256):
        return params_from_dict(tiny_params_dict(**{
            "data.dataset": "snemi3d", "data.snemi3d": {"archive": str(archive), "sha256": sha256}})).data

    prepare(config(digest), 0, tmp_path / "data")
    for split, (raw, labels) in expected.items():
        np.testing.assert_array_equal(read_volume(f"{tmp_path / 'data' / split}.h5:raw"), raw)
        np.testing.assert_array_equal(read_volume(f"{tmp_path / 'data' / split}.h5:labels"), labels)
    with pytest.raises(MelecoleError, match="differs from data.snemi3d.sha256"):
        prepare(config("0" * 64), 0, tmp_path / "other")
    assert not (tmp_path / "other").exists()
