"""A deterministic generator of SNEMI3D-like anisotropic EM volumes with dense neuron labels.

Neurites are tubes around smooth random 3D curves, drawn in physical space (z stretched by the
anisotropy) so that "mostly along z", oblique and in-plane processes look right after sampling.
Every voxel belongs to the neurite whose tube surface is nearest (an additively weighted
Voronoi partition of the centrelines, weights = radii), so neighbouring neurons touch as in
dense EM reconstructions. The raw image is rendered from the labels: cytoplasm with per-neuron
brightness and texture, dark membranes on in-plane label boundaries, dark organelle blobs,
anisotropic blur, noise, and optionally the section defects of serial-section EM.
"""

from __future__ import annotations

import cc3d
import numpy as np
from scipy import ndimage as ndi

# Neurite kinds as (probability, smallest, largest angle to the z axis in degrees).
_KINDS = ((0.5, 0.0, 25.0), (0.3, 30.0, 60.0), (0.2, 75.0, 90.0))
_RADIUS_RANGE = (1.0, 9.0)  # tube radii in xy pixels, drawn log-uniformly
_RADIUS_BINS = 5  # one distance transform per radius bin
_STEP = 0.5  # centreline sampling step in physical pixels, fine enough to leave no voxel gaps
_MIN_FRAGMENT = 40  # connected pieces smaller than this (voxels) join a neighbour
_MEMBRANE = 0.17  # intensities on a 0..1 scale
_CYTOPLASM = (0.55, 0.8)


def make_synthetic_volume(
    shape: tuple[int, int, int] = (24, 96, 96),
    anisotropy: float = 5.0,
    neurites: int = 40,
    noise: float = 0.08,
    blur: float = 0.8,
    defects: bool = True,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Generates one raw EM volume and its dense neuron labels.

    Args:
        shape: (z, y, x) size in voxels.
        anisotropy: z voxel size divided by xy voxel size (SNEMI3D: 30 nm / 6 nm = 5).
        neurites: number of neurite centrelines; some may end up split or merged by the
            connectivity clean-up, so the label count is close to, not equal to, this.
        noise: standard deviation of the additive Gaussian noise, on a 0..1 intensity scale.
        blur: Gaussian sigma in xy pixels; z uses ``blur / anisotropy``. 0 disables it.
        defects: add one blank section, one misaligned (xy-shifted) section and one
            low-contrast section to the raw image; the labels are the same either way.
        seed: seed of the only random generator used; equal arguments give equal bytes.

    Returns:
        (raw, labels): raw uint8 (z, y, x); labels uint32 (z, y, x), every voxel labelled,
        ids consecutive from 1, each id one 6-connected component.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive sizes (z, y, x), got {shape}")
    if anisotropy <= 0 or neurites < 1 or noise < 0 or blur < 0:
        raise ValueError(
            f"need anisotropy > 0, neurites >= 1, noise >= 0, blur >= 0; got anisotropy={anisotropy}, "
            f"neurites={neurites}, noise={noise}, blur={blur}"
        )
    rng = np.random.default_rng(seed)
    labels = _neurite_labels(shape, anisotropy, neurites, rng)
    raw = _render_raw(labels, anisotropy, noise, blur, defects, rng)
    return raw, labels


def _neurite_labels(shape: tuple[int, int, int], anisotropy: float, count: int,
                    rng: np.random.Generator) -> np.ndarray:
    sampling = (anisotropy, 1.0, 1.0)
    radii = np.exp(rng.uniform(*np.log(_RADIUS_RANGE), size=count))
    curves = [_random_curve(shape, anisotropy, rng) for _ in range(count)]
    # Radius bins: within a bin the nearest centreline is found unweighted, then its own
    # radius is subtracted; across bins the smallest weighted distance wins. Exact per-curve
    # transforms would cost one distance transform per neurite.
    edges = np.linspace(*np.log(_RADIUS_RANGE), _RADIUS_BINS + 1)[1:-1]
    bins = np.digitize(np.log(radii), edges)
    best = np.full(shape, np.inf, dtype=np.float32)  # (Z, Y, X) weighted distance
    labels = np.ones(shape, dtype=np.uint32)
    for b in range(_RADIUS_BINS):
        seeds = np.zeros(shape, dtype=np.uint32)
        for i in np.flatnonzero(bins == b):
            z, y, x = curves[i]
            seeds[z, y, x] = i + 1
        if not seeds.any():
            continue
        dist, idx = ndi.distance_transform_edt(seeds == 0, sampling=sampling, return_indices=True)
        nearest = seeds[idx[0], idx[1], idx[2]]
        weighted = (dist - radii[nearest - 1]).astype(np.float32)
        closer = weighted < best
        best[closer] = weighted[closer]
        labels[closer] = nearest[closer]
    return _connected_labels(labels, sampling)


def _random_curve(shape: tuple[int, int, int], anisotropy: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel indices (z, y, x) inside the volume of one smooth random curve."""
    box = np.array(shape, dtype=float) * (anisotropy, 1.0, 1.0)  # physical extent (z, y, x)
    probabilities, low, high = np.array(_KINDS).T
    kind = rng.choice(len(_KINDS), p=probabilities)
    theta = np.deg2rad(rng.uniform(low[kind], high[kind]))
    phi = rng.uniform(0.0, 2 * np.pi)
    direction = np.array([np.cos(theta), np.sin(theta) * np.sin(phi), np.sin(theta) * np.cos(phi)])
    # Two unit vectors perpendicular to the direction span the bending plane.
    helper = np.array([0.0, 1.0, 0.0]) if abs(direction[1]) < 0.9 else np.array([0.0, 0.0, 1.0])
    normal1 = np.cross(direction, helper)
    normal1 /= np.linalg.norm(normal1)
    normal2 = np.cross(direction, normal1)
    start = rng.random(3) * box
    half = float(np.linalg.norm(box))  # from any interior start this leaves the box both ways
    t = np.arange(-half, half + _STEP, _STEP)
    points = start + t[:, None] * direction  # (T, 3) physical (z, y, x)
    for normal in (normal1, normal2):
        wavelength = rng.uniform(40.0, 160.0)
        amplitude = rng.uniform(0.03, 0.18) * wavelength
        phase = rng.uniform(0.0, 2 * np.pi)
        points += (amplitude * np.sin(2 * np.pi * t / wavelength + phase))[:, None] * normal
    voxels = np.rint(points / (anisotropy, 1.0, 1.0)).astype(np.int64)
    inside = np.all((voxels >= 0) & (voxels < shape), axis=1)
    return tuple(voxels[inside].T)


def _connected_labels(labels: np.ndarray, sampling: tuple[float, float, float]) -> np.ndarray:
    """Splits labels into 6-connected pieces, hands tiny pieces to the nearest big one."""
    for _ in range(3):
        pieces = cc3d.connected_components(labels, connectivity=6, out_dtype=np.uint32)
        sizes = np.bincount(pieces.ravel())
        small = sizes < _MIN_FRAGMENT
        small[0] = False
        if small[1:].all():
            small[np.argmax(sizes)] = False
        if not small.any():
            return pieces
        dropped = small[pieces]
        # Each dropped voxel takes the id of the nearest kept voxel; the next round checks
        # that this left every id in one piece.
        idx = ndi.distance_transform_edt(dropped, sampling=sampling, return_distances=False,
                                         return_indices=True)
        labels = pieces[idx[0], idx[1], idx[2]]
    return cc3d.connected_components(labels, connectivity=6, out_dtype=np.uint32)


def membrane_mask(labels: np.ndarray) -> np.ndarray:
    """Voxels whose label differs from a 4-neighbour in their own section, both sides marked.

    Serial-section EM shows membranes in the section plane; both sides of a label change are
    marked, which draws membranes 2 pixels thick.
    """
    mask = np.zeros(labels.shape, dtype=bool)
    change_y = labels[:, 1:, :] != labels[:, :-1, :]
    change_x = labels[:, :, 1:] != labels[:, :, :-1]
    mask[:, 1:, :] |= change_y
    mask[:, :-1, :] |= change_y
    mask[:, :, 1:] |= change_x
    mask[:, :, :-1] |= change_x
    return mask


def _render_raw(labels: np.ndarray, anisotropy: float, noise: float, blur: float, defects: bool,
                rng: np.random.Generator) -> np.ndarray:
    shape = labels.shape
    # Defect parameters are drawn whether or not they are applied, so switching defects off
    # leaves every other random draw, and hence every other section, unchanged.
    defect_sections = rng.permutation(shape[0])[:3]
    shift = rng.integers(3, 9, size=2) * rng.choice([-1, 1], size=2)

    brightness = rng.uniform(*_CYTOPLASM, size=int(labels.max()) + 1).astype(np.float32)
    raw = brightness[labels]  # (Z, Y, X) float32
    raw += 0.04 * _smooth_noise(shape, (0.3, 3.0, 3.0), rng)
    raw += 0.03 * _smooth_noise(shape, (0.0, 0.8, 0.8), rng)
    membranes = membrane_mask(labels)
    raw = _add_organelles(raw, labels, membranes, anisotropy, rng)
    raw[membranes] = _MEMBRANE + 0.04 * rng.standard_normal(int(membranes.sum()), dtype=np.float32)
    if blur > 0:
        raw = ndi.gaussian_filter(raw, sigma=(blur / anisotropy, blur, blur))

    sections = defect_sections if defects else defect_sections[:0]
    if len(sections) > 1:
        z = sections[1]
        raw[z] = ndi.shift(raw[z], shift, order=0, mode="nearest")
    if len(sections) > 2:
        z = sections[2]
        raw[z] = raw[z].mean() + 0.3 * (raw[z] - raw[z].mean())
    if noise > 0:
        raw += rng.normal(0.0, noise, size=shape).astype(np.float32)
    if len(sections) > 0:
        raw[sections[0]] = 0.0  # a lost section is blank, noise and all
    return np.rint(np.clip(raw, 0.0, 1.0) * 255).astype(np.uint8)


def _smooth_noise(shape: tuple[int, ...], sigma: tuple[float, float, float],
                  rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    field = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return field / max(float(field.std()), 1e-6)


def _add_organelles(raw: np.ndarray, labels: np.ndarray, membranes: np.ndarray, anisotropy: float,
                    rng: np.random.Generator) -> np.ndarray:
    """Darkens mitochondria-like and vesicle-like blobs, each kept inside one neuron."""
    shape = labels.shape
    voxels = int(np.prod(shape))
    n_mito, n_vesicle = max(1, voxels // 6000), max(1, voxels // 1500)
    radii = np.concatenate([rng.uniform(2.0, 4.5, n_mito), rng.uniform(0.8, 1.4, n_vesicle)])
    darkness = np.concatenate([rng.uniform(0.35, 0.45, n_mito), rng.uniform(0.4, 0.5, n_vesicle)])
    centres = tuple(rng.integers(0, s, size=radii.size) for s in shape)
    seeds = np.zeros(shape, dtype=np.int32)
    seeds[centres] = np.arange(1, radii.size + 1)
    # Half the z spacing makes blobs twice as long in z as wide, like mitochondria in axons.
    dist, idx = ndi.distance_transform_edt(seeds == 0, sampling=(anisotropy / 2, 1.0, 1.0),
                                           return_indices=True)
    nearest = seeds[idx[0], idx[1], idx[2]] - 1
    own_label = labels[idx[0], idx[1], idx[2]] == labels
    blob = (dist <= radii[nearest]) & own_label & ~membranes & (nearest >= 0)
    raw[blob] = darkness[nearest[blob]].astype(np.float32)
    return raw
