//! Turning grid click counts into a heatmap picture (RGBA pixels and PNG).
//!
//! Why it is drawn this way:
//!
//! * **Smooth, additive.** A grid cell is only a bucket that a click fell
//!   into, not a place where clicks are spread evenly, so painting cells as
//!   flat rectangles would show the grid rather than the behaviour. Each cell
//!   instead adds a Gaussian blob centred on the cell. Neighbouring busy cells
//!   merge into one hot region, and a cluster of moderately busy cells can
//!   outshine a lone busy one, which is what a reader expects from a heatmap.
//! * **Relative, with a lifted low end.** The summed field is divided by its
//!   own maximum, so the hottest spot is always full brightness, whatever the
//!   traffic. A square root then lifts small values: click counts are heavy
//!   tailed, and on a linear scale everything but the top cell would vanish.
//! * **Perceptual colours.** The colour scale runs from a dark navy through
//!   purple, red and orange to pale yellow (close to matplotlib's "inferno"),
//!   and its lightness rises steadily. Readers judge "more" by lightness, so
//!   a scale whose lightness goes up and down (like a rainbow) would invent
//!   hot spots. A near-black zero also leaves pages with no clicks quiet.
//! * **Separable and cheap.** A 2-D Gaussian is the product of two 1-D ones,
//!   so we precompute one 1-D weight table per column and per row and build
//!   the field one grid row at a time. The cost grows with the pixel count
//!   times a few kernel widths, not with pixels times cells.
//!
//! Counts are handled in `f64` after dividing by the largest count, so even
//! `u64::MAX` counts cannot overflow or lose the relative picture. Sizes are
//! checked up front and big buffers are allocated fallibly, so bad input
//! gives a [`RenderError`] and never a panic.

use std::fmt;

/// Largest width or height, in pixels, that we render or encode. It keeps
/// the buffers bounded (8192 x 8192 RGBA is 256 MiB) on untrusted input.
pub const MAX_IMAGE_SIDE: u32 = 8192;

/// Gaussian standard deviation in cell widths (heights for the vertical
/// axis). Under about 0.5 the cells show through as separate dots; over
/// about 1 nearby hot spots smear into one.
const SIGMA_IN_CELLS: f64 = 0.7;

/// Lower bound for sigma in pixels. When cells are smaller than a pixel, a
/// narrower kernel could fall between pixel centres and a cell's clicks
/// would vanish from the picture.
const MIN_SIGMA_PX: f64 = 0.75;

/// Kernels stop this many sigmas from the centre. Beyond that a cell's
/// weight is about 0.03 % of its peak, so the extra work would change no
/// pixel.
const KERNEL_RADIUS_IN_SIGMAS: f64 = 4.0;

/// Exponent applied to the normalised field before colouring. 0.5 (square
/// root) keeps a cell with 1 % of the top count at 10 % brightness, so it
/// is still visible.
const INTENSITY_GAMMA: f64 = 0.5;

/// Number of entries in the colour table built for each render. Computing
/// the colour once per entry instead of once per pixel keeps debug builds
/// fast; 1024 steps are finer than the 8-bit output can show.
const COLOUR_LUT_SIZE: usize = 1024;

/// Colour and opacity of the grid lines: light and faint, so they help to
/// locate cells without competing with the data.
const GRID_LINE_RGB: [f64; 3] = [225.0, 228.0, 240.0];
const GRID_LINE_ALPHA: f64 = 0.14;

/// Grid lines are left out on an axis whose cells are narrower than this,
/// because they would then cover most of the picture.
const MIN_GRID_LINE_SPACING_PX: f64 = 6.0;

/// Anchor colours of the sequential scale, evenly spaced over [0, 1] and
/// interpolated linearly. They follow the inferno path (dark, indigo,
/// purple, red, orange, yellow, pale yellow) with a lightness that rises at
/// every step. The zero colour is a dark navy rather than pure black, so an
/// empty page still reads as a picture and not as a missing image.
const ANCHORS: [[u8; 3]; 9] = [
    [8, 6, 28],
    [34, 11, 78],
    [84, 15, 110],
    [134, 33, 106],
    [184, 53, 86],
    [225, 88, 52],
    [248, 140, 18],
    [249, 201, 56],
    [252, 254, 166],
];

/// Click counts on a grid, row-major: `counts[row * columns + column]`.
#[derive(Debug, Clone, Copy)]
pub struct GridCounts<'a> {
    pub columns: u16,
    pub rows: u16,
    pub counts: &'a [u64],
}

/// How to draw the heatmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderOptions {
    /// Output width in pixels, 1 to [`MAX_IMAGE_SIDE`].
    pub width: u32,
    /// Output height in pixels, 1 to [`MAX_IMAGE_SIDE`].
    pub height: u32,
    /// Draw faint lines at the cell borders.
    pub draw_grid_lines: bool,
}

impl Default for RenderOptions {
    fn default() -> Self {
        // 16:9 fits a typical page viewport, and 800 px keeps a PNG small.
        Self {
            width: 800,
            height: 450,
            draw_grid_lines: true,
        }
    }
}

/// A rendered heatmap: `width * height` pixels, row-major, 4 bytes (RGBA)
/// per pixel.
#[derive(Clone, PartialEq, Eq)]
pub struct HeatmapImage {
    pub width: u32,
    pub height: u32,
    pub rgba: Vec<u8>,
}

impl HeatmapImage {
    /// The RGBA value at (`x`, `y`), or `None` when it is outside the image
    /// or the buffer is shorter than the size says.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 4]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let start = (y as usize * self.width as usize + x as usize) * 4;
        let bytes = self.rgba.get(start..start + 4)?;
        Some([bytes[0], bytes[1], bytes[2], bytes[3]])
    }
}

// A derived Debug would print every pixel byte.
impl fmt::Debug for HeatmapImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeatmapImage")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("rgba_len", &self.rgba.len())
            .finish()
    }
}

/// Why a heatmap could not be rendered or encoded.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(
        "image size {width}x{height} is not allowed: width and height must be 1 to {MAX_IMAGE_SIDE} pixels"
    )]
    InvalidImageSize { width: u32, height: u32 },

    #[error("grid {columns}x{rows} is empty: it needs at least one column and one row")]
    EmptyGrid { columns: u16, rows: u16 },

    #[error("grid {columns}x{rows} needs {expected} counts, but {actual} were given")]
    CountsLengthMismatch {
        columns: u16,
        rows: u16,
        expected: usize,
        actual: usize,
    },

    #[error("image {width}x{height} needs {expected} RGBA bytes, but the buffer holds {actual}")]
    PixelBufferLengthMismatch {
        width: u32,
        height: u32,
        expected: usize,
        actual: usize,
    },

    #[error("could not allocate {bytes} bytes for the heatmap")]
    OutOfMemory { bytes: usize },

    #[error("PNG encoding failed: {0}")]
    Png(#[from] png::EncodingError),
}

/// Render `grid` as a heatmap of `options.width` x `options.height` pixels.
///
/// The grid is stretched over the whole image, so cells need not be square.
/// The image is fully opaque.
pub fn render_heatmap(
    grid: &GridCounts<'_>,
    options: &RenderOptions,
) -> Result<HeatmapImage, RenderError> {
    let (width, height) = checked_image_size(options.width, options.height)?;
    check_grid(grid)?;
    let columns = usize::from(grid.columns);

    let field = accumulate_field(grid, width, height)?;

    // Dividing by the field's own maximum makes the hottest point 1.0 and
    // keeps an all-zero grid at exactly zero instead of 0/0.
    let field_max = field.iter().copied().fold(0.0_f32, f32::max);
    let scale = if field_max.is_finite() && field_max > 0.0 {
        1.0 / f64::from(field_max)
    } else {
        0.0
    };

    let lut = colour_lut();
    let top = (COLOUR_LUT_SIZE - 1) as f64;
    let mut rgba = try_alloc_bytes(field.len() * 4)?;
    for &value in &field {
        let t = (f64::from(value) * scale)
            .clamp(0.0, 1.0)
            .powf(INTENSITY_GAMMA);
        // `as` saturates (and maps NaN to 0), so the index stays in range.
        let index = ((t * top).round() as usize).min(COLOUR_LUT_SIZE - 1);
        let [r, g, b] = lut[index];
        rgba.extend_from_slice(&[r, g, b, 255]);
    }

    if options.draw_grid_lines {
        let vertical = grid_line_positions(columns, width);
        let horizontal = grid_line_positions(usize::from(grid.rows), height);
        draw_grid_lines(&mut rgba, width, &vertical, &horizontal);
    }

    Ok(HeatmapImage {
        width: options.width,
        height: options.height,
        rgba,
    })
}

/// Encode `image` as an 8-bit RGBA PNG.
pub fn encode_png(image: &HeatmapImage) -> Result<Vec<u8>, RenderError> {
    let (width, height) = checked_image_size(image.width, image.height)?;
    let expected = width * height * 4;
    if image.rgba.len() != expected {
        return Err(RenderError::PixelBufferLengthMismatch {
            width: image.width,
            height: image.height,
            expected,
            actual: image.rgba.len(),
        });
    }

    // Heatmaps are mostly smooth gradients, so PNG compresses them well; a
    // small up-front reservation avoids most regrowth without guessing high.
    let mut out = Vec::with_capacity(expected / 8 + 1024);
    let mut encoder = png::Encoder::new(&mut out, image.width, image.height);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&image.rgba)?;
    // Finishing explicitly reports a failed trailer instead of dropping it.
    writer.finish()?;
    Ok(out)
}

/// Colour for a normalised intensity t in [0,1] (values outside are clamped, NaN -> 0).
pub fn colour_scale(t: f64) -> [u8; 3] {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let segments = ANCHORS.len() - 1;
    let position = t * segments as f64;
    // `min` keeps t == 1.0 on the last segment rather than past the end.
    let index = (position.floor() as usize).min(segments - 1);
    let fraction = position - index as f64;
    let (from, to) = (ANCHORS[index], ANCHORS[index + 1]);
    let mut rgb = [0_u8; 3];
    for (channel, out) in rgb.iter_mut().enumerate() {
        let a = f64::from(from[channel]);
        let b = f64::from(to[channel]);
        *out = (a + (b - a) * fraction).round().clamp(0.0, 255.0) as u8;
    }
    rgb
}

/// Validates an image size and returns it as `usize`s for indexing.
fn checked_image_size(width: u32, height: u32) -> Result<(usize, usize), RenderError> {
    let valid = |side: u32| (1..=MAX_IMAGE_SIDE).contains(&side);
    if !valid(width) || !valid(height) {
        return Err(RenderError::InvalidImageSize { width, height });
    }
    Ok((width as usize, height as usize))
}

fn check_grid(grid: &GridCounts<'_>) -> Result<(), RenderError> {
    if grid.columns == 0 || grid.rows == 0 {
        return Err(RenderError::EmptyGrid {
            columns: grid.columns,
            rows: grid.rows,
        });
    }
    // Two u16s always fit a 32-bit usize, but saturating keeps a mismatch
    // an error rather than an overflow on every target.
    let expected = usize::from(grid.columns).saturating_mul(usize::from(grid.rows));
    if grid.counts.len() != expected {
        return Err(RenderError::CountsLengthMismatch {
            columns: grid.columns,
            rows: grid.rows,
            expected,
            actual: grid.counts.len(),
        });
    }
    Ok(())
}

/// The 1-D Gaussian weights of one cell along one axis: pixel
/// `start + i` gets `weights[i]`, and every other pixel gets nothing.
struct AxisKernel {
    start: usize,
    weights: Vec<f64>,
}

impl AxisKernel {
    fn end(&self) -> usize {
        self.start + self.weights.len()
    }
}

/// One kernel per cell along an axis of `cells` cells spread over `pixels`
/// pixels.
fn axis_kernels(cells: usize, pixels: usize) -> Vec<AxisKernel> {
    let cell_px = pixels as f64 / cells as f64;
    let sigma = (SIGMA_IN_CELLS * cell_px).max(MIN_SIGMA_PX);
    let radius = KERNEL_RADIUS_IN_SIGMAS * sigma;
    // Subtracting the Gaussian's value at the cut-off brings each kernel
    // down to exactly zero at its edge. A plain truncated Gaussian leaves a
    // small step there, and the square root in the colour mapping would
    // magnify it into a visible ring around every blob.
    let floor = (-0.5 * KERNEL_RADIUS_IN_SIGMAS * KERNEL_RADIUS_IN_SIGMAS).exp();
    let last_pixel = (pixels - 1) as f64;

    (0..cells)
        .map(|cell| {
            let centre = (cell as f64 + 0.5) * cell_px;
            // Pixel p is sampled at its centre, p + 0.5.
            let first = (centre - radius - 0.5).ceil().clamp(0.0, last_pixel) as usize;
            let last = (centre + radius - 0.5).floor().clamp(0.0, last_pixel) as usize;
            let weights = (first..=last)
                .map(|p| {
                    let d = (p as f64 + 0.5 - centre) / sigma;
                    (((-0.5 * d * d).exp() - floor) / (1.0 - floor)).max(0.0)
                })
                .collect();
            AxisKernel {
                start: first,
                weights,
            }
        })
        .collect()
}

/// The summed Gaussian field, row-major, one value per pixel, with every
/// count scaled by the largest count first.
///
/// `f32` halves the memory of the largest images; once the counts are
/// scaled to [0, 1], its precision is far finer than 8-bit colour needs.
fn accumulate_field(
    grid: &GridCounts<'_>,
    width: usize,
    height: usize,
) -> Result<Vec<f32>, RenderError> {
    let mut field = try_alloc_zeroed_f32(width * height)?;

    let max_count = grid.counts.iter().copied().max().unwrap_or(0);
    if max_count == 0 {
        return Ok(field);
    }
    let inv_max = 1.0 / max_count as f64;

    let columns = usize::from(grid.columns);
    let column_kernels = axis_kernels(columns, width);
    let row_kernels = axis_kernels(usize::from(grid.rows), height);

    // The horizontal sum of one grid row, reused for every row: the field
    // is this profile times each row's vertical weights.
    let mut profile = vec![0.0_f64; width];

    for (row_counts, row_kernel) in grid.counts.chunks_exact(columns).zip(&row_kernels) {
        // Only the span some kernel touched is summed and cleared; sparse
        // rows then cost little.
        let mut span_start = width;
        let mut span_end = 0;
        for (&count, kernel) in row_counts.iter().zip(&column_kernels) {
            if count == 0 {
                continue;
            }
            let Some(target) = profile.get_mut(kernel.start..kernel.end()) else {
                continue;
            };
            let amount = count as f64 * inv_max;
            for (value, weight) in target.iter_mut().zip(&kernel.weights) {
                *value += amount * weight;
            }
            span_start = span_start.min(kernel.start);
            span_end = span_end.max(kernel.end());
        }
        if span_start >= span_end {
            continue;
        }

        let Some(span) = profile.get(span_start..span_end) else {
            continue;
        };
        for (offset, &weight) in row_kernel.weights.iter().enumerate() {
            let line_start = (row_kernel.start + offset) * width;
            let Some(line) = field.get_mut(line_start + span_start..line_start + span_end) else {
                continue;
            };
            for (value, &horizontal) in line.iter_mut().zip(span) {
                *value += (weight * horizontal) as f32;
            }
        }
        profile[span_start..span_end].fill(0.0);
    }
    Ok(field)
}

/// The colour scale sampled at `COLOUR_LUT_SIZE` evenly spaced intensities.
fn colour_lut() -> Vec<[u8; 3]> {
    let top = (COLOUR_LUT_SIZE - 1) as f64;
    (0..COLOUR_LUT_SIZE)
        .map(|i| colour_scale(i as f64 / top))
        .collect()
}

/// For each pixel along an axis, whether an inner cell border falls on it.
/// Empty when the cells are too narrow for lines to help.
fn grid_line_positions(cells: usize, pixels: usize) -> Vec<bool> {
    let cell_px = pixels as f64 / cells as f64;
    if cell_px < MIN_GRID_LINE_SPACING_PX {
        return Vec::new();
    }
    let mut on_line = vec![false; pixels];
    for border in 1..cells {
        let position = (border as f64 * cell_px).round() as usize;
        if let Some(slot) = on_line.get_mut(position) {
            *slot = true;
        }
    }
    on_line
}

/// Blends the grid-line colour over every pixel on a vertical or a
/// horizontal line. A crossing is blended once, so it is no brighter than
/// the lines and does not dot the picture.
fn draw_grid_lines(rgba: &mut [u8], width: usize, vertical: &[bool], horizontal: &[bool]) {
    if vertical.is_empty() && horizontal.is_empty() {
        return;
    }
    for (y, row) in rgba.chunks_exact_mut(width * 4).enumerate() {
        let whole_row = horizontal.get(y).copied().unwrap_or(false);
        for (x, pixel) in row.chunks_exact_mut(4).enumerate() {
            if !whole_row && !vertical.get(x).copied().unwrap_or(false) {
                continue;
            }
            for (channel, &line) in pixel.iter_mut().zip(&GRID_LINE_RGB) {
                let base = f64::from(*channel);
                *channel = (base + (line - base) * GRID_LINE_ALPHA)
                    .round()
                    .clamp(0.0, 255.0) as u8;
            }
        }
    }
}

// The largest images need hundreds of MiB; failing to get that should be
// an error the caller can report, not an abort.
fn try_alloc_zeroed_f32(len: usize) -> Result<Vec<f32>, RenderError> {
    let mut buffer = Vec::new();
    buffer
        .try_reserve_exact(len)
        .map_err(|_| RenderError::OutOfMemory {
            bytes: len.saturating_mul(size_of::<f32>()),
        })?;
    buffer.resize(len, 0.0);
    Ok(buffer)
}

fn try_alloc_bytes(capacity: usize) -> Result<Vec<u8>, RenderError> {
    let mut buffer = Vec::new();
    buffer
        .try_reserve_exact(capacity)
        .map_err(|_| RenderError::OutOfMemory { bytes: capacity })?;
    Ok(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

    fn options(width: u32, height: u32, draw_grid_lines: bool) -> RenderOptions {
        RenderOptions {
            width,
            height,
            draw_grid_lines,
        }
    }

    /// WCAG relative luminance of an sRGB colour, in [0, 1].
    fn luminance([r, g, b]: [u8; 3]) -> f64 {
        let linear = |c: u8| {
            let c = f64::from(c) / 255.0;
            if c <= 0.04045 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        };
        0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b)
    }

    fn pixel_luminance(image: &HeatmapImage, x: u32, y: u32) -> f64 {
        let [r, g, b, _] = image.pixel(x, y).expect("pixel inside the image");
        luminance([r, g, b])
    }

    fn background() -> [u8; 4] {
        let [r, g, b] = colour_scale(0.0);
        [r, g, b, 255]
    }

    #[test]
    fn default_options_are_800x450_with_grid_lines() {
        assert_eq!(RenderOptions::default(), options(800, 450, true));
    }

    #[test]
    fn all_zero_grid_renders_background_only() {
        let counts = vec![0_u64; 20 * 20];
        let grid = GridCounts {
            columns: 20,
            rows: 20,
            counts: &counts,
        };
        let image = render_heatmap(&grid, &options(200, 120, false)).expect("renders");
        assert_eq!(image.rgba.len(), 200 * 120 * 4);
        assert!(image.rgba.chunks_exact(4).all(|p| p == background()));

        // With grid lines there is exactly one other colour: the lines.
        let lined = render_heatmap(&grid, &options(200, 120, true)).expect("renders");
        let mut colours: Vec<&[u8]> = lined.rgba.chunks_exact(4).collect();
        colours.sort_unstable();
        colours.dedup();
        assert_eq!(colours.len(), 2, "background plus grid lines");
    }

    #[test]
    fn single_hot_cell_peaks_inside_its_cell_and_fades_with_distance() {
        let (columns, rows) = (10_u16, 8_u16);
        let (hot_column, hot_row) = (3_u32, 5_u32);
        let mut counts = vec![0_u64; usize::from(columns) * usize::from(rows)];
        counts[hot_row as usize * usize::from(columns) + hot_column as usize] = 42;
        let grid = GridCounts {
            columns,
            rows,
            counts: &counts,
        };
        let (width, height) = (400_u32, 240_u32);
        let image = render_heatmap(&grid, &options(width, height, false)).expect("renders");

        let mut brightest = (0, 0, f64::MIN);
        for y in 0..height {
            for x in 0..width {
                let l = pixel_luminance(&image, x, y);
                if l > brightest.2 {
                    brightest = (x, y, l);
                }
            }
        }
        let (cell_w, cell_h) = (width / u32::from(columns), height / u32::from(rows));
        let (x, y, _) = brightest;
        assert!(
            (hot_column * cell_w..(hot_column + 1) * cell_w).contains(&x),
            "brightest x {x} outside the hot cell"
        );
        assert!(
            (hot_row * cell_h..(hot_row + 1) * cell_h).contains(&y),
            "brightest y {y} outside the hot cell"
        );
        // The peak is the normalised maximum, so it gets the top colour.
        let [r, g, b] = colour_scale(1.0);
        assert_eq!(image.pixel(x, y), Some([r, g, b, 255]));

        // Walking away from the centre in each direction, brightness never
        // rises and ends far lower.
        let (cx, cy) = (
            hot_column * cell_w + cell_w / 2,
            hot_row * cell_h + cell_h / 2,
        );
        let walks: [Vec<(u32, u32)>; 4] = [
            (cx..width).map(|x| (x, cy)).collect(),
            (0..=cx).rev().map(|x| (x, cy)).collect(),
            (cy..height).map(|y| (cx, y)).collect(),
            (0..=cy).rev().map(|y| (cx, y)).collect(),
        ];
        for walk in walks {
            let values: Vec<f64> = walk
                .iter()
                .map(|&(x, y)| pixel_luminance(&image, x, y))
                .collect();
            assert!(
                values.windows(2).all(|w| w[1] <= w[0]),
                "brightness rose moving away from the hot cell"
            );
            let (first, last) = (values[0], values[values.len() - 1]);
            assert!(
                last < first * 0.5,
                "brightness barely fell: {first} -> {last}"
            );
        }

        // A far corner gets nothing at all.
        assert_eq!(image.pixel(width - 1, 0), Some(background()));
    }

    #[test]
    fn low_counts_stay_visible_next_to_a_hot_cell() {
        let mut counts = vec![0_u64; 10 * 10];
        counts[0] = 1_000;
        counts[99] = 1;
        let grid = GridCounts {
            columns: 10,
            rows: 10,
            counts: &counts,
        };
        let image = render_heatmap(&grid, &options(200, 200, false)).expect("renders");
        // Centre of the last cell (column 9, row 9).
        assert_ne!(image.pixel(190, 190), Some(background()));
    }

    #[test]
    fn neighbouring_cells_add_up() {
        // Two equally busy neighbours: with additive kernels the border
        // between them gets most of both blobs and outshines each centre.
        // Taking the maximum instead of the sum would dim it.
        let counts = [0, 10, 10, 0];
        let grid = GridCounts {
            columns: 4,
            rows: 1,
            counts: &counts,
        };
        let image = render_heatmap(&grid, &options(80, 20, false)).expect("renders");
        let border = pixel_luminance(&image, 40, 10);
        assert!(border > pixel_luminance(&image, 30, 10));
        assert!(border > pixel_luminance(&image, 50, 10));
    }

    #[test]
    fn colour_scale_luminance_rises_monotonically() {
        let steps = 20;
        let values: Vec<f64> = (0..=steps)
            .map(|i| luminance(colour_scale(f64::from(i) / f64::from(steps))))
            .collect();
        for pair in values.windows(2) {
            assert!(pair[1] > pair[0], "luminance fell: {pair:?}");
        }
        // Between the coarse steps too, allowing for 8-bit rounding.
        let fine: Vec<f64> = (0..=1000)
            .map(|i| luminance(colour_scale(f64::from(i) / 1000.0)))
            .collect();
        for pair in fine.windows(2) {
            assert!(pair[1] >= pair[0] - 1e-3, "luminance fell: {pair:?}");
        }
        // Dark background, light top.
        assert!(values[0] < 0.01);
        assert!(values[steps as usize] > 0.9);
    }

    #[test]
    fn colour_scale_clamps_and_treats_nan_as_zero() {
        assert_eq!(colour_scale(f64::NAN), colour_scale(0.0));
        assert_eq!(colour_scale(-3.0), colour_scale(0.0));
        assert_eq!(colour_scale(f64::NEG_INFINITY), colour_scale(0.0));
        assert_eq!(colour_scale(7.5), colour_scale(1.0));
        assert_eq!(colour_scale(f64::INFINITY), colour_scale(1.0));
        assert_eq!(colour_scale(0.0), ANCHORS[0]);
        assert_eq!(colour_scale(1.0), ANCHORS[ANCHORS.len() - 1]);
    }

    #[test]
    fn bad_sizes_are_errors() {
        let counts = vec![1_u64; 4];
        let grid = GridCounts {
            columns: 2,
            rows: 2,
            counts: &counts,
        };
        for (width, height) in [
            (0, 10),
            (10, 0),
            (0, 0),
            (8193, 10),
            (10, 8193),
            (u32::MAX, 1),
        ] {
            let result = render_heatmap(&grid, &options(width, height, true));
            assert!(
                matches!(result, Err(RenderError::InvalidImageSize { .. })),
                "{width}x{height}: {result:?}"
            );
        }
        assert!(render_heatmap(&grid, &options(8192, 1, false)).is_ok());

        for (columns, rows) in [(0, 2), (2, 0), (0, 0)] {
            let empty = GridCounts {
                columns,
                rows,
                counts: &[],
            };
            let result = render_heatmap(&empty, &RenderOptions::default());
            assert!(
                matches!(result, Err(RenderError::EmptyGrid { .. })),
                "{result:?}"
            );
        }

        for len in [0, 3, 5] {
            let wrong = vec![0_u64; len];
            let grid = GridCounts {
                columns: 2,
                rows: 2,
                counts: &wrong,
            };
            let result = render_heatmap(&grid, &RenderOptions::default());
            assert!(
                matches!(
                    result,
                    Err(RenderError::CountsLengthMismatch { expected: 4, actual, .. }) if actual == len
                ),
                "{len}: {result:?}"
            );
        }
    }

    #[test]
    fn encode_png_rejects_inconsistent_images() {
        let short = HeatmapImage {
            width: 4,
            height: 4,
            rgba: vec![0; 4 * 4 * 4 - 1],
        };
        assert!(matches!(
            encode_png(&short),
            Err(RenderError::PixelBufferLengthMismatch { .. })
        ));
        let empty = HeatmapImage {
            width: 0,
            height: 4,
            rgba: Vec::new(),
        };
        assert!(matches!(
            encode_png(&empty),
            Err(RenderError::InvalidImageSize { .. })
        ));
    }

    #[test]
    fn encode_png_round_trips() {
        let counts: Vec<u64> = (0..6 * 5).map(|i| (i * 7 % 11) as u64).collect();
        let grid = GridCounts {
            columns: 6,
            rows: 5,
            counts: &counts,
        };
        let image = render_heatmap(&grid, &options(123, 77, true)).expect("renders");
        let bytes = encode_png(&image).expect("encodes");
        assert!(bytes.starts_with(&PNG_SIGNATURE));

        let decoder = png::Decoder::new(std::io::Cursor::new(&bytes));
        let mut reader = decoder.read_info().expect("valid PNG header");
        assert_eq!(reader.info().width, 123);
        assert_eq!(reader.info().height, 77);
        let mut decoded = vec![0; reader.output_buffer_size().expect("size fits")];
        let frame = reader.next_frame(&mut decoded).expect("valid PNG data");
        assert_eq!(frame.color_type, png::ColorType::Rgba);
        assert_eq!(frame.bit_depth, png::BitDepth::Eight);
        assert_eq!(&decoded[..frame.buffer_size()], &image.rgba[..]);
    }

    #[test]
    fn huge_counts_do_not_panic() {
        let all_max = vec![u64::MAX; 20 * 20];
        let grid = GridCounts {
            columns: 20,
            rows: 20,
            counts: &all_max,
        };
        let image = render_heatmap(&grid, &RenderOptions::default()).expect("renders");
        assert!(image.rgba.chunks_exact(4).all(|p| p[3] == 255));
        encode_png(&image).expect("encodes");

        // One u64::MAX next to small counts: still a proper picture.
        let mut mixed = vec![0_u64; 20 * 20];
        mixed[0] = u64::MAX;
        mixed[210] = 1;
        mixed[399] = u64::MAX - 1;
        let grid = GridCounts {
            columns: 20,
            rows: 20,
            counts: &mixed,
        };
        let image = render_heatmap(&grid, &options(200, 200, false)).expect("renders");
        let [r, g, b] = colour_scale(1.0);
        assert!(image.rgba.chunks_exact(4).any(|p| p == [r, g, b, 255]));
    }

    #[test]
    fn extreme_grid_shapes_render() {
        // Cells far smaller than a pixel: the minimum sigma must keep every
        // click in the picture rather than letting it fall between pixels.
        let mut counts = vec![0_u64; 5_000];
        counts[1_234] = 3;
        let grid = GridCounts {
            columns: 5_000,
            rows: 1,
            counts: &counts,
        };
        let image = render_heatmap(&grid, &options(97, 3, true)).expect("renders");
        let [r, g, b] = colour_scale(1.0);
        assert!(image.rgba.chunks_exact(4).any(|p| p == [r, g, b, 255]));

        // One cell over a one-pixel image.
        let one = GridCounts {
            columns: 1,
            rows: 1,
            counts: &[5],
        };
        let image = render_heatmap(&one, &options(1, 1, true)).expect("renders");
        assert_eq!(image.pixel(0, 0), Some([r, g, b, 255]));
    }

    #[test]
    fn grid_lines_mark_cell_borders() {
        let counts = vec![0_u64; 4 * 2];
        let grid = GridCounts {
            columns: 4,
            rows: 2,
            counts: &counts,
        };
        let image = render_heatmap(&grid, &options(80, 40, true)).expect("renders");
        // Borders at x = 20, 40, 60 and y = 20; cell interiors untouched.
        assert_ne!(image.pixel(20, 5), Some(background()));
        assert_ne!(image.pixel(5, 20), Some(background()));
        assert_eq!(image.pixel(10, 10), Some(background()));
        // A crossing is blended once, like any other line pixel.
        assert_eq!(image.pixel(20, 20), image.pixel(20, 5));
    }
}
