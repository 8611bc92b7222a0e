"""Wall time of `import ddpm` in fresh interpreters: total, and ddpm's own share after torch.

Each repeat starts one new process that imports torch, then ddpm, timing both; reports the
median and range over ``repeats`` processes, and whether matplotlib was imported.

    python benchmarks/import_time.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

PROBE = """
import sys, time, json
t0 = time.perf_counter(); import torch; t1 = time.perf_counter(); import ddpm
t2 = time.perf_counter()
print(json.dumps([t1 - t0, t2 - t1, t2 - t0, "matplotlib" in sys.modules]))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    rows = [
        json.loads(subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                                  check=True).stdout)
        for _ in range(args.repeats)
    ]  # fmt: skip
    result = {"repeats": args.repeats, "matplotlib_imported": any(r[3] for r in rows)}
    for i, name in enumerate(("torch_seconds", "ddpm_after_torch_seconds", "total_seconds")):
        values = [r[i] for r in rows]
        result[name] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
