"""dfnet4-sdk: streaming DeepFilterNet speech enhancement on every edge backend."""

from dfnet4_sdk._version import __version__
from dfnet4_sdk.runtime import Runtime
from dfnet4_sdk.stream_pool import StreamPool

__all__ = ["Runtime", "StreamPool", "__version__"]
