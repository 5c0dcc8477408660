"""Conventions every layer shares: errors, devices, batches, parameter selection, progress, result records."""
