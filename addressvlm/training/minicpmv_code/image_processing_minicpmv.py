"""The stand-in's image processor: how MiniCPM-V 2.6 cuts an image into views and writes its placeholder text.

The release ships this as ``image_processing_minicpmv.py`` (``preprocessor_config.json``'s
``auto_map["AutoImageProcessor"]``), and engines that serve the release (vLLM) load it as remote code and call
``preprocess``, ``get_sliced_grid``, ``get_slice_image_placeholder``, ``image_feature_size`` and ``max_slice_nums``.
The project's own prompts (``addressvlm.training.minicpmv_dataset``) import the functions below, so the stand-in's
engines and the project cut and mark images with one piece of code.

- the source view: the image resized so its patch grid covers about ``scale_resolution**2`` pixels;
- a larger image is also cut into a grid of up to ``max_slice_nums`` slices chosen to match its aspect ratio;
- the placeholder: ``<image_id>N</image_id>`` (``use_image_id``), ``<image>`` + ``<unk>`` x query_num + ``</image>``
  for the source, then one ``<slice>`` + ``<unk>`` x query_num + ``</slice>`` per slice, grid rows on separate lines;
- each view normalised and laid out as ``[3, patch, L * patch]`` (its patches side by side, row-major), with its
  patch grid ``[rows, cols]``.

Torch, numpy, PIL and transformers only: it is copied into model folders.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature


@dataclass(frozen=True)
class ImageSettings:
    """MiniCPM-V's processor settings (the keys of ``preprocessor_config.json``; ``query_num`` is its
    ``image_feature_size``)."""

    query_num: int = 64
    patch_size: int = 14
    scale_resolution: int = 448
    max_slice_nums: int = 9
    slice_mode: bool = True
    use_image_id: bool = True
    norm_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    norm_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    im_start: str = "<image>"
    im_end: str = "</image>"
    slice_start: str = "<slice>"
    slice_end: str = "</slice>"
    unk: str = "<unk>"
    im_id_start: str = "<image_id>"
    im_id_end: str = "</image_id>"

    @classmethod
    def from_processor_config(cls, raw: dict) -> "ImageSettings":
        """The settings among ``raw`` (``preprocessor_config.json``'s keys; others are ignored)."""
        keys = {"image_feature_size": "query_num", **{f.name: f.name for f in fields(cls) if f.name != "query_num"}}
        values = {ours: raw[theirs] for theirs, ours in keys.items() if theirs in raw}
        for name in ("norm_mean", "norm_std"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)

    @classmethod
    def from_model_dir(cls, model_path: str | Path, max_slice_nums: int | None = None) -> "ImageSettings":
        path = Path(model_path) / "preprocessor_config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {model_path} a MiniCPM-V-2_6 folder?")
        settings = cls.from_processor_config(json.loads(path.read_text()))
        return replace(settings, max_slice_nums=max_slice_nums) if max_slice_nums is not None else settings

    def marker_tokens(self) -> list[str]:
        return [self.im_start, self.im_end, self.slice_start, self.slice_end, self.unk, self.im_id_start,
                self.im_id_end]


def _multiple_of(length: float, unit: int) -> int:
    return max(round(length / unit) * unit, unit)


def _resize_to_area(size: tuple[float, float], settings: ImageSettings, allow_upscale: bool) -> tuple[int, int]:
    """Scale ``size`` (keeping its aspect ratio) to about ``scale_resolution**2`` pixels - only down unless
    ``allow_upscale`` - with both sides multiples of the patch size."""
    width, height = size
    if allow_upscale or width * height > settings.scale_resolution ** 2:
        aspect = width / height
        height = int(settings.scale_resolution / math.sqrt(aspect))
        width = int(height * aspect)
    return _multiple_of(width, settings.patch_size), _multiple_of(height, settings.patch_size)


def choose_grid(size: tuple[int, int], settings: ImageSettings) -> tuple[int, int] | None:
    """``(columns, rows)`` of slices for an image of ``size`` (width, height), or None when it is not sliced: the
    slice count follows the image's area over ``scale_resolution**2`` (capped by ``max_slice_nums``), and among
    the grids of one fewer, that many or one more slices, the one whose aspect ratio is closest (in log) wins."""
    width, height = (int(side) for side in size)
    wanted = min(math.ceil(width * height / settings.scale_resolution ** 2), settings.max_slice_nums)
    if wanted <= 1 or not settings.slice_mode:
        return None
    counts = [n for n in (wanted - 1, wanted, wanted + 1) if 1 < n <= settings.max_slice_nums]
    grids = [(cols, n // cols) for n in counts for cols in range(1, n + 1) if n % cols == 0]
    log_aspect = math.log(width / height)
    return min(grids, key=lambda grid: abs(log_aspect - math.log(grid[0] / grid[1])))


def slice_image(image: Image.Image, settings: ImageSettings) -> tuple[Image.Image, list[list[Image.Image]]]:
    """The source image and the slice grid (rows of slices, empty when not sliced)."""
    grid = choose_grid(image.size, settings)
    source = image.resize(_resize_to_area(image.size, settings, allow_upscale=grid is None), Image.Resampling.BICUBIC)
    if grid is None:
        return source, []
    cols, rows = grid
    cell = _resize_to_area((_multiple_of(image.width, cols) / cols, _multiple_of(image.height, rows) / rows),
                           settings, allow_upscale=True)
    refined = image.resize((cell[0] * cols, cell[1] * rows), Image.Resampling.BICUBIC)
    return source, [[refined.crop((c * cell[0], r * cell[1], (c + 1) * cell[0], (r + 1) * cell[1]))
                     for c in range(cols)] for r in range(rows)]


def image_placeholder(settings: ImageSettings, grid: tuple[int, int] | None, image_index: int = 0) -> str:
    """The text that stands where an image of slice ``grid`` goes: image id, source span, then the slice grid."""
    features = settings.unk * settings.query_num
    text = f"{settings.im_id_start}{image_index}{settings.im_id_end}" if settings.use_image_id else ""
    text += settings.im_start + features + settings.im_end
    if grid is not None:
        cols, rows = grid
        text += "\n".join(f"{settings.slice_start}{features}{settings.slice_end}" * cols for _ in range(rows))
    return text


def to_patch_layout(image: Image.Image, settings: ImageSettings) -> tuple[torch.Tensor, list[int]]:
    """Normalise an image and lay its ``patch x patch`` squares side by side (row-major): ``[3, p, L * p]``, plus its
    patch grid ``[rows, cols]``."""
    p = settings.patch_size
    mean, std = (np.asarray(v, dtype=np.float32) for v in (settings.norm_mean, settings.norm_std))
    array = (np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 - mean) / std
    pixels = torch.from_numpy(array).permute(2, 0, 1)  # 3, H, W
    rows, cols = pixels.shape[1] // p, pixels.shape[2] // p
    grid = pixels[:, :rows * p, :cols * p].reshape(3, rows, p, cols, p)  # c, gy, row-in-patch, gx, col-in-patch
    return grid.permute(0, 2, 1, 3, 4).reshape(3, p, rows * cols * p).contiguous(), [rows, cols]


def encode_image(image: Image.Image, settings: ImageSettings, image_index: int = 0):
    """``(placeholder text, [patch tensors], tgt_sizes int32 [n, 2])`` for one image: source first, then slices."""
    image = image.convert("RGB")
    source, slice_rows = slice_image(image, settings)
    encoded = [to_patch_layout(view, settings) for view in [source, *[s for row in slice_rows for s in row]]]
    return (image_placeholder(settings, choose_grid(image.size, settings), image_index), [t for t, _ in encoded],
            torch.tensor([size for _, size in encoded], dtype=torch.int32))


def _is_one_image(item) -> bool:
    return isinstance(item, Image.Image) or (isinstance(item, np.ndarray) and item.ndim == 3)


def _as_pil(image) -> Image.Image:
    """A PIL image as it is; an ``H x W x 3`` uint8 array (a video frame, as engines pass them) as a PIL image."""
    return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))


class MiniCPMVImageProcessor(BaseImageProcessor):
    """The settings of ``preprocessor_config.json`` as attributes (``max_slice_nums``, ``image_feature_size``, ...,
    as the release's processor keeps them), and the calls an engine makes on them."""

    model_input_names = ["pixel_values"]

    @property
    def settings(self) -> ImageSettings:
        return ImageSettings.from_processor_config(vars(self))

    def _settings_for(self, max_slice_nums: int | None = None, use_image_id: bool | None = None) -> ImageSettings:
        settings = self.settings
        if max_slice_nums is not None:
            settings = replace(settings, max_slice_nums=int(max_slice_nums))
        if use_image_id is not None:
            settings = replace(settings, use_image_id=bool(use_image_id))
        return settings

    def get_sliced_grid(self, image_size, max_slice_nums: int | None = None) -> tuple[int, int] | None:
        """``(columns, rows)`` of slices for an image of ``image_size`` (width, height), or None."""
        return choose_grid(image_size, self._settings_for(max_slice_nums))

    def get_slice_image_placeholder(self, image_size, image_idx: int = 0, max_slice_nums: int | None = None,
                                    use_image_id: bool | None = None) -> str:
        """The placeholder text of image number ``image_idx`` of ``image_size`` (width, height)."""
        settings = self._settings_for(max_slice_nums, use_image_id)
        return image_placeholder(settings, choose_grid(image_size, settings), image_idx)

    def preprocess(self, images, do_pad: bool = True, max_slice_nums: int | None = None, return_tensors=None,
                   **kwargs) -> BatchFeature:
        """``images``: one image, a list of them (one prompt's) or a list of such lists (one per prompt; a video's
        frames may come as one ``T x H x W x 3`` array); PIL images or ``H x W x 3`` uint8 arrays. Per prompt:
        ``pixel_values`` its views' patch tensors (each image's source, then its slices), ``tgt_sizes`` their patch
        grids (int32 ``[views, 2]``) and ``image_sizes`` its images' (width, height) (``[images, 2]``). Views are not
        padded (``do_pad`` and ``return_tensors`` are taken for the engines' calls and change nothing)."""
        if _is_one_image(images):
            images = [[images]]
        elif len(images) and _is_one_image(images[0]):
            images = [images]
        settings = self._settings_for(max_slice_nums)
        pixel_values, tgt_sizes, image_sizes = [], [], []
        for prompt_images in images:
            prompt_images = [_as_pil(image) for image in prompt_images]
            encoded = [encode_image(image, settings) for image in prompt_images]
            pixel_values.append([view for _, views, _ in encoded for view in views])
            tgt_sizes.append(torch.cat([sizes for _, _, sizes in encoded]) if encoded
                             else torch.zeros((0, 2), dtype=torch.int32))
            image_sizes.append(torch.tensor([image.size for image in prompt_images], dtype=torch.int64).reshape(-1, 2))
        return BatchFeature(data={"pixel_values": pixel_values, "tgt_sizes": tgt_sizes, "image_sizes": image_sizes})
