"""``minimaskrcnn predict``: draws a PNG, agrees with torchvision on the same weights, bad inputs.

A small Mask R-CNN (ResNet-18-FPN, narrow heads) keeps the weights file and the run small; the
weights are torchvision's (seeded), saved with torch.save as a user would, so the CLI's whole path
(image file -> float (3, H, W) -> model built from the weights' keys -> detections) is checked.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.detection import MaskRCNN as TvMaskRCNN
from torchvision.models.detection import backbone_utils as tv_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor as TvFastRCNNPredictor
from torchvision.models.detection.faster_rcnn import TwoMLPHead as TvTwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads as TvMaskRCNNHeads
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor as TvMaskRCNNPredictor

from minimaskrcnn import cli, io, predict

SIZE = dict(min_size=96, max_size=128)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    bb = tv_backbone.resnet_fpn_backbone(
        backbone_name="resnet18", weights=None, norm_layer=torch.nn.BatchNorm2d, trainable_layers=5
    )
    ref = TvMaskRCNN(
        bb,
        num_classes=None,
        box_head=TvTwoMLPHead(256 * 49, 64),
        box_predictor=TvFastRCNNPredictor(64, 4),
        mask_head=TvMaskRCNNHeads(256, [32, 32], 1),
        mask_predictor=TvMaskRCNNPredictor(32, 32, 4),
        **SIZE,
    ).eval()
    with torch.no_grad():  # peaky class scores so that some detections pass 0.05 (see e2e test)
        ref.roi_heads.box_predictor.cls_score.weight.mul_(30.0)
    torch.save(ref.state_dict(), d / "small.pth")
    rng = np.random.default_rng(0)
    img = (rng.random((50, 70, 3)) * 255).astype(np.uint8)
    img[10:30, 20:50] = [250, 30, 30]
    Image.fromarray(img).save(d / "photo.png")
    Image.fromarray(img[..., 0]).save(d / "gray.png")  # grayscale file: converted to RGB
    (d / "names.txt").write_text("cat\ndog\nbird\n")
    (d / "not_an_image.png").write_text("hello")
    return d, ref


def test_predict_writes_a_png_and_agrees_with_torchvision(files, capsys):
    d, ref = files
    out, js = d / "out.png", d / "out.json"
    rc = predict.main(
        [
            str(d / "photo.png"),
            "--weights",
            str(d / "small.pth"),
            "--out",
            str(out),
            "--min-size",
            "96",
            "--max-size",
            "128",
            "--score-thresh",
            "0.0",
            "--classes",
            str(d / "names.txt"),
            "--json",
            str(js),
        ]
    )
    assert rc == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] >= 70 - 1
    text = capsys.readouterr().out
    assert "detections in" in text
    dets = json.loads(js.read_text())
    image = (
        np.asarray(Image.open(d / "photo.png").convert("RGB"), np.float32).transpose(2, 0, 1) / 255
    )
    with torch.no_grad():
        want = ref([torch.from_numpy(np.ascontiguousarray(image))])[0]
    assert len(want["boxes"]) > 0  # the comparison is about something
    assert len(dets) == len(want["boxes"])
    # near-ties aside (none here: a tiny image), the same boxes in the same order, to float32 noise
    np.testing.assert_allclose([x["box"] for x in dets], want["boxes"].numpy(), rtol=0, atol=1e-2)
    np.testing.assert_allclose(
        [x["score"] for x in dets], want["scores"].numpy(), rtol=0, atol=1e-4
    )
    assert [x["label"] for x in dets] == want["labels"].tolist()
    assert {x["name"] for x in dets} <= {"cat", "dog", "bird"}  # names file: background added


def test_predict_through_the_cli_with_npz_weights_and_a_grayscale_file(files, tmp_path, capsys):
    d, ref = files
    w = io.save_weights(tmp_path / "small.npz", io.load_weights(d / "small.pth"))
    out = tmp_path / "gray_out.png"
    rc = cli.main(
        [
            "predict",
            str(d / "gray.png"),
            "--weights",
            w,
            "--out",
            str(out),
            "--min-size",
            "96",
            "--max-size",
            "128",
        ]
    )
    assert rc == 0 and out.exists()


def test_predict_kernels_option_runs_the_reference_kernels(files, tmp_path, monkeypatch):
    # --kernels numpy must reach the ops: count the NumPy reference's RoIAlign calls
    from minimaskrcnn.kernels import roi_align_numpy

    d, _ = files
    calls = []
    forward = roi_align_numpy.forward
    monkeypatch.setattr(roi_align_numpy, "forward", lambda *a: calls.append(1) or forward(*a))
    argv = [str(d / "photo.png"), "--weights", str(d / "small.pth"), "--out",
            str(tmp_path / "o.png"), "--min-size", "96", "--max-size", "128"]
    assert predict.main(argv) == 0 and not calls  # default: the fast CPU kernels
    assert predict.main(argv + ["--kernels", "numpy"]) == 0 and calls


def test_predict_without_weights_explains_how_to_get_them(files, capsys):
    d, _ = files
    assert predict.main([str(d / "photo.png")]) == 2
    err = capsys.readouterr().err
    assert "torch.save(m.state_dict()" in err and "minimaskrcnn train" in err


@pytest.mark.parametrize(
    "name,match",
    [
        ("missing.png", "not found"),
        ("not_an_image.png", "cannot read"),
    ],
)
def test_predict_bad_images(files, capsys, name, match):
    d, _ = files
    assert predict.main([str(d / name), "--weights", str(d / "small.pth")]) == 2
    assert match in capsys.readouterr().err


def test_predict_weights_of_another_kind(files, tmp_path, capsys):
    d, _ = files
    only_backbone = {
        k[len("backbone.") :]: v
        for k, v in io.load_weights(d / "small.pth").items()
        if k.startswith("backbone.")
    }
    w = io.save_weights(tmp_path / "backbone.npz", only_backbone)
    assert predict.main([str(d / "photo.png"), "--weights", w]) == 2
    assert "not a Faster/Mask R-CNN" in capsys.readouterr().err
    assert predict.main([str(d / "photo.png"), "--weights", str(tmp_path / "none.npz")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_class_name_files(tmp_path):
    coco = predict.read_class_names("coco", 91)
    assert len(coco) == 91 and coco[1] == "person" and coco[90] == "toothbrush"
    assert predict.read_class_names(None, 91) == coco and predict.read_class_names(None, 5) is None
    p = tmp_path / "ann.json"
    p.write_text(
        json.dumps({"categories": [{"id": 1, "name": "circle"}, {"id": 3, "name": "square"}]})
    )
    # contiguous labels as minimaskrcnn.data.CocoDataset gives them: categories sorted by id
    assert predict.read_class_names(str(p), 3) == ["__background__", "circle", "square"]


def test_predict_with_a_training_checkpoint_uses_its_config_and_names(files, tmp_path, capsys):
    from minimaskrcnn import checkpoint, configs

    d, _ = files
    name = "tiny" if "tiny" in configs.CONFIGS else sorted(configs.CONFIGS)[0]
    model = configs.build(name, num_classes=3, seed=0)
    path = tmp_path / "ckpt.npz"
    checkpoint.save_checkpoint(
        path, model, config=name, num_classes=3, class_names=["__background__", "circle", "square"]
    )
    out = tmp_path / "ck.png"
    rc = predict.main(
        [str(d / "photo.png"), "--weights", str(path), "--out", str(out), "--score-thresh", "0.0"]
    )
    assert rc == 0 and out.exists()
    lines = capsys.readouterr().out.splitlines()[1:]
    assert lines  # 3 classes: random scores ~1/3 pass box_score_thresh 0.05
    assert all(line.split()[0] in ("circle", "square") for line in lines)  # the saved names
