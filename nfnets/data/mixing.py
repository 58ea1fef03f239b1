"""MixUp and CutMix on NumPy batches (the in-memory digits pipeline).

The tf.data twin lives in `nfnets.data.augment`; both follow the NFNet
recipe (Brock et al., 2021, Sec. 5 / App. F): with both enabled, CutMix mixes
the first half of the batch and MixUp the second half, each half with its own
reversed order, one Beta(alpha, alpha) ratio per half. The returned
`mix_ratio` is the weight of `labels`; the target is
`mix_ratio * onehot(labels) + (1 - mix_ratio) * onehot(mix_labels)`.
"""
import numpy as np


def mixup(images: np.ndarray, labels: np.ndarray, ratio: float
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Blends each example with the batch's reversed order.

  Args:
    images: float [B, H, W, C].
    labels: int [B].
    ratio: weight of the original image, in [0, 1].

  Returns:
    (mixed images [B, H, W, C], mix_labels [B], mix_ratio float32 [B]).
  """
  mixed = ratio * images + (1.0 - ratio) * images[::-1]
  ratios = np.full(labels.shape, ratio, np.float32)
  return mixed.astype(images.dtype), labels[::-1].copy(), ratios


def cutmix_box(ratio: float, height: int, width: int, center_y: int,
               center_x: int) -> tuple[int, int, int, int]:
  """The pasted rectangle (top, left, bottom, right), half-open, clipped.

  Its nominal area is (1 - ratio) of the image (CutMix, Yun et al., 2019);
  clipping at the border can make it smaller.
  """
  cut = np.sqrt(1.0 - ratio)
  cut_h, cut_w = int(height * cut), int(width * cut)
  top = int(np.clip(center_y - cut_h // 2, 0, height))
  bottom = int(np.clip(center_y + cut_h // 2, 0, height))
  left = int(np.clip(center_x - cut_w // 2, 0, width))
  right = int(np.clip(center_x + cut_w // 2, 0, width))
  return top, left, bottom, right


def cutmix(images: np.ndarray, labels: np.ndarray,
           box: tuple[int, int, int, int]
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Pastes the reversed batch into `box` of every example.

  Args:
    images: [B, H, W, C].
    labels: int [B].
    box: (top, left, bottom, right), half-open pixel bounds.

  Returns:
    (mixed images, mix_labels [B], mix_ratio float32 [B]) where mix_ratio is
    the fraction of pixels still from the original image.
  """
  top, left, bottom, right = box
  mixed = images.copy()
  mixed[:, top:bottom, left:right] = images[::-1, top:bottom, left:right]
  height, width = images.shape[1:3]
  kept = 1.0 - (bottom - top) * (right - left) / (height * width)
  ratios = np.full(labels.shape, kept, np.float32)
  return mixed, labels[::-1].copy(), ratios


def mix_batch(images: np.ndarray, labels: np.ndarray,
              rng: np.random.Generator, mixup_alpha: float,
              cutmix_alpha: float) -> dict[str, np.ndarray]:
  """Applies CutMix and/or MixUp as configured.

  Args:
    images: float32 [B, H, W, C].
    labels: int32 [B].
    rng: source of the ratios and box centres.
    mixup_alpha: Beta parameter for MixUp; 0 disables it.
    cutmix_alpha: Beta parameter for CutMix; 0 disables it.

  Returns:
    {'images', 'labels', 'mix_labels', 'mix_ratio'} (only images and labels
    when both are disabled).
  """
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return {'images': images, 'labels': labels}
  batch = len(labels)
  if mixup_alpha > 0 and cutmix_alpha > 0:
    halves = [(slice(0, batch // 2), 'cutmix'),
              (slice(batch // 2, batch), 'mixup')]
  elif cutmix_alpha > 0:
    halves = [(slice(0, batch), 'cutmix')]
  else:
    halves = [(slice(0, batch), 'mixup')]
  out_images, out_mix, out_ratio = [], [], []
  height, width = images.shape[1:3]
  for part, kind in halves:
    if kind == 'mixup':
      ratio = rng.beta(mixup_alpha, mixup_alpha)
      mixed = mixup(images[part], labels[part], ratio)
    else:
      ratio = rng.beta(cutmix_alpha, cutmix_alpha)
      box = cutmix_box(ratio, height, width, rng.integers(height),
                       rng.integers(width))
      mixed = cutmix(images[part], labels[part], box)
    out_images.append(mixed[0])
    out_mix.append(mixed[1])
    out_ratio.append(mixed[2])
  return {
      'images': np.concatenate(out_images).astype(np.float32),
      'labels': labels,
      'mix_labels': np.concatenate(out_mix).astype(np.int32),
      'mix_ratio': np.concatenate(out_ratio).astype(np.float32),
  }
