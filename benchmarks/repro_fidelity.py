"""Fidelity runs of the Xmodel-2.5 recipe at CPU scale (minutes each); same as `slmkit repro all`.

WSD vs cosine at equal tokens; AdamW-only vs AdamW→Muon decay from one stable checkpoint; FP8
(emulated E4M3/E5M2) vs fp32 loss gap; µP LR transfer across 4x width vs standard parametrization.
Each experiment writes results.md / results.json and PNG plots under --out/<experiment>/.

    python benchmarks/repro_fidelity.py [--out runs/repro] [--only fp8] [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    from slmkit.train.experiments import repro

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/repro")
    ap.add_argument("--only", choices=sorted(repro.EXPERIMENTS), action="append")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    tables = []
    for name in args.only or list(repro.EXPERIMENTS):
        res = repro.EXPERIMENTS[name](Path(args.out) / name, quick=args.quick)
        print(res["table"], flush=True)
        tables.append(res["table"])
    (Path(args.out) / "SUMMARY.md").write_text("\n\n".join(tables) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
