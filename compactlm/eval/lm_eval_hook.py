"""Registers the `compactlm` model in lm-eval's registry whenever lm-eval is imported, so that the
plain `lm_eval --model compactlm --model_args pretrained=PATH ...` command works.

lm-eval 0.4 has no plugin mechanism (no entry points): its model registry is filled by its own
modules. `compactlm eval --install-lm-eval-plugin` writes a one-line `compactlm_lm_eval.pth` into
site-packages that imports this module at interpreter start-up. This module imports nothing heavy:
it puts a finder on `sys.meta_path` that waits for `lm_eval.api.registry` to be imported and then
registers "compactlm" lazily (as the string "compactlm.eval.harness:CompactLM"; torch and the
backend load only when the model is asked for). `--uninstall-lm-eval-plugin` removes the file.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import sysconfig
from pathlib import Path

REGISTRY_MODULE = "lm_eval.api.registry"
TARGET = "compactlm.eval.harness:CompactLM"
PTH_NAME = "compactlm_lm_eval.pth"
PTH_LINE = ("import importlib.util as _u; _u.find_spec('compactlm') is not None and "
            "__import__('compactlm.eval.lm_eval_hook')\n")


def register(registry_module) -> None:
    try:
        if "compactlm" not in registry_module.model_registry:
            registry_module.model_registry.register("compactlm", target=TARGET)
    except Exception:  # never break lm-eval's own start-up
        pass


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        register(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != REGISTRY_MODULE:
            return None
        sys.meta_path.remove(self)  # one-shot: find the real module with the other finders
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install_finder() -> None:
    if REGISTRY_MODULE in sys.modules:
        register(sys.modules[REGISTRY_MODULE])
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def site_dir() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def install_pth(directory: str | Path | None = None) -> Path:
    path = Path(directory or site_dir()) / PTH_NAME
    path.write_text(PTH_LINE)
    return path


def uninstall_pth(directory: str | Path | None = None) -> Path | None:
    path = Path(directory or site_dir()) / PTH_NAME
    if path.is_file():
        path.unlink()
        return path
    return None


install_finder()
