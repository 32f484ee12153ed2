"""Promotion gate settings (env prefix ``GATE_``)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    env_prefix: ClassVar[str] = "GATE_"

    # Absolute floors on the test split.
    min_accuracy: float = Field(ge=0, le=1)
    min_macro_f1: float = Field(ge=0, le=1)
    # How a candidate is compared with the current Production model on the same test split:
    # "mcnemar" (fail when significantly worse at level ``alpha``) or "margin" (fail when more
    # than ``margin`` below Production's accuracy or macro-F1).
    comparison: Literal["mcnemar", "margin"]
    # "auto": exact binomial test below 25 discordant pairs, chi-square (continuity-corrected) above.
    mcnemar_method: Literal["auto", "exact", "chi2"]
    alpha: float = Field(gt=0, lt=1)
    margin: float = Field(ge=0, le=1)
