"""Write full-size random-weight checkpoints with the exact architecture of the real models.

No machine here reaches the Hugging Face hub, so benchmarks run on random weights with the real
shapes (:func:`testkit.checkpoints.build_full`: SigLIP-base patch16/512 vision tower, SmolLM2-135M
text model, scale factor 4, longest edge 2048 with 512 px tiles). Throughput then matches
vidore/colSmol-256M and SmolVLM-256M-Instruct even though the outputs mean nothing.

    python bench/make_checkpoints.py OUT_DIR      # writes OUT_DIR/encoder and OUT_DIR/generator
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testkit.checkpoints import build_full  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    t = time.perf_counter()
    paths = build_full(args.out)
    print(f"wrote {paths['encoder']} and {paths['generator']} in {time.perf_counter() - t:.0f}s")


if __name__ == "__main__":
    main()
