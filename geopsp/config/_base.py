"""The base of every configuration section, and the device-name type they share."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from geopsp.device import check_device_name

__all__ = ["DeviceName", "Section"]

DeviceName = Annotated[str, AfterValidator(check_device_name)]
"""``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (:mod:`geopsp.device`)."""


class Section(BaseModel):
    """A configuration section: unknown keys are refused, values frozen and validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
