import imageio.v3 as iio
import numpy as np

import samples

RED, GREEN, BLUE, YELLOW, CYAN, MAGENTA = (1, -1, -1), (-1, 1, -1), (-1, -1, 1), (1, 1, -1), (-1, 1, 1), (1, -1, 1)


def solid(colour, height=20, width=20):
    return np.broadcast_to(np.array(colour, np.float32), (height, width, 3))


def where(grid, colour):
    """Centre (row, column) of the grid's pixels of exactly this colour, and how many there are."""
    rows, columns = np.nonzero((grid == (np.array(colour) + 1) // 2 * 255).all(axis=-1))
    return (rows.mean(), columns.mean()), len(rows)


COLUMNS = [[solid(RED), solid(YELLOW, 10, 30)], [solid(GREEN), solid(CYAN)], [solid(BLUE), solid(MAGENTA)]]


def test_each_image_is_drawn_in_its_row_and_column():
    grid = samples.grid_image(COLUMNS)
    assert grid.shape == (2 * 250, 3 * 250, 3) and grid.dtype == np.uint8
    centres = {colour: where(grid, colour) for colour in (RED, GREEN, BLUE, YELLOW, CYAN, MAGENTA)}
    for row, colours in enumerate([(RED, GREEN, BLUE), (YELLOW, CYAN, MAGENTA)]):
        for column, colour in enumerate(colours):
            (y, x), count = centres[colour]
            assert row * 250 < y < (row + 1) * 250 and column * 250 < x < (column + 1) * 250, colour
            assert count > 150 * 150 * (1 / 3 if colour == YELLOW else 1)  # a cell's worth
    assert centres[CYAN][1] == centres[RED][1]  # every square image fills the same square cell
    assert abs(centres[YELLOW][1] / centres[RED][1] - 1 / 3) < 0.02  # the 10x30 one a third of it, letterboxed


def test_column_titles_are_drawn_above_the_first_row():
    untitled = samples.grid_image(COLUMNS)
    titled = samples.grid_image(COLUMNS, titles=["input (A)", "translated (B)", "reconstructed (A)"])
    red_rows = np.nonzero((titled == [255, 0, 0]).all(axis=-1))[0]
    dark = (titled.max(axis=-1) < 100)[:red_rows.min()]  # black text above the first row's images
    assert dark.sum() > 50
    assert ((untitled.max(axis=-1) < 100)[:red_rows.min()]).sum() == 0
    dark_columns = np.nonzero(dark.any(axis=0))[0]
    assert dark_columns.min() < 250 and dark_columns.max() > 500  # over the first and the last column


def test_cells_keep_the_aspect_ratio_on_white():
    wide = np.linspace(-1, 1, 12 * 6 * 3, dtype=np.float32).reshape(6, 12, 3)
    cell = samples.fit_to_cell(wide, 12)
    assert cell.shape == (12, 12, 3)
    np.testing.assert_array_equal(cell[3:9], wide)
    assert (cell[:3] == 1).all() and (cell[9:] == 1).all()
    assert samples.fit_to_cell(wide, 24)[6:18].shape == (12, 24, 3)


def test_save_grid_writes_the_grid_image(tmp_path):
    samples.save_grid(tmp_path / "grid.png", COLUMNS, titles=["a", "b", "c"])
    np.testing.assert_array_equal(iio.imread(tmp_path / "grid.png"), samples.grid_image(COLUMNS, ["a", "b", "c"]))
