"""Data-parallel training on N worker processes: ``minimaskrcnn train --workers N``.

What torch's DistributedDataParallel (DDP) does, without SyncBatchNorm, on one machine:

    main process (optimizer, log, checkpoints)       worker r = 0 .. N-1 (spawned)
    ------------------------------------------       ---------------------------------------
    trainable parameters -> shared "params" (P,) -->  copied into its own model
    send ("step", it, epoch, its B/N samples)    -->  load them (the loader's flips)
                                                      seed_iteration(model, seed, it, rank=r)
                                                      forward + backward on B/N images
    p.grad = mean over r of grads[r]             <--  gradients -> shared "grads" (N, P), row r;
                                                      reply: its loss values
    clip_grad_norm_, optimizer.step, schedule, log (mean of the workers' losses)
    checkpoint: worker 0's buffers -> main model <--  its BatchNorm running_mean/var, counts

Legend: N: workers; B: images per batch (B % N == 0, B/N per worker); P: number of values in all
trainable parameters (float32); it: iteration; r: a worker's rank.

The choices, and why:

* Gradients are averaged (mean over workers, DDP's all-reduce), so with equal parts each worker's
  mean loss weighs as much as the others'. A parameter without gradient in one worker counts as a
  zero there (DDP's ``find_unused_parameters``); without gradient in every worker it keeps
  ``p.grad = None`` and the optimizer skips it, as in one process.
* BatchNorm normalises with the batch statistics of each worker's B/N images (no SyncBatchNorm),
  so a run with N workers is not the run of one process with the same batch. Each worker updates
  its own running statistics; the main model takes worker 0's at each checkpoint and at the end
  (DDP saves rank 0's buffers too), so evaluation and ``--resume`` see sensible statistics.
* Processes are started with "spawn", not "fork": forking a process whose OpenBLAS or Numba
  thread pools already run can deadlock the child. Each worker gets one BLAS/OpenMP/Numba thread
  (the point is one core per worker, without the threads fighting over the cores).
* Parameters and gradients travel through ``multiprocessing.shared_memory``: tens of megabytes
  per step would cost more to pickle through a pipe than the small GEMMs they feed. The pipe
  carries small messages only: the iteration, the sample numbers, the loss values. Workers copy
  the shared parameters into their model (``optim.SGD.step`` rebinds ``p.data``, so a view into
  shared memory would not stay shared).
* Every worker builds its own data set and model from the same config and seed; at start it
  takes the main's buffers and frozen parameters (pickled once: after a ``--resume`` they are
  the checkpoint's), and before every step the trainable parameters from shared memory.
* Determinism: worker r of iteration ``it`` loads the same samples with the same flips as the
  one-process loader (sample j of epoch E: ``default_rng([seed, E, j])``) and draws its samplers'
  choices from ``(seed, it, r)``, so a seed and N fix the run, resumes included.
* A worker's exception is re-raised in the main with the worker's traceback; a worker that dies
  is noticed (the main polls with a timeout and checks ``is_alive()``), never waited for forever.
  Workers ignore Ctrl-C: the main stops them and unlinks the shared memory in a ``finally``.

Spawned workers import the main module anew, so a script that calls ``train(..., workers=N)``
needs the usual ``if __name__ == "__main__":`` guard (the ``minimaskrcnn`` command has it), and a
``build_fn`` must be picklable (a module-level function).
"""

from __future__ import annotations

import os
import secrets
import signal
import traceback
from multiprocessing import shared_memory

import numpy as np

# Each worker computes on one core: one thread for every pool a worker could start.
CHILD_ENV = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}
POLL_S = 1.0  # how often a waiting main checks that the worker it waits for is alive


class WorkerError(RuntimeError):
    """A worker failed (its traceback is in the message) or died."""


def batch_samples(loader, epoch: int, start: int = 0):
    """The batches of ``epoch`` from batch ``start`` on, as lists of ``(index, j)`` (the data set
    index of the sample at position j of the epoch): ``DataLoader``'s batches, not loaded."""
    order, b_size = loader.order(epoch), loader.batch_size
    for b in range(start, len(loader)):
        yield [(int(order[j]), j) for j in range(b * b_size, min((b + 1) * b_size, len(order)))]


def load_samples(dataset, samples, seed: int, epoch: int):
    """``(images, targets)`` of ``samples`` with the flips ``DataLoader`` would draw for them."""
    from .data import collate

    return collate(
        [dataset.load(i, rng=np.random.default_rng([seed, epoch, j])) for i, j in samples]
    )


def _layout(params):
    """(offsets, shapes) of the parameters in one flat float32 vector."""
    shapes = [tuple(p.data.shape) for p in params]
    offsets = np.cumsum([0] + [int(np.prod(s)) for s in shapes]).tolist()
    return offsets, shapes


class WorkerPool:
    """N spawned workers that compute the averaged gradient of a batch; see the module docstring.

    >>> pool = WorkerPool(model, params, 2, images_dir=..., ...)   # doctest: +SKIP
    >>> pool.start()                     # workers take the model as it is now
    >>> values, loss = pool.step(it, epoch, samples)   # sets p.grad of every p in params
    >>> pool.pull_buffers(model); pool.stop(); pool.close()
    """

    def __init__(
        self,
        model,
        params,
        workers: int,
        *,
        images_dir,
        ann_path,
        hflip: float,
        config: str,
        num_classes: int,
        seed: int,
        kernels: str | None = None,
        build_fn=None,
    ):
        if workers < 2:
            raise ValueError(f"WorkerPool: workers must be >= 2, got {workers}")
        bad = [p.data.dtype for p in params if p.data.dtype != np.float32]
        if bad:
            raise ValueError(f"WorkerPool: parameters must be float32 NumPy arrays, got {bad[0]}")
        self.model, self.params, self.workers = model, list(params), workers
        self.offsets, self.shapes = _layout(self.params)
        self.spec = dict(
            images_dir=str(images_dir),
            ann_path=str(ann_path),
            hflip=hflip,
            config=config,
            num_classes=num_classes,
            seed=seed,
            kernels=kernels,
            build_fn=build_fn,
            shapes=self.shapes,
        )
        self.procs, self.conns, self.shms = [], [], []
        self.flat_params = self.flat_grads = None

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Create the shared memory, spawn the workers, wait until each has built its model."""
        import multiprocessing as mp

        n_values = self.offsets[-1]
        tag = f"mmrcnn_{os.getpid()}_{secrets.token_hex(4)}"  # recognisable in /dev/shm
        for name, shape in (("p", (n_values,)), ("g", (self.workers, n_values))):
            self.shms.append(
                shared_memory.SharedMemory(
                    name=f"{tag}_{name}", create=True, size=4 * max(1, int(np.prod(shape)))
                )
            )
        self.flat_params = np.ndarray((n_values,), np.float32, buffer=self.shms[0].buf)
        self.flat_grads = np.ndarray((self.workers, n_values), np.float32, buffer=self.shms[1].buf)
        self._put_params()
        # Buffers and frozen parameters go once, pickled; trainable ones through shared memory.
        ids = {id(p) for p in self.params}
        trained = {k for k, p in self.model.named_parameters() if id(p) in ids}
        rest = {k: np.asarray(v) for k, v in self.model.state_dict().items() if k not in trained}
        ctx = mp.get_context("spawn")
        saved = {k: os.environ.get(k) for k in CHILD_ENV}
        os.environ.update(CHILD_ENV)  # a spawned child reads the environment when it starts
        try:
            for r in range(self.workers):
                here, there = ctx.Pipe()
                proc = ctx.Process(
                    target=_worker_main,
                    args=(r, self.spec, [s.name for s in self.shms], self.workers, rest, there),
                    name=f"minimaskrcnn-worker-{r}",
                    daemon=True,  # never outlives the main, whatever happens to it
                )
                proc.start()
                there.close()  # only the child holds that end: its death reads as EOF here
                self.procs.append(proc)
                self.conns.append(here)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        for r in range(self.workers):
            self._recv(r, "ready")

    def stop(self) -> None:
        """Ask the workers to exit and wait a little for them (the end of a normal run)."""
        for conn in self.conns:
            try:
                conn.send(("stop",))
            except OSError:  # already gone
                pass
        for proc in self.procs:
            proc.join(timeout=10)

    def close(self) -> None:
        """Terminate what still runs, free the shared memory. Safe to call twice."""
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
            proc.join(timeout=10)
        for conn in self.conns:
            conn.close()
        self.procs, self.conns = [], []
        self.flat_params = self.flat_grads = None  # views into the memory: release them first
        for shm in self.shms:
            shm.close()
            try:
                shm.unlink()
            except FileNotFoundError:
                pass
        self.shms = []

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ one step
    def step(self, it: int, epoch: int, samples) -> tuple[dict, float]:
        """Each worker's forward + backward on its part of ``samples`` (a list of ``(index, j)``
        as ``batch_samples`` yields); sets ``p.grad`` to the mean of the workers' gradients.
        Returns the mean of their loss values and of their total losses."""
        if len(samples) % self.workers:
            raise ValueError(
                f"WorkerPool.step: {len(samples)} samples do not split into {self.workers} parts"
            )
        self._put_params()
        k = len(samples) // self.workers
        for r in range(self.workers):
            self._send(r, ("step", it, epoch, samples[r * k : (r + 1) * k]))
        replies = [self._recv(r, "done") for r in range(self.workers)]
        mean = self.flat_grads.mean(axis=0)  # (P,), a fresh array: the next step reuses grads
        for i, p in enumerate(self.params):
            if all(i in unused for _, _, _, unused in replies):
                p.grad = None
            else:
                p.grad = mean[self.offsets[i] : self.offsets[i + 1]].reshape(self.shapes[i])
        values = {key: float(np.mean([rep[1][key] for rep in replies])) for key in replies[0][1]}
        return values, float(np.mean([rep[2] for rep in replies]))

    def pull_buffers(self, model) -> None:
        """Worker 0's buffers (BatchNorm statistics) into ``model``, as DDP keeps rank 0's."""
        self._send(0, ("buffers",))
        model.load_state_dict(self._recv(0, "buffers")[1], strict=False)

    # ------------------------------------------------------------------ helpers
    def _put_params(self) -> None:
        for i, p in enumerate(self.params):
            self.flat_params[self.offsets[i] : self.offsets[i + 1]] = p.data.reshape(-1)

    def _send(self, r: int, msg) -> None:
        try:
            self.conns[r].send(msg)
        except OSError:  # a broken pipe: the worker is gone; say which and how
            self.procs[r].join(timeout=10)
            raise WorkerError(
                f"train: worker {r} died (exit code {self.procs[r].exitcode})"
            ) from None

    def _recv(self, r: int, kind: str):
        """Worker r's next message, which must be ``kind``; its error or death raised here."""
        conn, proc = self.conns[r], self.procs[r]
        while not conn.poll(POLL_S):
            if not proc.is_alive() and not conn.poll():
                raise WorkerError(
                    f"train: worker {r} died (exit code {proc.exitcode}) without a word; out "
                    "of memory? (the system log may say)"
                )
        try:
            msg = conn.recv()
        except EOFError:
            proc.join(timeout=10)
            raise WorkerError(f"train: worker {r} died (exit code {proc.exitcode})") from None
        if msg[0] == "error":
            raise WorkerError(f"train: worker {r} failed:\n{msg[1]}")
        if msg[0] != kind:
            raise WorkerError(f"train: worker {r} answered {msg[0]!r}, expected {kind!r}")
        return msg


# ----------------------------------------------------------------------------- the worker side
def _worker_main(rank: int, spec: dict, shm_names, workers: int, rest: dict, conn) -> None:
    """A worker's life: build, say "ready", then answer "step" / "buffers" until "stop"."""
    # Ctrl-C in a terminal reaches the whole process group: the main decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    shms = []
    try:
        import warnings

        from . import backends, configs
        from .train import losses_and_grads, make_dataset, seed_iteration

        backends.set_default(spec["kernels"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the main already warned about the data set
            dataset = make_dataset(spec["images_dir"], spec["ann_path"], spec["hflip"])
        model = (spec["build_fn"] or configs.build)(
            spec["config"],
            num_classes=spec["num_classes"],
            seed=spec["seed"],
            backbone_weights=None,  # the main's weights arrive below and from shared memory
        )
        model.load_state_dict(rest, strict=False)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        offsets, shapes = _layout(params)
        if shapes != spec["shapes"]:
            raise ValueError(
                f"worker {rank}: its model's trainable parameters do not match the main's "
                "(build_fn must build the same model in every process)"
            )
        shms = [shared_memory.SharedMemory(name=n) for n in shm_names]
        flat_params = np.ndarray((offsets[-1],), np.float32, buffer=shms[0].buf)
        my_grads = np.ndarray((workers, offsets[-1]), np.float32, buffer=shms[1].buf)[rank]
        conn.send(("ready",))
        while True:
            msg = conn.recv()
            if msg[0] == "stop":
                break
            if msg[0] == "buffers":
                conn.send(("buffers", {k: np.asarray(v) for k, v in model.named_buffers()}))
                continue
            _, it, epoch, samples = msg
            for i, p in enumerate(params):
                p.data = flat_params[offsets[i] : offsets[i + 1]].reshape(shapes[i]).copy()
            images, targets = load_samples(dataset, samples, spec["seed"], epoch)
            seed_iteration(model, spec["seed"], it, rank)
            values, total = losses_and_grads(model, images, targets)
            unused = []
            for i, p in enumerate(params):
                if p.grad is None:
                    unused.append(i)
                    my_grads[offsets[i] : offsets[i + 1]] = 0.0
                else:
                    my_grads[offsets[i] : offsets[i + 1]] = np.asarray(p.grad).reshape(-1)
            conn.send(("done", values, total, unused))
    except BaseException:
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:  # the main is gone: nobody to tell
            pass
    finally:
        flat_params = my_grads = None  # noqa: F841  (views must go before the memory closes)
        for shm in shms:
            shm.close()
