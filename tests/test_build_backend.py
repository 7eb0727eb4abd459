"""The PEP 517 backend shim (tools/build_backend/skelfast_build.py): which torch an isolated build
imports. The full install flows (pip install -e ., pip install <sdist>, python -m build
--no-isolation) take minutes each and were run by hand; CI's own `pip install -e .` is one."""
import importlib
import os
import site
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def backend(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "tools", "build_backend"))
    return importlib.import_module("skelfast_build")


class _Dist:
    def __init__(self, name, version):
        self.metadata, self.version = {"Name": name}, version


def test_build_requirements_hold_no_torch(backend):
    for hook in (backend.get_requires_for_build_wheel, backend.get_requires_for_build_editable,
                 backend.get_requires_for_build_sdist):
        assert not any(r.lower().startswith("torch") for r in hook())


def test_the_installed_torch_is_exposed(backend, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert backend._expose_installed_torch().split("+")[0] == torch.__version__.split("+")[0]


def test_old_or_missing_torch_is_refused_with_the_reason(backend, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(backend.importlib.metadata, "distributions", lambda path: iter([_Dist("torch", "2.9.1")]))
    with pytest.raises(RuntimeError, match="torch 2.9.1 is older than 2.10"):
        backend._expose_installed_torch()
    monkeypatch.setattr(backend.importlib.metadata, "distributions", lambda path: iter([_Dist("numpy", "2.0")]))
    with pytest.raises(RuntimeError, match="no installed torch found"):
        backend._expose_installed_torch()


@pytest.mark.parametrize("version, want", [("2.13.0+cpu", (2, 13)), ("2.10.0a0+git1234", (2, 10)), ("2.9", (2, 9)),
                                           ("3.0.0rc1", (3, 0))])
def test_version_tuple(backend, version, want):
    assert backend._version_tuple(version) == want


@pytest.mark.parametrize("cfg, visible", [("include-system-site-packages = false\n", False),
                                          ("home = /usr/bin\ninclude-system-site-packages = true\n", True),
                                          ("", False)])
def test_base_site_packages_only_where_the_venv_sees_them(backend, monkeypatch, tmp_path, cfg, visible):
    """A venv without system site packages must not build against the base interpreter's torch:
    pip would then install another torch into the venv (off the project machines a CUDA wheel)."""
    (tmp_path / "pyvenv.cfg").write_text(cfg)
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setattr(sys, "base_prefix", "/some/base")
    assert backend._base_site_visible() is visible
    dirs = backend._site_dirs()
    assert any(d.startswith("/some/base") for d in dirs) is visible
    assert site.getusersitepackages() not in dirs   # a venv never imports the user's site-packages


def test_installed_metadata_version_is_the_package_version():
    """The version is written once, in skelfast/__init__.py; setup.py reads it for the metadata."""
    import importlib.metadata
    import skelfast
    try:
        installed = importlib.metadata.version("skelfast")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("skelfast is not pip-installed here (run from a source tree)")
    assert installed == skelfast.__version__
