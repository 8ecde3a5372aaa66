# Hydra imports this package to read the presets: register the schema they build on first.
from precisionlab.config import register

register()
