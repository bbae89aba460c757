"""One exception hierarchy for everything sepconv raises on purpose.

Every message says what was wrong and what to do about it, so the CLI can print it as one line.
"""


class SepconvError(Exception):
    """Base class: catch this to catch every error sepconv raises on purpose."""


class UnknownModelError(SepconvError):
    """A model name that the registry does not know."""


class ModelLoadError(SepconvError):
    """A weights file that cannot be read or does not fit the model."""


class UnknownTargetError(SepconvError):
    """A target triple we do not support."""


class ModelFileError(SepconvError):
    """A model file (.pt2 / .onnx) that is missing, unreadable, not a model, changed since it was
    compiled, or needs an input shape it does not declare."""


class ImportFailure(SepconvError):
    """torch.export or the Relax importer could not take the model."""


class CompileError(SepconvError):
    """Building the module for the target failed."""


class ArtifactError(SepconvError):
    """An artifact on disk is missing, corrupted, foreign or from another format version."""


class InputError(SepconvError):
    """Inference input of the wrong shape, rank or dtype."""


class DeviceError(SepconvError):
    """A device that is absent or does not answer."""


class TuningError(SepconvError):
    """A tuning run or tuning log that cannot be used."""


class CalibrationError(SepconvError):
    """int8 calibration data that is missing, empty, of the wrong shape or dtype, or not finite."""
