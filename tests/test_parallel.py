"""Data-parallel training (``train(..., workers=2)``, ``minimaskrcnn.parallel``) on the tiny config
and a tiny shapes set: the averaged gradient is the mean of the per-worker gradients computed
here, a run is deterministic and resumes, errors and dead workers surface in the main process,
and nothing (process, shared memory) is left behind."""

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TRAIN_KW

import minimaskrcnn.train as train_mod
from minimaskrcnn import backends, checkpoint, configs, parallel
from minimaskrcnn.data import DataLoader
from minimaskrcnn.train import read_log, train

KW = TINY_TRAIN_KW
# Same float32 operations in the same order in both runs (one BLAS thread per worker).
RTOL = 1e-5


def _shm_left():
    # Only this process's segments (the pool names them after the main's pid): under pytest-xdist
    # another worker may be training with its own shared memory at the same moment.
    shm, mine = Path("/dev/shm"), f"mmrcnn_{os.getpid()}_"
    return (
        sorted(p.name for p in shm.iterdir() if p.name.startswith(mine))
        if shm.is_dir()
        else []
    )


@pytest.fixture(scope="module")
def run2(tiny_shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "w2"
    return out, train(tiny_shapes / "train", out, workers=2, **KW)


def test_averaged_gradient_is_the_mean_of_the_workers(tiny_shapes):
    """One step of a 2-worker pool against the two single-image gradients computed here, with
    the same samples (flips included) and the same sampler seeds (seed, it, rank)."""
    images_dir, ann = train_mod.resolve_data_dir(tiny_shapes / "train")
    dataset = train_mod.make_dataset(images_dir, ann, hflip=0.5)
    loader = DataLoader(dataset, batch_size=2, shuffle=True, seed=5, drop_last=True)
    epoch, it = 1, 3  # not the first: a flip is likelier among 4 samples, seeds not all zero
    model = configs.build("r18_fpn_tiny", num_classes=5, seed=5)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    samples = next(parallel.batch_samples(loader, epoch, 0))
    # the pool's samples are the loader's batch, loaded alike
    images, targets = next(iter(loader.iterate(epoch)))
    mine = parallel.load_samples(dataset, samples, 5, epoch)
    for a, b in zip(images, mine[0], strict=True):
        np.testing.assert_array_equal(a, b)
    with parallel.WorkerPool(
        model,
        params,
        2,
        images_dir=images_dir,
        ann_path=ann,
        hflip=0.5,
        config="r18_fpn_tiny",
        num_classes=5,
        seed=5,
        kernels="numpy",
    ) as pool:
        values, total = pool.step(it, epoch, samples)
        got = [None if p.grad is None else p.grad.copy() for p in params]
        model.zero_grad()
        ref_grads, ref_values = [], []
        with backends.use("numpy"):  # the kernels the workers were given
            for r in range(2):
                train_mod.seed_iteration(model, 5, it, r)
                v, _ = train_mod.losses_and_grads(model, images[r : r + 1], targets[r : r + 1])
                ref_values.append(v)
                ref_grads.append([p.grad for p in params])
        pool.pull_buffers(model)
        nbt = [v for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")]
        assert nbt and all(int(v) == 1 for v in nbt)  # worker 0 ran one training step
    assert _shm_left() == []
    for k in values:
        assert values[k] == pytest.approx(np.mean([v[k] for v in ref_values]), rel=1e-5), k
    assert total == pytest.approx(sum(values.values()), rel=1e-5)
    n_with = 0
    for i, g in enumerate(got):
        pair = ref_grads[0][i], ref_grads[1][i]
        if g is None:
            assert pair == (None, None), i
            continue
        n_with += 1
        ref = np.mean([np.zeros_like(g) if x is None else x for x in pair], axis=0)
        # float32 sums in another order: a worker runs one BLAS thread, this process may run
        # more. Measured: 0 with one thread here, ~7e-5 relative (L2, per parameter, through
        # ~20 layers of backward) with two. A wrong average or sample would be off by O(1).
        assert np.linalg.norm(g - ref) <= 5e-4 * np.linalg.norm(ref), i
        np.testing.assert_allclose(g, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
    assert n_with > 0.9 * len(params)


def test_two_workers_deterministic_same_files_and_resume(tiny_shapes, run2, tmp_path, monkeypatch):
    out, summary = run2
    ref = read_log(out / "log.jsonl")
    assert [r["iteration"] for r in ref] == [1, 2, 3] and summary["iterations"] == 3
    assert all(np.isfinite(r[k]) for r in ref for k in ("loss",) + train_mod.LOSS_NAMES)
    assert json.loads((out / "args.json").read_text())["workers"] == 2
    # the same files as one process writes
    one = tmp_path / "w1"
    train(tiny_shapes / "train", one, **{**KW, "max_iters": 1})
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in one.iterdir())
    # BatchNorm statistics of worker 0 came back: 3 training steps counted
    w = checkpoint.load_checkpoint(out / "model_final.npz")["model"]
    nbt = [int(v) for k, v in w.items() if k.endswith("num_batches_tracked")]
    assert nbt and set(nbt) == {3}

    # interrupted in iteration 3 (after the checkpoint at 2), then resumed
    real, calls = train_mod.clip_grad_norm_, []

    def ctrl_c_at_3(params, max_norm):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated Ctrl-C in iteration 3")
        return real(params, max_norm)

    b = tmp_path / "b"
    monkeypatch.setattr(train_mod, "clip_grad_norm_", ctrl_c_at_3)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_shapes / "train", b, workers=2, **KW)
    monkeypatch.setattr(train_mod, "clip_grad_norm_", real)
    assert _shm_left() == [] and multiprocessing.active_children() == []
    assert checkpoint.load_checkpoint(b / "checkpoint.npz")["meta"]["iteration"] == 2
    train(tiny_shapes / "train", b, workers=2, resume=True, **KW)
    got = read_log(b / "log.jsonl")
    # iterations 1-2: one seed, one run; iteration 3: resumed == uninterrupted
    assert [r["iteration"] for r in got] == [1, 2, 3]
    for x, y in zip(got, ref, strict=True):
        for k in ("loss",) + train_mod.LOSS_NAMES:
            assert x[k] == pytest.approx(y[k], rel=RTOL), (x["iteration"], k)
    w_got = checkpoint.load_checkpoint(b / "model_final.npz")["model"]
    for k in w:
        np.testing.assert_allclose(w_got[k], w[k], rtol=RTOL, atol=1e-7, err_msg=k)
    assert _shm_left() == [] and multiprocessing.active_children() == []


def test_clear_errors(tiny_shapes, tmp_path):
    with pytest.raises(ValueError, match="train: batch_size 3 must be divisible by workers 2"):
        train(tiny_shapes / "train", tmp_path / "a", workers=2, **{**KW, "batch_size": 3})
    with pytest.raises(ValueError, match="train: workers=2 runs on the 'numpy' array backend"):
        train(tiny_shapes / "train", tmp_path / "b", workers=2, backend="cupy",
              **{**KW, "kernels": None})
    with pytest.raises(ValueError, match="workers must be an int >= 1"):
        train(tiny_shapes / "train", tmp_path / "c", workers=0, **KW)
    from minimaskrcnn.train import main

    assert (
        main(
            f"--data {tiny_shapes} --out {tmp_path / 'd'} --iters 1 --batch-size 3 "
            "--workers 2 --quiet".split()
        )
        == 2
    )


def test_worker_failure_surfaces_in_the_main(tiny_shapes, tmp_path, monkeypatch):
    """The main indexed the data set, then an image went missing: the workers fail while
    building theirs, and the main re-raises with the worker's traceback (no hang)."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_shapes / "train", data)
    real = train_mod.make_dataset

    def then_delete(images_dir, ann_path, hflip):
        ds = real(images_dir, ann_path, hflip)
        os.remove(Path(images_dir) / ds.coco.imgs[ds.ids[0]]["file_name"])
        return ds

    monkeypatch.setattr(train_mod, "make_dataset", then_delete)  # the main's copy only
    with pytest.raises(parallel.WorkerError, match="(?s)worker 0 failed.*FileNotFoundError"):
        train(data, tmp_path / "a", workers=2, **KW)
    assert _shm_left() == [] and multiprocessing.active_children() == []


def _dying_build(config, num_classes, seed=None, backbone_weights=None):
    """A model whose forward kills its worker process (not the main: it never runs forward)."""
    model = configs.build(config, num_classes=num_classes, seed=seed)
    if multiprocessing.parent_process() is not None:
        model.forward = lambda *a, **k: os._exit(7)
    return model


def test_dead_worker_does_not_hang_the_main(tiny_shapes, tmp_path):
    with pytest.raises(parallel.WorkerError, match="worker 0 died .*exit code 7"):
        train(tiny_shapes / "train", tmp_path / "a", workers=2, build_fn=_dying_build, **KW)
    assert _shm_left() == [] and multiprocessing.active_children() == []
