"""Set shards in the webdataset layout, shared by MIS (mis.py) and the generators (synth, open_sets, nvs, procedures).

One tar member group per set: `KEY.00.png ... KEY.NN.png` (lossless) and `KEY.json`
(caption, labels, seeds, settings). A shard is written to a temporary name and renamed
when complete, so an interrupted run resumes by skipping the shards that exist.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import multiprocessing
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from PIL import Image
from tqdm import tqdm

Record = dict  # {"key": str, "images": [PIL.Image], "meta": dict}


def shard_path(out: str | Path, prefix: str, index: int) -> Path:
    return Path(out) / f"{prefix}-{index:05d}.tar"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0  # no timestamps: the same records give the same bytes
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, records: Iterable[Record]) -> int:
    """Write records to `path` atomically; returns the number of sets written."""
    tmp = path.with_suffix(".tar.tmp")
    n = 0
    with tarfile.open(tmp, "w") as tar:
        for record in records:
            for i, img in enumerate(record["images"]):
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                _add(tar, f"{record['key']}.{i:02d}.png", buf.getvalue())
            _add(tar, f"{record['key']}.json", json.dumps(record["meta"], sort_keys=True).encode())
            n += 1
    tmp.replace(path)
    return n


def _write_job(job: tuple[Path, range, Callable[[int], Record]]) -> int:
    path, indices, make_record = job
    return write_shard(path, (make_record(i) for i in indices))


def write_shards(
    out: str | Path,
    prefix: str,
    n_sets: int,
    per_shard: int,
    workers: int,
    make_record: Callable[[int], Record],
    rank: int = 0,
    world: int = 1,
) -> list[Path]:
    """Write sets 0..n_sets-1 into shards; this process takes shards rank, rank+world, ...; done ones are skipped."""
    Path(out).mkdir(parents=True, exist_ok=True)
    n_shards = -(-n_sets // per_shard)
    jobs = [
        (shard_path(out, prefix, s), range(s * per_shard, min(n_sets, (s + 1) * per_shard)), make_record)
        for s in range(rank, n_shards, world)
    ]
    todo = [job for job in jobs if not job[0].exists()]
    bar = tqdm(total=sum(len(j[1]) for j in todo), desc=f"{prefix} shards", unit="set", disable=not todo)
    if workers > 1 and len(todo) > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for n in pool.imap_unordered(_write_job, todo):
                bar.update(n)
    else:
        for job in todo:
            bar.update(_write_job(job))
    bar.close()
    return [job[0] for job in jobs]


def read_shard(path: str | Path) -> Iterator[Record]:
    """The sets of one shard, in order, with images decoded to RGB."""
    current, images, meta = None, {}, None
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = Path(member.name).name.partition(".")
            if key != current and current is not None:
                yield _record(current, images, meta)
                images, meta = {}, None
            current = key
            data = tar.extractfile(member).read()
            if ext == "json":
                meta = json.loads(data)
            elif ext.endswith(("png", "jpg", "jpeg", "webp")):
                with Image.open(io.BytesIO(data)) as img:
                    images[ext] = img.convert("RGB")
    if current is not None:
        yield _record(current, images, meta)


def _record(key: str, images: dict, meta: dict | None) -> Record:
    return {"key": key, "images": [images[k] for k in sorted(images)], "meta": meta or {}}


def read_shards(paths: Iterable[str | Path]) -> Iterator[Record]:
    for path in paths:
        yield from read_shard(path)


def write_shards_cli(doc: str, set_record: Callable[..., Record], count: str, default: int, per_shard: int,
                     argv: list[str] | None = None, set_size: int | None = None,
                     splits: tuple[str, ...] = ("train", "heldout")) -> None:  # fmt: skip
    """`python -m train.data.<generator> --out DIR --split train|heldout --<count> N ...`: its sets as shards."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--split", choices=splits, default="train")
    p.add_argument(f"--{count}", type=int, default=default, dest="count")
    p.add_argument("--per-shard", "--sets-per-shard", type=int, default=per_shard, dest="per_shard")
    if set_size is not None:
        p.add_argument("--set-size", type=int, default=set_size, help="images per set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    sized = {"k": args.set_size} if set_size is not None else {}
    make = functools.partial(set_record, args.split, seed=args.seed, **sized)
    write_shards(args.out, args.split, args.count, args.per_shard, args.workers, make)
