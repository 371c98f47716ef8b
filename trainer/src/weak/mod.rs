//! Phase 2: the weakly supervised 3D U-Net that turns a CT crop and its VAE error map into a
//! fracture probability map, trained from fracture boxes (mode B) or slice ranges (mode A).
//!
//! - [`config`]: the run's TOML (`configs/weak_box.toml`, `configs/weak_slice.toml`);
//! - [`masks`]: `M_in` / `M_out` of a crop from its weak label;
//! - [`data`]: crops with their frozen-VAE error maps, and batches of them as tensors;
//! - [`model`]: the U-Net, `[X, normalise(E)]` in, fracture logits out;
//! - [`loss`]: `l1*L_out + l2*L_in + l3*L_contrast + l4*L_consistency`, and the fully
//!   supervised BCE + Dice of the upper bound;
//! - [`train`]: the training loop; [`run`]: `fracmap-train weak`, one run on one fold;
//! - [`eval`]: maps scored against true masks; [`experiment`]: A vs B and the baselines.

pub mod config;
pub mod data;
pub mod eval;
pub mod experiment;
pub mod loss;
pub mod masks;
pub mod model;
pub mod pictures;
pub mod run;
pub mod train;
