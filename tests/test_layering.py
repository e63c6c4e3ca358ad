"""Dependencies point one way: the reference trainers never import the plug-in, and the plug-in's
adapters know the trainers by attribute names only.

A reference trainer (``trainers/<method>.py``, installed as ``prompt_diffusion.trainers``) must be
readable and usable without prompt diffusion; only ``pd_variants.py`` registers the ``<Name>PD``
variants. The adapters and the modules both sides share (``clip_prompting``, ``prompt_methods``)
import no trainer. Checked on the parsed import statements, so an import inside a function counts too.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAINERS = ROOT / "trainers"
PACKAGE = ROOT / "prompt_diffusion"
# the plug-in's modules (adapters, wrapper) and what imports them (the package __init__ via pd_variants)
PLUG_IN = ("prompt_diffusion.adapters", "prompt_diffusion.wrapper")
REGISTERS_PD_VARIANTS = {"__init__.py", "pd_variants.py"}


def imported_modules(path: Path, package: str = "prompt_diffusion.trainers"):
    """Absolute names of every module ``path`` imports (relative imports resolved in ``package``)."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package if node.level else ""
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


SHARED_BY_BOTH = sorted([*(PACKAGE / "adapters").glob("*.py"), PACKAGE / "clip_prompting.py", PACKAGE / "prompt_methods.py"])


@pytest.mark.parametrize("path", SHARED_BY_BOTH, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_adapters_and_shared_modules_import_no_trainer(path):
    offending = sorted({name for name in imported_modules(path, "prompt_diffusion.adapters")
                        if name == "prompt_diffusion.trainers" or name.startswith("prompt_diffusion.trainers.")
                        or name == "trainers" or name.startswith("trainers.")})
    assert not offending, f"{path.relative_to(PACKAGE)} imports a reference trainer: {offending}"


PURE_TORCH = sorted([*(PACKAGE / "diffusion").glob("*.py"), *(PACKAGE / "generators").glob("*.py"),
                     PACKAGE / "test_time.py"])
# what the diffusion core, the generators and the per-image test-time rules may import besides the
# standard library (and torchvision)
PURE_TORCH_ALLOWED = ("torch", "numpy", "tqdm", "prompt_diffusion.diffusion", "prompt_diffusion.generators")
# one way: diffusion/ implements the generator interface of generators/; generators/ never imports diffusion/
# (prompt_diffusion.generator_registry, above both, names them all)


@pytest.mark.parametrize("path", PURE_TORCH, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_diffusion_generators_and_test_time_rules_are_pure_torch(path):
    """``diffusion/``, ``generators/``, ``test_time.py`` never import CLIP, Dassl, yacs or the rest of the plug-in."""
    package = f"prompt_diffusion.{path.parent.name}" if path.parent != PACKAGE else "prompt_diffusion"
    third_party = sorted({name for name in imported_modules(path, package)
                          if name.split(".")[0] in ("clip", "dassl", "yacs", "prompt_diffusion", "trainers")
                          and not any(name == root or name.startswith(root + ".") for root in PURE_TORCH_ALLOWED)})
    assert not third_party, f"{path.relative_to(PACKAGE)} imports {third_party}"
    if path.parent.name == "generators":
        back = sorted(name for name in imported_modules(path, package) if name.startswith("prompt_diffusion.diffusion"))
        assert not back, f"{path.relative_to(PACKAGE)} imports {back}: generators/ must not depend on diffusion/"


# the method as one module any loop can hold: it needs neither Dassl nor the engine nor yacs
METHOD_CORE = [PACKAGE / "method.py", PACKAGE / "after_training.py", PACKAGE / "stats.py"]
# the library below the command line: the core, the Dassl shell and what the results read
LIBRARY = sorted(p for p in PACKAGE.rglob("*.py") if "commands" not in p.parts and p.name not in ("cli.py",))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("path", METHOD_CORE, ids=lambda p: p.name)
def test_the_method_needs_no_dassl_engine_or_yacs(path):
    package = module_name(path).rpartition(".")[0]
    offending = sorted({name for name in imported_modules(path, package)
                        if name.split(".")[0] in ("dassl", "yacs") or name.startswith("prompt_diffusion.engine")})
    assert not offending, f"{path.name} imports {offending}"


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_diagnostics_is_a_leaf_and_the_core_never_imports_the_results(path):
    """``diagnostics`` measures, read-only: only the command line imports it. The method, its Dassl
    shell and the adapters, generators and samplers under them never import ``results`` either."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    imported = set(imported_modules(path, package))
    assert not any(i == "prompt_diffusion.diagnostics" or i.startswith("prompt_diffusion.diagnostics.")
                   for i in imported), f"{name} imports the diagnostics"
    core = name in ("prompt_diffusion.method", "prompt_diffusion.after_training", "prompt_diffusion.wrapper",
                    "prompt_diffusion.stats", "prompt_diffusion.generator_registry") or name.startswith(
        ("prompt_diffusion.adapters", "prompt_diffusion.diffusion", "prompt_diffusion.generators"))
    if core:
        assert not any(i.startswith("prompt_diffusion.results") for i in imported), f"{name} imports the results"


def test_the_leaf_check_sees_an_import_of_the_diagnostics():
    """The check can fail: the diagnose command imports the diagnostics."""
    assert "prompt_diffusion.diagnostics" in set(imported_modules(PACKAGE / "commands" / "diagnose.py",
                                                                  "prompt_diffusion.commands"))
