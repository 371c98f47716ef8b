//! Boxes of voxels as the command line writes them: `z0:z1,y0:y1,x0:x1`, half-open, in the
//! CT's voxel indices, with an optional `LABEL=` in front for a vertebra's body box.

use fracmap_proto::{Vertebra, VoxelBox};

const EXPECTED: &str = "expected z0:z1,y0:y1,x0:x1 (voxel indices, half-open, e.g. 10:20,30:60,40:80)";

/// `--box [LABEL=]z0:z1,y0:y1,x0:x1`: a vertebra by its body box.
pub fn parse_vertebra(text: &str) -> Result<Vertebra, String> {
    let (label, zyx) = match text.split_once('=') {
        Some((label, zyx)) => {
            let label = label.trim();
            if label.is_empty() {
                return Err(format!("empty label before '=': {EXPECTED}, after an optional LABEL="));
            }
            (label.to_string(), zyx)
        }
        None => (String::new(), text),
    };
    Ok(Vertebra { label, body_box: Some(parse_box(zyx)?) })
}

/// `--fracture-box z0:z1,y0:y1,x0:x1`.
pub fn parse_box(text: &str) -> Result<VoxelBox, String> {
    let axes: Vec<&str> = text.split(',').collect();
    let [z, y, x] = axes.as_slice() else {
        return Err(format!("{} ranges: {EXPECTED}", axes.len()));
    };
    let mut voxel_box = VoxelBox { min: Vec::with_capacity(3), max: Vec::with_capacity(3) };
    for (axis, range) in ["z", "y", "x"].into_iter().zip([z, y, x]) {
        let (start, end) = range.split_once(':').ok_or_else(|| format!("{axis} {range:?} has no ':': {EXPECTED}"))?;
        let index = |n: &str| {
            n.trim().parse::<u64>().map_err(|_| format!("{axis} {range:?}: {n:?} is not a voxel index: {EXPECTED}"))
        };
        let (start, end) = (index(start)?, index(end)?);
        if end <= start {
            return Err(format!("{axis} {start}:{end} is empty: {axis}1 must be greater than {axis}0"));
        }
        voxel_box.min.push(start);
        voxel_box.max.push(end);
    }
    Ok(voxel_box)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voxel_box(min: [u64; 3], max: [u64; 3]) -> VoxelBox {
        VoxelBox { min: min.to_vec(), max: max.to_vec() }
    }

    #[test]
    fn a_box_reads_z_y_x_ranges() {
        assert_eq!(parse_box("10:20,30:60,40:80"), Ok(voxel_box([10, 30, 40], [20, 60, 80])));
        assert_eq!(parse_box(" 0:1, 2:3 ,4:5"), Ok(voxel_box([0, 2, 4], [1, 3, 5])));
    }

    #[test]
    fn a_vertebra_box_takes_an_optional_label() {
        let labelled = parse_vertebra("L1=10:20,30:60,40:80").unwrap();
        assert_eq!(labelled.label, "L1");
        assert_eq!(labelled.body_box, Some(voxel_box([10, 30, 40], [20, 60, 80])));
        assert_eq!(parse_vertebra("1:2,3:4,5:6").unwrap().label, "");
    }

    #[test]
    fn malformed_boxes_say_what_was_expected() {
        for text in ["3:4,1", "1:2,3:4,5:6,7:8", "1:2,3:4,5", "1:2,a:4,5:6", "1:2,3:4,-5:6", ""] {
            let error = parse_box(text).unwrap_err();
            assert!(error.contains("expected z0:z1,y0:y1,x0:x1"), "{text:?}: {error}");
        }
        assert!(parse_vertebra("=1:2,3:4,5:6").unwrap_err().contains("empty label"));
    }

    #[test]
    fn an_empty_range_is_named() {
        assert_eq!(parse_box("1:2,5:5,0:1").unwrap_err(), "y 5:5 is empty: y1 must be greater than y0");
        assert!(parse_box("1:2,3:4,9:8").unwrap_err().starts_with("x 9:8 is empty"));
    }
}
