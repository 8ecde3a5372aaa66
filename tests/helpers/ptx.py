"""`ptxas -v` on a compiled kernel's PTX: what the ahead-of-time compile tests check."""

from __future__ import annotations

import re
import subprocess

from triton.backends.nvidia.compiler import get_ptxas


def ptxas_report(ptx: str, arch: int, tmp_path) -> tuple[int, int, int]:
    """(registers, spill store bytes, spill load bytes) from `ptxas -v` for the PTX's own target
    (Triton targets sm_90a / sm_100a on Hopper and Blackwell)."""
    gpu = re.search(r"^\.target\s+(sm_\w+)", ptx, re.M).group(1)
    src = tmp_path / f"kernel_{gpu}.ptx"
    src.write_text(ptx)
    log = subprocess.run(
        [get_ptxas(arch).path, "-v", f"--gpu-name={gpu}", str(src), "-o", str(tmp_path / "out.cubin")],
        capture_output=True, text=True, check=True,
    ).stderr
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    stores, loads = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log).groups()
    return regs, int(stores), int(loads)
