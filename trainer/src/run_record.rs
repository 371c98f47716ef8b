//! What a run folder records about how it was made, so that a result can be traced and
//! reproduced: `run.json` (the command, the code's git revision, the data, the folds) and the
//! configuration as it was used (`config.toml`). Both are written before training starts;
//! a resumed run checks that it continues the same data and fold.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use fracmap_core::fsutil::write_atomic;
use serde::{Deserialize, Serialize};

use crate::training_data::FoldSplit;

pub const RUN_FILE: &str = "run.json";
pub const CONFIG_FILE: &str = "config.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRecord {
    /// What was trained: "vae", "unet", ...
    pub model: String,
    /// The command line that started the run.
    pub command: Vec<String>,
    /// fracmap's version and `git describe --always --dirty` of its source, when known.
    pub version: String,
    pub git_revision: Option<String>,
    /// Seconds since the Unix epoch.
    pub started: u64,
    /// The manifest, absolute.
    pub data: PathBuf,
    /// The crop cache the run read, absolute.
    pub crops: PathBuf,
    pub split: FoldSplit,
    pub train_crops: usize,
    pub validation_crops: usize,
}

impl RunRecord {
    /// A record of the current process for a run of `model`.
    pub fn new(model: &str, data: &Path, crops: &Path, split: FoldSplit, counts: (usize, usize)) -> Result<Self> {
        let absolute = |p: &Path| std::path::absolute(p).with_context(|| format!("{}: cannot resolve", p.display()));
        Ok(RunRecord {
            model: model.to_string(),
            command: std::env::args().collect(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            git_revision: git_revision(),
            started: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            data: absolute(data)?,
            crops: absolute(crops)?,
            split,
            train_crops: counts.0,
            validation_crops: counts.1,
        })
    }

    pub fn load(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join(RUN_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read (is {} a run folder?)", path.display(), run_dir.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: not a run record", path.display()))
    }

    /// Writes `run.json` and `config.toml` (the configuration's TOML text) into `run_dir`.
    pub fn save(&self, run_dir: &Path, config_toml: &str) -> Result<()> {
        std::fs::create_dir_all(run_dir).with_context(|| format!("{}: cannot create", run_dir.display()))?;
        let json = serde_json::to_vec_pretty(self).expect("a run record serialises");
        for (name, bytes) in [(RUN_FILE, json.as_slice()), (CONFIG_FILE, config_toml.as_bytes())] {
            let path = run_dir.join(name);
            write_atomic(&path, bytes).with_context(|| format!("{}: cannot write", path.display()))?;
        }
        Ok(())
    }

    /// Refuses to resume a run of another model, manifest or fold.
    pub fn check_resumes(&self, earlier: &RunRecord) -> Result<()> {
        if (self.model.as_str(), &self.data, self.split) != (earlier.model.as_str(), &earlier.data, earlier.split) {
            bail!(
                "cannot resume: the run folder holds a {} run on {} with test fold {}, this is a {} run on {} with test fold {}",
                earlier.model,
                earlier.data.display(),
                earlier.split.test,
                self.model,
                self.data.display(),
                self.split.test
            );
        }
        Ok(())
    }
}

/// `git describe --always --dirty` of the source tree this binary was built from.
pub fn git_revision() -> Option<String> {
    let output = Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(test: usize) -> RunRecord {
        let split = FoldSplit { test, validation: (test + 1) % 5, folds: 5 };
        RunRecord::new("vae", Path::new("data/manifest.json"), Path::new("data/crops"), split, (10, 3)).unwrap()
    }

    #[test]
    fn saves_and_loads_with_the_config_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let rec = record(2);
        rec.save(dir.path(), "[train]\nepochs = 3\n").unwrap();
        assert_eq!(RunRecord::load(dir.path()).unwrap(), rec);
        assert_eq!(std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap(), "[train]\nepochs = 3\n");
        assert!(rec.data.is_absolute());
    }

    #[test]
    fn the_source_revision_is_known_in_a_checkout() {
        // Tests run from the source tree, which is a git checkout (CI clones it).
        let revision = record(0).git_revision.expect("a git revision");
        assert!(revision.len() >= 12, "{revision}");
    }

    #[test]
    fn resuming_another_fold_is_refused() {
        assert!(record(1).check_resumes(&record(1)).is_ok());
        let err = record(1).check_resumes(&record(2)).unwrap_err();
        assert!(err.to_string().contains("test fold 2"), "{err}");
    }
}
