"""Images/s reading the same shards with the plain `tarfile` reader (before) and with `webdataset` (now).

MIS-synth sets are written once to a temporary folder; the two readers then alternate in every
repeat, so that a slow phase of a shared machine hits both alike. Two passes each: decoded (PNG to
RGB, as training reads) and bytes only (what a resume skips). The ratio is the median of the paired
ratios, webdataset over tarfile.

    python bench/shard_reading.py --sets 400 --k 8 --repeats 5
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from PIL import Image

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[1])
from train.data import synth
from train.data.shards import read_shards, samples, shard_urls, write_shards


def tarfile_sets(paths: list[str], decoded: bool) -> Iterator[tuple[str, dict]]:
    """The reader train/data/shards.py had before webdataset: members grouped by key, images decoded to RGB."""
    for path in paths:
        current, images = None, {}
        with tarfile.open(path) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = Path(member.name).name.partition(".")
                if key != current and current is not None:
                    yield current, images
                    images = {}
                current, data = key, tar.extractfile(member).read()
                if ext == "json":
                    json.loads(data)
                elif decoded:
                    with Image.open(io.BytesIO(data)) as img:
                        images[ext] = img.convert("RGB")
                else:
                    images[ext] = data
        if current is not None:
            yield current, images


def rate(read: Callable[[], Iterator], images_per_set: int) -> float:
    begin = time.perf_counter()
    n = sum(1 for _ in read())
    return n * images_per_set / (time.perf_counter() - begin)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", type=int, default=400)
    p.add_argument("--k", type=int, default=8, help="images per set")
    p.add_argument("--per-shard", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_shards(tmp, "train", args.sets, args.per_shard, 1, lambda i: synth.set_record("train", i, args.k))
        urls = shard_urls(tmp)
        size = sum(Path(u).stat().st_size for u in urls) / 2**20
        passes = {
            "decoded": (lambda: tarfile_sets(urls, True), lambda: read_shards(urls)),
            "bytes only": (lambda: tarfile_sets(urls, False), lambda: samples(urls)),
        }
        print(f"{args.sets} sets of {args.k} {synth.SIZE}-px PNGs in {len(urls)} shards ({size:.0f} MiB), one thread")
        for name, (old, new) in passes.items():
            rate(new, args.k)  # warm-up: the page cache holds the shards for both
            rows = [(rate(old, args.k), rate(new, args.k)) for _ in range(args.repeats)]
            t, w = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
            ratio = statistics.median(r[1] / r[0] for r in rows)
            print(f"{name}: tarfile {t:.0f} images/s, webdataset {w:.0f} images/s, ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
