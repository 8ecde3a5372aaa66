"""One training run as the command line launches it: the Hydra task functions (app.py:
`precisionlab train` and a sweep's grid point), one run recorded into the results store and its
run directory, resumed or branched from a stored checkpoint (job.py), and what a sweep's job needs
from its launcher, its torch threads and its exit with the sweep (worker.py); and the library side of a run: the
casts by preset name in any model (convert.py) and a user's own training loop recorded into the store (track.py).
"""
