"""One loader for every kind of image set: batches of sets with a set length sampled per batch.

loader = make_loader("data/mis-synth/train-*.tar", batch_size=8, min_k=2, max_k=6)   # shards (MIS, any task)
loader = make_loader("https://host/mis/train-{00000..00999}.tar", 8, 2, 6)   # shards over HTTP (curl), or
loader = make_loader("pipe:aws s3 cp s3://bucket/mis/train-{00000..00999}.tar -", 8, 2, 6)   # any command's output
loader = make_loader("synth:train", batch_size=8, min_k=2, max_k=6, n_sets=10000)   # MIS-synth, drawn on the fly
loader = make_loader("open:train", 8, 2, 6)            # open-ended sets (open_sets.py); open:heldout, open:hard
loader = make_loader("nvs:train", 8, 2, 5)             # synthetic novel views (nvs.py), in azimuth order
loader = make_loader("procedure:train", 8, 2, 5)       # synthetic procedures (procedures.py), step order
loader = make_loader("folders:data/objaverse", 8, 2, 5)   # real data: one folder of images per set

MIS sets are exchangeable (a batch takes a random subset of each); views and procedure steps are
ordered (a batch takes a window of consecutive images, order kept), also when read from shards
(`python -m train.data.nvs --out data/nvs` writes them; their records say `"ordered": true`).
Shards stream through `webdataset` (train/data/shards.py): each rank and worker reads its own shards,
through a seeded shuffle buffer of `shuffle_buffer` sets; see SetDataset.shard_sets for the exact resume.
batch["pixels"]   (B, K, 3, H, W) in [-1, 1], for the autoencoder
batch["content"], batch["style"]   (B,) labels, -1 where the source has none
"""

from __future__ import annotations

import functools
import itertools
import random
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from m2m.images import load_image, to_model_size, to_tensor
from train.data import nvs, open_sets, procedures, synth
from train.data.shards import decode, samples, shard_urls
from train.data.sprites import load_sprites

GENERATORS = {"synth": synth.set_record, "nvs": nvs.set_record, "procedure": procedures.set_record}
WHOLE = {"nvs", "procedure"}  # generators of ordered sets: drawn whole, cut into windows later
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


class SetDataset(IterableDataset):
    """Image sets from shards or from MIS-synth on the fly, split across ranks and workers, shuffled per epoch."""

    def __init__(
        self, source: str, resolution: int = 128, n_sets: int | None = None, max_set: int = 8, rank: int = 0,
        world: int = 1, shuffle: bool = True, seed: int = 0, shuffle_buffer: int = 64,
    ):  # fmt: skip
        super().__init__()
        self.source, self.resolution, self.n_sets, self.max_set = source, resolution, n_sets, max_set
        self.shuffle_buffer = shuffle_buffer  # shards: sets (undecoded) each worker holds to shuffle
        self.rank, self.world, self.shuffle, self.seed, self.epoch = rank, world, shuffle, seed, 0
        self.resume = (0, 0)  # (batches already taken this epoch, batch size)
        kind, _, rest = source.partition(":")
        self.generator, self.folders, self.shards, self.split = None, None, None, rest
        self.whole = kind in WHOLE
        if kind == "open":  # open-ended sets: this split's drawings are loaded once, here
            if rest not in open_sets.SPLITS:
                raise ValueError(f"{source!r}: the split must be one of {', '.join(open_sets.SPLITS)}")
            self.generator = functools.partial(open_sets.set_record, sprites=load_sprites(rest))
        elif kind in GENERATORS:
            if rest not in ("train", "heldout"):
                raise ValueError(f"{source!r}: the split must be train or heldout")
            self.generator = GENERATORS[kind]
        elif kind == "folders":
            self.folders = set_folders(rest)
        else:
            self.shards = shard_urls(source)  # folders, globs, http(s)://, pipe:, brace patterns

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, batches: int, batch_size: int) -> None:
        """Start the epoch after this rank's first `batches` batches (for an exact resume)."""
        self.resume = (batches, batch_size)

    def _worker(self) -> tuple[int, int, int]:
        """(this worker's place in the epoch's stream, number of workers, sets it skips to resume after `batches`).

        The DataLoader takes batches from its workers in turn, from worker 0 on, also after a resume: batch j of
        the epoch comes from place j % nw, so worker w of a resumed loader plays place (w + batches) % nw.
        """
        worker = get_worker_info()
        wid, nw = (worker.id, worker.num_workers) if worker else (0, 1)
        batches, batch_size = self.resume
        place = (wid + batches) % nw
        return place, nw, len(range(place, batches, nw)) * batch_size

    def _parts(self, n: int, wid: int, nw: int, what: str, shuffle: bool) -> Sequence[int]:
        """This rank and worker's share of n shards, folders or generated sets, in this epoch's order."""
        if n < self.world * nw:  # a rank with no share would start empty epochs forever
            raise ValueError(f"{self.source!r}: {n} {what} for {self.world} rank(s) x {nw} worker(s); each needs "
                             "at least one: use fewer workers (--workers) or more, smaller shards")  # fmt: skip
        order = range(n)
        if shuffle:
            order = list(order)
            random.Random(self.seed * 1000 + self.epoch).shuffle(order)
        return order[self.rank * nw + wid :: self.world * nw]

    def records(self) -> Iterator[dict]:
        """This rank and worker's sets as shard records: {"key", "images" (PIL), "meta"}."""
        wid, nw, skip = self._worker()
        if self.generator is not None:  # set i is a random draw already: each epoch draws new sets (seed + epoch)
            parts = self._parts(self.n_sets or 10000, wid, nw, "sets (n_sets)", shuffle=False)[skip:]
            seed = self.seed + self.epoch if self.shuffle else self.seed
            k = 10**6 if self.whole else self.max_set
            return (self.generator(self.split, i, k, seed) for i in parts)
        if self.folders is not None:
            parts = self._parts(len(self.folders), wid, nw, "folders", self.shuffle)[skip:]
            return (folder_record(self.folders[i]) for i in parts)
        return self.shard_sets(wid, nw, skip)

    def shard_sets(self, wid: int, nw: int, skip: int) -> Iterator[dict]:
        """This rank and worker's sets from its shards, through a seeded shuffle buffer, less the first `skip`.

        The stream depends on (seed, epoch, rank, worker) alone: the shards are dealt in an order shuffled
        with (seed, epoch), and the buffer draws with a generator seeded by all four. So an exact resume reads
        the same stream again and drops the sets this worker gave before the checkpoint. It drops them
        before decoding, so they cost their bytes (bench/shard_reading.py times that) but no PNG decoding.
        """
        shards = self._parts(len(self.shards), wid, nw, "shards", self.shuffle)
        stream = samples(self.shards[i] for i in shards)
        if self.shuffle and self.shuffle_buffer > 1:
            rng = random.Random(f"{self.seed}.{self.epoch}.{self.rank}.{wid}")
            stream = wds.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=rng)(stream)
        return map(decode, itertools.islice(stream, skip, None))

    def __iter__(self) -> Iterator[dict]:
        return map(self.to_item, self.records())

    def to_item(self, record: dict) -> dict:
        ordered = record["meta"].get("ordered", False)  # views and steps say so, from any source
        draw = f"{self.seed}.{self.epoch if self.shuffle else 0}"  # new subsets each epoch, the same on a resume
        images = record["images"]  # ordered: windows later
        if not ordered:  # a random max_set of the whole set; the batch's random K of these is uniform over all
            gen = torch.Generator().manual_seed(zlib.crc32(f"{record['key']}@{draw}".encode()))
            images = [images[i] for i in torch.randperm(len(images), generator=gen)[: self.max_set]]
        labels = record["meta"].get("labels", {})
        return {
            "pixels": to_tensor([to_model_size(img, self.resolution) for img in images]),  # (K, 3, H, W) in [-1, 1]
            "content": labels.get("content", -1),
            "style": labels.get("style", -1),
            "key": record["key"],
            "ordered": ordered,
            "draw": draw,
        }


def set_folders(root: str) -> list[Path]:
    """Real task data: one folder per set under `root`, its images in file-name order.

    Novel views: `root/<object>/000.png, 001.png, …` in azimuth order (as Objaverse renders are laid out);
    procedures: `root/<procedure>/01.png, 02.png, …` one image per step (as wikiHow step images).
    """
    folders = sorted(p for p in Path(root).iterdir() if p.is_dir() and _images(p)) if Path(root).is_dir() else []
    if not folders:
        raise FileNotFoundError(f"{root!r}: no folders of images (expected {root}/<set>/<image>.png)")
    return folders


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def folder_record(folder: Path) -> dict:
    images = [load_image(p) for p in _images(folder)]
    return {"key": folder.name, "images": images, "meta": {"folder": str(folder), "ordered": True}}


class SetCollate:
    """Stack sets into a batch with one set length K in [min_k, max_k] per batch (a random subset of each set)."""

    def __init__(self, min_k: int, max_k: int):
        if not 1 <= min_k <= max_k:
            raise ValueError(f"need 1 <= min_k <= max_k, got {min_k}, {max_k}")
        self.min_k, self.max_k = min_k, max_k

    def __call__(self, items: list[dict]) -> dict:
        shortest = min(item["pixels"].shape[0] for item in items)
        if shortest < self.min_k:
            raise ValueError(f"a set has {shortest} images, fewer than min_k={self.min_k}")
        # drawn from the batch's own keys: the same batch is cut the same way in any worker, after any resume
        names = "|".join(f"{item['key']}@{item.get('draw', '')}" for item in items)  # the epoch is in `draw`
        gen = torch.Generator().manual_seed(zlib.crc32(names.encode()))
        k = int(torch.randint(self.min_k, min(self.max_k, shortest) + 1, (), generator=gen))
        picks = [self.pick(item, k, gen) for item in items]
        return {
            "pixels": torch.stack([item["pixels"][p] for item, p in zip(items, picks, strict=True)]),  # (B, K, 3, H, W)
            "start": torch.tensor([int(p[0]) for p in picks]),  # ordered sets: where the window starts
            "content": torch.tensor([item["content"] for item in items]),
            "style": torch.tensor([item["style"] for item in items]),
            "keys": [item["key"] for item in items],
        }

    @staticmethod
    def pick(item: dict, k: int, gen: torch.Generator) -> torch.Tensor:
        """k images of a set: a random subset of an exchangeable (MIS) set, a window of an ordered one."""
        n = item["pixels"].shape[0]
        if item.get("ordered", False):
            start = int(torch.randint(0, n - k + 1, (), generator=gen))
            return torch.arange(start, start + k)
        return torch.randperm(n, generator=gen)[:k]


def make_loader(
    source: str, batch_size: int, min_k: int = 2, max_k: int = 8, resolution: int = 128, workers: int = 2,
    n_sets: int | None = None, rank: int = 0, world: int = 1, shuffle: bool = True, seed: int = 0,
    shuffle_buffer: int = 64,
) -> DataLoader:  # fmt: skip
    dataset = SetDataset(source, resolution, n_sets, max_k, rank, world, shuffle, seed, shuffle_buffer)
    return DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, collate_fn=SetCollate(min_k, max_k),
        persistent_workers=False, generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
