"""set_memory_reuse: glibc malloc keeps freed blocks (up to 32 MiB each) in its heap instead of
unmapping them, so the next pass reuses them without page faults (src/cpp/kernels/host_memory.*).

Each check runs in a fresh interpreter: the setting is process-wide and read at import.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

GLIBC = platform.libc_ver()[0] == "glibc"
needs_glibc = pytest.mark.skipif(not GLIBC, reason="memory reuse needs glibc's mallopt")

# In the child: is a live 20 MiB numpy array mapped on its own (mallinfo2's hblkhd: bytes in
# mmapped blocks), or carved from malloc's heap? And the setting as lrpfast reports it.
PROBE = r"""
import ctypes, json, sys
import numpy as np
import lrpfast

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
for arg in sys.argv[1:]:
    lrpfast.set_memory_reuse(arg == "on")
before = libc.mallinfo2().hblkhd
a = np.ones(5 << 20, np.float32)           # 20 MiB
mapped = libc.mallinfo2().hblkhd - before
print(json.dumps({"reuse": lrpfast.get_memory_reuse(), "mapped": mapped,
                  "info": lrpfast.info()["memory_reuse"]}))
"""


def probe(*args, **env):
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("MALLOC_") and k != "LRPFAST_MEMORY_REUSE"}
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                         env={**base, **env}, check=True)
    return json.loads(out.stdout)


@needs_glibc
def test_on_by_default_and_large_arrays_come_from_the_heap():
    r = probe()
    assert r["reuse"] is True and r["info"] is True
    assert r["mapped"] < (1 << 20), r        # the 20 MiB array is not a mapping of its own


@needs_glibc
@pytest.mark.parametrize("env", [{"LRPFAST_MEMORY_REUSE": "0"}, {"LRPFAST_MEMORY_REUSE": "off"},
                                 {"MALLOC_TRIM_THRESHOLD_": "131072"}])
def test_environment_turns_it_off_or_leaves_glibc_settings_alone(env):
    r = probe(**env)
    assert r["reuse"] is False and r["info"] is False


@needs_glibc
def test_switching_off_and_on():
    off = probe("off")
    assert off["reuse"] is False and off["mapped"] >= (20 << 20), off   # mapped on its own
    on = probe("off", "on")
    assert on["reuse"] is True and on["mapped"] < (1 << 20), on


@pytest.mark.skipif(GLIBC, reason="this C library is glibc")
def test_without_glibc_it_is_off_and_says_why():
    import lrpfast
    assert lrpfast.get_memory_reuse() is False
    with pytest.raises(ValueError, match="glibc"):
        lrpfast.set_memory_reuse(True)
