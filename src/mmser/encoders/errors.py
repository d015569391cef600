"""Errors shared by the pretrained encoders (text and audio)."""

from mmser.errors import UserError


class MissingWeightsError(UserError, RuntimeError):
    """Pretrained weights are not on disk; the message says which file, where to put it, and the offline alternative."""


class InvalidWeightsError(UserError, RuntimeError):
    """A weights file exists but cannot be used (corrupt, truncated, or not the expected state dict)."""
