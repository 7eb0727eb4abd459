"""Run-time backend selection (SKELFAST_BACKEND) and the extension-less fallback."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

import skelfast
from skelfast import ops, reference
from skelfast.ops import _backend

from _common import make_frames, make_skeleton

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def restore_backend():
    yield
    _backend._selected = None


def test_torch_backend_uses_reference(restore_backend, monkeypatch):
    ops.set_backend("torch")
    called = []
    monkeypatch.setattr(reference, "modalities", lambda *a, **k: called.append(1) or torch.zeros(1))
    ops.modalities(make_skeleton(N=1))
    assert called


def test_set_backend_takes_any_case_as_the_variable_does(restore_backend):
    ops.set_backend(" Torch ")
    assert _backend.get_backend() == "torch"


def test_precision_summary_survives_the_per_unit_tf32_api():
    """After torch's per-unit fp32_precision API is used, reading the legacy TF32 flags raises; the
    benchmarks' log line must not end a run (child process: the mix is process-wide)."""
    code = ("import torch\n"
            "from skelfast.precision import fp32_precision_summary\n"
            "torch.backends.fp32_precision = 'tf32'\n"   # the global per-unit setting (torch 2.13)
            "try:\n"
            "    torch.backends.cuda.matmul.allow_tf32\n"
            "    print('legacy read ok')\n"
            "except RuntimeError:\n"
            "    print('legacy read raises')\n"
            "print('summary:', fp32_precision_summary())\n")
    proc = _run(code, {"SKELFAST_QUIET_IMPORT": "1"}, ROOT)
    assert proc.returncode == 0, proc.stderr
    if "legacy read ok" in proc.stdout:   # torch 2.13 raises here; an older one may not know the mix
        pytest.skip(f"torch {torch.__version__} reads the legacy TF32 flags after the per-unit API")
    assert "summary: unknown (" in proc.stdout


def test_unknown_backend_raises(restore_backend):
    with pytest.raises(ValueError, match="SKELFAST_BACKEND must be one of"):
        ops.set_backend("opencl")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only build")
def test_explicit_cuda_unmet_raises(restore_backend):
    with pytest.raises(RuntimeError, match="backend 'cuda' requested"):
        ops.set_backend("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without GPU")
def test_explicit_triton_unmet_raises(restore_backend, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="backend 'triton' requested"):
        ops.set_backend("triton")


def test_env_var_is_validated_at_first_use(restore_backend, monkeypatch):
    monkeypatch.setenv("SKELFAST_BACKEND", "bogus")
    _backend._selected = None
    with pytest.raises(ValueError, match="bogus"):
        ops.modalities(make_skeleton(N=1))


def test_backend_choice_is_traceable_and_ignores_the_build_info_file(restore_backend, monkeypatch):
    """resolve() runs inside compiled regions on every op call: for CUDA tensors it used to read
    skelfast/_build_info.json each time (dynamo cannot trace open(): a graph break per op, and
    fullgraph=True failed). What the loaded library registered is read once at import instead,
    so a stale build-info file cannot claim CUDA kernels either."""
    from skelfast import _extension
    before = _extension.has_cuda_kernels()
    if torch.version.cuda is None:
        assert not before          # a CPU-only torch cannot have loaded CUDA kernels
    for claim in (True, False):
        monkeypatch.setattr(_extension, "build_info", lambda claim=claim: {"with_cuda": claim})
        assert _extension.has_cuda_kernels() == before

    def f(x):
        cuda, cpu = _backend.resolve(torch.device("cuda")), _backend.resolve(torch.device("cpu"))
        return x + (1.0 if cuda == "compiled" else 2.0) + (10.0 if cpu == "compiled" else 20.0)

    want = f(torch.zeros(2))
    torch._dynamo.reset()
    assert torch.equal(torch.compile(f, fullgraph=True, backend="eager")(torch.zeros(2)), want)


def test_the_exact_library_name_is_loaded_first(tmp_path):
    from skelfast._extension import _library_candidates
    for name in ("_C.abi3.so", "_C.cpython-311-x86_64-linux-gnu.so", "_C.so"):
        (tmp_path / name).write_bytes(b"")
    got = [os.path.basename(p) for p in _library_candidates(str(tmp_path))]
    assert got == ["_C.so", "_C.abi3.so", "_C.cpython-311-x86_64-linux-gnu.so"]


def _run(code, env_extra, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKELFAST_")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd)


def test_import_without_extension_warns_and_falls_back(tmp_path):
    """A package whose _C library is missing still imports, warns once, and computes via the reference."""
    pkg = tmp_path / "skelfast"
    shutil.copytree(os.path.join(ROOT, "skelfast"), pkg, ignore=shutil.ignore_patterns("_C*.so", "__pycache__"))
    code = ("import warnings, torch\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    import skelfast\n"
            "assert any('compiled ops unavailable' in str(m.message) for m in w), [str(m.message) for m in w]\n"
            "x = torch.randn(2, 3, 4, 25, 2)\n"
            "torch.testing.assert_close(skelfast.ops.modalities(x), skelfast.reference.modalities(x))\n"
            "assert skelfast.ops.available_backends() == ['torch'], skelfast.ops.available_backends()\n"
            "print('fallback ok')\n")
    proc = _run(code, {"PYTHONPATH": str(tmp_path)}, str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "fallback ok" in proc.stdout


def test_suite_stops_when_the_extension_did_not_load(tmp_path):
    """tests/conftest.py ends the run (instead of a green run of skipped kernel tests) when the
    skelfast it imports has no loadable _C, unless SKELFAST_ALLOW_NO_EXTENSION=1."""
    shutil.copytree(os.path.join(ROOT, "skelfast"), tmp_path / "skelfast",
                    ignore=shutil.ignore_patterns("_C*.so", "__pycache__"))
    (tmp_path / "tests").mkdir()
    shutil.copy(os.path.join(ROOT, "tests", "conftest.py"), tmp_path / "tests")
    (tmp_path / "tests" / "test_one.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKELFAST_")}
    env.update(SKELFAST_QUIET_IMPORT="1", PYTHONPATH="")
    stopped = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert stopped.returncode == 3, stopped.stdout + stopped.stderr
    assert "compiled extension did not load" in stopped.stdout + stopped.stderr
    allowed = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                             env={**env, "SKELFAST_ALLOW_NO_EXTENSION": "1"})
    assert allowed.returncode == 0 and "1 passed" in allowed.stdout, allowed.stdout + allowed.stderr


def test_subpackages_load_on_first_use():
    """README's `skelfast.train.api.Embedder...` and `skelfast.models.build(...)` work after a plain
    `import skelfast`, which itself loads neither the trainer nor the data tools."""
    code = ("import sys, skelfast\n"
            "assert not any(m in sys.modules for m in ('skelfast.train', 'skelfast.data', 'skelfast.models'))\n"
            "assert skelfast.train.api.Embedder.from_checkpoint and skelfast.models.build\n"
            "assert skelfast.nn.BatchedSTGCN and skelfast.data.prepare and skelfast.train.config.load_config\n"
            "try:\n"
            "    skelfast.no_such_module\n"
            "except AttributeError as e:\n"
            "    print('refused:', e)\n")
    proc = _run(code, {"SKELFAST_QUIET_IMPORT": "1"}, ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "refused: module 'skelfast' has no attribute 'no_such_module'" in proc.stdout


def test_info_cli_runs():
    proc = _run("import runpy; runpy.run_module('skelfast.info', run_name='__main__')", {"SKELFAST_QUIET_IMPORT": "1"}, ROOT)
    assert proc.returncode == 0, proc.stderr
    for key in ("skelfast", "torch", "cpu_kernels", "kernels_available", "backend_choices", "devices"):
        assert key in proc.stdout


@pytest.mark.skipif(torch.version.cuda is not None, reason="checks CPU-only torch")
def test_forced_cuda_build_on_cpu_torch_fails_fast():
    proc = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "SKELFAST_FORCE_CUDA": "1"}, timeout=120)
    assert proc.returncode != 0
    assert "CPU-only torch cannot link CUDA extensions" in proc.stderr + proc.stdout


def test_no_cuda_flag_wins():
    code = "import runpy, sys; sys.argv=['setup.py','--name']; runpy.run_path('setup.py')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "SKELFAST_NO_CUDA": "1", "SKELFAST_FORCE_CUDA": "1"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "CUDA kernels OFF (SKELFAST_NO_CUDA=1)" in proc.stdout


def test_triton_launchers_run_on_their_inputs_device(monkeypatch):
    """Triton launches on the current CUDA device, so every Triton registration enters the first
    CUDA argument's device (here fake cuda:1 tensors; torch.cuda.device is recorded, not entered,
    since this build has no CUDA). CPU arguments (TRITON_INTERPRET tests) enter nothing."""
    from contextlib import contextmanager

    from torch._subclasses.fake_tensor import FakeTensorMode

    entered, seen_inside = [], []

    @contextmanager
    def fake_device(dev):
        entered.append(torch.device(dev))
        yield

    monkeypatch.setattr(torch.cuda, "device", fake_device)
    launcher = _backend.on_input_device(lambda *a, **k: seen_inside.append(list(entered)) or "ran")

    assert launcher(torch.zeros(2), 3, tau=0.1) == "ran"
    assert entered == [] and seen_inside == [[]]
    with FakeTensorMode():
        on_1, on_0 = torch.empty(2, device="cuda:1"), torch.empty(2, device="cuda:0")
        assert launcher(None, [on_1, on_0], on_0) == "ran"  # a list argument comes first
    assert entered == [torch.device("cuda:1")]
    assert seen_inside[-1] == [torch.device("cuda:1")]  # the launcher ran inside the guard


def test_triton_cuda_registrations_are_device_guarded(monkeypatch):
    """register_triton_for_cuda and attach_triton register the guarded launchers, not the bare ones."""
    registered = []

    class RecordingLibrary:
        def __init__(self, *args):
            pass

        def impl(self, op, fn, key):
            registered.append((op, fn, key))

    monkeypatch.setattr(torch.library, "Library", RecordingLibrary)
    monkeypatch.setattr(_backend.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(_backend, "_triton_cuda_libs", [])
    monkeypatch.setattr(_backend, "_triton_lib", None)

    def launcher(x):
        return x

    assert _backend.register_triton_for_cuda({"some_op": launcher})
    monkeypatch.setattr(_backend, "_TRITON_KERNELS", {"other_op": (launcher, {})})
    _backend.attach_triton("CUDA")
    assert [(op, key) for op, _, key in registered] == [("some_op", "CUDA"), ("other_op", "CUDA")]
    for _, fn, _ in registered:
        assert fn is not launcher and fn.__wrapped__ is launcher
