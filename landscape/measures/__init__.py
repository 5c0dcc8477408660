"""Measures: one module per flatness measure, the plug-in layer ``landscape analyze`` loops over.

See :mod:`landscape.measures.base` for the contract and :mod:`landscape.measures.registry` for
registration (built-in, or through the ``landscape.measures`` entry-point group).
"""

from landscape.measures.base import (
    Field,
    Measure,
    MeasureContext,
    PieceKey,
    Scope,
    Section,
    Target,
)
from landscape.measures.registry import default_analyses, get, measures, register

__all__ = [
    "Field",
    "Measure",
    "MeasureContext",
    "PieceKey",
    "Scope",
    "Section",
    "Target",
    "default_analyses",
    "get",
    "measures",
    "register",
]
