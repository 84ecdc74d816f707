"""`DegradationSpec`: a degradation and its parameters, validated without TensorFlow (the CLI
checks a spec before anything heavy is imported). The operators are in models/degradations.py."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

from models.errors import ConfigError

Degradation = Literal["gaussian", "salt_pepper", "inpaint", "superres"]
# Gaussian MAD: median(|N(0, 1)|) = Phi^-1(3/4).
MAD_TO_STD = 0.6744897501960817
MIN_MSE = 1e-12
MIN_STD = 1e-3


@dataclass(frozen=True)
class DegradationSpec:
    """A degradation and its parameters; ``feature_shape`` is the clean (model) shape.

    ``noise_std``: gaussian sigma (None: estimate it from y with `estimate_noise_std`), or the
    superres observation noise sigma_y. ``amount``: salt-and-pepper fraction p, or inpainting's
    missing fraction for random pixels. ``block``: inpainting with one missing block x block square
    per image instead of random pixels (0 = random pixels). ``low``/``high``: the value range (salt
    and pepper values, PSNR peak = high - low). ``clean_std``: s0 of the salt-and-pepper model.
    """

    kind: Degradation
    feature_shape: tuple[int, ...]
    noise_std: float | None = None
    amount: float = 0.5
    factor: int = 2
    block: int = 0
    low: float = 0.0
    high: float = 1.0
    clean_std: float = 0.1
    quantum: float = 1.0 / 255.0

    def __post_init__(self) -> None:
        if self.kind not in get_args(Degradation):
            raise ConfigError(
                f"degradation {self.kind!r} is not known; choose one of {get_args(Degradation)}"
            )
        object.__setattr__(self, "feature_shape", tuple(int(d) for d in self.feature_shape))
        if self.noise_std is not None and not self.noise_std > 0:
            raise ConfigError(f"noise_std={self.noise_std!r} must be > 0 (or unset to estimate)")
        if not 0.0 < self.amount < 1.0:
            raise ConfigError(f"amount={self.amount!r} must lie in (0, 1)")
        if not self.high > self.low:
            raise ConfigError(f"value range [{self.low}, {self.high}] must have high > low")
        if self.kind == "superres":
            if len(self.feature_shape) < 2:
                raise ConfigError(
                    f"superres needs image features [H, W(, C)]; the model's feature_shape is "
                    f"{list(self.feature_shape)}: use a dataset ingested as images"
                )
            h, w = self.feature_shape[:2]
            if self.factor < 2 or h % self.factor or w % self.factor:
                raise ConfigError(
                    f"factor={self.factor} must be >= 2 and divide the image size {h}x{w}"
                )
        if self.block and (len(self.feature_shape) < 2 or self.block > min(self.feature_shape[:2])):
            raise ConfigError(
                f"block={self.block} needs image features of at least {self.block}x{self.block}"
            )

    @property
    def input_dim(self) -> int:
        return math.prod(self.feature_shape)

    @property
    def observed_shape(self) -> tuple[int, ...]:
        if self.kind != "superres":
            return self.feature_shape
        h, w, *c = self.feature_shape
        return (h // self.factor, w // self.factor, *c)

    @property
    def peak(self) -> float:
        return self.high - self.low
