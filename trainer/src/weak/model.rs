//! The 3D U-Net of Phase 2: two channels in (the CT crop windowed to `[0, 1]` and the VAE's
//! normalised error map), one channel of fracture logits out, at the input's resolution.
//!
//! Shapes for the default config (`B` patches of 32^3, base 16, 3 levels); every conv stage
//! is Conv3d + norm + LeakyReLU:
//! ```text
//! x                [B, 2, 32, 32, 32]
//! encoder 0        conv stage 3^3 p1 (2 -> 16), conv stage (16 -> 16)    [B, 16, 32, 32, 32]  = skip 0
//!   down           Conv3d(16 -> 32, k2 s2), linear                       [B, 32, 16, 16, 16]
//! encoder 1        conv stages (32 -> 32, 32 -> 32)                      [B, 32, 16, 16, 16]  = skip 1
//!   down           Conv3d(32 -> 64, k2 s2), linear                       [B, 64, 8, 8, 8]
//! bottleneck       conv stages (64 -> 64, 64 -> 64)                      [B, 64, 8, 8, 8]
//! decoder 0  up    ConvTranspose3d(64 -> 32, k2 s2), linear              [B, 32, 16, 16, 16]
//!            cat   [skip 1, up] on the channel axis                      [B, 64, 16, 16, 16]
//!                  conv stages (64 -> 32, 32 -> 32)                      [B, 32, 16, 16, 16]
//! decoder 1  up    ConvTranspose3d(32 -> 16, k2 s2), linear              [B, 16, 32, 32, 32]
//!            cat   [skip 0, up]                                          [B, 32, 32, 32, 32]
//!                  conv stages (32 -> 16, 16 -> 16)                      [B, 16, 32, 32, 32]
//! head             Conv3d(16 -> 1, k1), linear: logits                   [B, 1, 32, 32, 32]
//! ```
//! Level `i` has `base_channels * 2^i` channels at `1 / 2^i` of the input's resolution, so
//! every axis must be a multiple of `2^(levels - 1)`. The network is fully convolutional:
//! [`UNet::forward`] takes any such shape; `input_shape` is the training patch, which the
//! ONNX export fixes.
//!
//! Downsampling is a strided convolution rather than max pooling, and the skip is
//! concatenated before the upsampled features (Burn and ONNX alike): every layer is one that
//! `crate::onnx` already exports. The down and up convolutions are linear, as pooling and the
//! original U-Net's up-convolution are; the conv stages after them carry the norms and
//! activations. The head is linear: the losses take logits (BCE on logits is stable where a
//! sigmoid saturates), [`UNet::probability`] and the ONNX graph apply the sigmoid.

use burn::module::Param;
use burn::nn::conv::{Conv3d, Conv3dConfig, ConvTranspose3d, ConvTranspose3dConfig};
use burn::nn::{LeakyRelu, LeakyReluConfig, PaddingConfig3d};
use burn::prelude::*;
use burn::store::RecordError;
use burn::tensor::activation::sigmoid;
use serde::{Deserialize, Serialize};

use crate::vae::config::NormKind;
use crate::vae::model::{Norm, init_seeded};

/// The network, section `[model]` of a phase-2 configuration. Every field may be left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UNetConfig {
    /// Training patch in voxels, `[z, y, x]`; every axis a multiple of `2^(levels - 1)`.
    pub input_shape: [usize; 3],
    /// Input channels: 2, the CT crop windowed to `[0, 1]` and the normalised VAE error map.
    pub in_channels: usize,
    /// Channels of the full-resolution level; doubled at every further level.
    pub base_channels: usize,
    /// Resolutions, the bottleneck's included: 3 takes 32^3 down to 8^3.
    pub levels: usize,
    pub norm: NormKind,
    /// Upper bound on GroupNorm's groups: a layer of `c` channels uses `gcd(c, norm_groups)`.
    pub norm_groups: usize,
    /// nnU-Net's 0.01: the U-Net's activations feed further convolutions, not a latent code,
    /// so the VAE's steeper 0.2 buys nothing here.
    pub leaky_relu_slope: f64,
    /// What the untrained network outputs everywhere, in `(0, 1)`: the head's bias starts at
    /// its logit (the "prior probability" start of Lin et al.'s focal loss). Fractures are
    /// about 1% of a crop; starting at 0.5 would spend the first epochs unlearning 0.5 on
    /// every normal voxel (measured on the phantom: `L_out` still 0.3-0.5 after 15 epochs).
    pub output_prior: f64,
}

impl Default for UNetConfig {
    fn default() -> Self {
        UNetConfig {
            input_shape: [32; 3],
            in_channels: 2,
            base_channels: 16,
            levels: 3,
            norm: NormKind::Group,
            norm_groups: 8,
            leaky_relu_slope: 0.01,
            output_prior: 0.01,
        }
    }
}

/// A field of [`UNetConfig`] out of range, named by its path in the phase-2 configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} = {value}: {reason}")]
pub struct UNetConfigError {
    pub field: &'static str,
    pub value: String,
    pub reason: String,
}

/// A 3^3 convolution at stride 1 (padding 1 keeps the shape), its norm and its activation.
#[derive(Module, Debug)]
pub struct ConvStage {
    pub conv: Conv3d,
    pub norm: Norm,
    pub activation: LeakyRelu,
}

/// The two conv stages of a level.
#[derive(Module, Debug)]
pub struct DoubleConv {
    pub first: ConvStage,
    pub second: ConvStage,
}

/// An encoder level above the bottleneck: its features are the skip of the decoder level at
/// the same resolution; `down` halves every axis and doubles the channels.
#[derive(Module, Debug)]
pub struct EncoderLevel {
    pub convs: DoubleConv,
    pub down: Conv3d,
}

/// A decoder level: `up` doubles every axis and halves the channels, the skip goes first in
/// the concatenation, `convs` take the doubled channels back down.
#[derive(Module, Debug)]
pub struct DecoderLevel {
    pub up: ConvTranspose3d,
    pub convs: DoubleConv,
}

#[derive(Module, Debug)]
pub struct UNet {
    /// `levels - 1` levels, full resolution first.
    pub encoder: Vec<EncoderLevel>,
    /// At `1 / 2^(levels - 1)` of the resolution.
    pub bottleneck: DoubleConv,
    /// `levels - 1` levels, the coarsest first: `decoder[j]` mirrors `encoder[levels - 2 - j]`.
    pub decoder: Vec<DecoderLevel>,
    /// The last features to one channel of logits, kernel 1, linear.
    pub head: Conv3d,
    pub in_channels: usize,
    /// The training patch, `[z, y, x]`.
    pub input_shape: [usize; 3],
}

impl UNetConfig {
    /// A freshly initialised U-Net whose weights depend only on `seed`.
    pub fn init(&self, device: &Device, seed: u64) -> UNet {
        init_seeded(device, seed, || self.build(device))
    }

    /// The U-Net of a burnpack file written by `Module::save_file` for this configuration.
    pub fn load(&self, path: &std::path::Path, device: &Device) -> Result<UNet, RecordError> {
        // Lazy parameters are replaced by the file's values without ever being drawn.
        self.build(device).try_load_file(path)
    }

    /// Channels at level `i` (0-based, full resolution first).
    pub fn level_channels(&self, i: usize) -> usize {
        self.base_channels << i
    }

    pub fn validate(&self) -> Result<(), UNetConfigError> {
        check("model.levels", self.levels, (1..=6).contains(&self.levels), "must be 1 to 6")?;
        let unit = 1usize << (self.levels - 1);
        let shape = self.input_shape;
        let fits = shape.iter().all(|&n| n >= unit && n % unit == 0);
        let reason = format!("every axis must be a positive multiple of 2^(levels - 1) = {unit}");
        check("model.input_shape", format!("{shape:?}"), fits, &reason)?;
        check("model.in_channels", self.in_channels, self.in_channels > 0, "must be at least 1")?;
        check("model.base_channels", self.base_channels, self.base_channels > 0, "must be at least 1")?;
        check("model.norm_groups", self.norm_groups, self.norm_groups > 0, "must be at least 1")?;
        let slope = self.leaky_relu_slope;
        check("model.leaky_relu_slope", slope, slope.is_finite() && (0.0..1.0).contains(&slope), "must be in [0, 1)")?;
        let prior = self.output_prior;
        check("model.output_prior", prior, prior > 0.0 && prior < 1.0, "must be in (0, 1)")
    }

    /// The 1^3 head to one logit channel, its bias at the logit of `output_prior`.
    fn head(&self, device: &Device) -> Conv3d {
        let mut head = Conv3dConfig::new([self.base_channels, 1], [1; 3]).init(device);
        let logit = (self.output_prior / (1.0 - self.output_prior)).ln() as f32;
        head.bias = Some(Param::from_tensor(Tensor::from_data(TensorData::new(vec![logit], [1]), device)));
        head
    }

    fn build(&self, device: &Device) -> UNet {
        let stage = |c_in, c_out| ConvStage {
            conv: Conv3dConfig::new([c_in, c_out], [3; 3])
                .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
                .init(device),
            norm: Norm::new(self.norm, c_out, self.norm_groups, device),
            activation: LeakyReluConfig::new().with_negative_slope(self.leaky_relu_slope).init(),
        };
        let convs = |c_in, c_out| DoubleConv { first: stage(c_in, c_out), second: stage(c_out, c_out) };
        let deepest = self.levels - 1;
        let encoder = (0..deepest)
            .map(|i| {
                let c_in = if i == 0 { self.in_channels } else { self.level_channels(i) };
                let c = self.level_channels(i);
                EncoderLevel { convs: convs(c_in, c), down: down_conv(c, 2 * c).init(device) }
            })
            .collect();
        let bottleneck_in = if deepest == 0 { self.in_channels } else { self.level_channels(deepest) };
        let decoder = (0..deepest)
            .rev()
            .map(|i| {
                let c = self.level_channels(i);
                DecoderLevel { up: up_conv(2 * c, c).init(device), convs: convs(2 * c, c) }
            })
            .collect();
        UNet {
            encoder,
            bottleneck: convs(bottleneck_in, self.level_channels(deepest)),
            decoder,
            head: self.head(device),
            in_channels: self.in_channels,
            input_shape: self.input_shape,
        }
    }
}

impl ConvStage {
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        self.activation.forward(self.norm.forward(self.conv.forward(x)))
    }
}

impl DoubleConv {
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        self.second.forward(self.first.forward(x))
    }
}

impl UNet {
    /// Resolutions, the bottleneck's included.
    pub fn levels(&self) -> usize {
        self.encoder.len() + 1
    }

    /// `x [B, in_channels, D, H, W]` to fracture logits `[B, 1, D, H, W]`.
    ///
    /// # Panics
    /// When `x` has another channel count, or an axis that is not a positive multiple of
    /// `2^(levels - 1)` (the skips would not line up with the upsampled features).
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let [_, channels, d, h, w] = x.dims();
        let unit = 1 << (self.levels() - 1);
        assert!(
            channels == self.in_channels && [d, h, w].iter().all(|&n| n >= unit && n % unit == 0),
            "U-Net input {:?}: expected {} channels and every axis of [z, y, x] a positive multiple of 2^(levels - 1) \
             = {unit}",
            x.dims(),
            self.in_channels
        );
        let mut skips = Vec::with_capacity(self.encoder.len());
        let mut x = x;
        for level in &self.encoder {
            let features = level.convs.forward(x);
            x = level.down.forward(features.clone());
            skips.push(features);
        }
        x = self.bottleneck.forward(x);
        for (level, skip) in self.decoder.iter().zip(skips.into_iter().rev()) {
            x = level.convs.forward(Tensor::cat(vec![skip, level.up.forward(x)], 1));
        }
        self.head.forward(x)
    }

    /// The fracture probability `sigmoid(forward(x))`, `[B, 1, D, H, W]`: what the ONNX
    /// graph outputs.
    pub fn probability(&self, x: Tensor<5>) -> Tensor<5> {
        sigmoid(self.forward(x))
    }
}

/// Kernel 2, stride 2: halves every axis, each input voxel seen once.
fn down_conv(c_in: usize, c_out: usize) -> Conv3dConfig {
    Conv3dConfig::new([c_in, c_out], [2; 3]).with_stride([2; 3])
}

/// Kernel 2, stride 2: doubles every axis, each output voxel from one input voxel.
fn up_conv(c_in: usize, c_out: usize) -> ConvTranspose3dConfig {
    ConvTranspose3dConfig::new([c_in, c_out], [2; 3]).with_stride([2; 3])
}

fn check(field: &'static str, value: impl ToString, ok: bool, reason: &str) -> Result<(), UNetConfigError> {
    if ok { Ok(()) } else { Err(UNetConfigError { field, value: value.to_string(), reason: reason.to_string() }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> UNetConfig {
        UNetConfig { input_shape: [8; 3], base_channels: 4, norm_groups: 2, ..UNetConfig::default() }
    }

    /// `batch` deterministic inputs of `shape` `[z, y, x]`, values in `[0, 1]`.
    fn inputs(batch: usize, channels: usize, shape: [usize; 3], device: &Device) -> Tensor<5> {
        let [d, h, w] = shape;
        let n = batch * channels * d * h * w;
        let values: Vec<f32> = (0..n).map(|i| ((i * 7919) % 101) as f32 / 100.0).collect();
        Tensor::<1>::from_floats(values.as_slice(), device).reshape([batch, channels, d, h, w])
    }

    #[test]
    fn the_untrained_head_starts_at_the_prior() {
        let unet = UNetConfig { output_prior: 0.01, ..tiny() }.init(&Device::flex(), 0);
        let bias = unet.head.bias.as_ref().unwrap().val().into_scalar::<f32>();
        assert!((bias - (0.01f32 / 0.99).ln()).abs() < 1e-6, "{bias}");
        for prior in [0.0, 1.0, f64::NAN] {
            let err = UNetConfig { output_prior: prior, ..tiny() }.validate().unwrap_err();
            assert_eq!(err.field, "model.output_prior");
        }
    }

    #[test]
    fn non_cubic_input_gives_logits_of_its_shape() {
        let device = Device::flex();
        let unet = UNetConfig { input_shape: [16, 8, 12], ..tiny() }.init(&device, 0);
        assert_eq!(unet.levels(), 3);
        assert_eq!(unet.forward(inputs(2, 2, [16, 8, 12], &device)).dims(), [2, 1, 16, 8, 12]);
    }

    #[test]
    fn every_norm_and_a_single_level_build_and_run() {
        let device = Device::flex();
        let configs = [NormKind::Group, NormKind::Instance, NormKind::Batch]
            .map(|norm| UNetConfig { norm, ..tiny() })
            .into_iter()
            .chain([UNetConfig { levels: 1, ..tiny() }]);
        for config in configs {
            let probability = config.init(&device, 0).probability(inputs(1, 2, [8; 3], &device));
            assert_eq!(probability.dims(), [1, 1, 8, 8, 8], "{config:?}");
            let (low, high): (f32, f32) = (probability.clone().min().into_scalar(), probability.max().into_scalar());
            assert!(0.0 < low && high < 1.0, "{config:?}: {low}..{high}");
        }
    }

    #[test]
    #[should_panic(expected = "expected 2 channels")]
    fn a_one_channel_input_is_refused() {
        let device = Device::flex();
        tiny().init(&device, 0).forward(inputs(1, 1, [8; 3], &device));
    }

    #[test]
    #[should_panic(expected = "multiple of 2^(levels - 1) = 4")]
    fn an_axis_the_levels_do_not_divide_is_refused() {
        let device = Device::flex();
        tiny().init(&device, 0).forward(inputs(1, 2, [8, 8, 6], &device));
    }

    #[test]
    fn the_same_seed_gives_the_same_weights_and_another_seed_does_not() {
        let device = Device::flex();
        let weights = |seed| {
            let unet = tiny().init(&device, seed);
            [unet.encoder[0].convs.first.conv.weight.val(), unet.decoder[1].convs.second.conv.weight.val()]
                .map(|w| w.into_data())
        };
        assert_eq!(weights(3), weights(3));
        assert_ne!(weights(3)[0], weights(4)[0]);
        assert_ne!(weights(3)[1], weights(4)[1]);
    }

    #[test]
    fn the_gradient_reaches_the_first_layer() {
        let device = Device::flex().autodiff();
        let unet = tiny().init(&device, 0);
        let grads = unet.forward(inputs(1, 2, [8; 3], &device)).sum().backward();
        let weight = unet.encoder[0].convs.first.conv.weight.val();
        let grad = weight.grad(&grads).expect("a gradient for the first conv");
        let magnitude: f32 = grad.abs().sum().into_scalar();
        assert!(magnitude > 0.0, "{magnitude}");
    }

    #[test]
    fn the_default_has_about_430_thousand_parameters() {
        let n = UNetConfig::default().build(&Device::flex()).num_params();
        assert!((400_000..460_000).contains(&n), "{n}");
    }

    #[test]
    fn round_trips_through_toml() {
        let config = UNetConfig { norm: NormKind::Instance, input_shape: [16, 8, 12], ..UNetConfig::default() };
        let text = toml::to_string(&config).unwrap();
        assert_eq!(toml::from_str::<UNetConfig>(&text).unwrap(), config);
        assert_eq!(toml::from_str::<UNetConfig>("").unwrap(), UNetConfig::default());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = toml::from_str::<UNetConfig>("base_chanels = 8\n").unwrap_err();
        assert!(err.to_string().contains("base_chanels"), "{err}");
    }

    #[test]
    fn the_default_is_valid() {
        assert_eq!(UNetConfig::default().validate(), Ok(()));
    }

    #[test]
    fn input_shape_must_divide_by_two_to_the_levels_minus_one() {
        let err = UNetConfig { input_shape: [32, 32, 20], levels: 4, ..UNetConfig::default() }.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "model.input_shape = [32, 32, 20]: every axis must be a positive multiple of 2^(levels - 1) = 8"
        );
    }

    #[test]
    fn out_of_range_fields_are_named() {
        let cases = [
            (UNetConfig { levels: 0, ..UNetConfig::default() }, "model.levels"),
            (UNetConfig { in_channels: 0, ..UNetConfig::default() }, "model.in_channels"),
            (UNetConfig { base_channels: 0, ..UNetConfig::default() }, "model.base_channels"),
            (UNetConfig { norm_groups: 0, ..UNetConfig::default() }, "model.norm_groups"),
            (UNetConfig { leaky_relu_slope: f64::NAN, ..UNetConfig::default() }, "model.leaky_relu_slope"),
        ];
        for (config, field) in cases {
            assert_eq!(config.validate().unwrap_err().field, field);
        }
    }
}
