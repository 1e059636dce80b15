"""Drawing detections with matplotlib: boxes, labels, scores and masks on the image.

Shared by ``minimaskrcnn predict`` and the tutorials. Shapes: image (3, H, W) float in [0, 1] (or
(H, W, 3)); a result dict as the model returns it: boxes (K, 4) x1 y1 x2 y2 in pixels, labels (K,),
scores (K,), masks (K, 1, H, W) soft masks in [0, 1] (optional).
"""

from __future__ import annotations

import numpy as np

from . import backends
from ._atomic import savefig_atomic

# torchvision's COCO category names for its 91-way models (index = label; "N/A" = ids COCO skips)
COCO_CATEGORIES = [
    "__background__",
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "N/A",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "N/A",
    "backpack",
    "umbrella",
    "N/A",
    "N/A",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "N/A",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "N/A",
    "dining table",
    "N/A",
    "N/A",
    "toilet",
    "N/A",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "N/A",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
]


def _hwc(image) -> np.ndarray:
    img = backends.to_numpy(
        getattr(image, "data", image) if type(image).__name__ == "Tensor" else image
    )
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)  # (3, H, W) -> (H, W, 3)
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255
    return np.clip(img, 0, 1)


def label_name(label: int, class_names=None) -> str:
    if class_names is not None and 0 <= int(label) < len(class_names):
        return str(class_names[int(label)])
    return f"class {int(label)}"


def draw_detections(
    ax,
    image,
    result,
    class_names=None,
    score_thresh: float = 0.5,
    mask_thresh: float = 0.5,
    title: str | None = None,
    max_labels: int = 50,
):
    """Draw ``result`` (a model output dict) on ``image`` into the matplotlib axes ``ax``.

    Detections with score < ``score_thresh`` are left out; masks are shown where the soft mask is
    >= ``mask_thresh`` (the model returns soft masks; thresholding is the caller's, as in
    torchvision). Returns the number of detections drawn.
    """
    import matplotlib.patches as patches

    img = _hwc(image)
    ax.imshow(img)
    boxes = backends.to_numpy(result.get("boxes", np.zeros((0, 4))))
    scores = backends.to_numpy(result.get("scores", np.ones(len(boxes))))
    labels = backends.to_numpy(result.get("labels", np.zeros(len(boxes), np.int64)))
    masks = result.get("masks")
    masks = None if masks is None else backends.to_numpy(masks)
    keep = np.flatnonzero(scores >= score_thresh)
    colours = _colours(len(keep))
    overlay = np.zeros(img.shape[:2] + (4,), np.float32)
    for j, i in enumerate(keep):
        c = colours[j]
        x1, y1, x2, y2 = boxes[i]
        ax.add_patch(
            patches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=c, linewidth=1.5)
        )
        if j < max_labels:
            ax.text(
                x1,
                y1,
                f"{label_name(labels[i], class_names)} {scores[i]:.2f}",
                fontsize=7,
                color="white",
                va="bottom",
                bbox=dict(facecolor=c, alpha=0.8, pad=1, edgecolor="none"),
            )
        if masks is not None:
            m = masks[i, 0] >= mask_thresh  # (H, W)
            overlay[m] = (*c[:3], 0.45)
    if masks is not None and len(keep):
        ax.imshow(overlay)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return len(keep)


def _colours(n):
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


def save_detections(
    path, image, result, class_names=None, score_thresh: float = 0.5, title=None, dpi: int = 100
) -> int:
    """Draw ``result`` on ``image`` and write a PNG at ``path``; returns the number drawn."""
    import matplotlib.pyplot as plt

    img = _hwc(image)
    h, w = img.shape[:2]
    fig = plt.figure(figsize=(max(w / dpi, 2), max(h / dpi, 2)), dpi=dpi)
    ax = fig.add_axes([0, 0, 1, 1])
    n = draw_detections(
        ax, img, result, class_names=class_names, score_thresh=score_thresh, title=title
    )
    savefig_atomic(fig, path, dpi=dpi)
    plt.close(fig)
    return n
