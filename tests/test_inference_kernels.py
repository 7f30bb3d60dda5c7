"""Inference's CPU kernel choices change how, never what: oneDNN convolutions give ATen's values,
fall back where they cannot apply, and the one-thread block restores the thread count."""

from __future__ import annotations

import pytest
import torch

from melecole.inference.kernels import OneDnnConvolutions, one_thread


def _calls(monkeypatch) -> list[bool]:
    """Records, per conv3d call inside the mode, whether oneDNN ran it."""
    import melecole.inference.kernels as kernels

    ran, original = [], kernels._onednn_conv3d

    def recorded(*args, **kwargs):
        result = original(*args, **kwargs)
        ran.append(result is not None)
        return result

    monkeypatch.setattr(kernels, "_onednn_conv3d", recorded)
    return ran


@pytest.mark.parametrize("in_channels, kernel, padding, stride, groups", [
    (1, 3, 1, 1, 1), (4, 3, 1, 1, 1), (4, 1, 0, 1, 1), (4, (1, 3, 3), (0, 1, 1), 1, 1), (4, 3, 0, 2, 2),
])
def test_onednn_convolutions_give_atens_values(monkeypatch, in_channels, kernel, padding, stride, groups):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(in_channels, 6, kernel, padding=padding, stride=stride, groups=groups)
    x = torch.randn(1, in_channels, 8, 10, 12)
    ran = _calls(monkeypatch)
    with torch.inference_mode():
        expected = conv(x)
        with OneDnnConvolutions():
            fast = conv(x)
    assert ran == [True]
    assert fast.shape == expected.shape
    torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-5)


def test_autograd_float64_and_string_padding_keep_atens_path(monkeypatch):
    conv = torch.nn.Conv3d(2, 3, 3, padding=1)
    ran = _calls(monkeypatch)
    with OneDnnConvolutions():
        conv(torch.randn(1, 2, 6, 6, 6)).sum().backward()  # gradients wanted
    assert conv.weight.grad is not None
    with torch.inference_mode(), OneDnnConvolutions():
        conv.double()(torch.randn(1, 2, 6, 6, 6, dtype=torch.float64))
        torch.nn.Conv3d(2, 3, 3, padding="same")(torch.randn(1, 2, 6, 6, 6))
    assert ran == [False, False, False]


def test_one_thread_restores_the_thread_count():
    before = torch.get_num_threads()
    with one_thread(torch.device("cpu")):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), one_thread(torch.device("cpu")):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    with one_thread(torch.device("meta")):
        assert torch.get_num_threads() == before
