//! A scene of coloured surfaces in world millimetres (the bone and the fracture region of a
//! case) and its files: binary PLY with a colour on every vertex, and binary glTF 2.0 (.glb)
//! with one mesh and one material a surface, translucent ones alpha-blended.
//!
//! Both files keep positions in world mm (RAS+). glTF wants metres with +Y up, so the .glb
//! puts every mesh under one node whose matrix says so (and centres the scene); a viewer
//! shows it upright, and the numbers in the buffer stay the ones the mesh had.

use std::path::Path;

use serde_json::json;

use crate::fsutil::write_atomic;
use crate::mesh::{Mesh, SurfaceOptions, isosurface};
use crate::volume::Volume;

/// Light grey, like bone in a textbook.
pub const BONE_COLOUR: [u8; 3] = [225, 218, 200];
/// Red-orange, apart from grey bone at any angle of light.
pub const FRACTURE_COLOUR: [u8; 3] = [235, 70, 40];

/// One surface and how to show it.
#[derive(Debug, Clone, PartialEq)]
pub struct Surface {
    pub name: String,
    pub mesh: Mesh,
    /// sRGB.
    pub colour: [u8; 3],
    /// 1 is opaque; below 1 the surface is drawn blended over what is behind it.
    pub opacity: f32,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scene {
    pub surfaces: Vec<Surface>,
}

/// How to make the bone-and-fracture scene of a case.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SceneOptions {
    /// Bone is CT `>=` this, HU.
    pub bone_hu: f32,
    /// The fracture region is probability `>=` this.
    pub fracture_threshold: f32,
    /// Opacity of the bone, so that a fracture inside it shows.
    pub bone_opacity: f32,
    pub surface: SurfaceOptions,
}

impl Default for SceneOptions {
    fn default() -> Self {
        SceneOptions { bone_hu: 200.0, fracture_threshold: 0.5, bone_opacity: 0.35, surface: SurfaceOptions::default() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("probability map has shape {prob_shape:?}, the CT {ct_shape:?} ([z, y, x]): it must be on the CT's grid")]
pub struct SceneError {
    pub prob_shape: [usize; 3],
    pub ct_shape: [usize; 3],
}

/// The bone surface (CT `>= bone_hu`, translucent) and the fracture surface (probability
/// `>= fracture_threshold`, opaque) of a case, in world mm.
pub fn fracture_scene(ct: &Volume, prob: &Volume, options: &SceneOptions) -> Result<Scene, SceneError> {
    if prob.shape() != ct.shape() {
        return Err(SceneError { prob_shape: prob.shape(), ct_shape: ct.shape() });
    }
    let bone = Surface {
        name: "bone".into(),
        mesh: isosurface(ct, options.bone_hu, &options.surface),
        colour: BONE_COLOUR,
        opacity: options.bone_opacity,
    };
    let fracture = Surface {
        name: "fracture".into(),
        mesh: isosurface(prob, options.fracture_threshold, &options.surface),
        colour: FRACTURE_COLOUR,
        opacity: 1.0,
    };
    Ok(Scene { surfaces: vec![bone, fracture] })
}

impl Scene {
    /// Smallest and largest coordinates over all surfaces, mm; `None` when all are empty.
    pub fn bounds(&self) -> Option<([f32; 3], [f32; 3])> {
        self.surfaces.iter().filter_map(|s| s.mesh.bounds()).reduce(|(lo, hi), (l, h)| {
            (std::array::from_fn(|k| lo[k].min(l[k])), std::array::from_fn(|k| hi[k].max(h[k])))
        })
    }

    /// Binary little-endian PLY: every surface's vertices (world mm, with normals and the
    /// surface's colour and opacity as 8-bit RGBA) and triangles in one mesh. MeshLab,
    /// CloudCompare and Blender read it.
    pub fn write_ply(&self, path: &Path) -> std::io::Result<()> {
        write_atomic(path, &self.ply_bytes())
    }

    /// Binary glTF 2.0 in one .glb file: a mesh, a node and a material per non-empty surface.
    pub fn write_glb(&self, path: &Path) -> std::io::Result<()> {
        write_atomic(path, &self.glb_bytes())
    }

    fn ply_bytes(&self) -> Vec<u8> {
        let vertices: usize = self.surfaces.iter().map(|s| s.mesh.positions.len()).sum();
        let faces: usize = self.surfaces.iter().map(|s| s.mesh.triangles.len()).sum();
        let header = format!(
            "ply\nformat binary_little_endian 1.0\ncomment fracmap: world coordinates in mm, RAS+\n\
             element vertex {vertices}\nproperty float x\nproperty float y\nproperty float z\n\
             property float nx\nproperty float ny\nproperty float nz\n\
             property uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\n\
             element face {faces}\nproperty list uchar int vertex_indices\nend_header\n"
        );
        let mut bytes = header.into_bytes();
        for surface in &self.surfaces {
            let alpha = (surface.opacity.clamp(0.0, 1.0) * 255.0).round() as u8;
            for (p, n) in surface.mesh.positions.iter().zip(&surface.mesh.normals) {
                p.iter().chain(n).for_each(|v| bytes.extend(v.to_le_bytes()));
                bytes.extend(surface.colour);
                bytes.push(alpha);
            }
        }
        let mut first = 0u32;
        for surface in &self.surfaces {
            for t in &surface.mesh.triangles {
                bytes.push(3);
                t.iter().for_each(|v| bytes.extend(((first + v) as i32).to_le_bytes()));
            }
            first += surface.mesh.positions.len() as u32;
        }
        bytes
    }

    fn glb_bytes(&self) -> Vec<u8> {
        let mut bin: Vec<u8> = Vec::new();
        let mut views = Vec::new();
        let mut accessors = Vec::new();
        let mut meshes = Vec::new();
        let mut materials = Vec::new();
        let mut nodes = vec![json!(null)];
        // Appends a buffer view (4-byte aligned, as every component here is 4 bytes).
        let mut add_view = |bin: &mut Vec<u8>, data: &[u8], target: u32| {
            views.push(json!({"buffer": 0, "byteOffset": bin.len(), "byteLength": data.len(), "target": target}));
            bin.extend(data);
            views.len() - 1
        };
        for surface in self.surfaces.iter().filter(|s| !s.mesh.is_empty()) {
            let mesh = &surface.mesh;
            // Written as f64, the exact values of the f32 extremes, so readers that compare
            // them with the data (validators do) find them equal.
            let (lo, hi) = mesh.bounds().expect("a non-empty mesh has vertices");
            let floats = |v: &[[f32; 3]]| v.iter().flatten().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
            let indices: Vec<u8> = mesh.triangles.iter().flatten().flat_map(|i| i.to_le_bytes()).collect();
            let position_view = add_view(&mut bin, &floats(&mesh.positions), ARRAY_BUFFER);
            let normal_view = add_view(&mut bin, &floats(&mesh.normals), ARRAY_BUFFER);
            let index_view = add_view(&mut bin, &indices, ELEMENT_ARRAY_BUFFER);
            let count = mesh.positions.len();
            accessors.push(json!({"bufferView": position_view, "componentType": FLOAT, "count": count,
                "type": "VEC3", "min": lo.map(f64::from), "max": hi.map(f64::from)}));
            accessors.push(json!({"bufferView": normal_view, "componentType": FLOAT, "count": count, "type": "VEC3"}));
            accessors.push(json!({"bufferView": index_view, "componentType": UNSIGNED_INT,
                "count": mesh.triangles.len() * 3, "type": "SCALAR"}));
            let first = accessors.len() - 3;
            let [r, g, b] = surface.colour.map(srgb_to_linear);
            let opacity = surface.opacity.clamp(0.0, 1.0);
            let mut material = json!({
                "name": surface.name,
                "pbrMetallicRoughness": {"baseColorFactor": [r, g, b, opacity], "metallicFactor": 0.0, "roughnessFactor": 0.6},
                "doubleSided": true,
            });
            if opacity < 1.0 {
                material["alphaMode"] = json!("BLEND");
            }
            materials.push(material);
            meshes.push(json!({"name": surface.name, "primitives": [{
                "attributes": {"POSITION": first, "NORMAL": first + 1},
                "indices": first + 2, "material": materials.len() - 1, "mode": TRIANGLES}]}));
            nodes.push(json!({"name": surface.name, "mesh": meshes.len() - 1}));
        }
        nodes[0] = json!({"name": "RAS mm to glTF Y-up m, centred", "matrix": world_to_gltf(self.bounds())});
        if nodes.len() > 1 {
            nodes[0]["children"] = json!((1..nodes.len()).collect::<Vec<_>>());
        }
        let mut document = json!({
            "asset": {"version": "2.0", "generator": concat!("fracmap ", env!("CARGO_PKG_VERSION"))},
            "scene": 0,
            "scenes": [{"nodes": [0]}],
            "nodes": nodes,
        });
        if !meshes.is_empty() {
            document["meshes"] = json!(meshes);
            document["materials"] = json!(materials);
            document["accessors"] = json!(accessors);
            document["bufferViews"] = json!(views);
            document["buffers"] = json!([{"byteLength": bin.len()}]);
        }
        glb_container(document.to_string().into_bytes(), bin)
    }
}

const FLOAT: u32 = 5126;
const UNSIGNED_INT: u32 = 5125;
const ARRAY_BUFFER: u32 = 34962;
const ELEMENT_ARRAY_BUFFER: u32 = 34963;
const TRIANGLES: u32 = 4;

/// The GLB container: a 12-byte header, the JSON chunk padded with spaces and the binary
/// chunk (left out when empty) padded with zeros, each chunk to a multiple of 4 bytes.
fn glb_container(mut json: Vec<u8>, mut bin: Vec<u8>) -> Vec<u8> {
    json.resize(json.len().next_multiple_of(4), b' ');
    bin.resize(bin.len().next_multiple_of(4), 0);
    let mut chunks = vec![(0x4E4F_534Au32, json)];
    if !bin.is_empty() {
        chunks.push((0x004E_4942, bin));
    }
    let total = 12 + chunks.iter().map(|(_, data)| 8 + data.len()).sum::<usize>();
    let mut bytes = Vec::with_capacity(total);
    bytes.extend(b"glTF");
    bytes.extend(2u32.to_le_bytes());
    bytes.extend((total as u32).to_le_bytes());
    for (kind, data) in chunks {
        bytes.extend((data.len() as u32).to_le_bytes());
        bytes.extend(kind.to_le_bytes());
        bytes.extend(data);
    }
    bytes
}

/// Column-major 4x4 matrix taking world RAS mm to glTF's frame (metres, +Y up, +Z to the
/// front): glTF x = -R (the patient's right is the model's right, -X in glTF), y = S, z = A;
/// the centre of `bounds` goes to the origin so that viewers turn the model about itself.
fn world_to_gltf(bounds: Option<([f32; 3], [f32; 3])>) -> [f64; 16] {
    const M: f64 = 0.001;
    let c = bounds.map_or([0.0; 3], |(lo, hi)| std::array::from_fn(|k| (f64::from(lo[k]) + f64::from(hi[k])) / 2.0));
    // Rows: x' = -M (x - cx), y' = M (z - cz), z' = M (y - cy).
    [-M, 0.0, 0.0, 0.0, 0.0, 0.0, M, 0.0, 0.0, M, 0.0, 0.0, M * c[0], -M * c[2], -M * c[1], 1.0]
}

/// glTF colour factors are linear; our colours are sRGB.
fn srgb_to_linear(c: u8) -> f32 {
    let c = f32::from(c) / 255.0;
    if c <= 0.04045 { c / 12.92 } else { ((c + 0.055) / 1.055).powf(2.4) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    /// A CT with a bone ball (1000 HU in -1000) and a probability map hot in a small box
    /// inside it, on an anisotropic grid with an offset.
    fn case() -> (Volume, Volume) {
        let ct = Array3::from_shape_fn((12, 14, 16), |(z, y, x)| {
            let d2 = (z as f32 - 5.5).powi(2) + (y as f32 - 6.5).powi(2) + (x as f32 - 7.5).powi(2);
            if d2 < 25.0 { 1000.0 } else { -1000.0 }
        });
        let mut affine = crate::volume::spacing_affine([2.0, 1.0, 0.8]);
        affine[0][3] = -50.0;
        let ct = Volume::new(ct, [2.0, 1.0, 0.8], affine).unwrap();
        let mut prob = Array3::zeros((12, 14, 16));
        prob.slice_mut(ndarray::s![5..7, 5..8, 6..9]).fill(0.9f32);
        let prob = ct.with_data(prob).unwrap();
        (ct, prob)
    }

    fn scene() -> Scene {
        let (ct, prob) = case();
        let options = SceneOptions { surface: SurfaceOptions::RAW, ..Default::default() };
        fracture_scene(&ct, &prob, &options).unwrap()
    }

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    /// Splits a .glb into its JSON document and binary chunk, checking the container.
    fn read_glb(bytes: &[u8]) -> (serde_json::Value, Vec<u8>) {
        assert_eq!(&bytes[..4], b"glTF");
        assert_eq!(u32_at(bytes, 4), 2, "container version");
        assert_eq!(u32_at(bytes, 8) as usize, bytes.len(), "header length is the file length");
        let json_len = u32_at(bytes, 12) as usize;
        assert_eq!(u32_at(bytes, 16), 0x4E4F_534A, "first chunk is JSON");
        assert_eq!(json_len % 4, 0);
        let json = &bytes[20..20 + json_len];
        let text = std::str::from_utf8(json).unwrap();
        let document_text = text.trim_end_matches(' ');
        assert!(document_text.ends_with('}') && text.len() - document_text.len() < 4, "padded with under 4 spaces");
        let document: serde_json::Value = serde_json::from_str(document_text).unwrap();
        let rest = &bytes[20 + json_len..];
        if rest.is_empty() {
            return (document, Vec::new());
        }
        let bin_len = u32_at(rest, 0) as usize;
        assert_eq!(u32_at(rest, 4), 0x004E_4942, "second chunk is BIN");
        assert_eq!(bin_len % 4, 0);
        assert_eq!(rest.len(), 8 + bin_len, "nothing after the BIN chunk");
        (document, rest[8..].to_vec())
    }

    #[test]
    fn glb_container_chunks_and_accessors_are_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("case.glb");
        let scene = scene();
        scene.write_glb(&path).unwrap();
        let (doc, bin) = read_glb(&std::fs::read(&path).unwrap());
        assert_eq!(doc["asset"]["version"], "2.0");
        let byte_length = doc["buffers"][0]["byteLength"].as_u64().unwrap() as usize;
        assert!(bin.len() >= byte_length && bin.len() - byte_length < 4, "BIN chunk is the buffer padded to 4");
        assert!(bin[byte_length..].iter().all(|&b| b == 0), "padded with zeros");
        let views = doc["bufferViews"].as_array().unwrap();
        let floats_of = |view: &serde_json::Value| -> Vec<f32> {
            let (offset, len) =
                (view["byteOffset"].as_u64().unwrap() as usize, view["byteLength"].as_u64().unwrap() as usize);
            assert_eq!(offset % 4, 0, "views aligned to their 4-byte components");
            assert!(offset + len <= byte_length);
            bin[offset..offset + len].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
        };
        let meshes = doc["meshes"].as_array().unwrap();
        assert_eq!(meshes.len(), 2, "bone and fracture");
        for (mesh, surface) in meshes.iter().zip(&scene.surfaces) {
            let primitive = &mesh["primitives"][0];
            let position = &doc["accessors"][primitive["attributes"]["POSITION"].as_u64().unwrap() as usize];
            let count = position["count"].as_u64().unwrap() as usize;
            assert_eq!(count, surface.mesh.positions.len());
            let values = floats_of(&views[position["bufferView"].as_u64().unwrap() as usize]);
            assert_eq!(values.len(), 3 * count, "view length is count x VEC3 x 4 bytes");
            for k in 0..3 {
                let axis = values.iter().skip(k).step_by(3);
                let lo = axis.clone().copied().fold(f32::INFINITY, f32::min);
                let hi = axis.copied().fold(f32::NEG_INFINITY, f32::max);
                assert_eq!(position["min"][k].as_f64().unwrap() as f32, lo, "POSITION min is the data's");
                assert_eq!(position["max"][k].as_f64().unwrap() as f32, hi, "POSITION max is the data's");
            }
            let indices = &doc["accessors"][primitive["indices"].as_u64().unwrap() as usize];
            assert_eq!(indices["componentType"], UNSIGNED_INT);
            let view = &views[indices["bufferView"].as_u64().unwrap() as usize];
            let (offset, len) =
                (view["byteOffset"].as_u64().unwrap() as usize, view["byteLength"].as_u64().unwrap() as usize);
            assert_eq!(len, 4 * indices["count"].as_u64().unwrap() as usize);
            assert!(bin[offset..offset + len].chunks(4).all(|c| (u32_at(c, 0) as usize) < count), "indices in range");
        }
    }

    #[test]
    fn glb_materials_tell_translucent_bone_from_opaque_fracture() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("case.glb");
        scene().write_glb(&path).unwrap();
        let (doc, _) = read_glb(&std::fs::read(&path).unwrap());
        let material =
            |name: &str| doc["materials"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap().clone();
        let (bone, fracture) = (material("bone"), material("fracture"));
        assert_eq!(bone["alphaMode"], "BLEND");
        assert_eq!(bone["pbrMetallicRoughness"]["baseColorFactor"][3].as_f64().unwrap() as f32, 0.35);
        assert!(fracture.get("alphaMode").is_none(), "opaque is glTF's default");
        let red = |m: &serde_json::Value| m["pbrMetallicRoughness"]["baseColorFactor"][0].as_f64().unwrap();
        let green = |m: &serde_json::Value| m["pbrMetallicRoughness"]["baseColorFactor"][1].as_f64().unwrap();
        assert!(red(&fracture) > 5.0 * green(&fracture) && green(&bone) > 0.5, "distinct colours");
    }

    #[test]
    fn glb_of_an_empty_scene_has_no_buffer_and_no_empty_lists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.glb");
        Scene::default().write_glb(&path).unwrap();
        let (doc, bin) = read_glb(&std::fs::read(&path).unwrap());
        assert!(bin.is_empty(), "no BIN chunk");
        assert!(doc.get("buffers").is_none() && doc.get("meshes").is_none());
        assert!(doc["nodes"][0].get("children").is_none(), "glTF forbids an empty children list");
    }

    #[test]
    fn ply_holds_every_surface_with_its_colour_and_offset_indices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("case.ply");
        let scene = scene();
        scene.write_ply(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let end = bytes.windows(11).position(|w| w == b"end_header\n").unwrap() + 11;
        let header = std::str::from_utf8(&bytes[..end]).unwrap();
        let [bone, fracture] = [&scene.surfaces[0].mesh, &scene.surfaces[1].mesh];
        let vertices = bone.positions.len() + fracture.positions.len();
        let faces = bone.triangles.len() + fracture.triangles.len();
        assert!(
            header.contains(&format!("element vertex {vertices}\n"))
                && header.contains(&format!("element face {faces}\n"))
        );
        const VERTEX: usize = 6 * 4 + 4;
        assert_eq!(bytes.len(), end + vertices * VERTEX + faces * (1 + 3 * 4));
        let first_fracture = end + bone.positions.len() * VERTEX;
        let x = f32::from_le_bytes(bytes[first_fracture..first_fracture + 4].try_into().unwrap());
        assert_eq!(x, fracture.positions[0][0]);
        assert_eq!(&bytes[first_fracture + 24..first_fracture + 28], &[235, 70, 40, 255], "fracture colour, opaque");
        assert_eq!(bytes[end + 27], (0.35f32 * 255.0).round() as u8, "bone alpha");
        let last_face = bytes.len() - 13;
        assert_eq!(bytes[last_face], 3);
        let index = i32::from_le_bytes(bytes[last_face + 1..last_face + 5].try_into().unwrap());
        assert_eq!(index as usize, bone.positions.len() + fracture.triangles.last().unwrap()[0] as usize);
    }

    #[test]
    fn scene_has_a_bone_and_a_fracture_surface_and_refuses_another_grid() {
        let scene = scene();
        let fracture = &scene.surfaces[1].mesh;
        assert!(fracture.is_closed());
        // 2 x 3 x 3 voxels of 2 x 1 x 0.8 mm: the binary-box surface is a little less.
        let voxels = 2.0 * 3.0 * 3.0 * 1.6;
        assert!(fracture.enclosed_volume() > 0.5 * voxels && fracture.enclosed_volume() < voxels);
        let (ct, _) = case();
        let other = Volume::with_spacing(Array3::zeros((12, 14, 15)), [1.0; 3]).unwrap();
        let err = fracture_scene(&ct, &other, &SceneOptions::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "probability map has shape [12, 14, 15], the CT [12, 14, 16] ([z, y, x]): it must be on the CT's grid"
        );
    }
}
