"""The RoI-operator ablation (``minimaskrcnn.ablation``, ``compare-roi train``).

The operator-swapping pooler returns exactly what the operator itself returns for the level that
MultiScaleRoIAlign's mapper picks; single-level (c4/c5) models build and train one iteration; the
CLI's quick mode writes a results.json with one row per (feature, operator, seed).
"""

import json

import numpy as np
import pytest
import torch
import torchvision

from minimaskrcnn import Tensor, ablation, backends, compare_roi, ops
from minimaskrcnn.data import CocoDataset
from minimaskrcnn.models.poolers import MultiScaleRoIAlign


def _levels(rng):
    # Two levels of a 64 x 64 image: stride 4 (16 x 16) and stride 8 (8 x 8).
    return {"0": rng.standard_normal((2, 3, 16, 16)).astype(np.float32),
            "1": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)}


def _boxes():
    # Sizes on both sides of the level boundary (with canonical_scale 56 and levels 2..3 here,
    # boxes with sqrt(area) under 28 px go to level 0) and non-integer corners.
    return [np.array([[1.3, 2.7, 20.2, 30.9], [5.5, 4.1, 60.0, 63.0]], np.float32),
            np.array([[10.6, 0.4, 33.3, 12.8], [0.0, 0.0, 63.5, 63.5], [7.7, 9.2, 9.9, 11.1]],
                     np.float32)]


def _rois(boxes):
    return np.concatenate([np.concatenate([np.full((len(b), 1), i, np.float32), b], 1)
                           for i, b in enumerate(boxes)])


@pytest.mark.parametrize("op", sorted(ablation.POOL_OPS))
def test_pooler_is_the_operator_on_one_level(op, rng):
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)  # stride 8 of a 64 x 64 image
    boxes = _boxes()
    got = ablation.RoIOpPooler(["0"], 3, op)({"0": x}, boxes, [(64, 64), (64, 64)])
    rois = _rois(boxes)
    want = {
        "roipool": lambda: ops.roi_pool(x, rois, 3, spatial_scale=0.125),
        "roiwarp": lambda: ops.roi_warp(x, rois, 3, spatial_scale=0.125, sampling_ratio=2),
        "roialign": lambda: ops.roi_align(x, rois, 3, spatial_scale=0.125, sampling_ratio=2,
                                          aligned=False),
        "roialign-aligned": lambda: ops.roi_align(x, rois, 3, spatial_scale=0.125,
                                                  sampling_ratio=2, aligned=True),
    }[op]()
    np.testing.assert_array_equal(got, want)  # the same call: bit-identical


@pytest.mark.parametrize("op", sorted(ablation.POOL_OPS))
def test_pooler_on_two_levels_uses_the_mapped_level(op, rng):
    feats = _levels(rng)
    boxes = _boxes()
    pooler = ablation.RoIOpPooler(["0", "1"], 2, op, canonical_scale=56)
    got = pooler(feats, boxes, [(64, 64), (64, 64)])  # (5, 3, 2, 2)
    assert pooler.scales == [0.25, 0.125]
    rois = _rois(boxes)
    side = np.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    # FPN eq. 1 by hand: floor(4 + log2(side / 56)), clamped to [2, 3], minus 2.
    level = np.clip(np.floor(4 + np.log2(side / 56) + 1e-6), 2, 3).astype(int) - 2
    assert set(level) == {0, 1}, "the boxes must exercise both levels"
    for k in range(len(rois)):
        name, scale = ("0", 0.25) if level[k] == 0 else ("1", 0.125)
        one = ablation.POOL_OPS[op](feats[name], rois[k:k + 1], (2, 2), scale, 2)
        np.testing.assert_array_equal(got[k:k + 1], one)


def test_roialign_pooler_matches_multiscale_roialign_and_torchvision(rng):
    feats = _levels(rng)
    boxes = _boxes()
    image_sizes = [(64, 64), (64, 64)]
    pooler = ablation.RoIOpPooler(["0", "1"], 7, "roialign", canonical_scale=56)
    got = pooler(feats, boxes, image_sizes)
    ours = MultiScaleRoIAlign(["0", "1"], 7, 2, canonical_scale=56)(feats, boxes, image_sizes)
    np.testing.assert_array_equal(got, ours)
    tv = torchvision.ops.MultiScaleRoIAlign(["0", "1"], 7, 2, canonical_scale=56)(
        {k: torch.from_numpy(v) for k, v in feats.items()},
        [torch.from_numpy(b) for b in boxes], image_sizes)
    # float32 bilinear sums; our roi_align is tested bit-close to torchvision in its own suite,
    # 1e-5 absolute leaves room for a different summation order on unit-variance inputs.
    np.testing.assert_allclose(got, tv.numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("op", ["roipool", "roiwarp"])
def test_pooler_gradient_reaches_the_features(op, rng):
    feats = {k: Tensor(v, requires_grad=True) for k, v in _levels(rng).items()}
    pooler = ablation.RoIOpPooler(["0", "1"], 2, op, canonical_scale=56)
    out = pooler(feats, _boxes(), [(64, 64), (64, 64)])
    (out * out).sum().backward()
    for v in feats.values():
        assert v.grad is not None and np.abs(np.asarray(v.grad)).sum() > 0


def test_bad_operator_and_feature_are_clear_errors():
    with pytest.raises(ValueError, match="RoIOpPooler: unknown op 'roimax'"):
        ablation.RoIOpPooler(["0"], 7, "roimax")
    with pytest.raises(ValueError, match="unknown feature 'c3'"):
        ablation.build_model("r18_fpn_tiny", "c3", "roipool", 3)


@pytest.mark.parametrize("feature,stride", [("c4", 16), ("c5", 32)])
def test_single_level_model_trains_one_iteration(feature, stride, tiny_shapes):
    ds = CocoDataset(tiny_shapes / "train" / "images", tiny_shapes / "train" / "annotations.json")
    model = ablation.build_model("r18_fpn_tiny", feature, "roipool",
                                 num_classes=len(ds.class_names), seed=0)
    assert model.roi_heads.box_roi_pool.op == "roipool"
    assert model.roi_heads.mask_roi_pool.op == "roipool"
    assert model.rpn.anchor_generator.num_anchors_per_location() == [15]  # 5 sizes x 3 ratios
    images, targets = zip(*[ds[0], ds[1]], strict=True)
    with backends.use("numpy"):
        feats = model.backbone(Tensor(np.zeros((1, 3, 64, 64), np.float32)))
        assert list(feats) == ["0"] and feats["0"].shape == (1, 32, 64 // stride, 64 // stride)
        model.train()
        losses = model(list(images), list(targets))
        loss = sum(losses.values())
        assert np.isfinite(float(loss.data))
        loss.backward()
    w = model.roi_heads.box_head.fc6.weight.grad
    assert w is not None and np.abs(np.asarray(w)).sum() > 0


def test_builder_answers_the_trainers_call_with_the_variant():
    import pickle

    # train(workers=N) pickles the builder to its worker processes: the copy builds the same
    build = pickle.loads(pickle.dumps(ablation._Builder("fpn", "roiwarp")))
    m = build("r18_fpn_tiny", num_classes=3, seed=0, backbone_weights=None)  # the trainer's call
    for pooler, size in ((m.roi_heads.box_roi_pool, 7), (m.roi_heads.mask_roi_pool, 14)):
        assert pooler.op == "roiwarp" and pooler.output_size == (size, size)
        assert list(pooler.featmap_names) == ["0", "1", "2", "3"]
    with pytest.raises(ValueError, match="from scratch"):
        build("r18_fpn_tiny", num_classes=3, seed=0, backbone_weights="imagenet.npz")


def test_summarize_mean_and_spread():
    def row(seed, ap):
        m = {k: ap for k in ablation.METRICS}
        return dict(feature="c5", op="roipool", seed=seed, status="done",
                    metrics={"segm": m, "bbox": m})

    rows = [row(0, 0.2), row(1, 0.4), dict(feature="c5", op="roipool", seed=2, status="pending")]
    (s,) = ablation.summarize(rows)
    assert s["runs"] == 3 and s["finished"] == 2 and s["seeds"] == [0, 1]
    assert s["segm_AP"]["mean"] == pytest.approx(0.3) and s["segm_AP"]["min"] == 0.2
    assert s["segm_AP"]["max"] == 0.4
    md = ablation.format_tables(rows, {"budget": "x"})
    assert "| c5 | roipool | 2/3 PARTIAL | 30.0 [20.0..40.0] |" in md
    assert "arXiv:1703.06870" in md


def test_cli_quick_writes_every_row(tiny_shapes, tmp_path, capsys):
    out = tmp_path / "run"
    rc = compare_roi.main(["train", "--quick", "--data", str(tiny_shapes / "train"),
                           "--val", str(tiny_shapes / "val"), "--features", "c5",
                           "--ops", "roipool,roialign", "--seeds", "0,1", "--iters", "1",
                           "--eval-max-images", "1", "--kernels", "numpy", "--out", str(out),
                           "--no-progress"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    got = sorted((r["feature"], r["op"], r["seed"]) for r in res["runs"])
    assert got == sorted(("c5", o, s) for o in ("roipool", "roialign") for s in (0, 1))
    for r in res["runs"]:
        assert r["status"] == "done" and r["iterations"] == 1
        assert set(r["metrics"]) == {"bbox", "segm"}
        assert 0.0 <= r["metrics"]["segm"]["AP"] <= 1.0
    assert len(res["summary"]) == 2 and res["meta"]["config"] == "r18_fpn_tiny"
    printed = capsys.readouterr().out
    assert "Table 2d" in printed and "| c5 | roialign | 2/2 |" in printed
    assert (out / "results.md").read_text().startswith("## Ours")
    assert (out / "c5_roipool_s1" / "stdout.txt").read_text().count("IoU metric") == 2


def test_a_diverged_run_is_recorded_and_the_others_go_on(tiny_shapes, tmp_path, monkeypatch):
    import minimaskrcnn.train as train_mod

    real = train_mod.train

    def train(data, out, build_fn=None, **kw):  # roipool "diverges"; the others train for real
        if build_fn.op == "roipool":
            raise FloatingPointError("train: the loss is nan at iteration 0")
        return real(data, out, build_fn=build_fn, **kw)

    monkeypatch.setattr(train_mod, "train", train)
    rows = ablation.run(tiny_shapes / "train", tmp_path, val=tiny_shapes / "val", features=("c5",),
                        ops_list=("roipool", "roialign"), seeds=(0,), iters=1,
                        config="r18_fpn_tiny", batch_size=2, eval_max_images=1,
                        warmup_iters=1, progress=False, kernels="numpy")
    assert [(r["op"], r["status"]) for r in rows] == [("roipool", "diverged"),
                                                      ("roialign", "done")]
    md = (tmp_path / "results.md").read_text()
    assert "| c5 | roipool | 0/1 PARTIAL |" in md
    assert "- not in the table: c5 roipool seed 0: diverged (train: the loss is nan" in md
