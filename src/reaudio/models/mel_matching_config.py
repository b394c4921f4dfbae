"""The settings of mel matching (``reaudio.models.mel_matching``), apart from the torch module so the
command line can show their defaults without importing torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MelMatchingConfig:
    """How hard the stage pulls the audio to its mel.

    Attributes:
        iterations: gain-and-resynthesis passes (0: the stage passes audio through).
        relaxation: exponent on each pass's gains (1: plain; 1.5 measured best on the default model).
        max_gain_db: no band moves more than this per pass, up or down (silence in the output where
            the mel asks for sound cannot be scaled up into noise without bound).
    """

    iterations: int = 8
    relaxation: float = 1.5
    max_gain_db: float = 40.0

    def __post_init__(self) -> None:
        if not isinstance(self.iterations, int) or not 0 <= self.iterations <= 64:
            raise ValueError(f"mel matching: iterations={self.iterations!r} must be an integer in 0..64")
        if not 0.5 <= self.relaxation <= 2.0:
            raise ValueError(f"mel matching: relaxation={self.relaxation!r} must be in 0.5..2")
        if not 0.0 < self.max_gain_db <= 80.0:
            raise ValueError(f"mel matching: max_gain_db={self.max_gain_db!r} must be in (0, 80]")

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict) -> MelMatchingConfig:
        if not isinstance(data, dict):
            raise ValueError(f"mel matching: expected an object of settings, got {data!r}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"mel matching: unknown keys {sorted(unknown)}; valid: {', '.join(cls.__dataclass_fields__)}"
            )
        return cls(**data)
