//! The PNG: the SVG rendered by resvg, with DejaVu Sans Mono built into the binary so the text
//! renders on hosts with no fonts installed (most production containers).
use std::sync::{Arc, OnceLock};

use resvg::{tiny_skia, usvg};

/// The largest picture rendered: 64 Mpixels (256 MiB of pixels while drawing).
const MAX_PIXELS: u64 = 64 << 20;

/// Why a heatmap could not be drawn as a PNG.
#[derive(Debug, thiserror::Error)]
pub enum HeatmapError {
    #[error("the heatmap's SVG could not be read for rendering: {0}")]
    Svg(#[from] usvg::Error),
    #[error(
        "the heatmap is {width}×{height} px, too large for a PNG; draw fewer maps (--site) or \
         write SVG"
    )]
    TooLarge { width: u32, height: u32 },
    #[error("encoding the heatmap as PNG failed: {0}")]
    Encode(String),
}

/// The embedded fonts, loaded once: DejaVu Sans Mono, regular and bold, and nothing else (no
/// system font is read, so every host draws the same picture).
fn fonts() -> Arc<usvg::fontdb::Database> {
    static FONTS: OnceLock<Arc<usvg::fontdb::Database>> = OnceLock::new();
    FONTS
        .get_or_init(|| {
            let mut fonts = usvg::fontdb::Database::new();
            for face in [dejavu::sans_mono::regular(), dejavu::sans_mono::bold()] {
                fonts.load_font_source(usvg::fontdb::Source::Binary(Arc::new(face)));
            }
            fonts.set_monospace_family("DejaVu Sans Mono");
            fonts.set_sans_serif_family("DejaVu Sans Mono");
            fonts.set_serif_family("DejaVu Sans Mono");
            Arc::new(fonts)
        })
        .clone()
}

/// Parse `svg` with the embedded fonts (text shaped, ready to draw or measure).
pub(super) fn parse(svg: &str) -> Result<usvg::Tree, HeatmapError> {
    let options = usvg::Options {
        font_family: "DejaVu Sans Mono".into(),
        fontdb: fonts(),
        ..usvg::Options::default()
    };
    Ok(usvg::Tree::from_str(svg, &options)?)
}

/// Render a heatmap SVG (from [`super::to_svg`]) as a PNG of the same width and height.
pub fn to_png(svg: &str) -> Result<Vec<u8>, HeatmapError> {
    let tree = parse(svg)?;
    let size = tree.size().to_int_size();
    let (width, height) = (size.width(), size.height());
    let too_large = HeatmapError::TooLarge { width, height };
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(too_large);
    }
    let mut pixmap = tiny_skia::Pixmap::new(width, height).ok_or(too_large)?;
    pixmap.fill(tiny_skia::Color::WHITE);
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    pixmap
        .encode_png()
        .map_err(|error| HeatmapError::Encode(error.to_string()))
}
