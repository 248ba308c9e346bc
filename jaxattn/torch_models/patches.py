"""Image geometry shared by the PyTorch twins that cut images into patches."""


def patch_grid(image_size, patch_size: int) -> tuple[int, int]:
  """(rows, columns) of patches; ``image_size`` is (H, W) or an int (square).

  PyTorch modules fix their positional embeddings at construction, where
  Flax infers them at init, so a size the patches do not tile fails here.
  """
  h, w = ((image_size, image_size) if isinstance(image_size, int)
          else (int(image_size[0]), int(image_size[1])))
  if h % patch_size or w % patch_size:
    raise ValueError(f"image_size {h}x{w} is not divisible by "
                     f"patch_size={patch_size}.")
  return h // patch_size, w // patch_size
