"""Weights I/O: .npz round trip (atomic), torchvision .pth in, torch state dict out, wrong files."""

import os
import sys

import numpy as np
import pytest
import torch
from torchvision.models.detection import backbone_utils as tv_backbone

from minimaskrcnn import io
from minimaskrcnn.models import fpn


@pytest.fixture(scope="module")
def tv_r18():
    torch.manual_seed(0)
    return tv_backbone.resnet_fpn_backbone(
        backbone_name="resnet18", weights=None, norm_layer=torch.nn.BatchNorm2d
    )


def test_npz_round_trip_keeps_keys_order_dtypes_and_values(tmp_path):
    ours = fpn.resnet_fpn_backbone("resnet18", norm_layer="batchnorm", seed=1)
    path = io.save_weights(tmp_path / "w", ours)
    assert path.endswith("w.npz") and os.path.exists(path)
    back = io.load_weights(path)
    sd = ours.state_dict()
    assert list(back) == list(sd)
    for k in sd:
        assert back[k].dtype == np.asarray(sd[k]).dtype, k
        np.testing.assert_array_equal(back[k], sd[k])
    assert back["body.bn1.num_batches_tracked"].dtype == np.int64
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []  # no temp file left


def test_failed_save_leaves_the_old_file_intact(tmp_path):
    path = io.save_weights(tmp_path / "w.npz", {"a": np.arange(3.0)})

    class Boom:
        def __array__(self, *a, **k):
            raise RuntimeError("disk full (simulated)")

    with pytest.raises(RuntimeError, match="simulated"):
        io.save_weights(path, {"a": np.zeros(2), "b": Boom()})
    np.testing.assert_array_equal(io.load_weights(path)["a"], np.arange(3.0))
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []


def test_torchvision_pth_loads_and_gives_the_same_features(tmp_path, tv_r18):
    path = tmp_path / "r18.pth"
    torch.save(tv_r18.state_dict(), path)
    ours = fpn.resnet_fpn_backbone("resnet18", norm_layer="batchnorm").eval()
    missing, unexpected = ours.load_state_dict(io.load_weights(path))
    assert missing == [] and unexpected == []
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = tv_r18.eval()(torch.from_numpy(x))["0"].numpy()
    got = ours(x)["0"].data
    # float32 convolutions summed in another order through 10 layers: 1e-4 of the largest value
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    # a training checkpoint {"model": state_dict, ...} as torchvision's references write it
    torch.save({"model": tv_r18.state_dict(), "epoch": 3}, tmp_path / "ckpt.pth")
    assert list(io.load_weights(tmp_path / "ckpt.pth")) == list(tv_r18.state_dict())


def test_export_to_torch_loads_strictly_into_torchvision(tv_r18):
    ours = fpn.resnet_fpn_backbone("resnet18", norm_layer="batchnorm", seed=2)
    sd = io.export_torch_state_dict(ours)
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    target = tv_backbone.resnet_fpn_backbone(
        backbone_name="resnet18", weights=None, norm_layer=torch.nn.BatchNorm2d
    )
    result = target.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    np.testing.assert_array_equal(
        target.state_dict()["fpn.layer_blocks.2.0.weight"].numpy(),
        ours.state_dict()["fpn.layer_blocks.2.0.weight"],
    )


def test_weights_of_another_architecture_fail_with_a_key_report(tmp_path):
    path = io.save_weights(
        tmp_path / "r18.npz", fpn.resnet_fpn_backbone("resnet18", norm_layer="batchnorm")
    )
    r50 = fpn.resnet_fpn_backbone("resnet50", norm_layer="batchnorm")
    with pytest.raises(ValueError) as e:
        r50.load_state_dict(io.load_weights(path))
    msg = str(e.value)
    assert msg.startswith("BackboneWithFPN.load_state_dict")
    assert "missing keys (198)" in msg and "mis-shaped keys" in msg  # ResNet-18 keys are a subset
    assert "body.layer1.0.conv3.weight" in msg  # a Bottleneck key that ResNet-18 lacks
    # the other way round: ResNet-50 weights into ResNet-18 give unexpected keys
    path50 = io.save_weights(tmp_path / "r50.npz", r50)
    with pytest.raises(ValueError, match=r"unexpected keys \(198\): body.layer1.0.conv3.weight"):
        fpn.resnet_fpn_backbone("resnet18", norm_layer="batchnorm").load_state_dict(
            io.load_weights(path50)
        )


def test_pth_without_torch_says_how_to_get_it(tmp_path, monkeypatch, tv_r18):
    path = tmp_path / "w.pth"
    torch.save(tv_r18.state_dict(), path)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(ImportError, match="needs torch"):
        io.load_weights(path)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        io.load_weights(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    with pytest.raises(ValueError, match="not a .npz weights file"):
        io.load_weights(bad)
    with pytest.raises(TypeError, match="Module or a dict"):
        io.save_weights(tmp_path / "x.npz", 42)
