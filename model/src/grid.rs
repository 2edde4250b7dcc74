//! Mapping a click onto the heatmap grid of its viewport.
//!
//! The formula is a contract (docs/ARCHITECTURE.md): `grid_x = clamp(floor(columns * x /
//! viewport_width), 0, columns - 1)`, the same for y with rows and viewport_height. Viewports
//! differ per device, so cells are fractions of the viewport, not pixels; `dpr` cancels out.

use clickheatmap_crds::GridConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    columns: u16,
    rows: u16,
}

impl Grid {
    /// A grid with at least one column and one row (zero is raised to one).
    pub fn new(columns: u16, rows: u16) -> Self {
        Grid {
            columns: columns.max(1),
            rows: rows.max(1),
        }
    }

    pub fn columns(&self) -> u16 {
        self.columns
    }

    pub fn rows(&self) -> u16 {
        self.rows
    }

    /// The cell `(grid_x, grid_y)` of a click.
    #[inline]
    pub fn cell(&self, x: f64, y: f64, viewport_width: f64, viewport_height: f64) -> (u16, u16) {
        (
            axis(self.columns, x, viewport_width),
            axis(self.rows, y, viewport_height),
        )
    }
}

impl From<GridConfig> for Grid {
    fn from(config: GridConfig) -> Self {
        Grid::new(config.columns, config.rows)
    }
}

impl Default for Grid {
    fn default() -> Self {
        Grid::from(GridConfig::default())
    }
}

#[inline]
fn axis(cells: u16, position: f64, extent: f64) -> u16 {
    let cell = (f64::from(cells) * position / extent).floor();
    // Written so that NaN (and anything negative) lands in the first cell: `as` would saturate
    // too, but the intent should not depend on that.
    if cell >= f64::from(cells) {
        cells - 1
    } else if cell >= 0.0 {
        cell as u16
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_by_the_contract_formula() {
        let grid = Grid::default();
        assert_eq!(grid.cell(0.0, 0.0, 1280.0, 720.0), (0, 0));
        assert_eq!(grid.cell(63.9, 35.9, 1280.0, 720.0), (0, 0));
        assert_eq!(grid.cell(64.0, 36.0, 1280.0, 720.0), (1, 1));
        assert_eq!(grid.cell(640.0, 360.0, 1280.0, 720.0), (10, 10));
        assert_eq!(grid.cell(1279.9, 719.9, 1280.0, 720.0), (19, 19));
    }

    #[test]
    fn edges_are_clamped() {
        let grid = Grid::default();
        // x == width is outside the last cell by the formula and clamps into it.
        assert_eq!(grid.cell(1280.0, 720.0, 1280.0, 720.0), (19, 19));
        assert_eq!(grid.cell(-5.0, -0.1, 1280.0, 720.0), (0, 0));
        assert_eq!(grid.cell(1e300, f64::INFINITY, 1280.0, 720.0), (19, 19));
        assert_eq!(
            grid.cell(f64::NAN, f64::NEG_INFINITY, 1280.0, 720.0),
            (0, 0)
        );
        assert_eq!(grid.cell(10.0, 10.0, f64::NAN, 0.0), (0, 19));
    }

    #[test]
    fn other_grid_sizes_and_dpr_independence() {
        let grid = Grid::new(32, 18);
        assert_eq!(grid.cell(1919.0, 1079.0, 1920.0, 1080.0), (31, 17));
        // The same click on a dpr=2 screen reports CSS pixels: the cell does not change.
        assert_eq!(grid.cell(960.0, 540.0, 1920.0, 1080.0), (16, 9));
        assert_eq!(Grid::new(0, 0).cell(5.0, 5.0, 10.0, 10.0), (0, 0));
    }
}
