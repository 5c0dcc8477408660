"""Loss-landscape geometry of trained networks: curvature, 1D curves, 2D surfaces and sharpness.

Every analysis takes a model, a loss function and ``data`` (any iterable of ``(inputs, targets)``
batches) and returns a frozen dataclass with ``to_dict()``; losses are the sample-weighted mean over
all batches. ``analyze_run`` runs the whole suite on a training run directory.
"""

from landscape.core.device import resolve_device
from landscape.core.errors import LandscapeError
from landscape.core.selection import select_parameters
from landscape.curvature.density import Density, spectral_density
from landscape.curvature.eigenvalues import Spectrum, top_eigenvalues
from landscape.curvature.layers import LayerCurvature, layer_curvature, parameter_groups
from landscape.curvature.products import HessianOperator
from landscape.curvature.trace import Trace, hessian_trace
from landscape.geometry.ascent import auto_pgd
from landscape.geometry.batchnorm import BN_POLICIES, recalibrate
from landscape.geometry.chunks import ChunkStore
from landscape.geometry.directions import (
    direction_between,
    filter_norms,
    normalize_direction,
    random_direction,
)
from landscape.geometry.evaluate import EngineSettings, Evaluation, Evaluator, evaluate
from landscape.geometry.interpolate import Curve, barrier_height, interpolate
from landscape.geometry.sharpness import Sharpness, sharpness
from landscape.geometry.subspace import Plane, TrajectoryPCA, pca_trajectory, plane_through
from landscape.geometry.surface import (
    Surface,
    grid_coordinates,
    plane_grid,
    span_coordinates,
    surface,
)
from landscape.geometry.weights import as_state, combine, lerp, parameter_names
from landscape.pipeline.analyze import AnalyzeSettings, analyze_run
from landscape.pipeline.runs import Run, open_run

__all__ = [
    # curvature
    "top_eigenvalues",
    "hessian_trace",
    "spectral_density",
    "Spectrum",
    "Trace",
    "Density",
    "HessianOperator",
    "layer_curvature",
    "LayerCurvature",
    "parameter_groups",
    # geometry
    "interpolate",
    "Curve",
    "barrier_height",
    "surface",
    "Surface",
    "grid_coordinates",
    "span_coordinates",
    "plane_grid",
    "sharpness",
    "Sharpness",
    "auto_pgd",
    # weights, directions, subspaces, BatchNorm
    "as_state",
    "combine",
    "lerp",
    "parameter_names",
    "random_direction",
    "normalize_direction",
    "direction_between",
    "filter_norms",
    "plane_through",
    "Plane",
    "pca_trajectory",
    "TrajectoryPCA",
    "BN_POLICIES",
    "recalibrate",
    # evaluation engine and stores
    "evaluate",
    "Evaluator",
    "Evaluation",
    "EngineSettings",
    "ChunkStore",
    # runs and the suite
    "open_run",
    "Run",
    "analyze_run",
    "AnalyzeSettings",
    # helpers
    "LandscapeError",
    "resolve_device",
    "select_parameters",
]
