"""The LRP Toolbox's data files: (N, D) block-formatted arrays (``data_io.read`` / ``write``).

* ``.txt``: plain text, one row per line, values separated by white space (numpy's
  ``loadtxt`` / ``savetxt`` with ``%.18e``, as the toolbox writes them);
* ``.npy``: a numpy array; ``.npz``: a numpy archive, the array under the key ``data`` (or its
  only array);
* ``.mat``: a Matlab file, the array under the key ``data`` (read and written through scipy,
  which is then required; ImportError saying so otherwise).

The format follows the file extension unless ``fmt`` names it ("txt", "npy", "npz", "mat").
Arrays come back as float64 as the toolbox's; any shape numpy can store is accepted for
.npy/.npz/.mat, and the plain-text format stores 1-D or 2-D arrays.
"""
from __future__ import annotations

import os

import numpy as np

__all__ = ["DATA_FORMATS", "read_data", "write_data"]

DATA_FORMATS = ("txt", "npy", "npz", "mat")


def _fmt(path: str, fmt: str | None) -> str:
    f = (fmt or os.path.splitext(path)[1].lstrip(".")).lower()
    if f not in DATA_FORMATS:
        raise ValueError(f"{path}: unknown data format {f!r} (known: {', '.join(DATA_FORMATS)}; "
                         f"pass fmt= for other extensions)")
    return f


def _scipy_io(path):
    try:
        import scipy.io
    except ImportError:
        raise ImportError(f"{path}: reading and writing .mat files needs scipy "
                          f"(pip install scipy)") from None
    return scipy.io


def read_data(path, fmt: str | None = None) -> np.ndarray:
    """Read a toolbox data file -> float64 array (N, D) (see the module docstring)."""
    path = os.fspath(path)
    f = _fmt(path, fmt)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path} not found")
    try:
        if f == "txt":
            a = np.loadtxt(path, dtype=np.float64, ndmin=1)
        elif f == "npy":
            a = np.load(path, allow_pickle=False)
        elif f == "npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                if "data" not in keys and len(keys) != 1:
                    raise ValueError(f"no array named 'data' (arrays: {keys})")
                a = z["data" if "data" in keys else keys[0]]
        else:
            m = _scipy_io(path).loadmat(path)
            if "data" not in m:
                raise ValueError(f"no variable named 'data' (variables: "
                                 f"{[k for k in m if not k.startswith('__')]})")
            a = m["data"]
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"cannot read data file {path} as {f}: {e}") from None
    a = np.asarray(a)
    if a.dtype.kind not in "fiub":
        raise ValueError(f"data file {path}: expected numbers, got dtype {a.dtype}")
    return a.astype(np.float64)


def write_data(data, path, fmt: str | None = None) -> str:
    """Write an array as a toolbox data file (see the module docstring); returns the path."""
    path = os.fspath(path)
    f = _fmt(path, fmt)
    a = np.asarray(data)
    if a.dtype.kind not in "fiub":
        raise ValueError(f"write_data: expected a numeric array, got dtype {a.dtype}")
    if f == "txt":
        if a.ndim > 2:
            raise ValueError(f"write_data: the text format stores (N, D) arrays, got shape "
                             f"{a.shape}; reshape it or use .npy/.npz/.mat")
        np.savetxt(path, a)
    elif f == "npy":
        with open(path, "wb") as fh:   # exactly at ``path`` (np.save would append .npy)
            np.save(fh, a, allow_pickle=False)
    elif f == "npz":
        with open(path, "wb") as fh:
            np.savez(fh, data=a)
    else:
        _scipy_io(path).savemat(path, {"data": a}, appendmat=False)
    return path
