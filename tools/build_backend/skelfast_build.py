"""PEP 517 backend shim: setuptools, plus `torch==<installed version>` as a build requirement.

pip builds in an isolated environment by default; without torch there the build fails, and with a
bare `torch` requirement it pulls the newest (CUDA) wheel, which is not the torch that will run the
extension. This shim pins the build to the torch already installed in the target interpreter.
It must not call setuptools' own get_requires hooks: those execute setup.py, which imports torch.
"""
import importlib.metadata
import sys
import sysconfig

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (re-export every other hook)

_BASE = ["setuptools>=77", "wheel"]


def _site_dirs():
    """site-packages of this interpreter and, for a venv made with --system-site-packages, of the
    base interpreter (pip runs this hook in the target interpreter with an isolated sys.path)."""
    dirs = []
    for base in (None, sys.base_prefix):
        vars_ = None if base is None else {"base": base, "platbase": base}
        paths = sysconfig.get_paths(vars=vars_)
        dirs += [paths["purelib"], paths["platlib"]]
    return list(dict.fromkeys(dirs))


def _installed_torch():
    for dist in importlib.metadata.distributions(path=_site_dirs()):
        if (dist.metadata["Name"] or "").lower() == "torch":
            return f"torch=={dist.version}"
    # Never fall back to a bare `torch` requirement: pip would pull the newest multi-GB CUDA build
    # into the build environment, and the binary would target a torch that will not run it.
    raise RuntimeError(
        "skelfast: no installed torch found to build against. Install torch first "
        "(CPU: `pip install torch==2.13.0`; GPU: the CUDA build you use), then `pip install .`.")


def get_requires_for_build_wheel(config_settings=None):
    return _BASE + [_installed_torch()]


def get_requires_for_build_editable(config_settings=None):
    return _BASE + [_installed_torch()]


def get_requires_for_build_sdist(config_settings=None):
    return list(_BASE)


__all__ = [name for name in dir(_setuptools) if not name.startswith("_")] + [
    "get_requires_for_build_wheel", "get_requires_for_build_editable", "get_requires_for_build_sdist"]
