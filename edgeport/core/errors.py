"""Errors a user can act on: each carries a one-line message; the CLI prints it and exits 2."""


class EdgeportError(Exception):
    """Base for every expected failure (bad input, missing tool); never a traceback to the user."""


class SourceError(EdgeportError):
    """The checkpoint is missing, incomplete, truncated or in a format we refuse to read."""


class ArchitectureError(EdgeportError):
    """The checkpoint's architecture has no entry in export.architectures."""


class TargetError(EdgeportError):
    """Unknown target, or a target that cannot take this model."""


class OutputError(EdgeportError):
    """The output location cannot be written."""


class QuantizationError(EdgeportError):
    """A quantizer failed, or produced something other than what was asked for."""


class RuntimeUnavailable(EdgeportError):
    """A runtime's library or hardware is missing (e.g. vLLM needs a CUDA GPU)."""


class ParityFailure(EdgeportError):
    """The artifact does not behave like the reference within the target's thresholds."""


class CalibrationError(EdgeportError):
    """The calibration text for the importance matrix is missing, empty, not text or too short."""


class MissingExtra(EdgeportError):
    """A command needs an optional dependency this install lacks; the message names the extra."""


class TemplateRefused(EdgeportError):
    """A chat template's own `raise_exception` refused the messages; the message is what it said."""
