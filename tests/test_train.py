"""The trainer: a few iterations of the tiny config on tiny shapes images. Losses finite, files
written atomically, a resumed run continues with the same losses as an uninterrupted one, one
seed gives one run. Plus the checkpoint format on a toy module (no model needed)."""

import json

import numpy as np
import pytest
import torch  # noqa: F401  (the reference extra must be installed; see CONTRIBUTING)
from conftest import TINY_TRAIN_KW

import minimaskrcnn.train as train_mod
from minimaskrcnn import Tensor, checkpoint, configs, nn, optim
from minimaskrcnn.train import Schedule, read_log, train

# Losses of two runs with the same seed go through the same float32 operations in the same order;
# only the order of partial sums inside parallel CPU kernels could differ between runs.
RTOL = 1e-5


KW = TINY_TRAIN_KW


@pytest.fixture(scope="module")
def uninterrupted(tiny_shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "a"
    summary = train(tiny_shapes / "train", out, **KW)
    return out, summary


def test_losses_finite_and_files_written(uninterrupted):
    out, summary = uninterrupted
    recs = read_log(out / "log.jsonl")
    assert [r["iteration"] for r in recs] == [1, 2, 3] and summary["iterations"] == 3
    for r in recs:
        for k in (
            "loss",
            "loss_classifier",
            "loss_box_reg",
            "loss_mask",
            "loss_objectness",
            "loss_rpn_box_reg",
        ):
            assert np.isfinite(r[k]), (k, r)
        assert r["loss"] == pytest.approx(sum(r[k] for k in train_mod.LOSS_NAMES), rel=1e-5)
    # images/s counts the images of the step (2 per batch here): the step times add up to the
    # training time the log reports
    step_s = [KW["batch_size"] / r["images_per_s"] for r in recs]
    assert sum(step_s) == pytest.approx(recs[-1]["elapsed_s"], rel=1e-6)
    assert (out / "checkpoint.npz").is_file() and (out / "model_final.npz").is_file()
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert (
        sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    )  # no temporaries left
    meta = checkpoint.load_checkpoint(out / "checkpoint.npz")["meta"]
    assert meta["iteration"] == 3 and meta["config"] == "r18_fpn_tiny" and meta["num_classes"] == 5
    # the warmup ran: lr grows from base * 1e-3 during the first 2 iterations
    assert recs[0]["lr"] == pytest.approx(0.02 * 1e-3) and recs[2]["lr"] > recs[0]["lr"]


def test_resume_gives_the_uninterrupted_losses(tiny_shapes, uninterrupted, tmp_path, monkeypatch):
    ref = read_log(uninterrupted[0] / "log.jsonl")
    out = tmp_path / "b"
    real = train_mod.seed_iteration

    def crash_at_2(model, seed, it):
        if it == 2:
            raise KeyboardInterrupt("simulated Ctrl-C in iteration 3")
        real(model, seed, it)

    monkeypatch.setattr(train_mod, "seed_iteration", crash_at_2)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_shapes / "train", out, **KW)
    monkeypatch.setattr(train_mod, "seed_iteration", real)
    assert checkpoint.load_checkpoint(out / "checkpoint.npz")["meta"]["iteration"] == 2
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_shapes / "train", out, **KW)  # never overwrite a run by accident
    with pytest.raises(ValueError, match="seed: started with 5, got 6"):
        train(tiny_shapes / "train", out, **{**KW, "seed": 6}, resume=True)
    train(tiny_shapes / "train", out, **KW, resume=True)
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "resume" and r["iteration"] == 2 for r in lines)
    got = read_log(out / "log.jsonl")
    assert [r["iteration"] for r in got] == [1, 2, 3]
    # iterations 1-2: the same seed gives the same run; iteration 3: resumed == uninterrupted
    for a, b in zip(got, ref, strict=True):
        for k in ("loss",) + train_mod.LOSS_NAMES:
            assert a[k] == pytest.approx(b[k], rel=RTOL), (a["iteration"], k)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-12)
    w_ref = checkpoint.load_checkpoint(uninterrupted[0] / "model_final.npz")["model"]
    w_got = checkpoint.load_checkpoint(out / "model_final.npz")["model"]
    for k in w_ref:
        np.testing.assert_allclose(w_got[k], w_ref[k], rtol=RTOL, atol=1e-7, err_msg=k)


def test_cli_train_then_evaluate(tiny_shapes, tmp_path):
    from minimaskrcnn.evaluate import main as eval_main
    from minimaskrcnn.train import main as train_main

    out = tmp_path / "c"
    args = f"--data {tiny_shapes} --config r18_fpn_tiny --out {out} --iters 1 --batch-size 2 "
    args += "--quiet "
    args += f"--kernels numpy --val {tiny_shapes / 'val'}"
    assert train_main(args.split()) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["bbox"]) >= {"AP", "AP50", "AR100"} and set(m["segm"]) >= {"AP", "AP50"}
    assert m["images"] == 2
    args = f"--weights {out / 'model_final.npz'} --data {tiny_shapes / 'val'} "
    args += f"--out {tmp_path / 'm.json'}"
    assert eval_main(args.split() + ["--kernels", "numpy"]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["images"] == 2
    # without --out: beside the weights, named after them; the run's own metrics.json is kept
    run_metrics = (out / "metrics.json").read_bytes()
    args = f"--weights {out / 'model_final.npz'} --data {tiny_shapes / 'val'} --max-images 1"
    assert eval_main(args.split() + ["--kernels", "numpy"]) == 0
    assert json.loads((out / "model_final_metrics.json").read_text())["images"] == 1
    assert (out / "metrics.json").read_bytes() == run_metrics
    args = f"--data {tmp_path / 'nothing'} --config r18_fpn_tiny --out {tmp_path / 'd'} --iters 1"
    assert train_main(args.split()) == 2  # a clear message on stderr, no traceback


def test_checkpoint_roundtrip_and_atomicity(tmp_path, monkeypatch):
    nn.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = optim.SGD(list(model.parameters()), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = Schedule(opt, warmup_iters=3, warmup_factor=0.01, gamma=0.1)
    sched.set_total(10, (0.5, 0.8))
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    for _ in range(4):
        opt.zero_grad()
        model(Tensor(x)).sum().backward()
        opt.step()
        sched.step()
    path = tmp_path / "ck.npz"
    checkpoint.save_checkpoint(path, model, opt, sched, iteration=4, note="x")
    nn.manual_seed(1)
    model2 = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    opt2 = optim.SGD(list(model2.parameters()), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched2 = Schedule(opt2, warmup_iters=3, warmup_factor=0.01, gamma=0.1)
    meta = checkpoint.restore(path, model2, opt2, sched2)
    assert meta == {"iteration": 4, "note": "x"}
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(model2.state_dict()[k], v)
    # both continue identically: same lr sequence (milestones 5 and 8) and same momentum
    for _ in range(6):
        for o, s, m in ((opt, sched, model), (opt2, sched2, model2)):
            o.zero_grad()
            m(Tensor(x)).sum().backward()
            o.step()
            s.step()
        assert sched.lr() == sched2.lr()
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(model2.state_dict()[k], v)
    assert sched.lr() == pytest.approx(0.1 * 0.01)  # past both milestones
    # a crash while saving leaves the previous file intact and no temporary behind
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_checkpoint(path, model, opt, sched, iteration=5)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["ck.npz"]


def test_configs_build_and_errors():
    m = configs.build("r18_fpn_tiny", num_classes=3, seed=0)
    keys = m.state_dict()
    assert (
        "backbone.body.layer4.1.conv2.weight" in keys
        and "roi_heads.mask_predictor.mask_fcn_logits.weight" in keys
    )
    assert keys["roi_heads.box_predictor.cls_score.weight"].shape == (3, 64)
    same = configs.build("r18_fpn_tiny", num_classes=3, seed=0).state_dict()
    assert all(
        np.array_equal(same[k], v) for k, v in keys.items()
    )  # a seed fixes the initialisation
    with pytest.raises(ValueError, match="unknown config 'r99'.*r18_fpn_small"):
        configs.build("r99", num_classes=3)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        configs.build("r18_fpn_tiny", num_classes=1)


@pytest.mark.parametrize("name", sorted(set(configs.CONFIGS) - {"r50_fpn"}))
def test_every_small_config_builds_with_its_table_widths(name):
    # The module docstring's table is what users read: the built modules must say the same.
    c = configs.describe(name)
    m = configs.build(name, num_classes=5, seed=0)
    C = c["fpn_channels"]
    assert m.backbone.out_channels == C
    assert m.backbone.fpn.layer_blocks[0][0].weight.shape == (C, C, 3, 3)
    assert m.roi_heads.box_head.fc6.weight.shape == (c["representation_size"], C * 7 * 7)
    assert [b[0].weight.shape[0] for b in m.roi_heads.mask_head] == list(c["mask_layers"])
    assert m.roi_heads.fg_bg_sampler.batch_size_per_image == c["model_kwargs"][
        "box_batch_size_per_image"
    ]
    row = next(line for line in configs.__doc__.splitlines() if line.startswith(name + " "))
    assert row.split()[2] == str(C) and row.split()[6] == str(c["model_kwargs"][
        "box_batch_size_per_image"])


def test_imagenet_backbone_weights_load(tmp_path):
    m = configs.build("r18_fpn_tiny", num_classes=3, seed=0)
    body = m.backbone.body.state_dict()
    rng = np.random.default_rng(0)
    # an ImageNet checkpoint: the body's keys plus fc.* (ignored) and num_batches_tracked
    sd = {
        k: rng.standard_normal(np.shape(v)).astype(np.float32)
        for k, v in body.items()
        if not k.endswith("num_batches_tracked")
    }
    sd["fc.weight"], sd["fc.bias"] = np.zeros((1000, 512), np.float32), np.zeros(1000, np.float32)
    left = configs.load_imagenet_backbone(m, sd)
    assert all(k.endswith("num_batches_tracked") for k in left)
    np.testing.assert_array_equal(m.backbone.body.state_dict()["conv1.weight"], sd["conv1.weight"])
    with pytest.raises(ValueError, match="mis-shaped"):
        configs.load_imagenet_backbone(
            m, {**sd, "conv1.weight": np.zeros((8, 3, 7, 7), np.float32)}
        )
    with pytest.raises(ValueError, match="does not have"):
        configs.load_imagenet_backbone(m, {**sd, "features.0.weight": np.zeros(3, np.float32)})


@pytest.mark.gpu
def test_cupy_training_starts_where_numpy_does(tiny_shapes, uninterrupted, tmp_path):
    """The same seed on the GPU: same initial weights (drawn on the host), same batch, same
    samples, so the first iteration's losses agree with the NumPy run's up to summation order."""
    from minimaskrcnn.data import from_folder
    from minimaskrcnn.evaluate import evaluate

    out = tmp_path / "gpu"
    summary = train(
        tiny_shapes / "train", out, **{**KW, "kernels": None, "backend": "cupy", "max_iters": 2}
    )
    got, ref = read_log(out / "log.jsonl"), read_log(uninterrupted[0] / "log.jsonl")
    assert [r["iteration"] for r in got] == [1, 2] and summary["iterations"] == 2
    for k in ("loss",) + train_mod.LOSS_NAMES:
        # float32 sums over up to ~1e5 terms in another order (cuBLAS-free CUDA kernels, atomics in
        # RoIAlign's backward do not matter before the first step): 1e-3 relative is ample
        assert got[0][k] == pytest.approx(ref[0][k], rel=1e-3), k
        assert np.isfinite(got[1][k])
    model, _ = checkpoint.load_model_weights(out / "model_final.npz")
    model.to("cupy")
    m = evaluate(model, from_folder(tiny_shapes, "val"), progress=False, verbose=False)
    assert m["images"] == 2 and 0.0 <= m["segm"]["AP"] <= 1.0


def test_milestone_fractions_truncate_to_an_iteration():
    """--iters/--epochs mode: a milestone at fraction f of N iterations is iteration int(f * N),
    truncated (the project's rule: the decay never comes after its fraction), so 0.67 and 0.89
    of 10 decay after iterations 6 and 8 (rounding would give 7 and 9), and two fractions on one
    iteration decay twice there."""
    nn.manual_seed(0)
    opt = optim.SGD(list(nn.Linear(2, 2).parameters()), lr=1.0)
    sched = Schedule(opt, warmup_iters=1, warmup_factor=1.0, gamma=0.5)
    sched.set_total(10, (0.67, 0.89, 0.85))
    assert sched.passed() == 3
    lrs = []
    for _ in range(10):
        lrs.append(sched.lr())
        sched.step()
    assert lrs == pytest.approx([1.0] * 6 + [0.5] * 2 + [0.125] * 2)


def test_time_placed_milestones_decay_the_next_step():
    """--minutes mode places a milestone at the iteration that crosses a fraction of the budget."""
    nn.manual_seed(0)
    opt = optim.SGD(list(nn.Linear(2, 2).parameters()), lr=0.5)
    sched = Schedule(opt, warmup_iters=1, warmup_factor=1.0, gamma=0.1)  # no warmup
    lrs = []
    for it in range(1, 6):  # 5 iterations; the budget's 75% is crossed in iteration 3
        lrs.append(sched.lr())
        if it == 3:
            sched.decay_at_next_step()
        sched.step()
    assert lrs == pytest.approx([0.5, 0.5, 0.5, 0.05, 0.05])
    state = sched.state_dict()
    again = Schedule(opt, warmup_iters=1, warmup_factor=1.0, gamma=0.1)
    again.load_state_dict(json.loads(json.dumps(state)))  # JSON-able, as checkpoints store it
    assert again.passed() == 1 and again.steps.last_epoch == sched.steps.last_epoch
