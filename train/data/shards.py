"""Set shards in the webdataset layout, written and read with the `webdataset` library, shared by MIS (mis.py) and
the generators (synth, open_sets, nvs, procedures).

One sample per set: `KEY.00.png ... KEY.NN.png` (lossless) and `KEY.json` (caption, labels, seeds,
settings). A shard is written to a local temporary name and renamed when complete, so an
interrupted run resumes by skipping the shards that exist; its members carry no timestamp, owner
or mode of their own, so the same records give the same bytes (those of the plain `tarfile` writer
this replaced: older shards read unchanged). Shards are read from anything webdataset opens: local
paths, `http(s)://` URLs (through curl), `pipe:CMD` (the command's standard output, e.g.
`pipe:aws s3 cp s3://bucket/train-00000.tar -`), each with brace patterns (`train-{00000..00999}.tar`).
"""

from __future__ import annotations

import argparse
import functools
import glob
import io
import json
import multiprocessing
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import braceexpand
import webdataset as wds
from PIL import Image
from tqdm import tqdm

Record = dict  # {"key": str, "images": [PIL.Image], "meta": dict}
Sample = dict  # webdataset's: {"__key__": str, "__url__": str, "00.png": bytes, ..., "json": bytes}
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
URL = re.compile(r"^[a-z][a-z0-9+.-]+:")  # http:, https:, pipe:, gs:, ... (a one-letter one is a Windows drive)


def shard_path(out: str | Path, prefix: str, index: int) -> Path:
    return Path(out) / f"{prefix}-{index:05d}.tar"


def encode(record: Record) -> Sample:
    """A set as webdataset sample: PNG bytes per image, the meta as sorted JSON."""
    sample = {"__key__": record["key"], "json": json.dumps(record["meta"], sort_keys=True).encode()}
    for i, img in enumerate(record["images"]):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        sample[f"{i:02d}.png"] = buf.getvalue()
    return sample


def write_shard(path: Path, records: Iterable[Record]) -> int:
    """Write records to `path` atomically; returns the number of sets written."""
    tmp = path.with_suffix(".tar.tmp")
    n = 0
    # the header fields tarfile gives a bare member (no time, owner or group; PAX): the same records, the same bytes
    header = dict(user="", group="", mode=0o644, mtime=0, format="PAX_FORMAT", encoder=False)
    with tmp.open("wb") as f, wds.TarWriter(f, **header) as sink:
        for record in records:
            sink.write(encode(record))
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


def shard_urls(spec: str) -> list[str]:
    """Shards named by a comma-separated list of folders (their *.tar), globs, URLs and brace patterns.

    Local names are checked here (an empty match is an error); URLs are opened only when read.
    """
    urls = []
    for part in re.split(r",(?![^{]*})", spec):  # commas outside braces: `a-{0,1}.tar,b.tar` is two parts
        for name in braceexpand.braceexpand(part):
            if URL.match(name):
                urls.append(name)
            elif Path(name).is_dir():
                urls += sorted(str(p) for p in Path(name).glob("*.tar"))
            else:
                urls += sorted(glob.glob(name))
    if not urls:
        raise FileNotFoundError(f"no shards match {spec!r}")
    return urls


def samples(urls: Iterable[str]) -> Iterator[Sample]:
    """The sets of these shards in order, undecoded (bytes): what a shuffle buffer holds and a resume skips."""
    return wds.tarfile_samples({"url": str(url)} for url in urls)


def decode(sample: Sample) -> Record:
    """A webdataset sample as a record, its images decoded to RGB in index order."""
    exts = sorted((k for k in sample if k.lower().endswith(IMAGE_EXTS)), key=lambda k: (len(k.split(".")[0]), k))
    images = []
    for ext in exts:
        with Image.open(io.BytesIO(sample[ext])) as img:
            images.append(img.convert("RGB"))
    meta = json.loads(sample["json"]) if "json" in sample else {}
    return {"key": sample["__key__"], "images": images, "meta": meta}


def read_shard(url: str | Path) -> Iterator[Record]:
    """The sets of one shard (a path or any URL webdataset opens), in order, with images decoded to RGB."""
    return map(decode, samples([url]))


def read_shards(urls: Iterable[str | Path]) -> Iterator[Record]:
    return map(decode, samples(urls))


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
