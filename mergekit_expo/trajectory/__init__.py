"""Trajectory ExPO: a least-squares line through a run's checkpoints, extrapolated past the last.

Host-free and torch-free at import. ``fit_coefficients(steps, window=...)`` gives the
coefficients of the fitted point, θ(α) = Σ (p_i + α·q_i)·θ_i, for any caller that sets
weights itself (see :mod:`.fit`); :mod:`.numerics` computes tensors, :mod:`.method`
declares ``merge_method: expo_trajectory`` for mergekit 0.1.5.
"""

from mergekit_expo.trajectory.fit import TrajectoryFit, fit_coefficients

__all__ = ["TrajectoryFit", "fit_coefficients"]
