"""npgpt/threads.py: the thread pools are set up as npgpt chose, whatever the
user's script imported first (numpy, torch) -- configuration, not timing.

Each case runs in its own interpreter, since what matters is what a process
loaded before `import npgpt`.
"""
import os
import subprocess
import sys
import textwrap

import pytest

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RTLD_DEEPBIND and LD_DEBUG are glibc's")

REPORT = """
from npgpt import threads
r = threads.report()
print("layer", r["numba_threading_layer"])
for path, timeout in r["openblas_thread_timeout"].items():
    print("openblas", os.path.basename(path), timeout)
for name, value in r["environment"].items():
    print("env", name, value)
"""


def run_python(code, **env):
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")}
    environment.update(env)
    out = subprocess.run([sys.executable, "-c", "import os\n" + textwrap.dedent(code)], env=environment,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def numpys_openblas_timeout(stdout):
    timeouts = [line.split()[2] for line in stdout.splitlines() if line.startswith("openblas") and "64_" in line]
    timeouts = timeouts or [line.split()[2] for line in stdout.splitlines() if line.startswith("openblas")]
    if not timeouts:
        pytest.skip("numpy is not linked against OpenBLAS here")
    return timeouts


def test_numpy_imported_first_still_gets_the_short_openblas_timeout():
    out = run_python("import numpy\nimport npgpt\n" + REPORT)
    assert set(numpys_openblas_timeout(out.stdout)) == {"4"}, out.stdout
    assert "env OMP_WAIT_POLICY PASSIVE" in out.stdout


def test_a_users_own_settings_win():
    out = run_python("import numpy\nimport npgpt\n" + REPORT, OPENBLAS_THREAD_TIMEOUT="7", OMP_WAIT_POLICY="ACTIVE")
    assert set(numpys_openblas_timeout(out.stdout)) == {"7"}, out.stdout
    assert "env OMP_WAIT_POLICY ACTIVE" in out.stdout


def test_import_npgpt_does_not_import_numba():
    """The CLI sets NUMBA_CACHE_DIR after `import npgpt` (read-only installs): threads.configure
    must load Numba's OpenMP library without importing numba."""
    out = run_python("import sys\nimport npgpt\nprint('numba' in sys.modules)")
    assert out.stdout.strip() == "False"


def numba_openmp_bindings(stderr):
    """-> the files Numba's OpenMP layer bound GOMP_parallel to, from LD_DEBUG=bindings output."""
    return [line.split(" to ")[1].split(" [")[0] for line in stderr.splitlines()
            if "omppool" in line and "`GOMP_parallel'" in line]


@linux_only
def test_torch_imported_first_numba_uses_its_own_openmp_runtime():
    """torch puts its own libgomp (started with the default, spinning wait policy) in the
    global namespace; Numba's OpenMP layer must bind to the libgomp npgpt configured."""
    pytest.importorskip("torch")
    code = "import torch\nimport npgpt\n" + REPORT
    out = run_python(code, LD_DEBUG="bindings")
    if "layer omp" not in out.stdout:
        pytest.skip(f"Numba chose another threading layer here: {out.stdout.splitlines()[0]}")
    bound = numba_openmp_bindings(out.stderr)
    assert bound, "LD_DEBUG showed no binding for Numba's OpenMP layer"
    assert all("torch" not in path for path in bound), bound
    assert set(numpys_openblas_timeout(out.stdout)) == {"4"}, out.stdout


@linux_only
def test_the_binding_check_sees_torchs_runtime_when_numba_loads_plainly():
    """The check above can fail: Numba's OpenMP layer loaded the ordinary way after
    `import torch` binds to torch's libgomp, and the LD_DEBUG reading shows it."""
    pytest.importorskip("torch")
    code = ("import torch\nimport numba\nnumba.config.THREADING_LAYER = 'omp'\n"
            "from numba.np.ufunc.parallel import _launch_threads\n_launch_threads()\n")  # no npgpt
    out = run_python(code, LD_DEBUG="bindings")
    bound = numba_openmp_bindings(out.stderr)
    assert bound and all("torch" in path for path in bound), bound
