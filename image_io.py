"""Single image files as a person sees them: read the way up viewers show them (EXIF orientation),
written in the format their extension names. generate.py's inputs and outputs, the ground truth of the
metrics; datasets for training are read by data.py's pipeline.
"""
import imageio.v3 as iio
import numpy as np

from data import decode_image, read_bytes, to_uint8, to_unit_range

EXIF_TURNS = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],  # by EXIF orientation
              5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
              7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1)}


def upright(image, encoded):
    """`image` turned as its file's EXIF orientation says (a phone's portrait is stored sideways), as
    viewers show it: its translation, written without EXIF, is then seen the same way up."""
    try:
        orientation = iio.immeta(encoded, exclude_applied=False).get("Orientation", 1)
    except Exception:  # no metadata to read: shown as stored
        orientation = 1
    return np.ascontiguousarray(EXIF_TURNS[orientation](image)) if orientation in EXIF_TURNS else image


def read_image(path):
    """A file -> float32 [-1, 1] RGB array at its own resolution, the way up its EXIF orientation says."""
    encoded = read_bytes(path)
    return upright(to_unit_range(decode_image(encoded)).numpy(), encoded)


def write_image(path, image, extension=None):
    """A [-1, 1] image -> an image file whose format follows the extension (JPEG at quality 95). `path`
    may also be a binary file object, whose format `extension` names."""
    pixels = to_uint8(image)
    if (extension or path).lower().endswith((".jpg", ".jpeg")):
        iio.imwrite(path, pixels, extension=extension, quality=95)
    else:
        iio.imwrite(path, pixels, extension=extension)
