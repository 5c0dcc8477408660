"""The curvature engine: Hessian-vector products, Lanczos, extreme eigenvalues, trace and spectral density."""
