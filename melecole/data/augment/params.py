"""Augmentation parameters: one validated model per augmentation, each with a probability.

Defaults suit isotropic FIB-SEM (every axis order is plausible). Set ``anisotropic: true`` for
serial-section data: z is then never swapped with y or x, elastic warps stay in-plane and
cut-blur keeps z at full resolution.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


def _ordered(value: tuple) -> tuple:
    low, high = value
    if low > high:
        raise ValueError(f"range ({low}, {high}) must be (low, high) with low <= high")
    return value


def _range(item: object) -> object:
    # A (low, high) pair of ``item``, low <= high; YAML lists become tuples.
    return Annotated[tuple[item, item], AfterValidator(_ordered)]


Probability = Annotated[float, Field(ge=0, le=1)]
_Positive = Annotated[float, Field(gt=0)]
_Fraction = Annotated[float, Field(gt=0, le=1)]
Range = _range(float)
PositiveRange = _range(_Positive)
FractionRange = _range(_Fraction)
FactorRange = _range(Annotated[float, Field(ge=1)])
CountRange = _range(Annotated[int, Field(ge=1)])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FlipTransposeConfig(_Strict):
    """Flip each axis with probability 1/2 and draw an axis order (z/xy swaps only if isotropic)."""

    p: Probability = 1.0
    flip: bool = True
    transpose: bool = True


class Rotate90Config(_Strict):
    """Rotate by 90, 180 or 270 degrees in the (y, x) plane."""

    p: Probability = 0.5


class RescaleConfig(_Strict):
    """Zoom z and the (y, x) plane by separate factors (> 1 magnifies): varies the anisotropy."""

    p: Probability = 0.2
    zoom_z: PositiveRange = (0.85, 1.2)
    zoom_xy: PositiveRange = (0.85, 1.2)



class ElasticConfig(_Strict):
    """Smooth random displacement: control points every ``spacing`` voxels, a B-spline between."""

    p: Probability = 0.3
    magnitude: float = Field(6.0, ge=0, description="largest displacement, voxels")
    spacing: int = Field(16, ge=2, description="control point spacing, voxels")

    @model_validator(mode="after")
    def _no_folding(self) -> ElasticConfig:
        # The field's slope is at most 2 * magnitude / spacing; at 1 the warp may fold over.
        if 2 * self.magnitude >= self.spacing:
            raise ValueError(f"elastic.magnitude ({self.magnitude}) must stay below half of elastic.spacing "
                             f"({self.spacing}), or the warp can fold")
        return self


class MisalignmentConfig(_Strict):
    """Sections shifted in (y, x): one section (slip) or every section from one on (translation)."""

    p: Probability = 0.1
    max_shift: int = Field(6, ge=1, description="largest shift along y and x, voxels")
    slip: Probability = Field(0.5, description="chance of a slip rather than a translation")


class GrayscaleConfig(_Strict):
    """Contrast, brightness and gamma, drawn for the whole patch or section by section."""

    p: Probability = 0.75
    contrast: Range = (0.75, 1.25)
    brightness: Range = Field((-0.25, 0.25), description="added, in units of the raw's std")
    gamma: PositiveRange = (0.75, 1.33)
    per_section: Probability = Field(0.5, description="chance of one draw per z section")


class MissingSectionConfig(_Strict):
    """Whole z sections replaced by a constant (a lost or unimaged section)."""

    p: Probability = 0.1
    sections: CountRange = Field((1, 2), description="how many sections, (low, high)")
    value: float = Field(0.0, description="fill value in normalised units (0 = the volume mean)")


class MissingPartsConfig(_Strict):
    """An elliptic hole in a few sections (a fold, dirt or a crack)."""

    p: Probability = 0.1
    sections: CountRange = (1, 2)
    radius: FractionRange = Field((0.1, 0.3), description="semi-axes as fractions of the section's size")
    value: float = 0.0


class MotionBlurConfig(_Strict):
    """A line kernel at a random in-plane angle blurs a few sections."""

    p: Probability = 0.1
    sections: CountRange = (1, 4)
    length: CountRange = Field((3, 9), description="kernel length, voxels")


class CutBlurConfig(_Strict):
    """A random box is downsampled and upsampled back (a low-resolution patch inside a sharp one)."""

    p: Probability = 0.2
    size: FractionRange = Field((0.25, 0.75), description="box side as a fraction of the patch side")
    factor: FactorRange = Field((2.0, 6.0), description="downsampling factor")


class CutNoiseConfig(_Strict):
    """Gaussian noise added inside a random box."""

    p: Probability = 0.2
    size: FractionRange = (0.25, 0.75)
    scale: PositiveRange = Field((0.1, 0.5), description="noise std in units of the raw's std")


class AugmentConfig(_Strict):
    """Every augmentation of a training patch, in the order they are applied."""

    enabled: bool = True
    anisotropic: bool = Field(False, description="z is a different resolution: never swap it with y or x")
    flip_transpose: FlipTransposeConfig = FlipTransposeConfig()
    rotate90: Rotate90Config = Rotate90Config()
    rescale: RescaleConfig = RescaleConfig()
    elastic: ElasticConfig = ElasticConfig()
    misalignment: MisalignmentConfig = MisalignmentConfig()
    grayscale: GrayscaleConfig = GrayscaleConfig()
    motion_blur: MotionBlurConfig = MotionBlurConfig()
    cut_blur: CutBlurConfig = CutBlurConfig()
    cut_noise: CutNoiseConfig = CutNoiseConfig()
    missing_parts: MissingPartsConfig = MissingPartsConfig()
    missing_section: MissingSectionConfig = MissingSectionConfig()


AUGMENTATIONS: tuple[str, ...] = tuple(
    name for name in AugmentConfig.model_fields if name not in ("enabled", "anisotropic"))
"""The augmentation names, in the order the pipeline applies them."""
