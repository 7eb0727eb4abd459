"""PEP 517 backend shim: setuptools, built against the torch already installed in the target
interpreter, which the isolated build environment is given read access to.

pip builds in an isolated environment by default, and setup.py imports torch. Installing torch into
that environment (a `torch==<installed version>` build requirement) needs pip to find the very same
wheel again: a local build such as `2.13.0+cpu` or `2.11.0+cu130` is on no default index, and a
bare `torch` requirement pulls the newest multi-GB CUDA wheel from PyPI, which is not the torch
that will run the extension. So the build requirements hold no torch; each build hook appends the
site-packages directory that holds the installed torch to sys.path (after the isolated
environment's own entries, so its setuptools still wins) and setup.py imports that torch. No
download, and the binary is compiled against exactly the torch that will load it.
"""
import importlib.metadata
import os
import site
import sys
import sysconfig

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (re-export every other hook)

_BASE = ["setuptools>=77", "ninja"]   # setuptools builds wheels itself since 70.1; ninja: parallel compiles
MIN_TORCH = (2, 10)   # TORCH_TARGET_VERSION of the stable ABI (setup.py), and the runtime requirement


def _base_site_visible() -> bool:
    """Whether the target interpreter sees the base interpreter's site-packages: it is not a venv,
    or a venv made with --system-site-packages."""
    if sys.prefix == sys.base_prefix:
        return True
    try:
        with open(os.path.join(sys.prefix, "pyvenv.cfg")) as fh:
            for line in fh:
                key, _, value = line.partition("=")
                if key.strip().lower() == "include-system-site-packages":
                    return value.strip().lower() == "true"
    except OSError:
        pass
    return False


def _site_dirs():
    """site-packages the target interpreter imports from (pip runs these hooks in the target
    interpreter, with an isolated sys.path): its own, where it sees them the base's, and outside a
    venv the user's (`pip install --user`; pip's isolation hides it from this process only)."""
    bases = [None] + ([sys.base_prefix] if _base_site_visible() else [])
    dirs = []
    for base in bases:
        vars_ = None if base is None else {"base": base, "platbase": base}
        paths = sysconfig.get_paths(vars=vars_)
        dirs += [paths["purelib"], paths["platlib"]]
    if sys.prefix == sys.base_prefix:
        dirs.append(site.getusersitepackages())
    return list(dict.fromkeys(dirs))


def _version_tuple(version: str):
    parts = []
    for p in version.split("+")[0].split(".")[:2]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _expose_installed_torch() -> str:
    """Append the site-packages holding the target's torch to sys.path; returns its version."""
    for site in _site_dirs():
        for dist in importlib.metadata.distributions(path=[site]):
            if (dist.metadata["Name"] or "").lower() != "torch":
                continue
            if _version_tuple(dist.version) < MIN_TORCH:
                raise RuntimeError(
                    f"skelfast: the installed torch {dist.version} is older than "
                    f"{'.'.join(map(str, MIN_TORCH))}, the oldest this build supports; upgrade torch "
                    "first (CPU: `pip install torch==2.13.0`; GPU: the CUDA build you use), then `pip install .`.")
            if site not in sys.path:
                sys.path.append(site)
            return dist.version
    # Never fall back to a torch build requirement: pip would pull the newest multi-GB CUDA build
    # into the build environment, and the binary would target a torch that will not run it.
    raise RuntimeError(
        "skelfast: no installed torch found to build against (looked in " + ", ".join(_site_dirs()) +
        "). Install torch first (CPU: `pip install torch==2.13.0`; GPU: the CUDA build you use), "
        "then `pip install .`. pypa/build runs this in an environment of its own that cannot see "
        "your torch: use `python -m build --no-isolation`.")


def get_requires_for_build_wheel(config_settings=None):
    return list(_BASE)


def get_requires_for_build_editable(config_settings=None):
    return list(_BASE)


def get_requires_for_build_sdist(config_settings=None):
    return list(_BASE)


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    _expose_installed_torch()
    return _setuptools.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    _expose_installed_torch()
    return _setuptools.prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _expose_installed_torch()
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _expose_installed_torch()
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)


def build_sdist(sdist_directory, config_settings=None):
    _expose_installed_torch()   # setup.py imports torch (its CUDA decision runs at import)
    return _setuptools.build_sdist(sdist_directory, config_settings)


__all__ = [name for name in dir(_setuptools) if not name.startswith("_")] + [
    "get_requires_for_build_wheel", "get_requires_for_build_editable", "get_requires_for_build_sdist",
    "prepare_metadata_for_build_wheel", "prepare_metadata_for_build_editable", "build_wheel", "build_editable",
    "build_sdist"]
