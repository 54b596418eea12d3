"""lrpfast's private OpenBLAS picks its own kernels; OPENBLAS_CORETYPE stays for everyone else."""
import os
import subprocess
import sys

SNIPPET = ("import os, lrpfast; print(lrpfast.info()['blas']); "
           "print(os.environ.get('OPENBLAS_CORETYPE', '<unset>'))")


def _run(env_updates):
    env = dict(os.environ)
    env.pop("LRPFAST_BLAS_CORETYPE", None)
    env.update(env_updates)
    out = subprocess.run([sys.executable, "-c", SNIPPET], env=env, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    return out[0], out[1]


def test_forced_core_type_is_honoured_and_environment_restored():
    blas, seen = _run({"LRPFAST_BLAS_CORETYPE": "Sandybridge", "OPENBLAS_CORETYPE": "Haswell"})
    assert blas.endswith("core=Sandybridge")
    assert seen == "Haswell"          # the process-wide setting is untouched afterwards


def test_process_coretype_does_not_force_lrpfast_copy():
    with_var, seen = _run({"OPENBLAS_CORETYPE": "Sandybridge"})
    env_free = {k: v for k, v in os.environ.items()
                if k not in ("OPENBLAS_CORETYPE", "LRPFAST_BLAS_CORETYPE")}
    detected = subprocess.run([sys.executable, "-c", SNIPPET], env=env_free, capture_output=True,
                              text=True, check=True).stdout.split("\n")[0]
    assert seen == "Sandybridge"
    assert with_var == detected       # the kernel lrpfast's copy detects from the CPU
