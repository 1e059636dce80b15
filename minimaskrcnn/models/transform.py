"""GeneralizedRCNNTransform: images in, a padded normalised batch out; and back again at the end.

Shape legend:
    N: images          3: RGB channels        h0, w0: an input image's size
    h, w: its size after resizing              H, W: the padded batch size (multiples of 32)
    K: detections of one image                 M: mask head resolution (28)

Forward (torchvision/models/detection/transform.py, eager mode), for each image:

    x = (x - mean[:, None, None]) / std[:, None, None]             # normalise first, in x's dtype
    s = min(min_size / min(h0, w0), max_size / max(h0, w0))         # a Python float (float64)
    h, w = int(h0 * s), int(w0 * s)                                 # recompute_scale_factor=True
    x = interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False)[0]

then zero-pad every image (bottom/right, in normalised space, so padding is "mean colour minus
mean" = 0) to H = ceil(max h / 32) * 32, W likewise, and stack. With recompute_scale_factor=True
torch throws away ``s`` after computing the output size and samples with the ratio h0 / h, which
is exactly what ``interpolate(size=...)`` does, so we pass the size.

Note: torchvision computes ``s`` in float32 only when scripted or traced; in eager mode (what users
run, and what the tests compare with) it is a Python float, and so is it here.

Targets (training): boxes scaled by (w / w0, h / h0) in float32; masks resized with nearest
interpolation to (h, w) and cast back to uint8, as torchvision does.

Postprocess (inference): boxes scaled back per axis; soft masks (K, 1, M, M) pasted into the
original image with ``paste_masks_in_image`` (below), reproducing torchvision's integer casts.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .. import backends
from ..nn.module import Module
from .image_list import ImageList


def _data(x):
    """The array inside a Tensor (or the array itself): images are inputs, never differentiated."""
    return x.data if type(x).__name__ in ("Tensor", "Parameter") else x


def _interpolate(*args, **kwargs):
    # imported lazily: ops/resize.py is the one implementation of torch's interpolate
    from ..ops import interpolate

    return interpolate(*args, **kwargs)


# ============================================================================ input checks
def check_images(op: str, images) -> list:
    """Each image as a (3, h0, w0) float32 array, or a clear error naming ``op`` and what it got.

    Conversions done here (documented): a Tensor gives its array; float64 becomes float32 (the
    weights are float32). Everything else that looks like a common mistake is an error that says
    how to fix it: uint8 images, channels-last (h0, w0, 3), grayscale, RGBA, an empty list.
    """
    if (
        isinstance(images, np.ndarray)
        or backends.is_cupy(images)
        or type(images).__name__ == "Tensor"
    ):
        shape = tuple(images.shape)
        raise TypeError(
            f"{op}: images must be a list of (3, H, W) arrays, got one array of shape {shape}; "
            "pass [image] for one image, or list(batch) for a (N, 3, H, W) batch"
        )
    if not isinstance(images, (list, tuple)):
        raise TypeError(
            f"{op}: images must be a list of (3, H, W) float arrays in [0, 1], "
            f"got {type(images).__name__}"
        )
    if len(images) == 0:
        raise ValueError(f"{op}: images is an empty list; pass at least one (3, H, W) float image")
    out = []
    for i, img in enumerate(images):
        a = _data(img)
        if not hasattr(a, "shape"):
            a = np.asarray(a)
        shape = tuple(a.shape)
        where = f"{op}: images[{i}]"
        if len(shape) == 2 or (len(shape) == 3 and shape[0] == 1):
            raise ValueError(
                f"{where} is grayscale with shape {shape}; the model wants 3 channels: "
                "use np.repeat(img.reshape(1, H, W), 3, axis=0) to make a (3, H, W) image"
            )
        if len(shape) != 3:
            raise ValueError(f"{where} must have 3 dimensions (3, H, W), got shape {shape}")
        if shape[0] != 3 and shape[-1] in (3, 4):
            raise ValueError(
                f"{where} has shape {shape}, which looks channels-last (H, W, C); the model wants "
                f"(3, H, W): use img.transpose(2, 0, 1)"
                + ("[:3] to drop alpha" if shape[-1] == 4 else "")
            )
        if shape[0] == 4:
            raise ValueError(
                f"{where} has 4 channels (RGBA?) with shape {shape}; drop alpha with img[:3]"
            )
        if shape[0] != 3:
            raise ValueError(f"{where} must have 3 channels (3, H, W), got shape {shape}")
        if a.dtype == np.uint8:
            raise TypeError(
                f"{where} has dtype uint8 with shape {shape}; the model wants float images "
                "in [0, 1]: "
                "use img.astype(np.float32) / 255"
            )
        if a.dtype not in (np.float32, np.float64):
            raise TypeError(
                f"{where} must be float32 (values in [0, 1]), got dtype {a.dtype} "
                f"with shape {shape}"
            )
        if min(shape[1:]) == 0:
            raise ValueError(f"{where} is empty, shape {shape}")
        if a.dtype == np.float64:
            a = a.astype(np.float32)
        out.append(a)
    if len({"cupy" if backends.is_cupy(a) else "numpy" for a in out}) > 1:
        raise ValueError(f"{op}: images must all be NumPy arrays or all CuPy arrays, got a mix")
    # Cheap sanity check on the most common silent mistake: 0..255 floats. One maximum over all
    # images (on a GPU one synchronization, where max() of per-image maxima would compare them on
    # the host pair by pair).
    xp = backends.array_module(out[0])
    top = float(xp.nanmax(xp.stack([xp.nanmax(a) for a in out])))  # a NaN pixel hides nothing
    if top > 2.0:
        warnings.warn(
            f"{op}: image values go above 2 (max {top:.1f}); the model expects floats in [0, 1] "
            "(divide 0..255 images by 255)",
            stacklevel=3,
        )
    return out


# ============================================================================ boxes
def resize_boxes(boxes, original_size, new_size):
    """Scale (K, 4) boxes from ``original_size`` (h, w) to ``new_size`` (h, w), in float32."""
    xp = backends.array_module(boxes)
    # float32 ratios, as torchvision divides two float32 tensors
    ratio_h = xp.float32(new_size[0]) / xp.float32(original_size[0])
    ratio_w = xp.float32(new_size[1]) / xp.float32(original_size[1])
    out = boxes.copy()  # (K, 4)
    out[:, 0] *= ratio_w
    out[:, 2] *= ratio_w
    out[:, 1] *= ratio_h
    out[:, 3] *= ratio_h
    return out


# ============================================================================ mask pasting
def expand_boxes(boxes, scale: float):
    """Grow (K, 4) boxes by ``scale`` about their centres (float32, as torchvision)."""
    xp = backends.array_module(boxes)
    s = boxes.dtype.type(scale)  # torch multiplies a float32 tensor by a Python float in float32
    w_half = (boxes[:, 2] - boxes[:, 0]) * boxes.dtype.type(0.5) * s  # (K,)
    h_half = (boxes[:, 3] - boxes[:, 1]) * boxes.dtype.type(0.5) * s
    x_c = (boxes[:, 2] + boxes[:, 0]) * boxes.dtype.type(0.5)
    y_c = (boxes[:, 3] + boxes[:, 1]) * boxes.dtype.type(0.5)
    return xp.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], axis=1)  # (K, 4)


def expand_masks(masks, padding: int):
    """Zero-pad (K, 1, M, M) masks by ``padding`` on every side; return them and the scale (M+2p)/M.

    The padding gives the bilinear resize a zero border to fade into, and the box is grown by the
    same ratio so that the mask's content stays where it was.
    """
    xp = backends.array_module(masks)
    m = masks.shape[-1]
    scale = float(m + 2 * padding) / m
    padded = xp.pad(
        masks, ((0, 0), (0, 0), (padding, padding), (padding, padding))
    )  # (K, 1, M+2p, M+2p)
    return padded, scale


def paste_mask_in_image(mask, box, im_h: int, im_w: int):
    """Resize one (M', M') mask to its integer box (inclusive corners); paste into (im_h, im_w).

    Spec (torchvision.models.detection.roi_heads.paste_mask_in_image)::

        w = max(int(x2 - x1 + 1), 1); h = max(int(y2 - y1 + 1), 1)
        m = interpolate(mask[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        out = zeros((im_h, im_w))
        x_0, x_1 = max(x1, 0), min(x2 + 1, im_w); y_0, y_1 = max(y1, 0), min(y2 + 1, im_h)
        out[y_0:y_1, x_0:x_1] = m[y_0 - y1 : y_1 - y1, x_0 - x1 : x_1 - x1]
    """
    xp = backends.array_module(mask)
    x1, y1, x2, y2 = (int(v) for v in backends.to_numpy(box))
    w = max(x2 - x1 + 1, 1)
    h = max(y2 - y1 + 1, 1)
    m = _interpolate(mask[None, None], size=(h, w), mode="bilinear", align_corners=False)
    m = _data(m)[0, 0]  # (h, w)
    im_mask = xp.zeros((im_h, im_w), dtype=mask.dtype)
    x_0, x_1 = max(x1, 0), min(x2 + 1, im_w)
    y_0, y_1 = max(y1, 0), min(y2 + 1, im_h)
    if x_1 > x_0 and y_1 > y_0:
        im_mask[y_0:y_1, x_0:x_1] = m[y_0 - y1 : y_1 - y1, x_0 - x1 : x_1 - x1]
    return im_mask


def paste_masks_in_image(masks, boxes, img_shape, padding: int = 1):
    """Paste (K, 1, M, M) soft masks into (K, 1, im_h, im_w) images at their (K, 4) boxes.

    As torchvision: pad the masks by ``padding`` (28 -> 30), grow the boxes by 30/28 in float32,
    cast the boxes to int64 (truncation toward zero), then ``paste_mask_in_image`` each.
    """
    xp = backends.array_module(masks)
    masks = _data(masks)
    boxes = _data(boxes)
    im_h, im_w = int(img_shape[0]), int(img_shape[1])
    masks, scale = expand_masks(masks, padding)  # (K, 1, M+2, M+2)
    boxes = expand_boxes(boxes, scale).astype(np.int64)  # (K, 4), truncated like torch's .to(int64)
    boxes = backends.to_numpy(boxes)  # the corners are Python ints below: one copy, not K syncs
    res = [paste_mask_in_image(m[0], b, im_h, im_w) for m, b in zip(masks, boxes, strict=True)]
    if res:
        return xp.stack(res, axis=0)[:, None]  # (K, 1, im_h, im_w)
    return xp.zeros((0, 1, im_h, im_w), dtype=masks.dtype)


# ============================================================================ the module
class GeneralizedRCNNTransform(Module):
    """Normalise, resize and batch images (and resize targets); ``postprocess`` undoes the resize.

    Arguments as torchvision's: ``min_size`` (an int, or a tuple to pick from at random in
    training), ``max_size``, ``image_mean``, ``image_std`` (RGB, for images in [0, 1]),
    ``size_divisible``, ``fixed_size`` ((w, h) to resize every image to, or None).
    """

    def __init__(
        self,
        min_size,
        max_size,
        image_mean,
        image_std,
        size_divisible: int = 32,
        fixed_size=None,
        rng=None,
    ):
        super().__init__()
        if not isinstance(min_size, (list, tuple)):
            min_size = (min_size,)
        self.min_size = tuple(int(s) for s in min_size)
        self.max_size = int(max_size)
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.size_divisible = int(size_divisible)
        self.fixed_size = fixed_size
        # training picks min_size at random from the tuple (multi-scale training); injectable
        self.rng = rng if rng is not None else np.random.default_rng()

    # ------------------------------------------------------------------ stages
    def normalize(self, image):
        """(3, h0, w0) -> (x - mean) / std per channel, in the image's dtype."""
        xp = backends.array_module(image)
        mean = xp.asarray(self.image_mean, dtype=image.dtype)
        std = xp.asarray(self.image_std, dtype=image.dtype)
        return (image - mean[:, None, None]) / std[:, None, None]

    def output_size(self, h0: int, w0: int, min_size: int | None = None) -> tuple[int, int]:
        """The resized (h, w) of an (h0, w0) image, computed exactly as torch does."""
        if self.fixed_size is not None:
            return int(self.fixed_size[1]), int(self.fixed_size[0])
        size = self.min_size[-1] if min_size is None else min_size
        scale = min(
            size / min(h0, w0), self.max_size / max(h0, w0)
        )  # Python float, as in eager torch
        return int(h0 * scale), int(w0 * scale)  # floor for positive sizes

    def resize(self, image, target=None):
        """Resize one normalised (3, h0, w0) image (and its target) to min_size/max_size."""
        h0, w0 = image.shape[-2:]
        if self.training and len(self.min_size) > 1:
            size = self.min_size[int(self.rng.integers(len(self.min_size)))]
        else:
            size = self.min_size[-1]
        h, w = self.output_size(h0, w0, size)
        image = _data(_interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False))[
            0
        ]  # (3, h, w)
        if target is None:
            return image, target
        target = dict(target)
        if "masks" in target:
            masks = _data(target["masks"])  # (G, h0, w0) uint8
            xp = backends.array_module(masks)
            if masks.shape[0] == 0:
                target["masks"] = xp.zeros((0, h, w), dtype=np.uint8)
            else:
                m = _interpolate(masks[:, None].astype(np.float32), size=(h, w), mode="nearest")
                target["masks"] = _data(m)[:, 0].astype(np.uint8)  # (G, h, w); torch's .byte()
        if "boxes" in target:
            target["boxes"] = resize_boxes(
                _data(target["boxes"]).astype(np.float32), (h0, w0), (h, w)
            )
        return image, target

    def batch_images(self, images, size_divisible: int = 32):
        """Zero-pad (3, h_i, w_i) images bottom/right to one (N, 3, H, W) batch (H, W: k * 32)."""
        xp = backends.array_module(images[0])
        c = max(img.shape[0] for img in images)
        H = int(math.ceil(max(img.shape[1] for img in images) / size_divisible) * size_divisible)
        W = int(math.ceil(max(img.shape[2] for img in images) / size_divisible) * size_divisible)
        batch = xp.zeros((len(images), c, H, W), dtype=images[0].dtype)  # (N, 3, H, W)
        for i, img in enumerate(images):
            batch[i, : img.shape[0], : img.shape[1], : img.shape[2]] = img
        return batch

    def forward(self, images, targets=None):
        """``images``: list of (3, h0, w0) float arrays -> (ImageList, resized targets or None)."""
        images = check_images(type(self).__name__, images)
        if targets is not None:
            if len(targets) != len(images):
                raise ValueError(
                    f"{type(self).__name__}: got {len(images)} images but {len(targets)} targets"
                )
            targets = [dict(t) for t in targets]  # never modify the caller's dicts
        out = []
        for i, image in enumerate(images):
            image = self.normalize(image)
            image, t = self.resize(image, targets[i] if targets is not None else None)
            out.append(image)
            if targets is not None:
                targets[i] = t
        image_sizes = [tuple(img.shape[-2:]) for img in out]
        batch = self.batch_images(out, size_divisible=self.size_divisible)  # (N, 3, H, W)
        return ImageList(batch, image_sizes), targets

    def postprocess(self, result, image_shapes, original_image_sizes):
        """Boxes back to each original (h0, w0), masks pasted at that size; training: unchanged."""
        if self.training:
            return result
        for i, (pred, im_s, o_im_s) in enumerate(
            zip(result, image_shapes, original_image_sizes, strict=True)
        ):
            boxes = resize_boxes(_data(pred["boxes"]), im_s, o_im_s)
            result[i]["boxes"] = boxes
            if "masks" in pred:
                result[i]["masks"] = paste_masks_in_image(_data(pred["masks"]), boxes, o_im_s)
        return result

    def extra_repr(self) -> str:
        return (
            f"Normalize(mean={self.image_mean}, std={self.image_std}), "
            f"Resize(min_size={self.min_size}, max_size={self.max_size}, mode='bilinear')"
        )
