"""Process-wide runtime settings."""
import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("package", ["codec", "adapters", "slm", "demos"])
def test_omp_wait_policy_set_before_torch_loads(package):
    # libgomp reads OMP_WAIT_POLICY once, when torch is first imported: every package entry point must
    # set it before anything imports torch, and a user's own value must win.
    code = (f"import sys, os; import {package}; "
            "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "ACTIVE"
