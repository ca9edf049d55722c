"""Exceptions the model package raises for bad input."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the model it describes."""


class UnknownAttributeError(ValueError):
    """An attribute name or index that the model does not know."""

    def __init__(self, attribute: object, valid: list[str]):
        self.attribute = attribute
        self.valid = list(valid)
        super().__init__(f"unknown attribute {attribute!r}; valid attributes: {', '.join(valid)}")


class ImageError(ValueError):
    """An image that cannot be used. ``reason`` is a short machine-readable code."""

    REASONS = ("missing", "empty", "not_an_image", "truncated", "too_large", "not_a_file")

    def __init__(self, reason: str, message: str, source: str | None = None):
        assert reason in self.REASONS, reason
        self.reason = reason
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)
