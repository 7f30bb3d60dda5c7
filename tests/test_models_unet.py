"""The residual 3D U-Net and the model registry."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from melecole.losses import discriminative_loss
from melecole.models import UNet3D, build_model, model_names, register_model

ANISOTROPIC = ((1, 2, 2), (2, 2, 2))
ISOTROPIC = ((2, 2, 2), (2, 2, 2))


@pytest.mark.parametrize(
    "downsample,shape,divisor",
    [(ANISOTROPIC, (4, 16, 12), (2, 4, 4)), (ISOTROPIC, (8, 8, 12), (4, 4, 4)), ((), (3, 5, 7), (1, 1, 1))],
)
def test_output_shapes_match_input(downsample, shape, divisor):
    torch.manual_seed(0)
    model = UNet3D(in_channels=2, base_channels=4, downsample=downsample, embedding_dim=5)
    assert model.divisor == divisor
    x = torch.randn(2, 2, *shape)
    out = model(x)
    assert set(out) == {"embedding", "boundary"}
    assert out["embedding"].shape == (2, 5, *shape)
    assert out["boundary"].shape == (2, 1, *shape)
    for value in out.values():
        assert value.dtype == torch.float32
        assert value.device == x.device
        assert torch.isfinite(value).all()


def test_indivisible_or_wrong_inputs_raise_with_the_shape():
    model = UNet3D(base_channels=4, downsample=ANISOTROPIC)
    with pytest.raises(ValueError, match=re.escape("(1, 1, 3, 16, 16)")) as info:
        model(torch.zeros(1, 1, 3, 16, 16))
    assert "(2, 4, 4)" in str(info.value)
    with pytest.raises(ValueError, match=re.escape("(1, 1, 4, 16, 18)")):
        model(torch.zeros(1, 1, 4, 16, 18))
    with pytest.raises(ValueError, match=re.escape("(1, 2, 4, 16, 16)")):
        model(torch.zeros(1, 2, 4, 16, 16))
    with pytest.raises(ValueError, match=re.escape("(4, 16, 16)")):
        model(torch.zeros(4, 16, 16))


@pytest.mark.parametrize("norm", ["group", "batch", "instance", "none"])
def test_every_norm_constructs_trains_and_evaluates(norm):
    torch.manual_seed(0)
    model = UNet3D(base_channels=6, downsample=ANISOTROPIC, embedding_dim=3, norm=norm)
    x = torch.randn(2, 1, 4, 8, 8)
    out = model(x)
    out["embedding"].sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.embedding_head.parameters())
    model.eval()
    with torch.no_grad():
        assert model(x)["boundary"].shape == (2, 1, 4, 8, 8)
    with pytest.raises(ValueError, match="layer"):
        UNet3D(norm="layer")


def test_group_norm_uses_up_to_eight_groups_that_divide_the_channels():
    model = UNet3D(base_channels=12, channel_factor=2, downsample=((1, 2, 2),))
    groups = {m.num_channels: m.num_groups for m in model.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups == {12: 6, 24: 8}


def test_kernels_default_to_flat_first_level_on_anisotropic_data():
    def first_conv(model):
        return model.encoders[0].conv1.kernel_size

    assert first_conv(UNet3D(downsample=ANISOTROPIC)) == (1, 3, 3)
    assert first_conv(UNet3D(downsample=ISOTROPIC)) == (3, 3, 3)
    assert UNet3D(downsample=ANISOTROPIC).encoders[1].conv1.kernel_size == (3, 3, 3)
    custom = UNet3D(base_channels=4, downsample=((1, 2, 2),), kernel=[[1, 5, 5], [3, 1, 3]])
    assert first_conv(custom) == (1, 5, 5)
    assert custom.encoders[1].conv1.kernel_size == (3, 1, 3)
    assert custom(torch.zeros(1, 1, 3, 6, 6))["embedding"].shape[2:] == (3, 6, 6)
    with pytest.raises(ValueError, match="odd"):
        UNet3D(downsample=((1, 2, 2),), kernel=[[1, 3, 3], [2, 3, 3]])
    with pytest.raises(ValueError, match="3 levels"):
        UNet3D(downsample=ANISOTROPIC, kernel=[[1, 3, 3], [3, 3, 3]])
    with pytest.raises(ValueError, match="triples"):
        UNet3D(downsample=((2, 2),))


def _two_instances() -> tuple[torch.Tensor, torch.Tensor]:
    """An 8x16x16 patch split by a wavy surface; the two sides differ in brightness, plus noise."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(np.arange(8), np.arange(16), np.arange(16), indexing="ij")
    labels = np.where(x + 2 * np.sin(y / 3.0 + z / 4.0) < 8, 1, 2)  # (Z, Y, X)
    raw = np.where(labels == 1, 0.7, 0.3) + rng.normal(0, 0.1, labels.shape)
    raw_tensor = torch.from_numpy(raw.astype(np.float32))[None, None]  # (1, 1, Z, Y, X)
    return raw_tensor, torch.from_numpy(labels.astype(np.int64))[None]  # (1, Z, Y, X)


def test_a_few_adam_steps_reduce_the_discriminative_loss():
    torch.manual_seed(0)
    raw, instances = _two_instances()
    model = UNet3D(base_channels=4, downsample=ANISOTROPIC, embedding_dim=4)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        optimiser.zero_grad()
        loss = discriminative_loss(model(raw)["embedding"], instances)["loss"]
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = discriminative_loss(model(raw)["embedding"], instances)["loss"].item()
    assert final < 0.1 * losses[0], losses


def test_constructor_args_rebuild_the_model_through_the_registry(tmp_path):
    torch.manual_seed(0)
    model = UNet3D(in_channels=2, base_channels=5, channel_factor=3, downsample=[[1, 2, 2]],
                   embedding_dim=6, norm="instance", affinity_channels=4)
    args = model.constructor_args
    assert set(args) == {"in_channels", "base_channels", "channel_factor", "downsample", "kernel",
                         "embedding_dim", "norm", "affinity_channels", "learnable_scale"}
    assert json.loads(json.dumps(args)) == args  # plain Python types only
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": "unet3d", "constructor_args": args, "state": model.state_dict()}, path)
    checkpoint = torch.load(path, weights_only=True)
    rebuilt = build_model(checkpoint["model"], **checkpoint["constructor_args"])
    assert isinstance(rebuilt, UNet3D)
    rebuilt.load_state_dict(checkpoint["state"], strict=True)
    model.eval()
    rebuilt.eval()
    x = torch.randn(1, 2, 2, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x)["embedding"], model(x)["embedding"])
        assert rebuilt(x)["affinities"].shape == (1, 4, 2, 4, 4)
    # A model of other arguments does not accept these weights.
    with pytest.raises(RuntimeError):
        build_model("unet3d", **{**args, "base_channels": 4}).load_state_dict(model.state_dict(), strict=True)


def test_registry_rejects_unknown_and_duplicate_names():
    assert "unet3d" in model_names()
    with pytest.raises(ValueError, match="unet3d") as info:
        build_model("resnet")
    assert "resnet" in str(info.value)
    with pytest.raises(ValueError, match="already registered"):
        register_model("unet3d")(torch.nn.Identity)
    assert register_model("unet3d")(UNet3D) is UNet3D  # re-registering the same class is harmless


def test_learnable_scale_multiplies_the_embedding_and_learns():
    torch.manual_seed(0)
    plain = UNet3D(base_channels=4, downsample=[[2, 2, 2]], embedding_dim=3)
    scaled = UNet3D(base_channels=4, downsample=[[2, 2, 2]], embedding_dim=3, learnable_scale=True)
    scaled.load_state_dict({**plain.state_dict(), "log_scale": torch.tensor(0.5)})
    x = torch.randn(1, 1, 4, 8, 8)
    torch.testing.assert_close(scaled(x)["embedding"], plain(x)["embedding"] * math.exp(0.5))
    scaled(x)["embedding"].pow(2).mean().backward()
    assert scaled.log_scale.grad is not None and scaled.log_scale.grad != 0
    assert "log_scale" not in plain.state_dict()
