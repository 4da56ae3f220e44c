"""The engine's exceptions. Every failure a user can cause is a PypodError with a one-line message."""


class PypodError(Exception):
    """Base of every error the engine reports to its callers."""

    exit_code = 1


class UsageError(PypodError):
    """Wrong flags or arguments."""

    exit_code = 2


class NotFound(PypodError):
    """A named image, pod, app or blob does not exist."""


class Conflict(PypodError):
    """The operation conflicts with current state (an image in use, a pod running...)."""


class PermissionDenied(PypodError):
    """The operation needs privileges the caller lacks."""


class ImageError(PypodError):
    """A malformed, corrupted, hostile or unsupported image."""


class DigestMismatch(ImageError):
    """Content does not match the digest it was named by."""


class LimitExceeded(ImageError):
    """Content exceeds a configured size limit (decompression bomb, absurd manifest...)."""


class RegistryError(PypodError):
    """A registry refused or failed a request."""


class TransientRegistryError(RegistryError):
    """A failure worth retrying: connection reset, 5xx, 429."""
