"""What the command-line tools refuse, so that nothing a user has is lost and no run silently does
something other than what was asked: outputs that name an input, a rerun over a finished study,
a resume with other arguments, non-positive budgets, a non-finite gradient, files that are not
weights, and the permissions of what is written. One tiny training run serves them all."""

import json
import os
import stat

import numpy as np
import pytest
from conftest import TINY_TRAIN_KW

from minimaskrcnn import ablation
from minimaskrcnn import train as train_mod
from minimaskrcnn.checkpoint import load_checkpoint
from minimaskrcnn.data.shapes import write_dataset
from minimaskrcnn.evaluate import main as eval_main
from minimaskrcnn.predict import main as predict_main
from minimaskrcnn.train import main as train_main
from minimaskrcnn.train import train


@pytest.fixture(scope="module")
def run(tiny_shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("guards_run") / "r"
    train(tiny_shapes / "train", out, **TINY_TRAIN_KW)  # 3 iterations, a checkpoint at 2
    return out


TINY = "--config r18_fpn_tiny --batch-size 2 --warmup-iters 2 --seed 5 --quiet --kernels numpy"


def test_outputs_naming_an_input_are_refused(tiny_shapes, run, tmp_path, capsys):
    weights = run / "model_final.npz"
    before = weights.read_bytes()
    rc = eval_main(["--weights", str(weights), "--data", str(tiny_shapes / "val"),
                    "--out", str(weights), "--kernels", "numpy"])
    assert rc == 2 and "is the --weights file" in capsys.readouterr().err
    assert weights.read_bytes() == before
    image = tmp_path / "photo.png"
    image.write_bytes((tiny_shapes / "val" / "images" / "000000.png").read_bytes())
    rc = predict_main([str(image), "--weights", str(weights), "--out", str(image)])
    assert rc == 2 and "is the input image" in capsys.readouterr().err
    rc = predict_main([str(image), "--weights", str(weights), "--out", str(tmp_path / "p.png"),
                       "--json", str(weights)])
    assert rc == 2 and "is the --weights file" in capsys.readouterr().err
    assert weights.read_bytes() == before


def test_predict_checks_its_arguments_before_running_the_model(tiny_shapes, run, tmp_path):
    image = str(tiny_shapes / "val" / "images" / "000000.png")
    weights = str(run / "model_final.npz")
    for extra, words in ((["--out", str(tmp_path / "p.txt")], "cannot write txt"),
                         (["--out", str(tmp_path)], "is a folder"),
                         (["--min-size", "0"], "--min-size must be >= 1")):
        with pytest.raises(SystemExit) as e:  # argparse's error: usage and the message, rc 2
            predict_main([image, "--weights", weights, *extra])
        assert e.value.code == 2, words
    rc = predict_main([image, "--weights", weights, "--out", str(tmp_path / "p.png"),
                       "--classes", str(tmp_path / "nope.txt")])
    assert rc == 2


def test_evaluate_refuses_other_classes_and_no_images(tiny_shapes, run, tmp_path, capsys):
    ann = json.loads((tiny_shapes / "val" / "annotations.json").read_text())
    for c, name in zip(ann["categories"], ["cat", "dog", "car", "bus"], strict=False):
        c["name"] = name
    other = tmp_path / "other.json"
    other.write_text(json.dumps(ann))
    argv = ["--weights", str(run / "model_final.npz"), "--data", str(tiny_shapes / "val"),
            "--out", str(tmp_path / "m.json"), "--kernels", "numpy"]
    assert eval_main(argv + ["--ann", str(other)]) == 2
    assert "was trained on classes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_main(argv + ["--max-images", "0"])
    assert not (tmp_path / "m.json").exists()


def test_resume_must_repeat_the_run_s_arguments(tiny_shapes, run, tmp_path, capsys):
    args = f"--data {tiny_shapes / 'train'} --out {run} --resume {TINY} --ckpt-every 2 "
    ckpt = (run / "checkpoint.npz").read_bytes()
    assert train_main((args + "--iters 8").split()) == 2  # started with 3
    err = capsys.readouterr().err
    assert "max_iters: started with 3, got 8" in err
    assert train_main((args + "--iters 3 --lr 5").split()) == 2
    assert "lr: started with 0.02, got 5.0" in capsys.readouterr().err
    assert (run / "checkpoint.npz").read_bytes() == ckpt  # nothing trained, nothing written
    fresh = tmp_path / "typo"
    assert train_main(f"--data {tiny_shapes / 'train'} --out {fresh} --resume --iters 1 {TINY}"
                      .split()) == 2
    assert "nothing to resume" in capsys.readouterr().err and not fresh.exists()
    # the same data folder named another way, and another worker count, are the same run
    from minimaskrcnn.train import _check_same_run

    started = json.loads((run / "args.json").read_text())
    same = dict(started, data=str(tiny_shapes / "train") + "/", workers=2)
    _check_same_run(run / "args.json", same)


@pytest.mark.parametrize("bad", ["--iters 0", "--iters -3", "--epochs 0", "--minutes -1",
                                 "--iters 1 --ckpt-every 0"])
def test_non_positive_budgets_are_refused(tiny_shapes, tmp_path, bad, capsys):
    rc = train_main(f"--data {tiny_shapes / 'train'} --out {tmp_path / 'x'} {TINY} {bad}".split())
    assert rc == 2 and "must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "x" / "model_final.npz").exists()


def test_an_inf_gradient_stops_before_the_step(tiny_shapes, tmp_path, monkeypatch):
    """A finite loss with an inf gradient: stepping it would put NaN into the weights and then into
    the next checkpoint. The run stops at that iteration; the checkpoint on disk stays finite."""
    real = train_mod.losses_and_grads
    calls = []

    def one_inf_gradient(model, images, targets, backend="numpy"):
        values, total = real(model, images, targets, backend)
        calls.append(1)
        if len(calls) == 3:
            p = next(iter(model.parameters()))
            p.grad = p.grad.copy()
            p.grad.flat[0] = np.inf
        return values, total

    monkeypatch.setattr(train_mod, "losses_and_grads", one_inf_gradient)
    out = tmp_path / "nan"
    with pytest.raises(FloatingPointError, match="gradient norm is not finite at iteration 2"):
        train(tiny_shapes / "train", out, **dict(TINY_TRAIN_KW, max_iters=4, ckpt_every=2))
    ck = load_checkpoint(out / "checkpoint.npz")
    assert ck["meta"]["iteration"] == 2
    assert all(np.isfinite(v).all() for v in ck["model"].values() if v.dtype.kind == "f")


def test_a_file_that_is_not_weights_is_named(tmp_path, tiny_shapes, capsys):
    np.save(tmp_path / "arr.npy", np.ones(3))
    (tmp_path / "junk.npz").write_text("garbage")
    (tmp_path / "junk.pth").write_text("junk")
    for name, words in (("arr.npy", "one array"), ("junk.npz", "not a .npz archive")):
        rc = eval_main(["--weights", str(tmp_path / name), "--data", str(tiny_shapes / "val")])
        err = capsys.readouterr().err
        assert rc == 2 and words in err and name in err, err
    image = str(tiny_shapes / "val" / "images" / "000000.png")
    rc = predict_main([image, "--weights", str(tmp_path / "junk.pth"),
                       "--out", str(tmp_path / "p.png")])
    assert rc == 2 and "torch.load can read" in capsys.readouterr().err


def test_compare_roi_never_starts_over_a_finished_study(tmp_path, capsys):
    out = tmp_path / "study"
    out.mkdir()
    (out / "results.json").write_text('{"runs": ["finished"]}')
    rc = ablation.main(["--quick", "--out", str(out), "--features", "c5", "--ops", "roialign",
                        "--seeds", "0", "--no-progress"])
    assert rc == 2 and "an earlier study" in capsys.readouterr().err
    assert (out / "results.json").read_text() == '{"runs": ["finished"]}'
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]  # nothing else written


def test_shapes_overwrite_replaces_only_a_shapes_set(tmp_path):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="replaces only a shapes data set"):
        write_dataset(mine, 1, 1, seed=0, size=32, overwrite=True, progress=False)
    assert (mine / "thesis.tex").read_text() == "precious"
    with pytest.raises(FileExistsError, match="is a file"):
        write_dataset(mine / "thesis.tex", 1, 1, seed=0, size=32, progress=False)
    with pytest.raises(ValueError, match="max-instances"):
        write_dataset(tmp_path / "s", 1, 1, seed=0, size=32, max_instances=0, progress=False)


def test_written_files_follow_the_umask_and_keep_a_replaced_file_s_mode(tmp_path):
    from minimaskrcnn._atomic import atomic_write

    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "new.json", "w") as f:
            f.write("{}")
        assert stat.S_IMODE(os.stat(tmp_path / "new.json").st_mode) == 0o644  # not mkstemp's 0600
        kept = tmp_path / "kept.json"
        kept.write_text("old")
        os.chmod(kept, 0o640)
        with atomic_write(kept, "w") as f:
            f.write("new")
        assert stat.S_IMODE(os.stat(kept).st_mode) == 0o640 and kept.read_text() == "new"
        write_dataset(tmp_path / "ds", 1, 0, seed=0, size=32, progress=False)
        assert stat.S_IMODE(os.stat(tmp_path / "ds").st_mode) == 0o755  # not mkdtemp's 0700
    finally:
        os.umask(old)


def test_a_temporary_file_left_by_a_killed_write_is_removed_on_resume(tiny_shapes, tmp_path,
                                                                       capsys):
    out = tmp_path / "k"
    train(tiny_shapes / "train", out, **dict(TINY_TRAIN_KW, max_iters=2, ckpt_every=1))
    stale = out / ".checkpoint.npz.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    mine = out / "notes.tmp"
    mine.write_text("mine")
    train(tiny_shapes / "train", out, **dict(TINY_TRAIN_KW, max_iters=2, ckpt_every=1), resume=True)
    assert not stale.exists() and mine.read_text() == "mine"
    assert ".checkpoint.npz.abc123.tmp" in capsys.readouterr().err
