"""Loss-landscape geometry of trained networks: curvature, 1D curves, 2D surfaces and sharpness.

Every analysis takes a model, a loss function and ``data`` (any iterable of ``(inputs, targets)``
batches) and returns a frozen dataclass with ``to_dict()``; losses are the sample-weighted mean over
all batches.
"""

from landscape._common import LandscapeError, resolve_device, select_parameters

__all__ = ["LandscapeError", "resolve_device", "select_parameters"]
