"""The `--where` filter language of `precisionlab report`: which runs a report keeps.

Two forms, each a string (repeatable: every one must hold):
  key=v1,v2     membership: the run's column `key` is one of the values (lr and seed compare as
                numbers, to 1e-9 relative);
  expression    comparisons (==, !=, <, <=, >, >=, in, not in) of the columns with numbers or quoted
                strings, joined by and/or/not: `lr <= 1e-2 and format != 'e8m3'`.
The columns: WHERE_COLUMNS. An expression is evaluated as a tree of those nodes only (`_mask`):
nothing is called, looked up as an attribute or indexed, so a filter cannot run code (pandas'
`query` would).
"""

from __future__ import annotations

import ast
import operator
import re
from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["WHERE_COLUMNS", "WhereError", "filter_runs"]

WHERE_COLUMNS = ("variant", "format", "lr", "seed", "status", "rounding", "model")


class WhereError(ValueError):
    """A --where expression that is not a usable filter; the message is one line naming what is
    wrong and what is accepted."""


def filter_runs(runs: pd.DataFrame, where: Sequence[str]) -> pd.DataFrame:
    """Keep the runs every `where` expression accepts: `key=v1,v2` (membership) on
    variant, format, lr, seed, status, rounding or model, or a comparison expression over
    those columns (`lr <= 1e-2 and format != 'e8m3'`; see `_mask`)."""
    for expression in where:
        simple = re.fullmatch(r"\s*(\w+)\s*=\s*([^=<>!].*)", expression)
        if simple:
            key, values = simple[1], [v.strip() for v in simple[2].split(",")]
            if key not in WHERE_COLUMNS:
                raise WhereError(f"--where {expression!r}: unknown column {key!r}; accepted: {', '.join(WHERE_COLUMNS)}")
            column = runs[key]
            if key in ("lr", "seed"):
                try:
                    wanted = [float(v) for v in values]
                except ValueError:
                    raise WhereError(f"--where {expression!r}: {key} takes numbers, e.g. {key}=1e-3,3e-3") from None
                keep = np.zeros(len(runs), bool)
                for v in wanted:
                    keep |= np.isclose(column.astype(float), v, rtol=1e-9, atol=0)
            else:
                keep = column.astype(str).isin(values)
            runs = runs[keep]
            continue
        try:
            keep = _mask(ast.parse(expression.strip(), mode="eval").body, runs)
            runs = runs[np.asarray(keep, dtype=bool)]
        except (SyntaxError, ValueError, TypeError) as err:
            problem = err.msg if isinstance(err, SyntaxError) else str(err).splitlines()[0] if str(err) else ""
            raise WhereError(f"--where {expression!r} is not a usable filter ({type(err).__name__}: {problem}); "
                              f"accepted: key=v1,v2 or comparisons (==, !=, <, <=, >, >=, in, not in) of "
                              f"{', '.join(WHERE_COLUMNS)} with numbers or quoted strings, joined by and/or/not, "
                              f"e.g. \"lr <= 1e-2 and format != 'e8m3'\"") from None
    return runs


_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge}


def _mask(node: ast.expr, runs: pd.DataFrame):
    """Evaluate a --where expression tree over `runs`, allowing only column names, literals,
    comparisons, `in` / `not in` lists and and/or/not: nothing is ever called, looked up as
    an attribute or indexed, so a filter cannot run code (pandas' `query` would)."""
    if isinstance(node, ast.BoolOp):
        masks = [np.asarray(_mask(v, runs), dtype=bool) for v in node.values]
        return np.logical_and.reduce(masks) if isinstance(node.op, ast.And) else np.logical_or.reduce(masks)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ~np.asarray(_mask(node.operand, runs), dtype=bool)
    if isinstance(node, ast.Compare):
        keep, left = np.ones(len(runs), bool), _operand(node.left, runs)
        for op, right_node in zip(node.ops, node.comparators):
            right = _operand(right_node, runs)
            if isinstance(op, (ast.In, ast.NotIn)):
                if not isinstance(right, list) or isinstance(left, list) or any(isinstance(v, list) for v in right):
                    raise ValueError("in / not in take a list of numbers or strings after a column, e.g. format in ['e8m7', 'e8m3']")
                found = pd.Series(left).isin(right).to_numpy()
                keep &= found if isinstance(op, ast.In) else ~found
            elif type(op) in _COMPARE:
                if isinstance(left, list) or isinstance(right, list):  # numpy would compare row by row position
                    raise ValueError(f"{type(op).__name__} compares a column with a number or string, not a list; "
                                     "for a list use in [...]")
                keep &= np.asarray(_COMPARE[type(op)](left, right), dtype=bool)
            else:
                raise ValueError(f"unsupported comparison {type(op).__name__}")
            left = right
        return keep
    raise ValueError(f"unsupported expression {ast.unparse(node)!r}")


def _operand(node: ast.expr, runs: pd.DataFrame):
    """A column (as an array), a number or string, or a list of them."""
    if isinstance(node, ast.Name):
        if node.id not in WHERE_COLUMNS:
            raise ValueError(f"unknown column {node.id!r}")
        return runs[node.id].to_numpy()
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        return -_operand(node.operand, runs)
    if isinstance(node, (ast.List, ast.Tuple)) and not any(isinstance(item, ast.Name) for item in node.elts):
        return [_operand(item, runs) for item in node.elts]
    raise ValueError(f"unsupported expression {ast.unparse(node)!r}")
