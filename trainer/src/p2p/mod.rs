//! The 2.5D model of the method: pix2pix with a convolutional LSTM, trained on the masks of
//! axial slices (true masks or the weak model's drafts) and integrated back into a 3D
//! probability map.
//!
//! - [`config`]: the run's TOML (`configs/p2p_lstm.toml`);
//! - [`model`]: the generator (Attention U-Net + ConvLSTM) and the PatchGAN discriminator;
//! - [`data`]: crops cut into slice sequences, and batches of them as tensors;
//! - [`loss`]: adversarial + `lambda *` segmentation, and the discriminator's loss;
//! - [`train`]: the GAN's training loop; [`health`]: is it collapsing or diverging?;
//! - [`integrate`]: slices back into crop maps, crop maps onto the CT's grid;
//! - [`eval`]: 2D, per-vertebra and per-volume numbers; [`run`]: `fracmap-train p2p`.

pub mod config;
pub mod data;
pub mod eval;
pub mod health;
pub mod integrate;
pub mod loss;
pub mod model;
pub mod run;
pub mod train;
