"""Exceptions and warnings raised by geopsp.

Every error subclasses both :class:`GeopspError` and the builtin that fits, so callers can
catch either::

    GeopspError
    ├── ConfigError(ValueError)          a config file, key or value is wrong
    ├── InputRasterError(OSError)        a scene is missing, unreadable or unsuitable
    ├── InputVectorError(OSError)        a vector file is missing, unreadable or unsuitable
    ├── TilingError(ValueError)          tile size / overlap cannot work
    ├── CRSMismatchError(ValueError)     two inputs disagree on their CRS
    ├── CheckpointError(ValueError)      a model bundle is damaged or incompatible
    ├── ModelError(RuntimeError)         a model cannot be built (e.g. weights unavailable offline)
    ├── TrainingDivergedError(RuntimeError)  the training loss became NaN or infinite
    ├── OutputExistsError(FileExistsError)  an output exists and ``overwrite`` is off
    └── OutputError(OSError)             an output cannot be written

    GeopspWarning(UserWarning)
    ├── NotGeoreferencedWarning          an input has no CRS/transform; outputs will have none
    ├── NodataWarning                    nodata handling fell back to a default
    ├── TrainingDataWarning              training data that trains or validates badly (a class unseen, few labels)
    ├── QuantizationWarning              an int8 model agrees with its fp32 model less than the gate
    ├── RemoteReadWarning                a remote scene is not a cloud-optimized GeoTIFF (reads fetch more)
    ├── ResolutionWarning                a scene's pixel size is far from the model's
    └── TrainingWarning                  a training run stopped early or did something unexpected

Messages are one line: what went wrong, with which file or value, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "CRSMismatchError",
    "CheckpointError",
    "ConfigError",
    "GeopspError",
    "GeopspWarning",
    "InputRasterError",
    "InputVectorError",
    "ModelError",
    "NodataWarning",
    "NotGeoreferencedWarning",
    "OutputError",
    "OutputExistsError",
    "QuantizationWarning",
    "RemoteReadWarning",
    "ResolutionWarning",
    "TilingError",
    "TrainingDataWarning",
    "TrainingDivergedError",
    "TrainingWarning",
]


class GeopspError(Exception):
    """Root of every error geopsp raises on purpose."""


class ConfigError(GeopspError, ValueError):
    """A configuration file, key or value is invalid.

    Parameters
    ----------
    message : str
        What is wrong and how to fix it.
    path : str, optional
        The config file involved, if any.
    key : str, optional
        The dotted key involved, if any (``predict.tile_size``).
    """

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None) -> None:
        self.path = path
        self.key = key
        prefix = ""
        if path:
            prefix += f"{path}: "
        if key:
            prefix += f"{key}: "
        super().__init__(prefix + message)


class InputRasterError(GeopspError, OSError):
    """A raster input is missing, unreadable, or does not fit what is asked of it."""


class InputVectorError(GeopspError, OSError):
    """A vector input is missing, unreadable, or does not fit what is asked of it."""


class TilingError(GeopspError, ValueError):
    """A tile size or overlap cannot work for this model or scene."""


class CRSMismatchError(GeopspError, ValueError):
    """Two inputs are in different coordinate reference systems and cannot be reconciled."""


class CheckpointError(GeopspError, ValueError):
    """A model bundle is truncated, tampered with, or incompatible."""


class ModelError(GeopspError, RuntimeError):
    """A model cannot be built or run (for example, pretrained weights are unavailable offline)."""


class TrainingDivergedError(GeopspError, RuntimeError):
    """The training loss became NaN or infinite (the config may be valid; the optimization failed)."""


class OutputExistsError(GeopspError, FileExistsError):
    """An output already exists and ``overwrite`` was not requested."""


class OutputError(GeopspError, OSError):
    """An output cannot be written (permissions, disk full, output equals input)."""


class GeopspWarning(UserWarning):
    """Root of geopsp's warnings."""


class NotGeoreferencedWarning(GeopspWarning):
    """An input has no CRS or geotransform; outputs are written in pixel coordinates."""


class NodataWarning(GeopspWarning):
    """Nodata handling fell back to a default."""


class TrainingWarning(GeopspWarning):
    """A training run did something the user should know about (stopped by its time cap, ...)."""


class TrainingDataWarning(GeopspWarning):
    """Training data will train or validate badly.

    A class has no training or no validation pixels, the validation set is tiny, or a scene is
    almost without labels.

    .. versionadded:: 0.2
    """


class QuantizationWarning(GeopspWarning):
    """An int8 model gives its fp32 model's class on fewer valid pixels than the gate (99 %).

    .. versionadded:: 0.2
    """


class RemoteReadWarning(GeopspWarning):
    """A remote scene is not a cloud-optimized GeoTIFF: it works, but reads fetch more than they need."""


class ResolutionWarning(GeopspWarning):
    """A scene's pixel size differs from the model's training pixel size by more than 2x."""
