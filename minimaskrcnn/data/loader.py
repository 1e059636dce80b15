"""DataLoader: batches of ``(images, targets)`` lists, shuffled by a seed, optionally prefetched.

Legend: B: batch size; E: epoch number.

Detection batches are lists, not stacked arrays (images differ in size; the model's transform
pads them), so collating is just ``list(zip(*samples, strict=True))``, as torchvision's references'
``collate_fn``.

Determinism, which resuming a run relies on: epoch E's order is a permutation drawn from
``default_rng([seed, E])``, and sample j of epoch E gets its own generator
``default_rng([seed, E, j])`` for random transforms (when the data set has ``load(index, rng)``,
as ``CocoDataset`` does). So epoch E batch b is the same whether the run started at epoch 0 or was
resumed there, and ``iterate(E, start=b)`` skips to batch b without loading what it skips.

``prefetch=k`` loads up to k batches ahead in one background thread (PNG decoding and pycocotools
release the GIL for part of their work, so this overlaps some loading with the model's compute).
"""

from __future__ import annotations

import queue
import threading

import numpy as np


def collate(samples):
    """[(image, target), ...] -> ([images], [targets])."""
    images, targets = zip(*samples, strict=True) if samples else ((), ())
    return list(images), list(targets)


class DataLoader:
    def __init__(
        self,
        dataset,
        batch_size: int = 2,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        prefetch: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be >= 1, got {batch_size}")
        if prefetch < 0:
            raise ValueError(f"DataLoader: prefetch must be >= 0, got {prefetch}")
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.seed, self.drop_last, self.prefetch = seed, drop_last, prefetch
        self.epoch = 0  # advanced by each plain ``iter(loader)``

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """(len(dataset),) the sample order of ``epoch``."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def _batches(self, epoch: int, start: int):
        idx = self.order(epoch)
        load = getattr(self.dataset, "load", None)
        for b in range(start, len(self)):
            positions = range(b * self.batch_size, min((b + 1) * self.batch_size, len(idx)))
            if load is not None:
                samples = [
                    load(int(idx[j]), rng=np.random.default_rng([self.seed, epoch, j]))
                    for j in positions
                ]
            else:
                samples = [self.dataset[int(idx[j])] for j in positions]
            yield collate(samples)

    def iterate(self, epoch: int, start: int = 0):
        """Batches of ``epoch`` from batch number ``start`` on."""
        if not 0 <= start <= len(self):
            raise ValueError(f"DataLoader.iterate: start must be in [0, {len(self)}], got {start}")
        gen = self._batches(epoch, start)
        return gen if self.prefetch == 0 else _prefetched(gen, self.prefetch)

    def __iter__(self):
        it = self.iterate(self.epoch)
        self.epoch += 1
        return it


_DONE = object()


def _prefetched(gen, depth: int):
    """Run generator ``gen`` in a daemon thread, ``depth`` items ahead; re-raise its errors here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work():
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put(("ok", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("ok", _DONE))
        except BaseException as e:  # handed to the consumer, which re-raises it
            q.put(("err", e))

    t = threading.Thread(target=work, name="minimaskrcnn-prefetch", daemon=True)
    t.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "err":
                raise item
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()  # the consumer stopped early (break, error): let the worker exit
