"""Filling the trainer and dataset registries: this project's, installed plug-ins', the user's own.

``TRAINER_REGISTRY.get(name)`` only knows the classes whose modules were imported. The command
line imports, before it builds a trainer:

1. this project's trainers (and their PD variants) and datasets;
2. every module named in the entry-point group ``prompt_diffusion.plugins`` of an installed
   package (``[project.entry-points."prompt_diffusion.plugins"] my_fork = "my_fork.trainers"``);
3. each ``--import MODULE_OR_FILE``: a dotted module name on ``sys.path`` (``my_fork.trainers``)
   or the path of a ``.py`` file (``path/to/my_trainers.py``; its folder is put on ``sys.path`` so
   it can import its siblings).

A module registers what it defines the usual way (``@TRAINER_REGISTRY.register()``,
``DiffusionPromptWrapper.register(MyTrainer)``) when it is imported.
"""
import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import List, Sequence

ENTRY_POINT_GROUP = "prompt_diffusion.plugins"


class PluginImportError(ImportError):
    """A module given with ``--import`` (or an entry point) that cannot be imported; says which and why."""


def import_user_module(name_or_path: str) -> ModuleType:
    """Import ``name_or_path``: a ``.py`` file (by path) or a dotted module name."""
    path = Path(name_or_path).expanduser()
    if path.suffix == ".py" or path.is_file():
        if not path.is_file():
            raise PluginImportError(f"--import {name_or_path}: no such file")
        path = path.resolve()
        folder = str(path.parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        module_name = path.stem
        if module_name in sys.modules and getattr(sys.modules[module_name], "__file__", None) == str(path):
            return sys.modules[module_name]
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
        return module
    try:
        return importlib.import_module(name_or_path)
    except ModuleNotFoundError as error:
        if error.name and name_or_path.startswith(error.name):
            raise PluginImportError(f"--import {name_or_path}: no module named {error.name!r} on sys.path "
                                    "(give a dotted module name importable from here, or the path of a .py file)"
                                    ) from error
        raise


def entry_point_modules() -> List[str]:
    """The module names of the installed packages' ``prompt_diffusion.plugins`` entry points."""
    return [entry.value.split(":")[0] for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)]


def load_plugins(imports: Sequence[str] = ()) -> List[str]:
    """Import this project's trainers and datasets, the installed plug-ins, then ``imports``;
    returns the names of the plug-in and user modules imported (for the log)."""
    import prompt_diffusion.data  # noqa: F401  (registers the datasets)
    import prompt_diffusion.trainers  # noqa: F401  (registers the trainers and their PD variants)

    loaded = []
    for module_name in entry_point_modules():
        try:
            importlib.import_module(module_name)
        except ImportError as error:
            raise PluginImportError(f"entry point {module_name!r} (group {ENTRY_POINT_GROUP}) "
                                    f"does not import: {error}") from error
        loaded.append(module_name)
    for name in imports:
        import_user_module(name)
        loaded.append(name)
    return loaded
