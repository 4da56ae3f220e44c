"""Images: a layer-native OCI content store with registry pulls, local imports and exports.

The public surface is :class:`ImageStore` and the records it returns; the submodules are private.
"""

from .metadata import Image, Layer
from .store import GcReport, ImageStore

__all__ = ["GcReport", "Image", "ImageStore", "Layer"]
