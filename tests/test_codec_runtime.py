"""Process-wide runtime settings."""
import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("package", ["codec", "adapters", "slm", "demos"])
def test_omp_waiting_set_before_torch_loads(package):
    # libgomp reads OMP_WAIT_POLICY / GOMP_SPINCOUNT once, when torch is first imported: every package entry
    # point must set them before anything imports torch, and a user's own choice (either one) must win whole.
    code = (f"import os; import {package}; "
            "print(os.environ.get('OMP_WAIT_POLICY', '-'), os.environ.get('GOMP_SPINCOUNT', '-'))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

    def run(**user):
        return subprocess.run([sys.executable, "-c", code], env={**env, **user}, capture_output=True, text=True,
                              check=True).stdout.split()

    assert run() == ["PASSIVE", "10000"]
    assert run(OMP_WAIT_POLICY="ACTIVE") == ["ACTIVE", "-"]
    assert run(GOMP_SPINCOUNT="5") == ["-", "5"]
