"""melecole view: layers, voxel size, lazy chunk serving over HTTP, bind address, errors, the CLI."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest

neuroglancer = pytest.importorskip("neuroglancer")

from melecole.cli import main  # noqa: E402
from melecole.errors import MelecoleError  # noqa: E402
from melecole.io import create_container, write_volumes  # noqa: E402
from melecole.io.volume import Volume  # noqa: E402
from melecole.view import open_view  # noqa: E402
from melecole.view import viewer as view_viewer  # noqa: E402
from melecole.view.layers import display_dtype, nearest_neighbour_channels  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHAPE = (6, 8, 10)  # z, y, x
VOXEL = (30.0, 4.0, 4.0)  # nm
# Affinity channels deliberately out of order: z, y, x nearest neighbours are channels 2, 3, 1.
OFFSETS = [[-3, 0, 0], [0, 0, -1], [-1, 0, 0], [0, -1, 0], [0, -3, 0]]


@pytest.fixture
def volumes(tmp_path):
    """raw + labels (HDF5), segmentation beside a baseline (HDF5), ground truth (zarr), predictions (zarr)."""
    rng = np.random.default_rng(0)
    data = {
        "raw": rng.integers(0, 256, SHAPE, dtype=np.uint8),
        "seg": rng.integers(1, 5, SHAPE).astype(np.uint64),
        "gt": rng.integers(0, 7, SHAPE).astype(np.int32),
        "boundary": rng.integers(0, 256, SHAPE, dtype=np.uint8),
        "affinities": rng.integers(0, 256, (len(OFFSETS), *SHAPE), dtype=np.uint8),
    }
    write_volumes(tmp_path / "vol.h5", {"raw": data["raw"], "labels": data["gt"]}, voxel_size=VOXEL)
    write_volumes(tmp_path / "seg.h5", {"segmentation": data["seg"], "watershed": data["seg"] + 1}, voxel_size=VOXEL)
    write_volumes(tmp_path / "gt.zarr", {"labels": data["gt"]}, voxel_size=VOXEL)
    with create_container(tmp_path / "pred.zarr") as container:
        for name in ("boundary", "affinities"):
            container.create_dataset(name, data[name].shape, np.uint8, voxel_size=VOXEL).write((0, 0, 0), data[name])
        container.set_attrs({"offsets": json.dumps(OFFSETS)})
    paths = {"raw": f"{tmp_path}/vol.h5:raw", "seg": str(tmp_path / "seg.h5"), "gt": f"{tmp_path}/gt.zarr/labels",
             "pred": str(tmp_path / "pred.zarr")}
    return paths, data


@pytest.fixture
def session(volumes):
    paths, _ = volumes
    view = open_view(paths["raw"], paths["seg"], gt=paths["gt"], pred=paths["pred"])
    yield view
    view.stop()


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=20) as response:
        return response.status, response.read()


def _server(url: str) -> str:
    return url.split("/v/")[0]


def _volume_keys(view) -> dict[str, str]:
    """Layer name -> the key the server knows its data under (from the python://volume/KEY source)."""
    keys = {}
    for layer in view.viewer.state.layers:
        url = layer.source[0].url
        assert url.startswith("python://volume/"), url
        keys[layer.name] = url.removeprefix("python://volume/")
    return keys


def _chunk(view, key: str, start, stop) -> np.ndarray:
    """One chunk through the server's data endpoint, full resolution, npz-encoded."""
    where = f"{','.join(map(str, start))}/{','.join(map(str, stop))}"
    ones = ",".join("1" for _ in start)
    status, body = _get(f"{_server(view.url)}/neuroglancer/npz/{key}/{ones}/{where}")
    assert status == 200
    return np.load(io.BytesIO(zlib.decompress(body)))


def _listening_addresses(port: int) -> set[str]:
    """IPv4 addresses with a listening TCP socket on ``port``, from /proc/net/tcp."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_layers_names_types_visibility_and_shaders(session):
    layers = list(session.viewer.state.layers)
    assert [layer.name for layer in layers] == ["raw", "segmentation", "ground truth", "boundary", "affinities"]
    assert [layer.type for layer in layers] == ["image", "segmentation", "segmentation", "image", "image"]
    assert [layer.visible for layer in layers] == [True, True, False, False, False]
    affinities = session.viewer.state.layers["affinities"]
    assert "emitRGB" in affinities.shader and "getDataValue(2)" in affinities.shader
    assert session.notes == ()


def test_voxel_size_and_dimensions(session):
    state = session.viewer.state
    assert state.dimensions.names == ("x", "y", "z")
    np.testing.assert_allclose(state.dimensions.scales, [4e-9, 4e-9, 30e-9])
    assert state.dimensions.units == ("m", "m", "m")
    np.testing.assert_allclose(state.position, [5, 4, 3])  # the centre, x, y, z
    volumes = session.viewer.volume_manager.volumes
    for name, key in _volume_keys(session).items():
        dimensions = volumes[key.split(".", 1)[1]].dimensions
        if name == "affinities":
            assert dimensions.names == ("c^", "z", "y", "x")
            np.testing.assert_allclose(dimensions.scales[1:], [30e-9, 4e-9, 4e-9])
        else:
            assert dimensions.names == ("z", "y", "x")
            np.testing.assert_allclose(dimensions.scales, [30e-9, 4e-9, 4e-9])


def test_client_page_and_bind_address(session):
    assert session.url.startswith("http://127.0.0.1:")
    status, page = _get(session.url)
    assert status == 200 and b"<title>neuroglancer</title>" in page
    script = page.split(b'src="')[1].split(b'"')[0].decode()
    status, code = _get(session.url + script)  # the bundled client, served locally
    assert status == 200 and len(code) > 1000
    port = int(session.url.split(":")[2].split("/")[0])
    if Path("/proc/net/tcp").is_file():
        assert _listening_addresses(port) == {"127.0.0.1"}


def test_chunks_over_http_match_the_files(session, volumes):
    _, data = volumes
    keys = _volume_keys(session)
    server = _server(session.url)
    expected = {"raw": ([6, 8, 10], "uint8", "image"), "segmentation": ([6, 8, 10], "uint64", "segmentation"),
                "ground truth": ([6, 8, 10], "uint32", "segmentation"), "boundary": ([6, 8, 10], "uint8", "image"),
                "affinities": ([3, 6, 8, 10], "uint8", "image")}
    for name, (shape, dtype, kind) in expected.items():
        info = json.loads(_get(f"{server}/neuroglancer/info/{keys[name]}")[1])
        assert (info["shape"], info["dataType"], info["volumeType"]) == (shape, dtype, kind), name
    np.testing.assert_array_equal(_chunk(session, keys["raw"], (0, 0, 0), SHAPE), data["raw"])
    np.testing.assert_array_equal(_chunk(session, keys["segmentation"], (1, 2, 3), (4, 8, 10)),
                                  data["seg"][1:4, 2:8, 3:10])
    gt = _chunk(session, keys["ground truth"], (0, 0, 0), SHAPE)
    assert gt.dtype == np.uint32
    np.testing.assert_array_equal(gt, data["gt"])
    affinities = _chunk(session, keys["affinities"], (0, 0, 0, 0), (3, *SHAPE))
    np.testing.assert_array_equal(affinities, data["affinities"][[2, 3, 1]])  # z, y, x nearest neighbours


def test_data_is_read_lazily_chunk_by_chunk(volumes, monkeypatch):
    paths, data = volumes
    regions = []
    original = Volume.read

    def spy(self, region=None):
        regions.append((self.name, tuple((s.start, s.stop) for s in region) if region else None))
        return original(self, region)

    monkeypatch.setattr(Volume, "read", spy)
    with open_view(paths["raw"], paths["seg"], pred=paths["pred"]) as view:
        assert regions == []  # opening reads no voxels
        chunk = _chunk(view, _volume_keys(view)["raw"], (2, 0, 4), (4, 4, 8))
    np.testing.assert_array_equal(chunk, data["raw"][2:4, 0:4, 4:8])
    assert regions == [(paths["raw"], ((2, 4), (0, 4), (4, 8)))]


def test_meshes_for_small_segmentations_only(session, monkeypatch):
    key = _volume_keys(session)["segmentation"]
    status, mesh = _get(f"{_server(session.url)}/neuroglancer/mesh/{key}/1")
    assert status == 200 and len(mesh) > 0
    monkeypatch.setattr(view_viewer, "MESH_MAX_VOXELS", 100)
    with pytest.raises(urllib.error.HTTPError) as refused:
        _get(f"{_server(session.url)}/neuroglancer/mesh/{key}/2")
    assert refused.value.code == 405


def test_stop_ends_the_server(volumes):
    paths, _ = volumes
    view = open_view(paths["raw"], paths["seg"])
    assert _get(view.url)[0] == 200
    view.stop()
    assert not neuroglancer.server.is_server_running()
    with pytest.raises(urllib.error.URLError):
        _get(view.url)


def test_unknown_voxel_size_is_unitless_and_overridable(tmp_path):
    raw = np.zeros(SHAPE, dtype=np.float64)
    write_volumes(tmp_path / "v.h5", {"raw": raw, "segmentation": np.ones(SHAPE, dtype=np.uint16)})
    with open_view(f"{tmp_path}/v.h5:raw", str(tmp_path / "v.h5")) as view:
        assert view.viewer.state.dimensions.units == ("", "", "")
        assert any("--voxel-size" in note for note in view.notes)
        assert view.plan.layers[0].array.dtype == np.float32  # float64 is served as float32
    with open_view(f"{tmp_path}/v.h5:raw", str(tmp_path / "v.h5"), voxel_size=(8, 2, 2)) as view:
        np.testing.assert_allclose(view.viewer.state.dimensions.scales, [2e-9, 2e-9, 8e-9])
        assert view.notes == ()


@pytest.mark.parametrize("offsets, expected", [
    ([[-1, 0, 0], [0, -1, 0], [0, 0, -1]], (0, 1, 2)),
    ([[0, 0, 1], [-3, 0, 0], [0, 1, 0], [1, 0, 0]], (3, 2, 0)),
    ([[-1, 0, 0], [0, -1, 0], [0, -3, 0]], None),  # no x neighbour
    ([[-1, -1, 0], [0, -1, 0], [0, 0, -1]], None),  # a diagonal is not a nearest neighbour
])
def test_nearest_neighbour_channels(offsets, expected):
    assert nearest_neighbour_channels(offsets) == expected


@pytest.mark.parametrize("dtype, kind, expected", [
    ("int32", "segmentation", "uint32"), ("int64", "segmentation", "uint64"), ("uint16", "segmentation", "uint16"),
    ("bool", "segmentation", "uint8"), ("uint16", "image", "uint16"), ("float16", "image", "float32"),
    ("int64", "image", "float32"),
])
def test_display_dtype(dtype, kind, expected):
    assert display_dtype(np.dtype(dtype), kind, "x") == np.dtype(expected)


def test_affinities_without_offsets_fall_back_to_the_first_channels(volumes, tmp_path):
    paths, data = volumes
    with create_container(tmp_path / "plain.h5") as container:
        container.create_dataset("affinities", data["affinities"].shape, np.uint8).write((0, 0, 0), data["affinities"])
    with open_view(paths["raw"], paths["seg"], pred=str(tmp_path / "plain.h5")) as view:
        assert view.plan.layers[-1].array.channels == (0, 1, 2)
        assert any("channels 0, 1, 2" in note for note in view.notes)


def _bad_inputs(tmp_path, paths):
    write_volumes(tmp_path / "small.h5", {"segmentation": np.ones((6, 8, 9), dtype=np.uint32)})
    write_volumes(tmp_path / "float.h5", {"segmentation": np.ones(SHAPE, dtype=np.float32)})
    write_volumes(tmp_path / "other.h5", {"raw": np.ones(SHAPE, dtype=np.uint8)})
    write_volumes(tmp_path / "coarse.h5", {"labels": np.ones(SHAPE, dtype=np.uint32)}, voxel_size=(40, 4, 4))
    with create_container(tmp_path / "two.zarr") as container:
        container.create_dataset("affinities", (2, *SHAPE), np.uint8)
    seg_file = paths["seg"]
    return [
        ({"raw": str(tmp_path / "missing.h5"), "seg": seg_file}, r"missing\.h5 does not exist"),
        ({"raw": paths["raw"].replace(":raw", ":rawx"), "seg": seg_file}, r"no dataset 'rawx' \(datasets: labels, raw\)"),
        ({"raw": paths["raw"], "seg": str(tmp_path / "small.h5")},
         r"small\.h5:segmentation \(6, 8, 9\) and .*vol\.h5:raw \(6, 8, 10\) differ in z, y, x shape"),
        ({"raw": paths["raw"], "seg": seg_file, "pred": str(tmp_path / "missing.zarr")}, r"missing\.zarr does not exist"),
        ({"raw": paths["raw"], "seg": seg_file, "pred": str(tmp_path / "other.h5")},
         r"holds none of the prediction datasets .*\(datasets: raw\)"),
        ({"raw": paths["raw"], "seg": seg_file, "pred": str(tmp_path / "two.zarr")},
         r"two\.zarr/affinities: affinities are .* at least 3 channels, found shape \(2, 6, 8, 10\)"),
        ({"raw": paths["raw"], "seg": str(tmp_path / "float.h5")}, r"float\.h5:segmentation: .* found dtype float32"),
        ({"raw": paths["raw"], "seg": seg_file, "gt": str(tmp_path / "coarse.h5")},
         r"voxel sizes differ: .*vol\.h5:raw \(30\.0, 4\.0, 4\.0\) nm and .*coarse\.h5:labels \(40\.0, 4\.0, 4\.0\)"),
    ]


def test_clear_errors(volumes, tmp_path):
    paths, _ = volumes
    for arguments, message in _bad_inputs(tmp_path, paths):
        with pytest.raises(MelecoleError, match=message):
            open_view(arguments["raw"], arguments["seg"], gt=arguments.get("gt"), pred=arguments.get("pred"))
    assert not neuroglancer.server.is_server_running()  # nothing left running after a failure


def test_busy_port_is_a_clear_error(volumes):
    paths, _ = volumes
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MelecoleError, match=f"cannot listen on 127.0.0.1:{port}"):
            open_view(paths["raw"], paths["seg"], port=port)


def test_cli_errors_exit_2(volumes, capsys):
    paths, _ = volumes
    status = main(["view", "--raw", paths["raw"].replace(":raw", ":nope"), "--seg", paths["seg"], "--no-wait"])
    assert status == 2
    assert "melecole view: error:" in capsys.readouterr().err
    status = main(["view", "--raw", paths["raw"], "--seg", paths["seg"], "--timeout", "-1"])
    assert status == 2
    assert "--timeout must be at least 0" in capsys.readouterr().err
    status = main(["view", "--raw", paths["raw"], "--seg", paths["seg"], "--no-wait"])
    assert status == 0
    assert capsys.readouterr().out.startswith("http://127.0.0.1:")
    assert not neuroglancer.server.is_server_running()


def _interruptible() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_cli_serves_until_interrupted(volumes):
    paths, _ = volumes
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # What a user's shell gives the command: Ctrl-C delivered and handled by default. A test run
    # may have left SIGINT blocked or ignored in this process (children inherit both), which
    # would keep the signal below from ever arriving.
    parent = (signal.getsignal(signal.SIGINT), signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))
    process = subprocess.Popen([sys.executable, "-m", "melecole.cli", "view", "--raw", paths["raw"], "--seg", paths["seg"],
                                "--pred", paths["pred"], "--timeout", "120"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_interruptible)
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), (url, process.stderr.read() if process.poll() is not None else "")
        assert process.stderr.readline().startswith("melecole view: serving for 120 s")
        assert _get(url)[0] == 200
        process.send_signal(signal.SIGINT)
        # communicate drains both pipes while waiting: a server's log lines must not fill a pipe
        # nobody reads and block it on the way out.
        _, err = process.communicate(timeout=60)
        assert process.returncode == 0, (err, parent)
        assert "melecole view: stopped" in err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
