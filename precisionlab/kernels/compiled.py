"""The torch twins compiled for the CPU: one inductor graph per cast spec, built on first use.

`compiled_graph(key, make_fn, make_probe, dynamic)` compiles `make_fn()` (a function of tensors
and Philox keys that closes over one spec) once per `key` and returns a callable with its
signature, or None where the toolchain fails (the caller runs the eager twin, same bits).

Why one graph per spec: the spec's integers are then constants of the graph, which inductor
folds into the loop; as symbolic integers (one graph for every spec) the casts ran at half the
speed. Why the probe: inductor decides from the first call's sizes whether a loop runs on all
threads (and its FX cache keeps that decision), so the probe call must be as large as the
smallest tensor that is ever compiled; a probe of 8 elements had left every compiled cast on
one thread. Every call runs without autograd (casts are not differentiable), so no call in
another grad mode compiles a second graph whose first call decides anew. `dynamic` names the
dimensions marked dynamic on every call, so one graph serves every size.
"""

from __future__ import annotations

import os
import warnings

import torch

from .cast_torch import allow_graph_variants

__all__ = ["compiled_graph", "COMPILE_MIN_NUMEL"]

# CPU casts of at least this many elements run compiled (PRECISIONLAB_COMPILE_MIN_NUMEL sets it):
# below it, the graph's dispatch (~15-40 us) outweighs what fusing saves.
COMPILE_MIN_NUMEL = int(os.environ.get("PRECISIONLAB_COMPILE_MIN_NUMEL", 1 << 14))

# Inductor stores an intermediate that takes more than 30 ops (its default) in a buffer; in the
# block casts, whose per-element work follows a per-block reduction in one loop nest, it stored
# boolean masks in per-block buffers that the generated C++ copies byte by byte: the MXFP8 rceil
# cast ran 8x slower than the floor one (1024 x 128: 15 vs 1.2 ns per element). Recomputing is
# cheaper than storing for every cast here.
_INDUCTOR_OPTIONS = {"realize_opcount_threshold": 1000}

_graphs: dict = {}  # key -> compiled callable, or None where compiling failed


def compiled_graph(key: tuple, make_fn, make_probe, dynamic: dict[int, tuple[int, ...]]):
    """`make_fn()` compiled for `key` (a hashable spec description), proven by one call on
    `make_probe()` (its arguments); `dynamic` maps a tensor argument's position to its dimensions
    of varying size. Both makers run once per key."""
    if key in _graphs:
        return _graphs[key]
    allow_graph_variants(64)
    fn = make_fn()
    # A code object of its own per key: dynamo keys its caches, and its automatic-dynamic
    # bookkeeping, on code objects; sharing one, a second spec's integers would turn symbolic.
    fn.__code__ = fn.__code__.replace(co_name=f"{fn.__name__}_{len(_graphs)}")
    graph = torch.compile(fn, dynamic=None, options=_INDUCTOR_OPTIONS)

    def compiled(*args):
        for position, dims in dynamic.items():
            for dim in dims:
                torch._dynamo.maybe_mark_dynamic(args[position], dim)
        with torch.no_grad():  # one graph: dynamo guards on grad mode and would compile another
            return graph(*args)

    try:
        compiled(*make_probe())
    except Exception as err:  # no C++ compiler, unsupported platform, ...
        warnings.warn(f"precisionlab: torch.compile unavailable ({type(err).__name__}: {err}); using the eager cast",
                      stacklevel=3)
        compiled = None
    _graphs[key] = compiled
    return compiled
