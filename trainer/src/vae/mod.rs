//! Phase 1 of the method: a 3D VAE trained on normal vertebrae, whose reconstruction error
//! lights up fractures.
//!
//! - [`config`]: the run's TOML configuration, validated at load;
//! - [`model`]: the network (encoder, `mu`/`logvar`, reparameterisation, decoder);
//! - [`loss`]: reconstruction + `beta` * KL;
//! - [`data`]: the crop set the trainer reads, augmentation, batches;
//! - [`train`]: the training loop, metrics and resume;
//! - [`checkpoint`]: checkpoint files and the run folder's layout;
//! - [`error_map`]: `|X - X_hat|` for a crop, optionally smoothed;
//! - [`run`]: `fracmap-train vae`, from a manifest to a run folder;
//! - [`curves`]: the run's loss curve;
//! - [`eval`]: `fracmap-train eval-vae`, the error map against the true fractures.

pub mod checkpoint;
pub mod config;
pub mod curves;
pub mod data;
pub mod error_map;
pub mod eval;
pub mod loss;
pub mod model;
pub mod run;
pub mod train;
