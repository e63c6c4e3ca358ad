"""Which engine ``prompt_diffusion.engine`` hands on: ``PD_ENGINE=auto|dassl|builtin``.

``auto`` (default) uses real Dassl when it imports, else the built-in engine; if Dassl is
installed but fails to import, ``auto`` says why (a warning) and uses the built-in engine.
"""
import importlib
import importlib.util
import os
import warnings

ENGINE_ENV = "PD_ENGINE"
ENGINE_CHOICES = ("auto", "dassl", "builtin")
_DASSL_MODULES = ("dassl.config", "dassl.data", "dassl.engine", "dassl.optim", "dassl.utils",
                  "dassl.evaluation", "dassl.metrics")


def requested_engine() -> str:
    """The value of ``PD_ENGINE`` (default ``auto``), checked."""
    requested = os.environ.get(ENGINE_ENV, "auto").strip().lower() or "auto"
    if requested not in ENGINE_CHOICES:
        raise ValueError(f"{ENGINE_ENV}={requested!r} is not allowed; use one of {list(ENGINE_CHOICES)}")
    return requested


def select_engine() -> str:
    """``"dassl"`` or ``"builtin"`` according to ``PD_ENGINE`` and whether Dassl imports."""
    requested = requested_engine()
    if requested == "builtin":
        return "builtin"
    if requested == "auto" and importlib.util.find_spec("dassl") is None:
        return "builtin"
    try:
        for module in _DASSL_MODULES:
            importlib.import_module(module)
    except Exception as error:  # Dassl imports many optional packages; any failure means "not usable"
        if requested == "dassl":
            raise ImportError(
                f"{ENGINE_ENV}=dassl but Dassl does not import ({type(error).__name__}: {error}); "
                f"install Dassl.pytorch or set {ENGINE_ENV}=builtin"
            ) from error
        warnings.warn(
            f"{ENGINE_ENV}=auto: Dassl is installed but does not import ({type(error).__name__}: "
            f"{error}); using the built-in engine"
        )
        return "builtin"
    return "dassl"
