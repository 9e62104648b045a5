"""What one ``metrics.csv`` row costs the training loop as a run grows: appending the row (what ``MetricsCSV`` does
since 2026-12-05) against writing the whole table (what it did every ``train.log_every`` steps before; it still does
at the start and when a column appears), both atomic / fsynced, with DINO's ten columns.

    python benchmarks/bench_metrics_csv.py           # 1,000 / 10,000 / 30,000 rows (300k steps at log_every 10)

Measured 2026-12-05 on the 2-core CPU (local disk, shared with other jobs; two runs):

| rows in the table | append one row | write the whole table |
|---|---|---|
| 1,000 | 0.2 ms | 9 ms |
| 10,000 | 0.2 ms | 78 ms |
| 30,000 | 0.7 ms | 247 ms |
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geomed_ssl.train.callbacks import MetricsCSV  # noqa: E402

COLUMNS = ["loss", "lr", "dino_loss", "ibot_loss", "koleo", "teacher_entropy", "kl_teacher_student", "teacher_std",
           "collapse", "teacher_temp"]


def timed(fn, repeat: int) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def main(sizes: list[int]) -> None:
    print("| rows in the table | append one row | write the whole table |\n|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            m = MetricsCSV(Path(tmp) / f"metrics_{n}.csv", every=10)
            m.rows = [{"step": 10 * (i + 1), **{c: 0.123456789 * i for c in COLUMNS}} for i in range(n)]
            whole = timed(m._write, 5)
            row = {"step": 10 * (n + 1), **{c: 0.5 for c in COLUMNS}}
            append = timed(lambda: m._append(row), 50)
            print(f"| {n:,} | {append * 1e3:.1f} ms | {whole * 1e3:.0f} ms |")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000, 10_000, 30_000], help="table sizes to time")
    main(ap.parse_args().rows)
