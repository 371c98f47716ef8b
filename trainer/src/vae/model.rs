//! The 3D convolutional VAE of Phase 1: one-channel crops of HU windowed to `[0, 1]` in,
//! `mu`, `logvar` and a reconstruction out.
//!
//! Shapes for the default config (`B` crops of 64^3, base 16, 4 levels, latent 128):
//! ```text
//! x            [B, 1, 64, 64, 64]
//! encoder 0    Conv3d(1 -> 16, k4 s2 p1) + norm + LeakyReLU     [B, 16, 32, 32, 32]
//! encoder 1    Conv3d(16 -> 32, ...)                            [B, 32, 16, 16, 16]
//! encoder 2    Conv3d(32 -> 64, ...)                            [B, 64, 8, 8, 8]
//! encoder 3    Conv3d(64 -> 128, ...)                           [B, 128, 4, 4, 4]
//! flatten                                                       [B, 8192]
//! to_mu, to_logvar   Linear(8192 -> 128)                        [B, 128] each
//! z = mu + exp(logvar / 2) * eps                                [B, 128]
//! from_latent  Linear(128 -> 8192) + LeakyReLU, reshape         [B, 128, 4, 4, 4]
//! decoder 0    ConvTranspose3d(128 -> 64, k4 s2 p1) + norm + LeakyReLU  [B, 64, 8, 8, 8]
//! decoder 1    ConvTranspose3d(64 -> 32, ...)                   [B, 32, 16, 16, 16]
//! decoder 2    ConvTranspose3d(32 -> 16, ...)                   [B, 16, 32, 32, 32]
//! head         ConvTranspose3d(16 -> 1, k4 s2 p1), linear       [B, 1, 64, 64, 64]
//! ```
//! The decoder mirrors the encoder exactly: its last stage, the head, is the transpose of the
//! first encoder stage and has no norm or activation. (The other common ending, a 16 -> 16
//! stage at full resolution then a 3^3 conv to one channel, cost 0.35 s + 0.49 s of a batch-4
//! forward on flex in the dev profile, against 0.013 s for this head: flex convolves by tiled
//! im2col + gemm, and with one output channel the gemm is a matrix-vector product.)
//! Kernel 4, stride 2, padding 1 halves (Conv3d) or doubles (ConvTranspose3d) every axis
//! exactly, and every output voxel of a transposed stage sees the same number of kernel taps,
//! which avoids the checkerboard of kernel 3.
//!
//! The head is linear, not a sigmoid: windowing clamps air and dense bone to exactly 0 and 1,
//! values a sigmoid reaches only at infinite logits (its gradient vanishing on the way), and
//! the error map `|x - x_hat|` needs no output scaling. Reconstructions can leave `[0, 1]`
//! slightly; nothing clamps them.
//!
//! Only plain layers (Conv3d, ConvTranspose3d, GroupNorm / InstanceNorm / BatchNorm,
//! LeakyRelu, Linear) so that an exporter can walk these structs layer by layer.

use std::sync::Mutex;

use burn::module::{ModuleVisitor, Param};
use burn::nn::conv::{Conv3d, Conv3dConfig, ConvTranspose3d, ConvTranspose3dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, GroupNorm, GroupNormConfig, InstanceNorm, InstanceNormConfig, LeakyRelu,
    LeakyReluConfig, Linear, LinearConfig, PaddingConfig3d,
};
use burn::prelude::*;
use burn::store::RecordError;

use super::config::{ModelConfig, NormKind};

/// The normalisation after a convolution.
#[derive(Module, Debug)]
pub enum Norm {
    Group(GroupNorm),
    Instance(InstanceNorm),
    Batch(BatchNorm),
}

impl Norm {
    /// GroupNorm with `gcd(channels, max_groups)` groups, or the other norms (which ignore
    /// `max_groups`).
    pub(crate) fn new(kind: NormKind, channels: usize, max_groups: usize, device: &Device) -> Self {
        match kind {
            NormKind::Group => Norm::Group(GroupNormConfig::new(gcd(channels, max_groups), channels).init(device)),
            NormKind::Instance => Norm::Instance(InstanceNormConfig::new(channels).init(device)),
            NormKind::Batch => Norm::Batch(BatchNormConfig::new(channels).init(device)),
        }
    }

    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        match self {
            Norm::Group(norm) => norm.forward(x),
            Norm::Instance(norm) => norm.forward(x),
            Norm::Batch(norm) => norm.forward(x),
        }
    }
}

/// An encoder stage: halves every axis.
#[derive(Module, Debug)]
pub struct DownStage {
    pub conv: Conv3d,
    pub norm: Norm,
    pub activation: LeakyRelu,
}

/// A decoder stage: doubles every axis.
#[derive(Module, Debug)]
pub struct UpStage {
    pub conv: ConvTranspose3d,
    pub norm: Norm,
    pub activation: LeakyRelu,
}

#[derive(Module, Debug)]
pub struct Vae {
    pub encoder: Vec<DownStage>,
    /// Flattened bottleneck `[B, C * D * H * W]` to `[B, latent]`.
    pub to_mu: Linear,
    pub to_logvar: Linear,
    /// `[B, latent]` to the flattened bottleneck; followed by `latent_activation`.
    pub from_latent: Linear,
    pub latent_activation: LeakyRelu,
    pub decoder: Vec<UpStage>,
    /// Last decoder features to one channel at full resolution, linear.
    pub head: ConvTranspose3d,
    /// The crop shape it takes, `[z, y, x]`.
    pub input_shape: [usize; 3],
    /// The bottleneck's `[C, D, H, W]`.
    pub bottleneck: [usize; 4],
}

/// What a training forward pass returns.
#[derive(Debug, Clone)]
pub struct VaeOutput {
    /// `[B, 1, D, H, W]`, in the input's `[0, 1]` window units.
    pub reconstruction: Tensor<5>,
    /// `[B, latent]`.
    pub mu: Tensor<2>,
    /// `[B, latent]`, natural log of the posterior variance.
    pub logvar: Tensor<2>,
}

/// Burn's random initialisers draw from one process-wide generator (the flex backend's
/// `SEED`), lazily, at a parameter's first use. Seeding and drawing every parameter under
/// this lock makes the initial weights a function of the seed alone, as long as nothing else
/// draws from burn's generator meanwhile (nothing here does: the reparameterisation noise
/// comes from the trainer's own generator). Every model of the crate initialises through
/// [`init_seeded`], so that they all share it.
static SEEDED_INIT: Mutex<()> = Mutex::new(());

/// The module `build` makes, every parameter drawn under [`SEEDED_INIT`] after seeding
/// burn's generator with `seed`: its weights depend only on `seed`.
pub(crate) fn init_seeded<M: Module>(device: &Device, seed: u64, build: impl FnOnce() -> M) -> M {
    let _guard = SEEDED_INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    device.seed(seed);
    let module = build();
    module.visit(&mut Materialise);
    module
}

impl ModelConfig {
    /// A freshly initialised VAE whose weights depend only on `seed`.
    pub fn init(&self, device: &Device, seed: u64) -> Vae {
        init_seeded(device, seed, || self.build(device))
    }

    /// The VAE of a burnpack file written by `Module::save_file` for this configuration.
    pub fn load(&self, path: &std::path::Path, device: &Device) -> Result<Vae, RecordError> {
        // Lazy parameters are replaced by the file's values without ever being drawn.
        self.build(device).try_load_file(path)
    }

    fn build(&self, device: &Device) -> Vae {
        let activation = || LeakyReluConfig::new().with_negative_slope(self.leaky_relu_slope).init();
        let norm = |channels| Norm::new(self.norm, channels, self.norm_groups, device);
        let encoder = (0..self.levels)
            .map(|i| {
                let c_in = if i == 0 { 1 } else { self.stage_channels(i - 1) };
                let c_out = self.stage_channels(i);
                DownStage { conv: down_conv(c_in, c_out).init(device), norm: norm(c_out), activation: activation() }
            })
            .collect();
        // Decoder stage i mirrors encoder stage levels-1-i; encoder stage 0's mirror is the head.
        let decoder = (1..self.levels)
            .rev()
            .map(|i| {
                let (c_in, c_out) = (self.stage_channels(i), self.stage_channels(i - 1));
                UpStage { conv: up_conv(c_in, c_out).init(device), norm: norm(c_out), activation: activation() }
            })
            .collect();
        let [d, h, w] = self.bottleneck_shape();
        let bottleneck = [self.stage_channels(self.levels - 1), d, h, w];
        let flat = bottleneck.iter().product();
        Vae {
            encoder,
            to_mu: LinearConfig::new(flat, self.latent_dim).init(device),
            to_logvar: LinearConfig::new(flat, self.latent_dim).init(device),
            from_latent: LinearConfig::new(self.latent_dim, flat).init(device),
            latent_activation: activation(),
            decoder,
            head: up_conv(self.base_channels, 1).init(device),
            input_shape: self.input_shape,
            bottleneck,
        }
    }
}

/// Forces every lazily initialised parameter to draw its values now.
struct Materialise;

impl ModuleVisitor for Materialise {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        param.val();
    }
}

impl Vae {
    /// `x [B, 1, D, H, W]` to `(mu, logvar)`, each `[B, latent]`.
    pub fn encode(&self, x: Tensor<5>) -> (Tensor<2>, Tensor<2>) {
        let features =
            self.encoder.iter().fold(x, |x, stage| stage.activation.forward(stage.norm.forward(stage.conv.forward(x))));
        let [b, c, d, h, w] = features.dims();
        let flat = features.reshape([b, c * d * h * w]);
        (self.to_mu.forward(flat.clone()), self.to_logvar.forward(flat))
    }

    /// `z [B, latent]` to a reconstruction `[B, 1, D, H, W]`.
    pub fn decode(&self, z: Tensor<2>) -> Tensor<5> {
        let [b, _] = z.dims();
        let [c, d, h, w] = self.bottleneck;
        let features = self.latent_activation.forward(self.from_latent.forward(z)).reshape([b, c, d, h, w]);
        let features = self
            .decoder
            .iter()
            .fold(features, |x, stage| stage.activation.forward(stage.norm.forward(stage.conv.forward(x))));
        self.head.forward(features)
    }

    /// Training pass: `z = mu + exp(logvar / 2) * eps`, with `eps [B, latent]` standard
    /// normal noise drawn by the caller (so that the trainer's seeded generator owns it).
    pub fn forward(&self, x: Tensor<5>, eps: Tensor<2>) -> VaeOutput {
        let (mu, logvar) = self.encode(x);
        let z = mu.clone() + logvar.clone().mul_scalar(0.5).exp() * eps;
        VaeOutput { reconstruction: self.decode(z), mu, logvar }
    }

    /// Inference pass, `z = mu`: the reconstruction `[B, 1, D, H, W]`.
    pub fn forward_inference(&self, x: Tensor<5>) -> Tensor<5> {
        let (mu, _) = self.encode(x);
        self.decode(mu)
    }

    /// `|x - reconstruction|` with `z = mu`, `[B, 1, D, H, W]`.
    pub fn error(&self, x: Tensor<5>) -> Tensor<5> {
        (x.clone() - self.forward_inference(x)).abs()
    }
}

/// Kernel 4, stride 2, padding 1: halves every axis.
fn down_conv(c_in: usize, c_out: usize) -> Conv3dConfig {
    Conv3dConfig::new([c_in, c_out], [4; 3]).with_stride([2; 3]).with_padding(PaddingConfig3d::Explicit(1, 1, 1))
}

/// Kernel 4, stride 2, padding 1: doubles every axis.
fn up_conv(c_in: usize, c_out: usize) -> ConvTranspose3dConfig {
    ConvTranspose3dConfig::new([c_in, c_out], [4; 3]).with_stride([2; 3]).with_padding([1; 3])
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ModelConfig {
        ModelConfig { input_shape: [16; 3], base_channels: 2, levels: 2, latent_dim: 8, ..ModelConfig::default() }
    }

    fn crops(batch: usize, shape: [usize; 3], device: &Device) -> Tensor<5> {
        let [d, h, w] = shape;
        let n = batch * d * h * w;
        let values: Vec<f32> = (0..n).map(|i| ((i * 7919) % 101) as f32 / 100.0).collect();
        Tensor::<1>::from_floats(values.as_slice(), device).reshape([batch, 1, d, h, w])
    }

    #[test]
    fn shapes_of_mu_logvar_and_reconstruction() {
        let device = Device::flex();
        let vae = tiny().init(&device, 0);
        let out = vae.forward(crops(2, [16; 3], &device), Tensor::zeros([2, 8], &device));
        assert_eq!(out.mu.dims(), [2, 8]);
        assert_eq!(out.logvar.dims(), [2, 8]);
        assert_eq!(out.reconstruction.dims(), [2, 1, 16, 16, 16]);
    }

    #[test]
    fn non_cubic_crops_keep_their_shape() {
        let device = Device::flex();
        let vae = ModelConfig { input_shape: [16, 8, 12], ..tiny() }.init(&device, 0);
        assert_eq!(vae.bottleneck, [4, 4, 2, 3]);
        assert_eq!(vae.forward_inference(crops(1, [16, 8, 12], &device)).dims(), [1, 1, 16, 8, 12]);
    }

    #[test]
    fn every_norm_builds_and_runs() {
        let device = Device::flex();
        for norm in [NormKind::Group, NormKind::Instance, NormKind::Batch] {
            let vae = ModelConfig { norm, ..tiny() }.init(&device, 0);
            assert_eq!(vae.forward_inference(crops(2, [16; 3], &device)).dims(), [2, 1, 16, 16, 16], "{norm:?}");
        }
    }

    #[test]
    fn inference_uses_mu_so_it_equals_training_pass_with_zero_noise() {
        let device = Device::flex();
        let vae = tiny().init(&device, 0);
        let x = crops(2, [16; 3], &device);
        let with_zero_noise = vae.forward(x.clone(), Tensor::zeros([2, 8], &device)).reconstruction;
        let inference = vae.forward_inference(x);
        let diff: f32 = (with_zero_noise - inference).abs().max().into_scalar();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn the_same_seed_gives_the_same_weights_and_another_seed_does_not() {
        let device = Device::flex();
        let weights = |seed| tiny().init(&device, seed).encoder[0].conv.weight.val().into_data();
        assert_eq!(weights(3), weights(3));
        assert_ne!(weights(3), weights(4));
    }

    #[test]
    fn default_model_has_about_four_million_parameters() {
        let vae = ModelConfig::default().build(&Device::flex());
        let n = vae.num_params();
        assert!((4_000_000..5_000_000).contains(&n), "{n}");
    }
}
