"""Backends that run a model's streaming graphs (installed as ``dfnet4_sdk.runtimes``)."""

from dfnet4_sdk.runtimes.base import BACKEND_NAMES, Backend, load_backend

__all__ = ["BACKEND_NAMES", "Backend", "load_backend"]
