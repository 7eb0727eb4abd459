"""PEP 517 backend shim: setuptools, plus `torch==<installed version>` as a build requirement.

pip builds in an isolated environment by default; without torch there the build fails, and with a
bare `torch` requirement it pulls the newest (CUDA) wheel, which is not the torch that will run the
extension. This shim pins the build to the torch already installed in the target interpreter.
It must not call setuptools' own get_requires hooks: those execute setup.py, which imports torch.
"""
import importlib.metadata
import sysconfig

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (re-export every other hook)

_BASE = ["setuptools>=77", "wheel"]


def _installed_torch():
    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    for dist in importlib.metadata.distributions(path=paths):
        if (dist.metadata["Name"] or "").lower() == "torch":
            return f"torch=={dist.version}"
    return "torch>=2.10"


def get_requires_for_build_wheel(config_settings=None):
    return _BASE + [_installed_torch()]


def get_requires_for_build_editable(config_settings=None):
    return _BASE + [_installed_torch()]


def get_requires_for_build_sdist(config_settings=None):
    return list(_BASE)


__all__ = [name for name in dir(_setuptools) if not name.startswith("_")] + [
    "get_requires_for_build_wheel", "get_requires_for_build_editable", "get_requires_for_build_sdist"]
