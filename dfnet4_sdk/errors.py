"""Typed errors: each says what was expected, what was found and how to fix it."""

from __future__ import annotations


class DfSdkError(Exception):
    """Base class of every error the SDK raises on purpose."""


class ConfigError(DfSdkError, ValueError):
    """A parameter set or config file is invalid."""


class AudioInputError(DfSdkError, ValueError):
    """Audio given to the SDK cannot be processed as it is (empty, NaN/Inf, bad shape or rate)."""


class AudioFileError(DfSdkError, OSError):
    """An audio file is missing, unreadable, or would be overwritten."""


class ModelImportError(DfSdkError, ValueError):
    """A model archive or checkpoint is not what the importer expects."""


class ModelNotAvailableError(DfSdkError, LookupError):
    """A model name or path does not resolve to a usable model."""


class BackendNotAvailableError(DfSdkError, ImportError):
    """A backend's package is not installed or cannot run on this platform."""


class BundleError(DfSdkError, ValueError):
    """A bundle is missing, tampered with, or was written for another SDK/schema version."""


class ExportError(DfSdkError, RuntimeError):
    """An export failed or its validation against PyTorch exceeded the declared tolerances."""


class PathError(AudioFileError):
    """A path given by the user cannot be used as asked: a missing input, an existing output
    without overwrite, an unknown output format, a directory that does not exist or is not writable."""


class ClusterError(DfSdkError, RuntimeError):
    """A cluster (Ray) running a batch failed as a whole: a node or actor lost, the job cancelled."""
