"""Grids of runs: planning and validating a grid (plan.py), the Hydra entry points (app.py), one grid
point's job (job.py), threads per launcher job (launchers.py), progress and the end-of-sweep summary
(progress.py), and the `precisionlab sharpness` job over stored checkpoints (sharpness.py).
"""
