"""Name -> class registries (Dassl's ``Registry`` and ``check_availability``).

Trainers and datasets register themselves by class name; configs pick them by that name
(``TRAINER.NAME``, ``DATASET.NAME``). Unknown names raise Dassl's error message, which lists the
registered names and the closest match.
"""
from difflib import SequenceMatcher
from typing import Callable, Dict, List, Optional, Sequence


def get_most_similar_str_to_a_from_b(a: str, b: Sequence[str]) -> Optional[str]:
    """Return the string of ``b`` most similar to ``a`` (``None`` when ``b`` is empty)."""
    best_ratio, chosen = 0.0, None
    for candidate in b:
        ratio = SequenceMatcher(None, a, candidate).ratio()
        if ratio >= best_ratio:
            best_ratio, chosen = ratio, candidate
    return chosen


def check_availability(requested: str, available: Sequence[str]) -> None:
    """Raise Dassl's ``ValueError`` when ``requested`` is not one of ``available``."""
    if requested not in available:
        closest = get_most_similar_str_to_a_from_b(requested, available)
        raise ValueError(
            f"The requested one is expected to belong to {list(available)}, "
            f"but got [{requested}] (do you mean [{closest}]?)"
        )


class Registry:
    """A name -> object mapping filled by ``@REGISTRY.register()`` (fvcore/Dassl semantics)."""

    def __init__(self, name: str):
        self._name = name
        self._obj_map: Dict[str, Callable] = {}

    def _do_register(self, name: str, obj: Callable, force: bool = False) -> None:
        if name in self._obj_map and not force:
            raise KeyError(
                f'An object named "{name}" was already registered in "{self._name}" registry'
            )
        self._obj_map[name] = obj

    def register(self, obj: Optional[Callable] = None, force: bool = False):
        """Register ``obj`` under its ``__name__``; without ``obj``, return a decorator."""
        if obj is None:

            def decorator(fn_or_class):
                self._do_register(fn_or_class.__name__, fn_or_class, force=force)
                return fn_or_class

            return decorator
        self._do_register(obj.__name__, obj, force=force)
        return obj

    def get(self, name: str) -> Callable:
        if name not in self._obj_map:
            raise KeyError(f'Object name "{name}" does not exist in "{self._name}" registry')
        return self._obj_map[name]

    def registered_names(self) -> List[str]:
        return list(self._obj_map.keys())

    def __contains__(self, name: str) -> bool:
        return name in self._obj_map


TRAINER_REGISTRY = Registry("TRAINER")
DATASET_REGISTRY = Registry("DATASET")
EVALUATOR_REGISTRY = Registry("EVALUATOR")
