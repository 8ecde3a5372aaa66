"""Where and with what a run executes: its device, absolute paths, provenance, and the
operating-system facts several stages rely on.

One home for the questions several stages ask:
  resolve_device(name)      "auto" | "cpu" | "cuda" | "cuda:N" -> a usable torch.device
  absolute_paths(cfg, base) data.path, data.cache_dir and store.path made absolute from the
                            launch directory (`~` expanded), so a run's id and its files do not
                            depend on the folder Hydra runs it in (an sqlite:/// store.url: the
                            store's own rule, `precisionlab.store.url.absolute_store_url`)
  provenance()              python, torch, triton and precisionlab versions and the git
                            revision of the precisionlab checkout, recorded with every run
  pid_alive(pid)            whether a process of this host still runs (a zombie does not)
  swap_folders(new, out, old)  exchange two folders in one atomic rename where the system can
  DiskFull, disk_full(err)  a write that failed because its file system is full

This module imports no other precisionlab module: every layer may use it.
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import os
import platform
import re
import subprocess
import sys
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["DeviceError", "resolve_device", "absolute_paths", "PATH_KEYS", "provenance", "pid_alive", "swap_folders",
           "DiskFull", "disk_full", "lazy_exports"]

# The config keys holding file-system paths, relative to the launch directory when relative.
PATH_KEYS = (("data", "path"), ("data", "cache_dir"), ("store", "path"), ("loggers", "dir"))


class DeviceError(ValueError):
    """A device name that is not usable here; the message says what is accepted."""


def resolve_device(name: str):
    """The torch.device for `name`: auto (CUDA if present), cpu, cuda or cuda:N (CUDA must be available)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise DeviceError(f"device must be auto, cpu, cuda or cuda:N; got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"device must be auto, cpu, cuda or cuda:N; got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name} is not usable: CUDA is not available here; use auto or cpu")
    return device


def absolute_paths(cfg: Any, base: str | os.PathLike) -> None:
    """Make the PATH_KEYS of `cfg` (a DictConfig) absolute, taken from `base`, in place; `~` is expanded.
    Missing, null and `???` values are left alone."""
    from omegaconf import OmegaConf, open_dict

    with open_dict(cfg):
        for group, key in PATH_KEYS:
            node = cfg.get(group)
            if node is None or key not in node or OmegaConf.is_missing(node, key) or node[key] is None:
                continue
            value = os.path.expanduser(str(node[key]))
            slash = os.sep if value.endswith(("/", os.sep)) else ""  # kept: `results/` names a folder, not a file
            node[key] = str(Path(base) / value) + slash


@cache
def provenance() -> dict[str, str | None]:
    """{"python", "torch", "triton", "precisionlab": versions (None if absent), "git_rev": the
    precisionlab checkout's revision, "-dirty" if modified, None outside a git checkout}."""

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=os.path.dirname(os.path.abspath(__file__)),
                                  capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    rev = git("rev-parse", "HEAD")
    if rev and git("status", "--porcelain", "--untracked-files=no"):
        rev += "-dirty"
    return {"python": platform.python_version(), **{p: version(p) for p in ("torch", "triton", "precisionlab")},
            "git_rev": rev}


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host still runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A killed process its parent has not reaped yet still answers kill(pid, 0) (Linux only)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def swap_folders(new: str | os.PathLike, out: str | os.PathLike, old: str | os.PathLike) -> None:
    """Swap the folders `new` and `out` atomically (Linux renameat2 RENAME_EXCHANGE): afterwards `out`
    holds what `new` held and `new` what `out` held. Where the system cannot: `out` is first renamed
    to `old` and `new` into place, then `old` to `new`; a kill in between leaves no `out` but its whole
    old content in `old`, for the caller to put back."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        at_fdcwd, rename_exchange = -100, 2
        if renameat2(at_fdcwd, os.fsencode(new), at_fdcwd, os.fsencode(out), rename_exchange) == 0:
            return
        if ctypes.get_errno() not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # a real error, not "unsupported here"
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    os.rename(out, old)
    os.rename(new, out)
    os.rename(old, new)


class DiskFull(OSError):
    """A write failed because its file system is full: stops a sweep (every run after it would fail
    the same way); the CLI says so in one line (`str` of it)."""

    def __init__(self, path: str):
        mount = Path(os.path.abspath(path or os.getcwd()))
        while not os.path.ismount(mount) and mount != mount.parent:
            mount = mount.parent
        super().__init__(errno.ENOSPC, f"no space left on the file system at {mount}"
                         + (f" (writing {path})" if path else ""))
        self.path, self.mount = path, str(mount)

    def __str__(self) -> str:
        return f"{self.strerror}; free space there and rerun: finished runs are kept, the others rerun"


def disk_full(err: BaseException | None) -> DiskFull | None:
    """A `DiskFull` when `err` or an exception it chains is a disk-full error (ENOSPC or EDQUOT, or
    SQLite's "database or disk is full"), else None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, DiskFull):
            return err
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return DiskFull(str(err.filename or ""))
        if "database or disk is full" in str(err):
            store = re.search(r"results store (\S+?):", str(err))
            return DiskFull(store[1] if store else "")
        err = err.__cause__ or err.__context__
    return None


def lazy_exports(package: str, exports: dict[str, str]):
    """PEP 562 `__getattr__` and `__dir__` for `package`, whose names (`exports`: name -> the module
    defining it) are imported on first use, so importing the package imports none of their modules."""
    module = sys.modules[package]

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        setattr(module, name, value)  # once: later lookups find it without __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(module), *exports})

    return __getattr__, __dir__
