"""ImageList: a padded batch of images plus the size of each image before padding.

Shapes: N: images, H, W: the padded batch size (multiples of 32), h_i, w_i: image i after resizing.

Images of different sizes cannot be stacked, so the transform pads them with zeros (bottom/right)
to one size; every later stage needs the real sizes back (anchors are clipped to them, boxes are
clipped to them, masks are pasted into them), hence the second field. Same as
torchvision.models.detection.image_list.ImageList.
"""

from __future__ import annotations

from .. import backends


class ImageList:
    """``tensors`` (N, 3, H, W) array or Tensor; ``image_sizes`` list of (h_i, w_i) int pairs."""

    def __init__(self, tensors, image_sizes):
        self.tensors = tensors  # (N, 3, H, W), zero-padded bottom/right
        self.image_sizes = [(int(h), int(w)) for h, w in image_sizes]

    def to(self, array_backend: str) -> "ImageList":
        """A copy on ``"numpy"`` or ``"cupy"`` (the sizes are plain ints and stay as they are)."""
        t = self.tensors
        moved = t.to(array_backend) if hasattr(t, "to") else backends.to_device(t, array_backend)
        return ImageList(moved, self.image_sizes)

    def __repr__(self):
        return (
            f"ImageList(tensors shape {tuple(self.tensors.shape)}, image_sizes={self.image_sizes})"
        )
