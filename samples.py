"""Sample grids: columns of images side by side (input | translated | reconstructed), one row per
sample, drawn by keras-cv's plot_image_gallery with a title over each column. The same picture comes
as a uint8 array (train.py logs it to TensorBoard) or as a PNG file (generate.py).

Images of different sizes each fit one square cell, scaled with their aspect ratio kept, on white. A
cell is at most CELL_PIXELS on a side, whatever the images' sizes: a grid of large images (a 5000x5000
photo) takes the memory of small ones.
"""
import numpy as np

from quiet import tensorflow

tf = tensorflow()

VALUE_RANGE = (-1.0, 1.0)  # the networks' pixel range
INCHES_PER_CELL = 2.5
DPI = 100  # with INCHES_PER_CELL: 250 pixels a cell, titles included
CELL_PIXELS = 256  # the largest cell side kept: a cell is drawn in 250 pixels, more would be scaled away


def fit_to_cell(image, side):
    """An image in VALUE_RANGE scaled to fit a side x side square, centred on white."""
    height, width = image.shape[:2]
    scale = side / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    if size != (height, width):
        image = tf.image.resize(image, size, method="bilinear", antialias=True).numpy()
    cell = np.full((side, side, 3), VALUE_RANGE[1], np.float32)
    top, left = (side - size[0]) // 2, (side - size[1]) // 2
    cell[top:top + size[0], left:left + size[1]] = image
    return cell


def direction_titles(direction):
    """The column titles of a direction's (input, translated, reconstructed) grid, e.g. "AtoB"."""
    source, target = direction.split("to")
    return f"input ({source})", f"translated ({target})", f"reconstructed ({source})"


def grid_image(columns, titles=None):
    """`columns`: equally long sequences of images in VALUE_RANGE (any sizes), one image a row; the
    grid as a uint8 RGB array, (rows x 250, columns x 250, 3) pixels."""
    from keras_cv.visualization import plot_image_gallery  # here: seconds to import (torch too, if installed)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    import matplotlib.pyplot as plt

    rows = list(zip(*columns, strict=True))
    side = min(CELL_PIXELS, max(max(image.shape[:2]) for row in rows for image in row))
    cells = np.stack([fit_to_cell(np.asarray(image, np.float32), side) for row in rows for image in row])
    figure = plot_image_gallery(cells, VALUE_RANGE, scale=INCHES_PER_CELL, rows=len(rows), cols=len(columns))
    try:
        figure.set_dpi(DPI)
        figure.patch.set_visible(True)  # the gallery's figure is frameless: transparent, not white
        figure.patch.set_facecolor("white")
        for axis, title in zip(figure.axes, titles or ()):  # the first row's axes come first
            axis.set_title(title)
        canvas = FigureCanvasAgg(figure)
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()
    finally:
        plt.close(figure)


def save_grid(path, columns, titles=None):
    """grid_image(columns, titles) as a PNG file."""
    import imageio.v3 as iio

    iio.imwrite(path, grid_image(columns, titles))
