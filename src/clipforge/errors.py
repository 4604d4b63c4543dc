"""The exceptions clipforge raises for a user's mistake.

Every one of them carries a complete one-line message; the command line prints it without a
traceback. Anything else that escapes is a bug in clipforge.
"""


class ClipforgeError(Exception):
    """Base class: a problem with the user's input, files or options."""


class ConfigError(ClipforgeError, ValueError):
    """A model, tokenizer or training configuration is invalid."""


class CheckpointError(ClipforgeError):
    """A checkpoint cannot be read or does not fit the model it is loaded into."""


class ActivationMismatchError(CheckpointError):
    """The activation requested differs from the one the checkpoint was trained with."""


class ImageReadError(ClipforgeError):
    """An image file is missing, empty, truncated, not an image, or too large to decode safely."""


class DataError(ClipforgeError):
    """A dataset source cannot be read at all (missing file, missing column, no usable rows)."""


class TrainingDiverged(ClipforgeError):
    """Too many consecutive non-finite losses."""
