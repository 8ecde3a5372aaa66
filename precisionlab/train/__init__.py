"""One training run: the model (model.py), data (data.py), the loop (loop.py: `run`), checkpoints and
model building (checkpoint.py), outcomes and spikes (outcomes.py), the `Recorder` protocol (recorder.py),
the run-folder writer (rundir.py), sharpness: its metrics and their measurement on a model (sharpness.py),
and the errors it raises for a config (errors.py).
"""
