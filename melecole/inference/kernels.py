"""CPU kernel choices for inference: every 3D convolution through oneDNN, small tensor work on
one thread.

ATen picks a CPU convolution's algorithm by a heuristic tuned on 2D images
(``ConvParams::use_mkldnn`` in ``aten/src/ATen/native/Convolution.cpp``): with one tile per
batch it sends a 3x3x3 convolution to its im2col + matrix product fallback (``slow_conv3d``)
whenever ``N * C * D * H <= 20480``, and a 1x1x1 one whenever torch runs one thread. In the
default U-Net on a 48^3 tile that is the first layer, both deeper levels and the heads: 42 of
its 54 convolutions. Sent to oneDNN instead, the forward pass ran 1.4-2.1x faster here (2 cores,
one thread or two: 57 instead of 120 ms per tile on two idle cores), its outputs within 2e-6 of
the fallback's.

The per-tile work after the network (embedding affinities, probabilities) is a few dozen
elementwise operations on some 10^5 voxels each: too small to gain from a second thread, and on a
machine whose other core is busy each operation waits for it (measured: the default model's 12
affinity channels of one tile took 14-28 ms on one thread, 150-750 ms on two while another
process kept a core busy).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode


def _triple(value) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)] * 3


class OneDnnConvolutions(TorchFunctionMode):
    """Within this mode, ``conv3d`` of a batched CPU float32 input without autograd runs
    ``torch.mkldnn_convolution`` (the kernel ATen itself uses for larger inputs); everything else,
    including string paddings, other devices and dtypes, runs unchanged."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.conv3d:
            fast = _onednn_conv3d(*args, **kwargs)
            if fast is not None:
                return fast
        return func(*args, **kwargs)


def _onednn_conv3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    if (not torch.backends.mkldnn.is_available() or not torch.backends.mkldnn.enabled
            or isinstance(padding, str) or not isinstance(input, torch.Tensor) or input.ndim != 5
            or input.device.type != "cpu" or input.layout != torch.strided
            or input.dtype != torch.float32 or weight.dtype != torch.float32
            or (bias is not None and bias.dtype != torch.float32)
            or (torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad))):
        return None
    return torch.mkldnn_convolution(input, weight, bias, _triple(padding), _triple(stride), _triple(dilation),
                                    int(groups))


@contextlib.contextmanager
def one_thread(device: torch.device) -> Iterator[None]:
    """Torch's CPU work on one thread inside the block (the previous count restored after);
    nothing changes for another device."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)
