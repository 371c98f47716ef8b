//! The report page: one HTML file with its style inline and its pictures as `data:` URIs, so
//! it shows the same from a mail, an archive or a folder without network; no script. Only
//! the 3D scene stays a file of its own (`scene.glb`, linked), being for a 3D viewer.

use std::fmt::Write;

use super::SCENE_FILE;
use super::case::CaseSummary;
use super::figures::{BONE_HU, Picture, VIEWS, VertebraFigures};

/// Pictures are small (a vertebra's region at the CT's resolution) and shown enlarged, up to
/// this many times and this width in CSS pixels.
const MAX_ZOOM: usize = 6;
const MAX_DISPLAY_WIDTH: usize = 1200;

const STYLE: &str = "
body { font: 15px/1.45 system-ui, sans-serif; color: #1a1a1a; max-width: 1240px; margin: 24px auto; padding: 0 16px; }
h1 { font-size: 24px; margin-bottom: 4px; }
h2 { font-size: 19px; margin-top: 32px; border-bottom: 1px solid #ccc; }
h3 { font-size: 16px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { padding: 3px 12px; text-align: left; border-bottom: 1px solid #ddd; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
tr.flagged { background: #fde3df; font-weight: 600; }
.about th { font-weight: normal; color: #555; }
.note { color: #555; font-size: 13px; }
img { image-rendering: pixelated; display: block; margin: 8px 0; max-width: 100%; height: auto; }
.swatch { display: inline-block; width: 12px; height: 12px; vertical-align: middle; border: 1px solid #888; }
";

pub struct Page<'a> {
    /// The CT's file name, nothing more.
    pub ct_name: &'a str,
    pub summary: &'a CaseSummary,
    /// The pictured vertebrae by index, in spine order.
    pub pictured: &'a [(usize, VertebraFigures)],
    /// The rendered views of the scene, when there is one (then `scene.glb` is beside).
    pub scene: Option<&'a Picture>,
}

pub fn page(page: &Page) -> String {
    let summary = page.summary;
    let mut html = String::new();
    let title = format!("Fracture report: {}", escape(page.ct_name));
    // Writing to a String cannot fail.
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n\
         <style>{STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n\
         <p class=\"note\">A draft from research software for a reader's review, not a diagnosis.</p>\n"
    );
    about(&mut html, summary);
    vertebra_table(&mut html, page);
    for (index, figures) in page.pictured {
        vertebra_section(&mut html, summary, *index, figures);
    }
    if let Some(views) = page.scene {
        scene_section(&mut html, views);
    }
    let _ = write!(html, "<p class=\"note\">fracmap {}</p>\n</body>\n</html>\n", env!("CARGO_PKG_VERSION"));
    html
}

/// What ran, where, and how long it took.
fn about(html: &mut String, summary: &CaseSummary) {
    let model = |model: &Option<super::case::ModelName>| match model {
        Some(m) => format!("{} version {}", escape(&m.name), m.version),
        None => "(not given)".to_string(),
    };
    let rows = [
        ("Model", model(&summary.model)),
        ("VAE", model(&summary.vae)),
        ("Execution provider", escape(&summary.execution_provider)),
        ("Threshold", format!("{} (draft mask; a vertebra scoring at least this is flagged)", summary.threshold)),
        (
            "Draft mask",
            format!(
                "{} voxels, {:.1} mm³, mean probability {:.3}",
                summary.mask_voxels, summary.mask_volume_mm3, summary.confidence
            ),
        ),
        (
            "Server time",
            summary.timings_ms.as_ref().map_or_else(
                || "(not given)".to_string(),
                |t| t.stages().map(|(stage, ms)| format!("{stage} {ms:.0} ms")).join(", "),
            ),
        ),
        ("Request", escape(&summary.request_id)),
    ];
    html.push_str("<table class=\"about\">\n");
    for (name, value) in rows {
        let _ = writeln!(html, "<tr><th>{name}</th><td>{value}</td></tr>");
    }
    html.push_str("</table>\n");
}

/// One row a vertebra, from the skull down.
fn vertebra_table(html: &mut String, page: &Page) {
    let summary = page.summary;
    html.push_str(
        "<h2>Vertebrae</h2>\n<table class=\"vertebrae\">\n<tr><th>Level</th><th>Fracture score</th>\
         <th>Confidence</th><th>Mask volume (mm³)</th><th>Flagged</th></tr>\n",
    );
    for index in summary.spine_order() {
        let vertebra = &summary.vertebrae[index];
        let flagged = summary.flagged(index);
        let mut level = escape(&vertebra.name(index));
        if page.pictured.iter().any(|(i, _)| *i == index) {
            level = format!("<a href=\"#vertebra-{index}\">{level}</a>");
        }
        if vertebra.oversize {
            level.push_str(" <span class=\"note\">(larger than the model's crop: its outer parts unseen)</span>");
        }
        let _ = writeln!(
            html,
            "<tr{}><td>{level}</td><td class=\"number\">{:.3}</td><td class=\"number\">{:.3}</td>\
             <td class=\"number\">{:.1}</td><td>{}</td></tr>",
            if flagged { " class=\"flagged\"" } else { "" },
            vertebra.fracture_score,
            vertebra.confidence,
            vertebra.mask_volume_mm3,
            if flagged { "yes" } else { "no" },
        );
    }
    html.push_str(
        "</table>\n<p class=\"note\">Fracture score: the largest fracture probability in the vertebra's region. \
         Confidence: the mean probability inside its part of the draft mask.</p>\n",
    );
}

fn vertebra_section(html: &mut String, summary: &CaseSummary, index: usize, figures: &VertebraFigures) {
    let vertebra = &summary.vertebrae[index];
    let name = escape(&vertebra.name(index));
    let [z, y, x] = figures.point;
    let colours = format!(
        "Probabilities from the threshold ({}) up in colour over the CT (legend on the right), \
         the draft mask outlined in <span class=\"swatch\" style=\"background:#f0f\"></span> magenta.",
        summary.threshold
    );
    let _ = write!(
        html,
        "<h2 id=\"vertebra-{index}\">{name}: fracture score {:.3}{}</h2>\n\
         <p>Axial, coronal and sagittal planes through the centre of its region (CT voxel z {z}, y {y}, x {x}), \
         superior up, pixels square in millimetres. {colours}</p>\n{}\n\
         <h3>Axial slices of {name}</h3>\n<p>Tile k is CT slice z = {} + {}k, inferior first.</p>\n{}\n",
        vertebra.fracture_score,
        if summary.flagged(index) { ", flagged" } else { "" },
        img(&figures.planes, &format!("{name}: axial, coronal and sagittal heat maps")),
        figures.first_slice,
        if figures.slice_step == 1 { String::new() } else { format!("{}·", figures.slice_step) },
        img(&figures.sheet, &format!("{name}: axial slices")),
    );
}

fn scene_section(html: &mut String, views: &Picture) {
    let names: Vec<&str> = VIEWS.iter().map(|(_, name)| *name).collect();
    let _ = write!(
        html,
        "<h2>3D</h2>\n<p>Bone (CT at or above {BONE_HU} HU) translucent, the draft mask in \
         <span class=\"swatch\" style=\"background:#eb4628\"></span> red, around the vertebrae examined; \
         seen from the {}. The surfaces in world millimetres: <a href=\"{SCENE_FILE}\">{SCENE_FILE}</a> \
         (glTF 2.0, for a 3D viewer).</p>\n{}\n",
        names.join(", the "),
        img(views, "3D views of the bone and the draft mask"),
    );
}

/// An `<img>` of `picture` as a `data:` URI, enlarged up to [`MAX_ZOOM`] times or
/// [`MAX_DISPLAY_WIDTH`], never shrunk.
fn img(picture: &Picture, alt: &str) -> String {
    let width = (picture.width * MAX_ZOOM).min(MAX_DISPLAY_WIDTH).max(picture.width);
    format!(
        "<img src=\"data:image/png;base64,{}\" width=\"{width}\" height=\"{}\" alt=\"{alt}\">",
        base64(&picture.png),
        picture.height * width / picture.width.max(1)
    )
}

/// Text safe inside an element or a quoted attribute.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// Standard base64 (RFC 4648, with padding): a dozen lines rather than a dependency.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = group.iter().enumerate().fold(0u32, |n, (k, &b)| n | u32::from(b) << (16 - 8 * k));
        for k in 0..4 {
            if k <= group.len() {
                text.push(char::from(ALPHABET[(n >> (18 - 6 * k) & 63) as usize]));
            } else {
                text.push('=');
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::super::case::tests::case;
    use super::*;

    #[test]
    fn base64_gives_the_rfc_4648_test_vectors() {
        let vectors = [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")];
        for (bytes, text) in vectors {
            assert_eq!(base64(bytes.as_bytes()), text, "{bytes:?}");
        }
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn labels_and_file_names_are_text_not_markup() {
        let summary = case(&[("<script>", 0.9)], 0.5);
        let html = page(&Page { ct_name: "a&b\".nii.gz", summary: &summary, pictured: &[], scene: None });
        assert!(html.contains("<td>&lt;script&gt;</td>"), "{html}");
        assert!(html.contains("a&amp;b&quot;.nii.gz"));
        assert!(!html.contains("<script"));
    }

    #[test]
    fn the_table_runs_in_spine_order_and_marks_flagged_vertebrae() {
        let summary = case(&[("L1", 0.25), ("T12", 0.75)], 0.5);
        let html = page(&Page { ct_name: "ct.nii.gz", summary: &summary, pictured: &[], scene: None });
        let t12 = html.find("<tr class=\"flagged\"><td>T12</td><td class=\"number\">0.750</td>").unwrap();
        let l1 = html.find("<tr><td>L1</td><td class=\"number\">0.250</td>").unwrap();
        assert!(t12 < l1);
        assert!(!html.contains(SCENE_FILE), "no scene, no link");
    }
}
