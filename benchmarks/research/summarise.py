"""Tables from benchmarks/research/results.jsonl: mean (and per-seed) OA per tag / encoder / protocol / split.

    python benchmarks/research/summarise.py [--tags PREFIX ...] [--seeds 10 11] [--metric OA]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "results.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tags", nargs="*", default=[])
    ap.add_argument("--seeds", type=int, nargs="+", default=[10, 11])
    ap.add_argument("--metric", default="OA")
    a = ap.parse_args()
    groups: dict[tuple, dict[int, float]] = defaultdict(dict)
    for line in OUT.read_text().splitlines():
        r = json.loads(line)
        if a.tags and not any(r["tag"].startswith(t) for t in a.tags):
            continue
        if r.get("seed") not in a.seeds or a.metric not in r:
            continue
        key = (r["tag"], r["encoder"], r["protocol"], r.get("split", r.get("dataset", "")))
        groups[key][r["seed"]] = r[a.metric]
    print(f"| tag | encoder | protocol | split | {a.metric} mean ± std | per seed ({', '.join(map(str, a.seeds))}) |")
    print("|---|---|---|---|---|---|")
    for (tag, enc, prot, split), by_seed in groups.items():
        vals = [by_seed[s] for s in a.seeds if s in by_seed]
        cells = " ".join(f"{by_seed[s]:.3f}" if s in by_seed else "-" for s in a.seeds)
        print(f"| {tag} | {enc} | {prot} | {split} | {np.mean(vals):.3f} ± {np.std(vals):.3f} | {cells} |")


if __name__ == "__main__":
    main()
