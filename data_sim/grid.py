"""The 3x3 position grid: the single source of the words used in training targets,
answers and the UI, so the model is never trained on one phrasing and asked with another.

A point is binned at 1/3 and 2/3 of the image height and width. Each anomaly is named by
its *own* centre (not by the centre of the union of all boxes).
"""
from __future__ import annotations

ROWS: tuple[str, str, str] = ("top", "center", "bottom")
COLS: tuple[str, str, str] = ("left", "center", "right")


def cell_index(y: float, x: float, height: float, width: float) -> tuple[int, int]:
    """(row, col) in 0..2 for a point at pixel (y, x) of an image of the given size."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    row = min(2, max(0, int(3 * y / height)))
    col = min(2, max(0, int(3 * x / width)))
    return row, col


def cell_name(row: int, col: int) -> str:
    """Words for a cell: 'top left', 'center right', ...; the middle cell is just 'center'."""
    if not (0 <= row <= 2 and 0 <= col <= 2):
        raise ValueError(f"grid cell out of range: ({row}, {col})")
    if row == 1 and col == 1:
        return "center"
    return f"{ROWS[row]} {COLS[col]}"


def cell_of_point(y: float, x: float, height: float, width: float) -> str:
    """Words for the cell holding pixel (y, x)."""
    return cell_name(*cell_index(y, x, height, width))


ALL_CELLS: tuple[str, ...] = tuple(cell_name(r, c) for r in range(3) for c in range(3))


def parse_cells(text: str) -> list[str]:
    """Cell names mentioned in free text, longest match first, in order of appearance.

    Used to score generated answers against the ground-truth cells.
    """
    low = " ".join(text.lower().replace(",", " ").replace(".", " ").split())
    found: list[tuple[int, str]] = []
    taken = [False] * len(low)
    for name in sorted(ALL_CELLS, key=len, reverse=True):
        start = 0
        while (i := low.find(name, start)) != -1:
            end = i + len(name)
            if not any(taken[i:end]):
                found.append((i, name))
                for j in range(i, end):
                    taken[j] = True
            start = end
    return [n for _, n in sorted(found)]
