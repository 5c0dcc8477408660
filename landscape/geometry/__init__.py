"""The geometry engine: weights and directions, BatchNorm policies, evaluation, subspaces, curves, surfaces, sharpness."""
