//! The model repository the server serves from: a folder laid out as `fracmap-train export`
//! writes it (see `fracmap_core::model_manifest`):
//!
//! ```text
//! models/<name>/<version>/model.onnx
//! models/<name>/<version>/manifest.json
//! ```
//!
//! [`ModelRepository::scan`] picks, for every name, the highest version whose manifest is
//! valid, agrees with its folder (name and version) and whose model file has the manifest's
//! SHA-256. Versions above it that fail a check are skipped, with the reason kept and logged;
//! versions below it are not read. An export in progress (no manifest yet) is skipped too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fracmap_core::model_manifest::{MANIFEST_FILE, ModelManifest, parse_version};

/// One servable model version.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelVersion {
    /// `<root>/<name>/<version>`.
    pub dir: PathBuf,
    /// The verified model file.
    pub model_path: PathBuf,
    pub manifest: ModelManifest,
}

/// A version folder that was not served, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub dir: PathBuf,
    pub reason: String,
}

/// The highest valid version of every model in a repository folder.
#[derive(Debug, Clone, Default)]
pub struct ModelRepository {
    models: BTreeMap<String, ModelVersion>,
    skipped: Vec<Skipped>,
}

#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("model repository {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
}

impl ModelRepository {
    /// Reads `root`: every folder in it is a model name, every folder in those a version.
    /// Entries whose names start with a dot, and plain files, are ignored. Only an unreadable
    /// folder is an error; a bad version is skipped (see [`ModelRepository::skipped`]).
    pub fn scan(root: &Path) -> Result<Self, RepositoryError> {
        let mut repository = ModelRepository::default();
        for model_dir in subfolders(root)? {
            let name = file_name(&model_dir);
            let mut versions = Vec::new();
            for version_dir in subfolders(&model_dir)? {
                match parse_version(&file_name(&version_dir)) {
                    Some(version) => versions.push((version, version_dir)),
                    None => repository.skip(version_dir, "not a version folder (a positive integer)".to_string()),
                }
            }
            versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
            for (version, dir) in versions {
                match load_version(&name, version, &dir) {
                    Ok(model) => {
                        tracing::info!(model = %name, version, dir = %dir.display(), "model found");
                        repository.models.insert(name.clone(), model);
                        break;
                    }
                    Err(reason) => repository.skip(dir, reason),
                }
            }
        }
        Ok(repository)
    }

    /// The servable version of `name`.
    pub fn get(&self, name: &str) -> Option<&ModelVersion> {
        self.models.get(name)
    }

    /// Every servable model, by name.
    pub fn models(&self) -> impl Iterator<Item = &ModelVersion> {
        self.models.values()
    }

    /// The version folders passed over, in the order met.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    fn skip(&mut self, dir: PathBuf, reason: String) {
        tracing::warn!(dir = %dir.display(), "skipping model version: {reason}");
        self.skipped.push(Skipped { dir, reason });
    }
}

/// The version in `dir` if its manifest is valid, names this folder and its model verifies.
fn load_version(name: &str, version: u64, dir: &Path) -> Result<ModelVersion, String> {
    let manifest_path = dir.join(MANIFEST_FILE);
    if !manifest_path.exists() {
        return Err(format!("no {MANIFEST_FILE} (an export in progress or one that failed)"));
    }
    let manifest = ModelManifest::load(&manifest_path).map_err(|e| e.to_string())?;
    if (manifest.name.as_str(), manifest.version) != (name, version) {
        return Err(format!(
            "the manifest is for {} version {}, the folder for {name} version {version}",
            manifest.name, manifest.version
        ));
    }
    let model_path = manifest.verify_model(dir).map_err(|e| e.to_string())?;
    Ok(ModelVersion { dir: dir.to_path_buf(), model_path, manifest })
}

/// The folders directly in `dir` whose names do not start with a dot, sorted by name.
fn subfolders(dir: &Path) -> Result<Vec<PathBuf>, RepositoryError> {
    let read_error = |source| RepositoryError::Read { path: dir.to_path_buf(), source };
    let mut folders = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        if path.is_dir() && !file_name(&path).starts_with('.') {
            folders.push(path);
        }
    }
    folders.sort();
    Ok(folders)
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use fracmap_core::HuWindow;
    use fracmap_core::fsutil::write_atomic;
    use fracmap_core::model_manifest::{
        Dim, ElementType, ExportRecord, MANIFEST_FORMAT, MODEL_FILE, OnnxFile, Preprocessing, TensorSpec,
    };

    use super::*;

    fn manifest(name: &str, version: u64, model: &[u8]) -> ModelManifest {
        let spec = |name: &str| TensorSpec {
            name: name.to_string(),
            dtype: ElementType::Float32,
            shape: vec![Dim::Dynamic("batch".into()), Dim::Fixed(1), Dim::Fixed(4), Dim::Fixed(4), Dim::Fixed(4)],
            meaning: String::new(),
        };
        ModelManifest {
            format: MANIFEST_FORMAT,
            name: name.to_string(),
            version,
            architecture: "vae".to_string(),
            config: Default::default(),
            onnx: OnnxFile::of(model, 17, 8),
            inputs: vec![spec("ct")],
            outputs: vec![spec("error")],
            preprocessing: Preprocessing {
                spacing_mm: [1.0; 3],
                margin_mm: 6.0,
                hu_window: HuWindow::new(-250.0, 1250.0).unwrap(),
                patch: [4; 3],
            },
            error_normalisation: None,
            error_input: None,
            mask_threshold: None,
            notes: vec![],
            training: None,
            validation: None,
            evaluation: None,
            exported: ExportRecord { at: 0, tool: "test".to_string(), git_revision: None },
        }
    }

    /// Writes `<root>/<folder_name>/<folder_version>/` with `model` and a manifest of `m`.
    fn write(root: &Path, folder_name: &str, folder_version: &str, model: &[u8], m: &ModelManifest) -> PathBuf {
        let dir = root.join(folder_name).join(folder_version);
        std::fs::create_dir_all(&dir).unwrap();
        write_atomic(&dir.join(MODEL_FILE), model).unwrap();
        write_atomic(&dir.join(MANIFEST_FILE), &m.to_json()).unwrap();
        dir
    }

    fn reason_for<'a>(repository: &'a ModelRepository, dir: &Path) -> &'a str {
        let skipped = repository.skipped().iter().find(|s| s.dir == dir);
        &skipped.unwrap_or_else(|| panic!("{} not skipped", dir.display())).reason
    }

    #[test]
    fn the_highest_valid_version_of_each_name_is_served() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        for version in [1, 2, 10] {
            write(root, "vae", &version.to_string(), b"vae model", &manifest("vae", version, b"vae model"));
        }
        write(root, "unet", "3", b"unet model", &manifest("unet", 3, b"unet model"));
        let repository = ModelRepository::scan(root).unwrap();
        // 10 > 2 numerically, though not as text.
        assert_eq!(repository.get("vae").unwrap().manifest.version, 10);
        assert_eq!(repository.get("vae").unwrap().model_path, root.join("vae/10").join(MODEL_FILE));
        assert_eq!(repository.get("unet").unwrap().manifest.version, 3);
        assert_eq!(repository.models().count(), 2);
        assert!(repository.skipped().is_empty(), "{:?}", repository.skipped());
    }

    #[test]
    fn a_newer_version_with_a_changed_model_file_is_skipped_for_the_one_below() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        write(root, "vae", "1", b"good", &manifest("vae", 1, b"good"));
        let tampered = write(root, "vae", "2", b"tampered", &manifest("vae", 2, b"original"));
        let repository = ModelRepository::scan(root).unwrap();
        assert_eq!(repository.get("vae").unwrap().manifest.version, 1);
        assert!(reason_for(&repository, &tampered).contains("SHA-256"), "{:?}", repository.skipped());
    }

    #[test]
    fn unfinished_mislabelled_and_odd_folders_are_skipped_with_their_reason() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        write(root, "vae", "1", b"m", &manifest("vae", 1, b"m"));
        // An export that stopped after the model file.
        let unfinished = root.join("vae/4");
        std::fs::create_dir_all(&unfinished).unwrap();
        std::fs::write(unfinished.join(MODEL_FILE), b"m").unwrap();
        let mislabelled = write(root, "vae", "3", b"m", &manifest("vae", 2, b"m"));
        let leading_zero = write(root, "vae", "02", b"m", &manifest("vae", 2, b"m"));
        let broken = root.join("vae/5");
        std::fs::create_dir_all(&broken).unwrap();
        std::fs::write(broken.join(MANIFEST_FILE), b"{").unwrap();
        std::fs::create_dir_all(root.join(".cache/1")).unwrap();

        let repository = ModelRepository::scan(root).unwrap();
        assert_eq!(repository.get("vae").unwrap().manifest.version, 1);
        assert!(reason_for(&repository, &unfinished).contains("no manifest.json"));
        assert!(reason_for(&repository, &mislabelled).contains("for vae version 2"));
        assert!(reason_for(&repository, &leading_zero).contains("not a version folder"));
        assert!(reason_for(&repository, &broken).contains("not a model manifest"));
        assert_eq!(repository.skipped().len(), 4);
    }

    #[test]
    fn a_name_without_a_valid_version_is_not_served() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "vae", "1", b"a", &manifest("vae", 1, b"b"));
        let repository = ModelRepository::scan(root.path()).unwrap();
        assert!(repository.get("vae").is_none());
        assert_eq!(repository.models().count(), 0);
    }

    #[test]
    fn a_missing_repository_is_an_error_naming_it() {
        let err = ModelRepository::scan(Path::new("/nonexistent/models")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/models"), "{err}");
    }
}
