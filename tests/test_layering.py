"""Dependencies point one way: the reference trainers never import the plug-in.

A reference trainer (``trainers/<method>.py``, installed as ``prompt_diffusion.trainers``) must be
readable and usable without prompt diffusion; only ``pd_variants.py`` registers the ``<Name>PD``
variants. Checked on the parsed import statements, so an import inside a function counts too.
"""
import ast
from pathlib import Path

import pytest

TRAINERS = Path(__file__).resolve().parents[1] / "trainers"
# the plug-in's modules (adapters, wrapper) and what imports them (the package __init__ via pd_variants)
PLUG_IN = ("prompt_diffusion.adapters", "prompt_diffusion.wrapper")
REGISTERS_PD_VARIANTS = {"__init__.py", "pd_variants.py"}


def imported_modules(path: Path):
    """Absolute names of every module ``path`` imports (relative imports resolved in ``prompt_diffusion.trainers``)."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "prompt_diffusion.trainers" if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


def test_the_method_modules_are_all_checked():
    names = {path.name for path in TRAINERS.glob("*.py")}
    assert {"coop.py", "cocoop.py", "vpt.py", "ivlp.py", "maple.py", "promptsrc.py", "coprompt.py",
            "zsclip.py"} <= names


@pytest.mark.parametrize("path", sorted(p for p in TRAINERS.glob("*.py") if p.name not in REGISTERS_PD_VARIANTS),
                         ids=lambda p: p.name)
def test_reference_trainer_does_not_import_the_plug_in(path):
    offending = sorted({name for name in imported_modules(path)
                        if any(name == root or name.startswith(root + ".") for root in PLUG_IN)
                        or name == "prompt_diffusion.trainers.pd_variants"})
    assert not offending, f"trainers/{path.name} imports the plug-in: {offending}"


def test_import_parser_sees_the_plug_in_where_it_is_imported():
    """The check can fail: pd_variants registers the PD variants through the wrapper."""
    assert "prompt_diffusion.wrapper.DiffusionPromptWrapper" in set(imported_modules(TRAINERS / "pd_variants.py"))
