//! PNG: the label as a 1-bit bitmap at the printhead's resolution (one pixel per
//! dot, with the physical size in the pHYs chunk). It carries the QR code only: the
//! text lines are in the ZPL and SVG forms, which have fonts.

use super::template::Label;
use crate::error::{Error, Result};

pub fn render(label: &Label) -> Result<Vec<u8>> {
    let (w, h) = (label.width, label.height);
    let stride = w.div_ceil(8) as usize;
    // 1-bit greyscale: a set bit is white, so start all white and clear the dark dots.
    let mut rows = vec![0xffu8; stride * h as usize];
    let q = &label.qr;
    for row in 0..q.modules {
        for col in 0..q.modules {
            if !q.is_dark(col, row) {
                continue;
            }
            for dy in 0..q.module {
                let y = q.y + row * q.module + dy;
                if y >= h {
                    continue;
                }
                for dx in 0..q.module {
                    let x = q.x + col * q.module + dx;
                    if x < w {
                        rows[y as usize * stride + (x / 8) as usize] &= !(0x80 >> (x % 8));
                    }
                }
            }
        }
    }
    let mut out = Vec::with_capacity(rows.len() / 4 + 256);
    let fail = |e: png::EncodingError| Error::Internal(format!("PNG encoding: {e}"));
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::One);
        let per_metre = (label.dpi as f64 / 0.0254).round() as u32;
        enc.set_pixel_dims(Some(png::PixelDimensions {
            xppu: per_metre,
            yppu: per_metre,
            unit: png::Unit::Meter,
        }));
        let mut writer = enc.write_header().map_err(fail)?;
        writer.write_image_data(&rows).map_err(fail)?;
        writer.finish().map_err(fail)?;
    }
    Ok(out)
}
