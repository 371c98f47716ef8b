//! Which vertebra crops a model trains, validates and is tested on, and how they are read.
//!
//! Every model reads crops of the crop cache (`crops.rs`), made from the manifest with the
//! model's own [`DataConfig`] (spacing, margin, HU window) and its input shape as the patch;
//! the cache is built on first use and reused while the manifest and the spec are unchanged.
//!
//! Folds: with `--fold K` of `n` folds, fold `K` is the test fold (never seen in training,
//! only by evaluation), fold `(K + 1) % n` is the validation fold (model selection), every
//! other fold trains. Cases marked unlabeled play no part.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail, ensure};
use fracmap_core::HuWindow;
use fracmap_core::Volume;
use ndarray::Array3;
use serde::{Deserialize, Serialize};

use crate::crops::{CropEntry, CropIndex, CropSpec};
use crate::manifest::Status;
use crate::vae::data::{CropError, CropSet};

/// How a model's crops are made from the CT: part of the model's configuration, because the
/// server must preprocess exactly the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Voxel spacing of the crops, mm, `[z, y, x]`.
    pub spacing_mm: [f64; 3],
    /// Context around the vertebral body's box, mm.
    pub margin_mm: f64,
    /// HU window scaled to `[0, 1]`: bone and its surroundings.
    pub window: HuWindow,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            spacing_mm: [1.0; 3],
            margin_mm: 6.0,
            window: HuWindow::new(-250.0, 1250.0).expect("a valid window"),
        }
    }
}

impl DataConfig {
    /// The crop spec of a model taking `patch` voxels `[z, y, x]`.
    pub fn crop_spec(&self, patch: [usize; 3]) -> CropSpec {
        CropSpec { spacing_mm: self.spacing_mm, patch, margin_mm: self.margin_mm }
    }
}

/// The default cache folder of a spec: beside the manifest, named by the spec, so that
/// models of different crop shapes keep their caches apart.
pub fn default_cache_dir(manifest: &Path, spec: &CropSpec) -> PathBuf {
    let [z, y, x] = spec.patch;
    let [sz, sy, sx] = spec.spacing_mm;
    let name = format!("crops_{z}x{y}x{x}_{sz}x{sy}x{sx}mm_m{}", spec.margin_mm);
    manifest.parent().unwrap_or(Path::new(".")).join("crops").join(name)
}

/// A crop's part in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Train,
    Validation,
    Test,
}

/// The folds of a run: see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoldSplit {
    pub test: usize,
    pub validation: usize,
    pub folds: usize,
}

impl FoldSplit {
    /// The split of `index` with `test` as the test fold; every labeled crop must have a fold
    /// and there must be at least three folds.
    pub fn new(index: &CropIndex, test: usize) -> Result<Self> {
        let mut folds = 0;
        for entry in index.crops.iter().filter(|c| c.labeled) {
            match entry.fold {
                Some(f) => folds = folds.max(f + 1),
                None => bail!(
                    "case {}: no fold assigned (run `fracmap-train folds --data {}`)",
                    entry.case,
                    index.manifest.display()
                ),
            }
        }
        ensure!(
            folds >= 3,
            "{}: {folds} folds; a run needs at least 3 (test, validation, training)",
            index.manifest.display()
        );
        ensure!(test < folds, "--fold {test}: the manifest has folds 0..{folds}");
        Ok(FoldSplit { test, validation: (test + 1) % folds, folds })
    }

    /// The role of a crop, `None` for unlabeled cases.
    pub fn role(&self, entry: &CropEntry) -> Option<Role> {
        let fold = entry.fold.filter(|_| entry.labeled)?;
        Some(if fold == self.test {
            Role::Test
        } else if fold == self.validation {
            Role::Validation
        } else {
            Role::Train
        })
    }
}

/// A normal vertebra whose crop shows no fracture at all: not even a neighbour's within the
/// margin (when the case has a fracture mask to tell). What the VAE learns from.
pub fn is_clean_normal(entry: &CropEntry) -> bool {
    entry.status == Status::Normal && entry.truth_voxels.unwrap_or(0) == 0
}

/// The crops of `index` with `role` that `keep` accepts, in index order.
pub fn select<'a>(
    index: &'a CropIndex,
    split: &FoldSplit,
    role: Role,
    keep: impl Fn(&CropEntry) -> bool,
) -> Vec<&'a CropEntry> {
    index.crops.iter().filter(|c| split.role(c) == Some(role) && keep(c)).collect()
}

/// Crops of a cache read on demand, HU windowed to `[0, 1]`.
pub struct CachedCrops {
    dir: PathBuf,
    entries: Vec<CropEntry>,
    window: HuWindow,
}

impl CachedCrops {
    pub fn new(dir: &Path, entries: Vec<CropEntry>, window: HuWindow) -> Self {
        CachedCrops { dir: dir.to_path_buf(), entries, window }
    }

    pub fn entries(&self) -> &[CropEntry] {
        &self.entries
    }

    /// The windowed CT of crop `index` with its grid.
    pub fn volume(&self, index: usize) -> Result<Volume> {
        let entry = self.entries.get(index).ok_or_else(|| anyhow::anyhow!("crop {index}: out of range"))?;
        Ok(self.window.apply(&entry.load_ct(&self.dir)?))
    }
}

impl CropSet for CachedCrops {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn crop(&self, index: usize) -> Result<Array3<f32>, CropError> {
        self.volume(index).map(|v| v.data().to_owned()).map_err(|e| CropError { index, source: e.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_folders_differ_by_spec() {
        let manifest = Path::new("/data/phantom/manifest.json");
        let a = default_cache_dir(manifest, &DataConfig::default().crop_spec([64; 3]));
        let b = default_cache_dir(manifest, &DataConfig::default().crop_spec([32; 3]));
        assert_eq!(a, Path::new("/data/phantom/crops/crops_64x64x64_1x1x1mm_m6"));
        assert_ne!(a, b);
    }

    #[test]
    fn the_default_window_is_bone() {
        let window = DataConfig::default().window;
        assert_eq!((window.min(), window.max()), (-250.0, 1250.0));
    }
}
