"""Conventions every engine shares: errors, device, data batches, parameter selection, results.

Nothing here computes geometry. ``core`` imports nothing else from ``landscape``.
"""
