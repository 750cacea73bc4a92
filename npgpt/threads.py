"""How npgpt's two thread pools share the cores, whatever was imported first.

A training step alternates, about 120 times, between a matrix product
(OpenBLAS's pool of threads) and a fused kernel (Numba's pool: OpenMP on
Linux).  Each pool has a thread per core.  A thread left spinning by one
pool after its work is done sits on the core that the other pool needs
next, and when another program holds a core, every spin and every wait for
a descheduled thread becomes a scheduler time slice.  Both libraries spin
by default; both read their setting only once, when they load:

- OpenBLAS reads OPENBLAS_THREAD_TIMEOUT when numpy is imported.  Its idle
  workers otherwise spin for about 2**28 cycles (0.1 s) after each product.
- GNU OpenMP (libgomp) reads OMP_WAIT_POLICY when it is loaded.  Its idle
  workers otherwise spin for 300,000 iterations after each parallel loop.

Setting the environment in npgpt/__init__.py was not enough: `import numpy`
or `import torch` in a user's script runs before it.  torch also loads its
own libgomp into the process's global symbol namespace, and Numba's
OpenMP library then binds to that copy, already started with the default
spin: npgpt's step ran 8-9x slower (docs/speed.md, "Threads and import
order").  So `configure()`, run by `import npgpt`, fixes each at its root:

1. it sets the environment for libraries not loaded yet (a user's own
   settings win);
2. it makes an OpenBLAS that numpy already loaded re-read the environment
   and restart its (idle) workers, which then pick up the short timeout;
3. it loads Numba's OpenMP library with RTLD_DEEPBIND, so that it binds to
   its own libgomp, loaded now, after OMP_WAIT_POLICY is set, rather than
   to whatever OpenMP runtime another library put in the global namespace.

`report()` says what is in force; the tests pin it (tests/test_threads.py).
"""
import ctypes
import importlib.machinery
import importlib.util
import os
import sys

# What npgpt wants, unless the user set it (see the module docstring).
ENVIRONMENT = {
    # idle OpenMP workers sleep at once instead of spinning
    "OMP_WAIT_POLICY": "PASSIVE",
    # idle OpenBLAS workers sleep after 2**4 cycles (OpenBLAS's minimum)
    "OPENBLAS_THREAD_TIMEOUT": "4",
}

NUMBA_OPENMP_MODULE = "numba.np.ufunc.omppool"


def configure():
    """Set up both thread pools as described above.  Safe to call again."""
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    load_numba_openmp_privately()
    reread_openblas_environment()


def load_numba_openmp_privately():
    """Load Numba's OpenMP threading layer bound to its own OpenMP runtime -> True if done now.

    Only loads the shared library, without importing numba (the CLI must
    still be able to set NUMBA_CACHE_DIR first) and without starting a
    thread: Numba still chooses its threading layer (tbb, omp, workqueue, or
    NUMBA_THREADING_LAYER) at the first parallel call, and when it imports
    the module it gets this already-loaded library.  With RTLD_DEEPBIND the
    library's OpenMP symbols resolve within its own dependencies first (the
    libgomp it was linked against, loaded now and reading OMP_WAIT_POLICY
    as it does) instead of the global namespace, where `import torch` put
    torch/lib/libgomp.so.1, initialised before npgpt could configure it.
    """
    path = numba_openmp_library()
    if path is None:
        return False
    try:
        ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_LOCAL | os.RTLD_DEEPBIND)
    except OSError:  # no libgomp on this system: Numba will use tbb or workqueue
        return False
    return True


def numba_openmp_library():
    """-> the path of Numba's OpenMP layer (numba/np/ufunc/omppool*.so) if it is still to be loaded, else None.

    None off Linux (RTLD_DEEPBIND is a glibc feature; macOS and Windows
    resolve symbols per library anyway), when Numba already imported it (its
    OpenMP symbols are bound: too late), and when this Numba has none.
    """
    if not sys.platform.startswith("linux") or NUMBA_OPENMP_MODULE in sys.modules:
        return None
    spec = importlib.util.find_spec("numba")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(spec.submodule_search_locations[0], "np", "ufunc")
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(folder, "omppool" + suffix)
        if os.path.exists(path):
            return path
    return None


def openblas_libraries():
    """-> [(path, ctypes.CDLL)] for every OpenBLAS loaded in this process (numpy's, scipy's...)."""
    from threadpoolctl import ThreadpoolController

    libraries = []
    for controller in ThreadpoolController().select(internal_api="openblas").lib_controllers:
        try:
            libraries.append((controller.filepath, ctypes.CDLL(controller.filepath)))
        except OSError:
            pass
    return libraries


def openblas_thread_timeout(library):
    """-> the OPENBLAS_THREAD_TIMEOUT this OpenBLAS read (0: unset, spin ~2**28 cycles), or None if unknown."""
    try:
        return int(library.openblas_thread_timeout())
    except AttributeError:
        return None


def reread_openblas_environment():
    """Make every loaded OpenBLAS use OPENBLAS_THREAD_TIMEOUT from the environment now
    -> the paths of the libraries that were restarted.

    OpenBLAS reads the variable once, when it loads (usually at `import
    numpy`, which may have happened before `import npgpt`), and applies it
    when it starts its worker threads.  openblas_read_env() re-reads the
    environment, and blas_thread_shutdown_() stops the workers; the next
    product starts them again with the new timeout.  Both are exported by
    OpenBLAS (the second is what it runs itself around fork()).  This runs
    at import, when no product is in flight.
    """
    wanted = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
    if "numpy" not in sys.modules:  # nothing loaded OpenBLAS yet: it will read the environment itself
        return []
    if not wanted or not wanted.strip().isdigit():
        return []
    restarted = []
    for path, library in openblas_libraries():
        if openblas_thread_timeout(library) in (None, int(wanted)):
            continue
        try:
            library.openblas_read_env()
            library.blas_thread_shutdown_()
        except AttributeError:  # an OpenBLAS without these entry points: leave it as it is
            continue
        restarted.append(path)
    return restarted


def report():
    """-> dict of what is in force: environment, OpenBLAS timeouts, Numba's layer and thread count.

    Reading Numba's threading layer starts Numba's thread pool (a tiny
    parallel call), as the first kernel would.
    """
    import numba

    from .parallel import threads_may_share_kernels

    threads_may_share_kernels()  # makes Numba choose its layer
    return {
        "environment": {name: os.environ.get(name) for name in ENVIRONMENT},
        "openblas_thread_timeout": {path: openblas_thread_timeout(lib) for path, lib in openblas_libraries()},
        "numba_threading_layer": numba.threading_layer(),
        "numba_threads": numba.get_num_threads(),
    }
