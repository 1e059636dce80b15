"""``bench model`` and its ``build_pair``, with a weights file: what tutorial 04 and the benchmark
do when a learner has torchvision's COCO weights saved as a ``.pth`` (nothing is downloaded here,
so a seeded random state dict stands in for them)."""

import json

import numpy as np
import torch

from minimaskrcnn.bench import model as bench_model
from minimaskrcnn.tensor import no_grad

MIN_SIZE, MAX_SIZE = 192, 256  # small: the stages are the same at any size


def test_build_pair_loads_a_torchvision_state_dict_into_both(tmp_path):
    # the seeded pair's torchvision weights (logits scaled, so there are detections) as a .pth
    ref0, _ = bench_model.build_pair(MIN_SIZE, MAX_SIZE, box_detections_per_img=20)
    path = tmp_path / "maskrcnn.pth"
    torch.save(ref0.state_dict(), path)

    ref, ours = bench_model.build_pair(MIN_SIZE, MAX_SIZE, weights=path,
                                       box_detections_per_img=20)
    # as torchvision builds its COCO model: frozen BatchNorm with eps 0, on both sides
    frozen = [m for m in ref.modules() if type(m).__name__ == "FrozenBatchNorm2d"]
    assert frozen and all(m.eps == 0.0 for m in frozen)
    ours_frozen = [m for m in ours.modules() if type(m).__name__ == "FrozenBatchNorm2d"]
    assert len(ours_frozen) == len(frozen) and all(m.eps == 0.0 for m in ours_frozen)

    image = bench_model.sample_image()
    with torch.no_grad():
        want = ref([torch.from_numpy(image)])[0]
    with no_grad():
        got = ours([image])[0]
    assert len(want["boxes"]) > 0  # the scaled logits give detections to compare
    np.testing.assert_array_equal(got["labels"], want["labels"].numpy())
    # float32 through a ResNet-50: measured 6e-5 px, 2e-6 score, 2e-5 mask; bounds ~30x that
    np.testing.assert_allclose(got["boxes"], want["boxes"].numpy(), atol=2e-3)
    np.testing.assert_allclose(got["scores"], want["scores"].numpy(), atol=1e-4)
    np.testing.assert_allclose(got["masks"], want["masks"].numpy(), atol=1e-3)


def test_bench_model_cli_with_weights_writes_its_json(tmp_path):
    ref0, _ = bench_model.build_pair(MIN_SIZE, MAX_SIZE)
    path = tmp_path / "maskrcnn.pth"
    torch.save({"model": ref0.state_dict(), "epoch": 1}, path)  # a reference-script checkpoint
    out = tmp_path / "bench.json"
    argv = ["--min-size", str(MIN_SIZE), "--max-size", str(MAX_SIZE), "--repeat", "1",
            "--no-stages", "--weights", str(path), "--out", str(out)]
    assert bench_model.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["weights"] == str(path) and result["repeat"] == 1
    assert result["torchvision_s"] > 0 and result["ours_s"] > 0
