"""``benchmarks/gpu_check.py`` end to end in its dry mode (CPU, tiny scale): the CUDA tests are
collected (and skip without a GPU), and every section of the cost table is printed."""
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gpu_check_dry_run_prints_every_table(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu_check

    assert gpu_check.main(["--dry-run", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    scale = gpu_check.DRY
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    for classes in scale.classes:
        for batch in scale.batches:
            assert sum(row.startswith(f"| {classes} | {batch} | ") for row in rows) == 2  # streamed + final table
    for host in gpu_check.MULTIMODAL_HOSTS:
        for batch in scale.batches:
            assert any(row.startswith(f"| {host} | {batch} | ") and row.endswith("x |") for row in rows), host
    assert "| CoCoOpPD | n/a (CPU) | n/a (CPU) |" in rows
    assert "paper: +45 ms per prediction" in out
    assert "PD NFE 10" in out and "CUDA tests:" in out
