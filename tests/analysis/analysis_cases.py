"""Settings small enough for every analysis to run on the tiny run in seconds."""

from landscape.pipeline.analyze import AnalyzeSettings

FAST = dict(
    samples=64,
    test_samples=64,
    batch_size=32,
    grid=3,
    alphas=5,
    k=2,
    tol=1e-2,
    trace_rtol=0.3,
    density_runs=2,
    density_steps=8,
    max_trajectory=3,
    rho_worst=(0.05, 0.2),
    rho_average=(0.02,),
)


def fast_settings(**kwargs) -> AnalyzeSettings:
    """``FAST`` with ``kwargs`` on top."""
    return AnalyzeSettings(**{**FAST, **kwargs})
