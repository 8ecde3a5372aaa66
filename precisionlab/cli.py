"""The `precisionlab` command line (Typer): one app, one module.

Commands that launch runs hand their Hydra overrides to the module-level
`@hydra.main` functions in `precisionlab.run.app`; commands that launch nothing
use the Compose API or no Hydra at all.
"""

from __future__ import annotations

import math
import os
import sys
from contextlib import contextmanager
from typing import Optional

import typer

from precisionlab.numerics.blocks import NAMED_BLOCK_FORMATS, BlockFormat, parse_format
from precisionlab.numerics.formats import NAMED_FORMATS, FloatFormat
from precisionlab.store.url import DEFAULT_STORE_PATH

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Precision-stability sweeps: train small LMs across seeds, learning rates and simulated number formats.",
)


def _show_version(show: bool) -> None:
    if show:
        from precisionlab import __version__

        typer.echo(f"precisionlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Precision-stability sweeps: train small LMs across seeds, learning rates and simulated number formats."""


def fail(message: str) -> None:
    """Report a user error as one line on stderr and exit with code 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _fmt_value(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.6g}"


@app.command()
def formats(
    format: Optional[list[str]] = typer.Option(None, "--format", "-f", help="Describe this format name (repeatable)."),
) -> None:
    """Table of number formats: bits, bias, range, Inf/NaN conventions ('-': the format has no such value);
    block formats (mxfp8, nvfp4, ELEMENT/bB[xC]/SCALE...) in a second table."""
    names = format or [*NAMED_FORMATS, *NAMED_BLOCK_FORMATS]
    try:
        parsed = [parse_format(n) for n in names]
    except ValueError as err:
        fail(str(err))
    elements = [f for f in parsed if isinstance(f, FloatFormat)]
    blocks = [f for f in parsed if isinstance(f, BlockFormat)]
    if elements:
        header = f"{'name':<10} {'bits':>4} {'E':>2} {'M':>2} {'bias':>5} {'max_finite':>12} {'min_normal':>12} {'min_subnormal':>13}  {'inf':<3} {'nan':<8} {'-0':<3}"
        typer.echo(header)
    for f in elements:
        typer.echo(
            f"{f.name:<10} {f.bits:>4} {f.exp_bits:>2} {f.man_bits:>2} {f.bias:>5} {_fmt_value(f.max_finite):>12} "
            f"{_fmt_value(f.min_normal) if f.emax >= f.emin else '-':>12} "
            f"{_fmt_value(f.min_subnormal) if f.has_subnormals and f.man_bits else '-':>13}  {'yes' if f.has_inf else 'no':<3} "
            f"{f.nan if f.has_nan else 'none':<8} {'yes' if f.has_negative_zero else 'no':<3}"
        )
    if blocks:
        rows = [f.describe() for f in blocks]
        widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in rows[0]}
        if elements:
            typer.echo("")
        typer.echo("  ".join(f"{k:<{w}}" for k, w in widths.items()).rstrip())
        for r in rows:
            typer.echo("  ".join(f"{r[k]:<{w}}" for k, w in widths.items()).rstrip())


_STORE_HELP = ("The results store: an SQLite file path, sqlite:///PATH or "
               "postgresql://USER:PASSWORD@HOST:PORT/DB.")


# Hydra's flags that only show something (the config, help, info): they run no task, so need no validation.
_SHOW_FLAGS = {"--cfg", "-c", "--resolve", "--package", "-p", "--info", "-i", "--help", "-h", "--hydra-help",
               "--version", "--shell-completion", "-sc"}


def _check_train_overrides(overrides: list[str]):
    """Compose and validate the config first, so bad input fails before Hydra creates a run
    directory; returns the validated config."""
    from hydra import compose, initialize_config_module

    from precisionlab.config import ConfigError, make_paths_absolute, one_line, validate
    from precisionlab.train.data import DataError, check_data_size

    try:
        with initialize_config_module(config_module="precisionlab.configs", version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides)
    except Exception as err:  # Hydra's override and composition errors, OmegaConf's type errors
        fail(one_line(err))
    make_paths_absolute(cfg, os.getcwd())  # as train_main does: the config it trains is this one
    try:
        cfg = validate(cfg)
        check_data_size(cfg.data, cfg.train.seq_len)  # no window of seq_len + 1 tokens: no run at all
    except (ConfigError, DataError) as err:
        fail(str(err))
    from precisionlab.store import run_id
    from precisionlab.run.job import busy_error, check_parents, open_store

    store = None
    try:  # creates it if absent (a branch's must hold its parent); an unusable store.path fails here, before any run directory
        store = open_store(cfg, create=cfg.init.parent is None)
        if store is not None:  # reads the pages the run's claim will write: a damaged file fails here too
            store.status(run_id(cfg))
            if run_id(cfg) in store.running([run_id(cfg)])[0]:  # another `train` of this run, alive
                raise busy_error(store, run_id(cfg))
        check_parents(store, [cfg])  # a branch's parent checkpoint (init.parent) is in the store and fits
    except ValueError as err:  # StoreError, ConfigError
        fail(str(err))
    finally:
        if store is not None:
            store.close()
    return cfg


def _presets(group: str) -> str:
    """A config group's presets, read from the installed configs folder, so help texts list them all."""
    from precisionlab.analysis.presets import preset_names

    return ", ".join(preset_names(group))


_TRAIN_HELP = f"""Train one model. Arguments are Hydra overrides, e.g.:

    precisionlab train model=tiny precision=mask precision.format=e8m3 optim.lr=3e-3 seed=1 train.steps=300

    Config groups: model ({_presets("model")}); precision ({_presets("precision")}); data ({_presets("data")}); optim ({_presets("optim")}).

    Writes metrics.csv, run.json and checkpoints/ into the Hydra run directory (outputs/DATE/TIME) and the run into the results store.
    """


@app.command(help=_TRAIN_HELP, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(ctx: typer.Context) -> None:
    from precisionlab.store.url import hide_passwords
    from precisionlab.run.app import train_main, validated_by_cli

    overrides = hide_passwords(list(ctx.args))  # a store.url's password: to PGPASSWORD, never into run files
    flags = [arg for arg in overrides if arg.startswith("-")]
    if _SHOW_FLAGS & set(flags):  # Hydra's --cfg job, --info, ...: shown as they are, nothing runs
        _run_hydra(train_main, overrides)
        return
    if flags:
        fail(f"precisionlab train takes Hydra overrides and only these Hydra flags: {', '.join(sorted(_SHOW_FLAGS))}; "
             f"got {' '.join(flags)} (a grid of runs: precisionlab sweep)")
    with validated_by_cli(_check_train_overrides(overrides)):
        _run_hydra(train_main, overrides)


_SWEEP_HELP = f"""Train a grid of runs (Hydra multirun) into the results store; rerun to resume. Arguments are Hydra overrides, e.g.:

    precisionlab sweep                      (sweep=default, the built-in study; --dry-run lists its runs)

    precisionlab sweep sweep=paper --jobs 2 (the paper's formats and the widths where training breaks)

    precisionlab sweep precision.format=e8m7,e8m5,e8m3 optim.lr=1e-3,3e-3,1e-2 seed=0,1

    The grid is what was typed: axes on the command line (key=a,b) are the whole grid; with sweep=NAME they replace NAME's axes of the same keys. Completed and diverged runs are skipped, failed and interrupted ones rerun (from their last checkpoint). Launchers: hydra/launcher=joblib (= --jobs N), slurm, ray (see the docs).

    Grids (sweep=NAME): {_presets("sweep")}.
    """


@app.command(help=_SWEEP_HELP, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sweep(
    ctx: typer.Context,
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="Run N runs at once on this machine (joblib launcher), each with cores/N torch threads."),
    force: bool = typer.Option(False, "--force", help="Rerun completed and diverged runs too."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the grid and every run (id, status in the store, formats, label) and exit; writes nothing."),
) -> None:
    from precisionlab.run.app import sweep_main
    from precisionlab.sweep.plan import SweepError, plan
    from precisionlab.store.url import hide_passwords
    from precisionlab.sweep.preview import header, run_list, statuses
    from precisionlab.sweep.progress import Progress, complete, summary

    overrides = hide_passwords(list(ctx.args))  # a store.url's password: to PGPASSWORD, never into run files
    if jobs is not None:
        if jobs < 1:
            fail(f"--jobs must be a positive number of runs at once; got {jobs}")
        overrides += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
    if force:
        overrides.append("sweep.force=true")
    flags = [arg for arg in overrides if arg.startswith("-")]
    if _SHOW_FLAGS & set(flags):  # Hydra's --cfg job, --info, ...: shown as they are, nothing runs
        _run_hydra(sweep_main, overrides)
        return
    if flags:  # the runs trust plan() below, which composes with the Compose API: no Hydra flags
        fail(f"precisionlab sweep takes Hydra overrides and only these Hydra flags: {', '.join(sorted(_SHOW_FLAGS))}; "
             f"got {' '.join(flags)}")
    from precisionlab.config import ConfigError, one_line
    from precisionlab.store import ResultsStore, StoreError
    from precisionlab.store.corpus import check_sweep_data
    from precisionlab.run.job import check_parents
    from precisionlab.sweep.launchers import missing_plugin

    if missing := missing_plugin(overrides):
        fail(missing)
    from precisionlab.train.data import DataError

    try:
        grid = plan(overrides)
        branches = any(cfg.init.parent is not None for cfg in grid.configs)  # their parents' store must exist
        if dry_run:  # read the store if it exists, never create it
            store = _store_if_present(grid.store)
        else:
            store = ResultsStore(grid.store, journal_mode=grid.journal_mode, create=not branches)
    except (SweepError, ConfigError, DataError, StoreError) as err:
        fail(str(err))
    except Exception as err:  # Hydra's override and composition errors, OmegaConf's type errors
        fail(one_line(err))
    try:
        check_parents(store, grid.configs)  # branches (init.parent): their parents' checkpoints, before any row
        if store is not None:  # None: a dry run without a store yet, so no recorded run to disagree with
            check_sweep_data(store, grid.name, grid.configs, grid.run_ids)  # one corpus per run id, before any row
        status = statuses(store, grid)
    except (ConfigError, DataError, StoreError) as err:
        if store is not None:
            store.close()
        fail(str(err))
    for line in grid.notes:
        typer.echo(f"note: {line}", err=True)
    for line in grid.warnings:
        typer.echo(f"warning: {line}", err=True)
    typer.echo(header(grid, status))
    if dry_run:
        if store is not None:
            store.close()
        typer.echo(run_list(grid, status))
        return
    command = " ".join(["precisionlab sweep", *hide_passwords(list(ctx.args)), *(["--jobs", str(jobs)] if jobs else []), *(["--force"] if force else [])])
    try:  # a store damaged or made unusable before or during the sweep: one line, not a traceback
        grid.register(store, command=command)
        with Progress(store, grid):
            complete(store, grid, lambda: _run_hydra(sweep_main, ["-m", *grid.launch_overrides, *(
                [f"sweep.name={grid.name}"] if grid.name_derived else [])]))
        text, counts = summary(store, grid)
    except StoreError as err:
        fail(str(err))
    typer.echo(text)
    if counts["unfinished"]:  # runs of this sweep still pending or running: it did not do its job
        typer.echo(f"error: {counts['unfinished_reason']}", err=True)
    if counts["failed"] or counts["unfinished"]:
        raise typer.Exit(code=1)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def frontier(
    ctx: typer.Context,
    axis: str = typer.Option(..., "--axis", help="mantissa (E fixed, M from the reference's down to 0) or exponent (M fixed, E from the reference's down to 4)."),
    reference: str = typer.Option("e8m7", "--reference", help="The reference format, eXmY (default e8m7)."),
    widths: Optional[str] = typer.Option(None, "--widths", help="Comma-separated widths on the axis to search instead, e.g. 7,5,3,2,1,0."),
    lr: str = typer.Option("3e-3", "--lr", help="The learning rate of every run (one)."),
    margin: float = typer.Option(0.02, "--margin", help="δ in nats/byte: a width is within when its loss is shown below the reference's + δ."),
    budget: int = typer.Option(..., "--budget", help="At most this many runs used, trained now or reused from the store."),
    seeds: int = typer.Option(3, "--seeds", help="Seeds a width starts with (>= 3)."),
    max_seeds: int = typer.Option(8, "--max-seeds", help="Seeds an undecided width may get (doubling from --seeds)."),
    name: Optional[str] = typer.Option(None, "--name", help="The sweep's name in the store (default frontier-AXIS)."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="Run N runs at once on this machine (joblib launcher)."),
) -> None:
    """Find the fewest bits that train as well as a reference format, by bisection on one axis.

    precisionlab frontier --axis mantissa --budget 40 --jobs 2

    precisionlab frontier --axis exponent --lr 3e-3 --budget 24 train.steps=300

    Other arguments are Hydra overrides for every run, as for sweep. Each round trains a width and the reference over paired seeds (more seeds where the decision is undecided) into the results store as the sweep frontier-AXIS; runs the store already finished (by any sweep with the same settings) are reused, not trained again. Assumes fewer bits never train better, and says so where its runs show otherwise.
    """
    from precisionlab.config import ConfigError, one_line
    from precisionlab.store import StoreError
    from precisionlab.store.url import hide_passwords
    from precisionlab.run.app import sweep_main
    from precisionlab.sweep.frontier import FrontierError, make_axis, search
    from precisionlab.sweep.frontier_runs import FrontierRuns, check_overrides
    from precisionlab.sweep.launchers import missing_plugin
    from precisionlab.sweep.plan import SweepError
    from precisionlab.train.data import DataError

    overrides = hide_passwords(list(ctx.args))
    flags = [arg for arg in overrides if arg.startswith("-")]
    if flags:
        fail(f"precisionlab frontier takes its options and Hydra overrides; got {' '.join(flags)}")
    try:
        width_list = None if widths is None else [int(w) for w in widths.split(",")]
    except ValueError:
        fail(f"--widths must be comma-separated integers (bits on the axis), e.g. 7,5,3,2; got {widths}")
    lr_value = _number(lr)
    for option, value, ok, accepted in (
        ("--lr", lr, lr_value is not None and math.isfinite(lr_value) and lr_value > 0, "a number > 0, e.g. 3e-3"),
        ("--margin", margin, math.isfinite(margin) and margin > 0, "a number of nats/byte > 0, e.g. 0.02"),
        ("--budget", budget, budget >= 1, "a positive number of runs"),
        ("--seeds", seeds, seeds >= 3, "an integer >= 3 (fewer seeds give no confidence interval)"),
        ("--max-seeds", max_seeds, max_seeds >= seeds, f"an integer >= --seeds ({seeds})"),
        ("--jobs", jobs, jobs is None or jobs >= 1, "a positive number of runs at once"),
    ):
        if not ok:
            fail(f"{option} must be {accepted}; got {value}")
    name = name or f"frontier-{axis}"
    try:
        line = make_axis(reference, axis, width_list)
        check_overrides(overrides)
    except FrontierError as err:
        fail(str(err))
    if jobs is not None:
        overrides += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
    if missing := missing_plugin(overrides):
        fail(missing)
    try:
        runs = FrontierRuns(line, lr, overrides, name, max_seeds)
    except (SweepError, ConfigError, DataError, StoreError) as err:
        fail(str(err))
    except Exception as err:  # Hydra's override and composition errors, OmegaConf's type errors
        fail(one_line(err))
    command = " ".join(["precisionlab frontier", *hide_passwords(sys.argv[2:])])
    span = f"{line.letter} {line.widths[0]}..{line.widths[-1]}" if widths is None else f"{line.letter} {widths}"
    try:
        runs.open(command, {"frontier": {"axis": axis, "reference": reference, "widths": list(line.widths), "lr": lr,
                                         "margin": margin, "budget": budget, "seeds": seeds, "max_seeds": max_seeds},
                            "overrides": overrides})
        known = runs.known()
        have = sum(len(v) for v in known.values())
        typer.echo(f"frontier search on the {axis} axis of {reference} ({span}) at LR {lr}, δ = {margin:g} nats/byte, "
                   f"budget {budget} runs, {seeds} to {max_seeds} seeds; sweep {name} in {runs.store.location}, "
                   f"which already has {have} of its runs")
        typer.echo("assumes a monotone response (fewer bits never train better): bisection on the bit count")
        result = search(line, lambda request: runs(request, lambda grid: _run_hydra(sweep_main, ["-m", *grid.launch_overrides])),
                        margin, budget, seeds, max_seeds, known=known, say=typer.echo)
    except StoreError as err:
        fail(str(err))
    finally:
        runs.close()
    typer.echo(result.sentence(f"at LR {lr}"))
    typer.echo(result.runs_line())
    if result.status != "decided":
        typer.echo(f"known: {result.known()}")
    if result.reference_diverged:
        typer.echo(f"note: the reference diverged on {result.reference_diverged} seeds; those seeds are left out of every pair")
    for wider, narrower in result.violations:
        typer.echo(f"warning: not monotone: {line.format(wider)} fails but the narrower {line.format(narrower)} is "
                   f"within; the bisection's frontier assumes fewer bits never train better", err=True)
    from precisionlab.store import parse_store_url

    store_arg = "" if runs.store_url == parse_store_url(DEFAULT_STORE_PATH).url else f" --store {runs.store.location}"
    typer.echo(f"see the report: precisionlab report --sweep {name}{store_arg}")
    if result.status in ("failed", "reference"):
        raise typer.Exit(code=1)


@app.command()
def sharpness(
    sweep_name: Optional[str] = typer.Option(None, "--sweep", help="Sweep whose checkpoints to measure (default: the latest in the store)."),
    metric: Optional[list[str]] = typer.Option(None, "--metric", "-m", help="logit (default), hessian, trace, keskar; repeatable or comma-separated."),
    eps: Optional[list[str]] = typer.Option(None, "--eps", help="epsilon of logit and keskar (default 1e-3); repeatable or comma-separated."),
    store_path: str = typer.Option(DEFAULT_STORE_PATH, "--store", help=_STORE_HELP),
    fp32: bool = typer.Option(False, "--fp32", help="Measure logit and keskar without the run's casts (hessian and trace always are)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Sequences in the evaluation batch (default: the run's train.batch_size)."),
    iters: int = typer.Option(100, "--iters", help="hessian: power-iteration cap (one Hessian-vector product each)."),
    tol: float = typer.Option(1e-4, "--tol", help="hessian: relative residual that counts as converged."),
    samples: int = typer.Option(100, "--samples", help="trace: Hutchinson samples (one Hessian-vector product each)."),
    ascent_steps: int = typer.Option(10, "--ascent-steps", help="keskar: projected gradient-ascent steps."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if present), cpu, cuda or cuda:N."),
) -> None:
    """Sharpness of every stored checkpoint of a sweep that lacks it; rerun to resume.

    precisionlab sharpness                                   (logit sharpness, latest sweep)

    precisionlab sharpness --sweep paper --metric logit,keskar --eps 1e-3 --eps 1e-2

    Values go to the store's sharpness table, keyed by run, step, metric and parameters.
    """
    from precisionlab.runtime import DeviceError, resolve_device
    from precisionlab.store import StoreError
    from precisionlab.sweep.sharpness import check_batch_size, measure_checkpoints
    from precisionlab.train.sharpness import Settings, check_metrics

    metrics = [m.strip() for item in (metric or ["logit"]) for m in item.split(",")]
    try:
        check_metrics(metrics)
    except ValueError as err:
        fail(str(err))
    eps_given = [e.strip() for item in eps or [] for e in item.split(",")]
    eps = [_number(e) for e in eps_given]
    for name, value, ok, accepted in (
        ("--eps", ",".join(eps_given), all(e is not None and math.isfinite(e) and e >= 0 for e in eps), "finite numbers >= 0"),
        ("--batch-size", batch_size, batch_size is None or batch_size >= 1, "a positive integer"),
        ("--iters", iters, iters >= 1, "a positive integer"),
        ("--tol", tol, math.isfinite(tol) and tol > 0, "a number > 0"),
        ("--samples", samples, samples >= 2, "an integer >= 2"),
        ("--ascent-steps", ascent_steps, ascent_steps >= 1, "a positive integer"),
    ):
        if not ok:
            fail(f"{name} must be {accepted}; got {value}")
    try:
        device = str(resolve_device(device))
    except DeviceError as err:
        fail(f"--{err}")
    settings = Settings(eps=tuple(eps or (1e-3,)), iters=iters, tol=tol, samples=samples,
                        ascent_steps=ascent_steps, fp32=fp32)
    with _existing_store(store_path) as store:
        try:
            name = store.sweep_name(sweep_name)
        except Exception as err:  # StoreError, or SQLite/pandas failing on a damaged file
            fail(_first_line(err))
        try:
            check_batch_size(store, name, batch_size, device)
        except ValueError as err:
            fail(str(err))
        try:
            outcome = measure_checkpoints(store, name, metrics, settings, batch_size=batch_size, device=device)
        except StoreError as err:  # damaged, or made unwritable, while measuring
            fail(str(err))
    for problem in outcome.unreadable:
        typer.echo(f"warning: checkpoint not measured: {problem}", err=True)
    line = f"sharpness of sweep {name}: computed {outcome.computed}, skipped {outcome.skipped} (already in the store)"
    if outcome.busy:
        line += f", {outcome.busy} left to the other process measuring them now"
    if outcome.unreadable:
        line += f", {len(outcome.unreadable)} checkpoints unreadable"
    elif not outcome.computed + outcome.skipped:
        line += " - the sweep has no checkpoints (set train.checkpoint_every or train.checkpoint_steps)"
    typer.echo(line)
    if outcome.unreadable:
        raise typer.Exit(code=1)


@app.command()
def report(
    sweep_name: Optional[str] = typer.Option(None, "--sweep", help="Sweep to report (default: the latest in the store)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Folder for report.html, report.md, CSVs and PNGs (default: reports/SWEEP)."),
    store_path: str = typer.Option(DEFAULT_STORE_PATH, "--store", help=_STORE_HELP),
    where: Optional[list[str]] = typer.Option(None, "--where", "-w", help="Keep only these runs: key=v1,v2 on format, lr, seed, status, rounding, model, or comparisons like \"lr <= 1e-2 and format != 'e8m3'\" (repeatable: all must hold)."),
    compare: Optional[tuple[str, str]] = typer.Option(None, "--compare", metavar="SWEEP_A SWEEP_B", help="Put two sweeps side by side (compare.html in reports/A-vs-B/) instead."),
    margin: str = typer.Option("0.02", "--margin", metavar="DELTA", help="The frontier's margin δ in nats per byte: a width is within when its final loss is not worse than the reference's by δ or more (95% interval, paired by seed)."),
) -> None:
    """Stability tables, plots and an HTML/Markdown report of a sweep.

    precisionlab report                                      (latest sweep -> reports/NAME/report.html)

    precisionlab report --sweep paper --out paper-report

    precisionlab report --where format=e8m7,e8m3 --where "lr <= 1e-2"

    precisionlab report --compare paper paper-rne            (two sweeps side by side)

    precisionlab report --margin 0.05                        (the frontier's margin δ, nats per byte)
    """
    from precisionlab.analysis import render
    from precisionlab.analysis.dose import check_margin
    from precisionlab.analysis.compare import compare as compare_reports
    from precisionlab.analysis.compare import compare_notes
    from precisionlab.analysis.report import build
    from precisionlab.analysis.tables import (
        display_by_lr,
        display_by_variant,
        display_compare,
        display_warning,
        text_table,
    )
    from precisionlab.analysis.warning import DEFAULT_LEAD

    try:
        delta = check_margin(margin)
    except ValueError as err:
        fail(str(err))
    if compare and sweep_name:
        fail("--sweep and --compare exclude each other; --compare SWEEP_A SWEEP_B names both sweeps")
    if compare and compare[0] == compare[1]:
        fail(f"--compare {compare[0]} {compare[1]} names one sweep twice; --compare takes two different sweeps")
    with _existing_store(store_path, read_only=True) as store:
        try:
            if compare:
                a, b = (build(store, name, where or [], delta) for name in compare)
                table, notes = compare_reports(a, b), compare_notes(a, b)
                written = render.write_comparison(a, b, table, notes, out or render.default_out(a.sweep, b.sweep))
            else:
                result = build(store, sweep_name, where or [], delta)
                written = render.write(result, out or render.default_out(result.sweep))
        except Exception as err:  # ReportError, StoreError, or SQLite/pandas failing on a damaged file
            fail(_first_line(err))
    if compare:
        typer.echo(text_table(display_compare(table, a.sweep, b.sweep)) + "\n")
        for note in notes:
            typer.echo(f"note: {note}")
        for one in (a, b):
            typer.echo(f"{one.sweep}: {one.headline()}")
            for note in one.notes:
                typer.echo(f"note: {one.sweep}: {note}")
    else:
        statuses = ", ".join(f"{n} {s}" for s, n in result.runs.status.value_counts().items())
        typer.echo(f"sweep {result.sweep}: {len(result.runs)} runs ({statuses})\n")
        typer.echo(text_table(display_by_variant(result.by_variant)) + "\n")
        typer.echo(text_table(display_by_lr(result.by_lr)) + "\n")
        for title, table in render.sharpness_display(result).items():
            typer.echo(f"sharpness {title}: mean ± std (runs) per step\n{text_table(table)}\n")
        diagnostics = render.diagnostics_display(result)
        if diagnostics is not None:
            typer.echo(f"numerical diagnostics per format (means over runs)\n{text_table(diagnostics)}\n")
        if len(result.warning):
            typer.echo(f"early warning\n{text_table(display_warning(result.warning, DEFAULT_LEAD))}\n")
        typer.echo(result.headline())
        if result.dose is not None and result.dose.sentence:
            typer.echo(result.dose.sentence)
        for note in result.notes:
            typer.echo(f"note: {note}")
    typer.echo(f"report: {written[0]} (beside it: {', '.join(p.name for p in written[1:])})")


store_app = typer.Typer(no_args_is_help=True, help="Results stores: copy sweeps between them.")
app.add_typer(store_app, name="store")


@store_app.command("copy")
def store_copy(
    source: str = typer.Argument(..., metavar="SRC", help="The store to copy from: a file path or URL (must exist)."),
    destination: str = typer.Argument(..., metavar="DST", help="The store to copy into: a file path or URL (created if absent)."),
    sweep_names: Optional[list[str]] = typer.Option(None, "--sweep", help="Copy this sweep (repeatable; default: every sweep in SRC)."),
) -> None:
    """Copy sweeps (runs, metrics, checkpoint rows, sharpness values, diagnostics) from SRC to DST; rerun to update DST.

    precisionlab store copy postgresql://me:PASSWORD@head-node:5432/precisionlab results/precisionlab.db --sweep paper

    A run done in DST but not in SRC is kept; every other run of the sweep becomes SRC's.
    Checkpoint files are not copied (their rows keep SRC's paths).
    """
    from precisionlab.store import ResultsStore, StoreError
    from precisionlab.store.copy import copy_sweeps, sweeps_to_copy

    with _existing_store(source, read_only=True) as src:
        try:
            sweeps_to_copy(src, destination, sweep_names)  # refused before the destination is created
            dst = ResultsStore(destination)
        except StoreError as err:
            fail(str(err))
        try:
            results = copy_sweeps(src, dst, sweep_names)
        except StoreError as err:
            fail(str(err))
        finally:
            dst.close()
    for result in results:
        typer.echo(result.line())
    typer.echo(f"copied {len(results)} sweep{'s' * (len(results) != 1)} from {src.location} to {dst.location}")


def _store_if_present(location: str):
    """The results store at `location` opened to read, or None where an SQLite file is absent (nothing is created)."""
    from precisionlab.store import ResultsStore, parse_store_url

    parsed = parse_store_url(location)
    if parsed.backend == "sqlite" and not os.path.exists(parsed.target):
        return None
    return ResultsStore(location, read_only=True, create=False)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


@contextmanager
def _existing_store(location: str, read_only: bool = False):
    """The results store at `location`, which must exist (commands that only read never create
    one), closed on leaving: the last connection to close removes SQLite's -wal/-shm files, and a
    connection left open waits for the garbage collector. One line and exit 2 when it is missing,
    unreachable or not a usable store. `read_only`: for commands that only read (a store the
    user may not write is fine)."""
    from precisionlab.store import ResultsStore, StoreError, parse_store_url

    try:
        parsed = parse_store_url(location)
    except StoreError as err:
        fail(str(err))
    if parsed.backend == "sqlite":
        path = parsed.target
        if os.path.isdir(path):
            fail(f"results store {path} is a folder, not a results store file; pass --store FILE (e.g. {os.path.join(path, 'precisionlab.db')})")
        if os.path.exists(path) and not os.path.isfile(path):
            fail(f"results store {path} is not a regular file (a device, pipe or socket); pass --store FILE")
        if not os.path.exists(path):
            fail(f"results store {path} does not exist; run precisionlab sweep first or pass --store PATH")
    try:
        store = ResultsStore(location, read_only=read_only, create=False)
    except Exception as err:  # StoreError, or SQLite failing on a damaged file
        fail(_first_line(err))
    try:
        yield store
    finally:
        store.close()


def _run_hydra(hydra_main, args: list[str]) -> None:
    """Call a module-level @hydra.main function with `args` as its command line. A full file
    system (a run's files, the store, Hydra's own .hydra files) is one line and exit code 1:
    HYDRA_FULL_ERROR lets the error through Hydra, which would print it as a traceback."""
    import logging

    from precisionlab.runtime import disk_full

    argv, full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = [argv[0], *args]
    os.environ["HYDRA_FULL_ERROR"] = "1"
    logging.raiseExceptions = False  # a log line that cannot be written is dropped, not a "Logging error" traceback
    try:
        hydra_main()
    except Exception as err:
        full = disk_full(err)
        if full is None:
            raise
        typer.echo(f"error: {full}", err=True)
        sys.exit(1)
    finally:
        sys.argv = argv
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error


# Typer's own parse errors (an unknown option, a missing option value) get the one-line form of
# `fail`. ClickException is reached through BadParameter's bases: newer Typer vendors click.
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main() -> None:
    """The console script: the app, with parse errors as one line on stderr (exit code 2)."""
    try:
        code = app(standalone_mode=False)
    except _CLICK_ERROR as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # bare `precisionlab` or a group: the help text
            typer.echo(err.ctx.get_help() if getattr(err, "ctx", None) else err.format_message())
            sys.exit(0)
        where = err.ctx.command_path if getattr(err, "ctx", None) else "precisionlab"
        typer.echo(f"error: {err.format_message()} (see {where} --help)", err=True)
        sys.exit(err.exit_code)
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        sys.exit(1)
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
