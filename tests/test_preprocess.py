"""runtime.inputs.images against transformers' PIL/numpy SigLIP image processor: bit for bit.

The reference is `SiglipImageProcessorPil` (transformers 5.x; the 4.x `SiglipImageProcessor`
behaviour the released models use), configured from the same preprocessor_config.json.
Every comparison is `np.array_equal`: same dtype-level arithmetic, no tolerance.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.errors import ArtefactError, InputError
from runtime.inputs.images import PREPROCESSOR_CONFIG, ImageSettings, load_image, preprocess, to_rgb

transformers = pytest.importorskip("transformers")
from transformers import SiglipImageProcessorPil  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT / "siglip_export" / "photos").glob("*.jpg"))

# Pillow warns when a palette image with byte transparency is converted straight to RGB, as
# transformers does for a path; the warning is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Palette images with Transparency")

# The released siglip-base-patch16-224 preprocessor_config.json (no do_convert_rgb key).
RELEASED = {
    "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "SiglipImageProcessor", "image_std": [0.5, 0.5, 0.5],
    "processor_class": "SiglipProcessor", "resample": 3, "rescale_factor": 0.00392156862745098,
    "size": {"height": 224, "width": 224},
}
SIZES = (224, 32, 384)


def config_for(size: int, **overrides) -> dict:
    return {**RELEASED, "size": {"height": size, "width": size}, **overrides}


_processors: dict = {}


def reference(images, config: dict) -> np.ndarray:
    """transformers' output for `images`, its processor loaded from `config` as a file would be."""
    key = json.dumps(config, sort_keys=True)
    if key not in _processors:
        _processors[key] = SiglipImageProcessorPil.from_dict(config)
    return _processors[key](images, return_tensors="np")["pixel_values"]


def assert_identical(images, config: dict, ours_images=None):
    """Same input to both (paths as str to transformers); the output must be bit-identical."""
    ours = preprocess(images if ours_images is None else ours_images, ImageSettings.from_dict(config))
    theirs = reference([str(i) if isinstance(i, Path) else i for i in images], config)
    assert ours.dtype == np.float32 and ours.flags.c_contiguous
    assert ours.shape == theirs.shape
    assert np.array_equal(ours, theirs.astype(np.float32)), f"max |diff| = {np.abs(ours - theirs).max()}"
    return ours


def test_photos_exist_and_three_are_grayscale():
    assert len(PHOTOS) == 8
    modes = [Image.open(p).mode for p in PHOTOS]
    assert modes.count("L") == 3 and modes.count("RGB") == 5


@pytest.mark.parametrize("size", SIZES)
def test_photo_paths_bit_identical(size):
    out = assert_identical(PHOTOS, config_for(size))
    assert out.shape == (8, 3, size, size)
    assert -1.0 <= out.min() and out.max() <= 1.0


@pytest.mark.parametrize("size", SIZES)
def test_photo_pil_images_bit_identical(size):
    assert_identical([Image.open(p) for p in PHOTOS], config_for(size))


def _derived() -> dict:
    """Images of every awkward kind, derived at run time from the packaged photos."""
    rgb = Image.open(PHOTOS[0]).convert("RGB")  # astronaut, 320x320
    cat = Image.open(ROOT / "siglip_export" / "photos" / "cat.jpg").convert("RGB")  # 320x213
    rgba_array = np.array(cat.convert("RGBA"))
    ramp = np.linspace(0, 255, rgba_array.shape[1]).astype(np.uint8)[None, :]  # alpha 0..255, left to right
    rgba_array[..., 3] = ramp ^ (np.arange(rgba_array.shape[0], dtype=np.uint8)[:, None] * 37)  # and varied down
    rgba = Image.fromarray(rgba_array)
    palette = cat.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette_index = palette.copy()
    palette_index.info["transparency"] = int(np.asarray(palette)[100, 100])  # one colour index transparent
    palette_bytes = palette.copy()
    palette_bytes.info["transparency"] = bytes(range(0, 256, 4))  # per-index alpha, as in PNG tRNS
    keyed = cat.copy()
    keyed.info["transparency"] = tuple(int(v) for v in np.asarray(cat)[50, 50])  # RGB colour key
    gray16 = Image.fromarray((np.asarray(rgb.convert("L")).astype(np.uint16) * 257))  # 16-bit, 0..65535
    gray16_png = io.BytesIO()
    gray16.save(gray16_png, "PNG")
    gray16_png.seek(0)
    low16 = Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16))  # 16-bit holding 0..255
    return {
        "RGBA varying alpha": rgba,
        "LA": rgba.convert("LA"),
        "RGBa premultiplied": rgba.convert("RGBa"),
        "PA": palette.convert("PA"),
        "P": palette,
        "P transparency index": palette_index,
        "P transparency bytes": palette_bytes,
        "RGB colour key": keyed,
        "L": cat.convert("L"),
        "1": cat.convert("1"),
        "CMYK": cat.convert("CMYK"),
        "YCbCr": cat.convert("YCbCr"),
        "I": cat.convert("L").convert("I"),
        "F": cat.convert("L").convert("F"),
        "I;16 png (0..65535)": Image.open(gray16_png),
        "I;16 (0..255)": low16,
        "1x1": cat.resize((1, 1)),
        "1000x10": cat.resize((1000, 10)),
        "10x1000": cat.resize((10, 1000)),
        "224x224 already": rgb.resize((224, 224)),
        "32x32 already": rgb.resize((32, 32)),
    }


DERIVED = _derived()


def test_derived_modes_are_what_they_say():
    assert DERIVED["I;16 png (0..65535)"].mode == "I;16"
    assert DERIVED["P transparency bytes"].mode == "P" and DERIVED["PA"].mode == "PA"
    assert DERIVED["1000x10"].size == (1000, 10)
    alpha = np.asarray(DERIVED["RGBA varying alpha"])[..., 3]
    assert alpha.min() == 0 and alpha.max() == 255 and len(np.unique(alpha)) > 200


@pytest.mark.parametrize("size", (224, 32))
@pytest.mark.parametrize("name", list(DERIVED))
def test_pil_image_kinds_bit_identical(name, size):
    assert_identical([DERIVED[name]], config_for(size))


def test_pil_batch_of_every_kind_at_384():
    assert_identical(list(DERIVED.values()), config_for(384))


@pytest.mark.parametrize("name", ["RGBA varying alpha", "LA", "P", "P transparency index", "P transparency bytes",
                                  "RGB colour key", "L", "I;16 png (0..65535)", "1x1", "1000x10", "224x224 already"])
def test_image_files_bit_identical(tmp_path, name):
    """Paths: transformers loads them with EXIF orientation and convert("RGB"), alpha dropped."""
    image = DERIVED[name]
    path = tmp_path / "image.png"
    image.save(path, transparency=image.info["transparency"]) if "transparency" in image.info else image.save(path)
    assert_identical([path], config_for(224))
    assert_identical([path], config_for(32))


def test_transparent_file_vs_opened_image_follow_transformers(tmp_path):
    """A path drops alpha, an opened image composites it on white: transformers does both."""
    path = tmp_path / "rgba.png"
    DERIVED["RGBA varying alpha"].save(path)
    from_path = preprocess([path])
    from_image = preprocess([Image.open(path)])
    assert not np.array_equal(from_path, from_image)
    assert np.array_equal(from_path, reference([str(path)], RELEASED))
    assert np.array_equal(from_image, reference([Image.open(path)], RELEASED))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_of_files(tmp_path, orientation):
    cat = Image.open(ROOT / "siglip_export" / "photos" / "cat.jpg")
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "rotated.jpg"
    cat.save(path, exif=exif.tobytes(), quality=95)
    loaded = load_image(path)
    assert loaded.size == (cat.size[::-1] if orientation in (6, 8) else cat.size)
    assert_identical([path], config_for(32))


def test_uint8_arrays_bit_identical():
    rgba = np.asarray(DERIVED["RGBA varying alpha"])
    arrays = [rgba, rgba[..., :3].copy(), np.asarray(DERIVED["L"])[..., None].copy(), rgba[:50, :700 // 3]]
    for size in (224, 32):
        assert_identical(arrays, config_for(size))
    # the numpy RGBA composite equals Pillow's for every colour / alpha pair
    colour, alpha = np.meshgrid(np.arange(256), np.arange(256))
    every = np.stack([colour, colour, colour, alpha], -1).astype(np.uint8)
    assert np.array_equal(to_rgb(every), np.asarray(to_rgb(Image.fromarray(every))))


def test_one_image_or_an_nhwc_array_is_a_batch():
    array = np.asarray(DERIVED["RGBA varying alpha"])[..., :3].copy()
    single = preprocess(array)
    assert single.shape == (1, 3, 224, 224)
    assert np.array_equal(preprocess(np.stack([array, array])), np.concatenate([single, single]))
    assert np.array_equal(preprocess(PHOTOS[0]), preprocess([PHOTOS[0]]))
    assert np.array_equal(preprocess(str(PHOTOS[0])), preprocess([PHOTOS[0]]))
    assert np.array_equal(preprocess(DERIVED["L"]), preprocess([DERIVED["L"]]))


@pytest.mark.parametrize("overrides", [
    {"resample": 2},
    {"resample": 1, "size": {"height": 48, "width": 32}},
    {"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]},
    {"do_normalize": False},
    {"do_rescale": False},
    {"rescale_factor": 0.5 / 255, "image_mean": 0.25, "image_std": 0.75},
])
def test_other_settings_bit_identical(overrides):
    images = [Image.open(p) for p in PHOTOS[:3]] + [DERIVED["RGBA varying alpha"], DERIVED["P transparency bytes"]]
    assert_identical(images, {**config_for(32), **overrides})


def test_without_resize_needs_the_model_size():
    config = config_for(224, do_resize=False)
    assert_identical([DERIVED["224x224 already"]], config)
    with pytest.raises(InputError, match="do_resize"):
        preprocess([PHOTOS[0]], ImageSettings.from_dict(config))


def test_without_rgb_conversion_only_rgb_passes():
    settings = ImageSettings.from_dict(config_for(32, do_convert_rgb=False))
    assert_identical([DERIVED["224x224 already"]], config_for(32, do_convert_rgb=False))
    for image in (DERIVED["L"], DERIVED["RGBA varying alpha"], np.asarray(DERIVED["RGBA varying alpha"])):
        with pytest.raises(InputError, match="do_convert_rgb"):
            preprocess([image], settings)


# -- errors ---------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    for call in (lambda: load_image(path), lambda: preprocess([path])):
        with pytest.raises(InputError, match="nope.jpg") as info:
            call()
        assert str(path) in str(info.value)


@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_truncated_file(tmp_path, suffix):
    buffer = io.BytesIO()
    Image.open(PHOTOS[0]).save(buffer, "JPEG" if suffix == "jpg" else "PNG")
    path = tmp_path / f"truncated.{suffix}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(InputError) as info:
        load_image(path)
    assert str(path) in str(info.value)
    with pytest.raises(InputError, match="truncated"):
        preprocess([path])


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_bytes(b"this is not an image\n" * 10)
    with pytest.raises(InputError, match="notes.jpg"):
        load_image(path)
    with pytest.raises(InputError, match="not a file"):
        load_image(tmp_path)


def test_bad_inputs():
    with pytest.raises(InputError, match="no images"):
        preprocess([])
    with pytest.raises(InputError, match="no images"):
        preprocess(iter(()))
    with pytest.raises(InputError, match="uint8"):
        preprocess([np.zeros((8, 8, 3), dtype=np.float32)])
    with pytest.raises(InputError, match="channels"):
        preprocess([np.zeros((8, 8, 2), dtype=np.uint8)])
    with pytest.raises(InputError, match="empty"):
        preprocess([Image.new("RGB", (0, 4))])
    with pytest.raises(InputError, match="int"):
        preprocess([123])
    with pytest.raises(InputError, match="int"):
        preprocess(123)


# -- settings <-> preprocessor_config.json ----------------------------------------------------------

def test_settings_from_file_transformers_saved(tmp_path):
    processor = SiglipImageProcessorPil(size={"height": 48, "width": 32}, resample=2,
                                        image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.4])
    processor.save_pretrained(tmp_path)
    settings = ImageSettings.from_file(tmp_path / PREPROCESSOR_CONFIG)
    assert settings == ImageSettings(height=48, width=32, resample=2, image_mean=[0.4, 0.5, 0.6],
                                     image_std=[0.2, 0.3, 0.4])
    images = [Image.open(p) for p in PHOTOS[:2]] + [DERIVED["LA"]]
    assert np.array_equal(preprocess(images, settings), processor(images, return_tensors="np")["pixel_values"])


def test_settings_to_dict_loads_in_transformers(tmp_path):
    ours = ImageSettings(height=40, width=24, resample=1, image_mean=[0.1, 0.2, 0.3], image_std=[0.9, 0.8, 0.7],
                         rescale_factor=2 / 255)
    (tmp_path / PREPROCESSOR_CONFIG).write_text(json.dumps(ours.to_dict()))
    processor = SiglipImageProcessorPil.from_pretrained(tmp_path)
    assert (processor.size.height, processor.size.width) == (40, 24)
    assert int(processor.resample) == 1 and processor.rescale_factor == 2 / 255
    assert list(processor.image_mean) == [0.1, 0.2, 0.3] and list(processor.image_std) == [0.9, 0.8, 0.7]
    images = [Image.open(p) for p in PHOTOS[:2]] + [DERIVED["RGBA varying alpha"]]
    assert np.array_equal(preprocess(images, ours), processor(images, return_tensors="np")["pixel_values"])
    # and back again through transformers' own writer
    processor.save_pretrained(tmp_path / "again")
    assert ImageSettings.from_file(tmp_path / "again" / PREPROCESSOR_CONFIG) == ours
    assert ImageSettings.from_dict(ours.to_dict()) == ours


def test_released_config_defaults():
    assert ImageSettings.from_dict(RELEASED) == ImageSettings()
    assert ImageSettings.from_dict({**RELEASED, "size": [32, 48]}) == ImageSettings(height=32, width=48)


@pytest.mark.parametrize("bad, message", [
    ({"size": 224}, "fixed height/width"),  # transformers reads a bare int as shortest_edge for SigLIP
    ({"size": {"shortest_edge": 224}}, "fixed height/width"),
    ({"size": {"height": 224}}, "fixed height/width"),
    ({"do_center_crop": True, "crop_size": {"height": 200, "width": 200}}, "center_crop"),
    ({"resample": 9}, "resample"),
    ({"image_mean": [0.5, 0.5]}, "image_mean"),
])
def test_settings_refuse_what_they_cannot_reproduce(bad, message):
    with pytest.raises(ArtefactError, match=message):
        ImageSettings.from_dict({**RELEASED, **bad})


def test_unreadable_config(tmp_path):
    path = tmp_path / PREPROCESSOR_CONFIG
    path.write_text("{not json")
    with pytest.raises(ArtefactError, match=PREPROCESSOR_CONFIG):
        ImageSettings.from_file(path)
