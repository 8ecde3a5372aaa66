"""One training run: the model (model.py), data (data.py), the loop (loop.py: `run`), checkpoints and
model building (checkpoint.py), outcomes and spikes (outcomes.py), the `Recorder` protocol (recorder.py),
the run-folder writer (rundir.py) and sharpness measured on a model (measure.py).
"""
