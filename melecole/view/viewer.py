"""A local Neuroglancer viewer of a :class:`~melecole.view.layers.ViewPlan`: the only module importing neuroglancer.

neuroglancer's Python package runs a small web server (tornado, in a background thread) that
serves the bundled client and answers the client's chunk requests by slicing the arrays it was
given; here those arrays are :class:`~melecole.view.layers.LazyArray`, so each request reads one
region from disk. The server is one per process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import neuroglancer
from neuroglancer import local_volume

from melecole.errors import MelecoleError
from melecole.view.layers import MESH_MAX_VOXELS, Layer, ViewPlan, plan_view

DEFAULT_HOST = "127.0.0.1"
# The nearest-neighbour affinities (channels z, y, x) as red, green, blue: inside a neurite all
# three are high (white), across a membrane the one crossing it drops.
AFFINITY_SHADER = """
void main() {
  emitRGB(vec3(toNormalized(getDataValue(0)), toNormalized(getDataValue(1)), toNormalized(getDataValue(2))));
}
"""
BOUNDARY_SHADER = """
void main() {
  emitGrayscale(toNormalized(getDataValue()));
}
"""


class _LazyVolume(local_volume.LocalVolume):
    """A ``LocalVolume`` whose meshes are refused (HTTP 405) when the volume is too large to mesh in memory."""

    def get_object_mesh(self, object_id):
        if math.prod(int(size) for size in self.shape) > MESH_MAX_VOXELS:
            raise local_volume.MeshesNotSupportedForVolume()
        return super().get_object_mesh(object_id)


def _spaces(voxel_size) -> tuple[list[float], str]:
    """Scales (z, y, x) and unit: nanometres when known, else unit-less 1s."""
    return (list(voxel_size), "nm") if voxel_size is not None else ([1.0, 1.0, 1.0], "")


def _source(layer: Layer, voxel_size) -> _LazyVolume:
    scales, unit = _spaces(voxel_size)
    if layer.kind == "affinities":
        dimensions = neuroglancer.CoordinateSpace(
            names=["c^", "z", "y", "x"], units=["", unit, unit, unit], scales=[1.0, *scales],
            coordinate_arrays=[neuroglancer.CoordinateArray(labels=["z", "y", "x"]), None, None, None])
    else:
        dimensions = neuroglancer.CoordinateSpace(names=["z", "y", "x"], units=unit, scales=scales)
    volume_type = "segmentation" if layer.kind == "segmentation" else "image"
    return _LazyVolume(data=layer.array, dimensions=dimensions, volume_type=volume_type)


def _neuroglancer_layer(layer: Layer, voxel_size):
    source = _source(layer, voxel_size)
    if layer.kind == "segmentation":
        return neuroglancer.SegmentationLayer(source=source)
    if layer.kind == "affinities":
        return neuroglancer.ImageLayer(source=source, shader=AFFINITY_SHADER)
    if layer.name == "raw":
        return neuroglancer.ImageLayer(source=source)
    return neuroglancer.ImageLayer(source=source, shader=BOUNDARY_SHADER)


def _start_server(host: str, port: int) -> None:
    """(Re)starts neuroglancer's server on ``host:port``; a running one is stopped first."""
    if port < 0 or port > 65535:
        raise MelecoleError(f"--port must be 0 (any free port) to 65535, got {port}")
    neuroglancer.stop()
    neuroglancer.set_server_bind_address(host, port)
    try:
        neuroglancer.server.start()
    except OSError as error:
        raise MelecoleError(f"cannot listen on {host}:{port} ({error.strerror or error})") from None


class ViewSession:
    """A running viewer: its URL, the neuroglancer ``Viewer`` and the layers it shows.

    Use as a context manager, or call :meth:`stop`; stopping ends neuroglancer's server (one per
    process) and closes the volumes.

    Attributes:
        url: the viewer's address (``http://127.0.0.1:PORT/v/TOKEN/``).
        viewer: the ``neuroglancer.Viewer``; ``viewer.state`` shows the layers.
        plan: the layers and voxel size shown.
    """

    def __init__(self, viewer: neuroglancer.Viewer, plan: ViewPlan):
        self.viewer = viewer
        self.plan = plan
        self.url = viewer.get_viewer_url()

    @property
    def notes(self) -> tuple[str, ...]:
        """Things the user should know (unknown voxel size, guessed affinity channels)."""
        return self.plan.notes

    def wait(self, timeout: float | None = None) -> None:
        """Serves until ``timeout`` seconds have passed (None: forever); Ctrl-C raises KeyboardInterrupt."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic())))

    def stop(self) -> None:
        """Stops the server (every URL it gave out stops working) and closes the volumes."""
        neuroglancer.stop()
        self.plan.close()

    def __enter__(self) -> ViewSession:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def open_view(raw, seg, gt=None, pred=None, *, host: str = DEFAULT_HOST, port: int = 0,
              voxel_size: Sequence[float] | None = None) -> ViewSession:
    """Starts a local Neuroglancer viewer of a volume, its segmentation and optionally more.

    Layers: ``raw`` (image), ``segmentation`` and ``ground truth`` (segmentations),
    ``boundary`` (image), ``affinities`` and ``predicted affinities`` (the z, y, x
    nearest-neighbour channels as red, green, blue). Raw and segmentation are visible at the
    start. Data are read from disk chunk by chunk as the client asks for them.

    Args:
        raw: the EM volume (``vol.h5:raw``, ``vol.zarr/raw``, TIFF); a file with a dataset
            ``raw`` may be named alone.
        seg: the segmentation (a file with a dataset ``segmentation`` may be named alone).
        gt: the ground truth (a file with a dataset ``labels`` may be named alone), or None.
        pred: a predictions container written by ``predict``, or None.
        host: the address to listen on; the default 127.0.0.1 serves this machine only.
        port: the port; 0 picks a free one.
        voxel_size: z, y, x in nm instead of the files' own.

    Returns:
        The running session; its ``url`` opens the viewer in a browser.

    Raises:
        MelecoleError: see :func:`~melecole.view.layers.plan_view`; or the address cannot be
            listened on.
    """
    plan = plan_view(raw, seg, gt, pred, voxel_size)
    try:
        _start_server(host, port)
        viewer = neuroglancer.Viewer()
        scales, unit = _spaces(plan.voxel_size)
        with viewer.txn() as state:
            # x across, y down, z through the screen, as EM sections are usually looked at.
            state.dimensions = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units=unit,
                                                            scales=scales[::-1])
            state.position = [size / 2 for size in plan.shape[::-1]]
            for layer in plan.layers:
                state.layers.append(name=layer.name, layer=_neuroglancer_layer(layer, plan.voxel_size),
                                    visible=layer.visible)
        return ViewSession(viewer, plan)
    except BaseException:
        neuroglancer.stop()
        plan.close()
        raise
