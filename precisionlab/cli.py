"""The `precisionlab` command line (Typer): one app, one module.

Commands that launch runs hand their Hydra overrides to the module-level
`@hydra.main` functions in `precisionlab.app`; commands that launch nothing
use the Compose API or no Hydra at all.
"""

from __future__ import annotations

import math
from typing import Optional

import typer

from precisionlab.formats import NAMED_FORMATS, FloatFormat

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Precision-stability sweeps: train small LMs across seeds, learning rates and simulated number formats.",
)


@app.callback()
def _root() -> None:
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
    """Table of number formats: bits, bias, range, Inf/NaN conventions."""
    names = format or list(NAMED_FORMATS)
    try:
        parsed = [FloatFormat.parse(n) for n in names]
    except ValueError as err:
        fail(str(err))
    header = f"{'name':<10} {'bits':>4} {'E':>2} {'M':>2} {'bias':>5} {'max_finite':>12} {'min_normal':>12} {'min_subnormal':>13}  {'inf':<3} {'nan':<8} {'-0':<3}"
    typer.echo(header)
    for f in parsed:
        typer.echo(
            f"{f.name:<10} {f.bits:>4} {f.exp_bits:>2} {f.man_bits:>2} {f.bias:>5} {_fmt_value(f.max_finite):>12} "
            f"{_fmt_value(f.min_normal) if f.emax >= f.emin else '-':>12} {_fmt_value(f.min_subnormal):>13}  {'yes' if f.has_inf else 'no':<3} "
            f"{f.nan if f.has_nan else 'none':<8} {'yes' if f.has_negative_zero else 'no':<3}"
        )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
