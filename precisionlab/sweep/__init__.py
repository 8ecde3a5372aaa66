"""Grids of runs: planning and validating a grid (plan.py), which launcher plugin a sweep needs
(launchers.py), progress and the end-of-sweep summary (progress.py), the run list of --dry-run
(preview.py), the frontier search (frontier.py, frontier_runs.py), and the `precisionlab sharpness`
job over stored checkpoints (sharpness.py). One run of a grid is precisionlab.run.
"""
