//! The networks of the 2.5D model (issue 8): a generator that draws the fracture mask of an
//! axial slice from the slices around it, and pix2pix's PatchGAN discriminator.
//!
//! The generator is a 2D Attention U-Net (Oktay et al. 2018) whose encoder runs on every slice
//! of the sequence with shared weights, a convolutional LSTM (Shi et al. 2015) over the
//! sequence of bottleneck maps, and a decoder that draws the centre slice `t = context / 2`
//! from the LSTM's output and the centre slice's attention-gated skips. Shapes for the default
//! config (`B` sequences of 5 slices of 32^2, base 16, 3 levels, bidirectional); every conv
//! stage is Conv2d 3x3 p1 + norm + LeakyReLU:
//! ```text
//! slices           [B, 5, 32, 32]       CT windowed to [0, 1], slices t-2 .. t+2
//! fold             reshape              [5B, 1, 32, 32]      each slice a batch item
//! encoder 0        conv stages (1 -> 16, 16 -> 16)           [5B, 16, 32, 32]  skip 0 = slice t's
//!   down           Conv2d(16 -> 32, k2 s2), linear           [5B, 32, 16, 16]
//! encoder 1        conv stages (32 -> 32, 32 -> 32)          [5B, 32, 16, 16]  skip 1 = slice t's
//!   down           Conv2d(32 -> 64, k2 s2), linear           [5B, 64, 8, 8]
//! bottleneck       conv stages (64 -> 64, 64 -> 64)          [5B, 64, 8, 8]
//! unfold           5 steps of                                [B, 64, 8, 8]
//! forward LSTM     ConvLSTM(64 -> 64) over steps 0 .. t      h_fwd [B, 64, 8, 8]
//! backward LSTM    ConvLSTM(64 -> 64) over steps 4 .. t      h_bwd [B, 64, 8, 8]
//! merge            Conv2d 1x1 (concat [h_fwd, h_bwd], 128 -> 64), linear   [B, 64, 8, 8]
//! decoder 0  gate  attention gate (x = skip 1, g = merged)   [B, 32, 16, 16]
//!            up    ConvTranspose2d(64 -> 32, k2 s2), linear  [B, 32, 16, 16]
//!            cat   [gated skip 1, up]                        [B, 64, 16, 16]
//!                  conv stages (64 -> 32, 32 -> 32)          [B, 32, 16, 16]
//! decoder 1  gate  attention gate (x = skip 0, g = decoder 0)  [B, 16, 32, 32]
//!            up, cat, conv stages (32 -> 16, 16 -> 16)       [B, 16, 32, 32]
//! head             Conv2d 1x1 (16 -> 1), linear: logits      [B, 1, 32, 32]
//! ```
//! A unidirectional LSTM's state at step `t` has never seen slices `t+1 ..`; with
//! `bidirectional = true` a second LSTM runs from the last slice back to `t`. With `false`
//! only the forward one runs, there is no merge, and the slices after `t` are not even
//! encoded (they could not change the output).
//!
//! Attention gate on a skip `x [B, c, H, W]` with the coarser decoder features
//! `g [B, 2c, H/2, W/2]` as gating signal: `theta = Conv2d(x; c -> c, k2 s2, no bias)`,
//! `phi = Conv2d(g; 2c -> c, 1x1)`, `alpha = sigmoid(Conv2d(relu(theta + phi); c -> 1, 1x1))`,
//! upsampled x2 (nearest), and `x * alpha` goes into the concatenation. The intermediate
//! width is `c` rather than Oktay's `c / 2` so that a one-channel test model still works.
//!
//! ConvLSTM cell with input and hidden state of `C` channels:
//! `[i, f, g, o] = Conv2d(concat [x_t, h_{t-1}]; 2C -> 4C, 3x3 p1)` split on the channel axis
//! in that order; `c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)`,
//! `h_t = sigmoid(o) * tanh(c_t)`, zero initial state. The forget gate's bias starts at 1 (the
//! other gates' at 0) so that early in training the cell keeps its memory rather than
//! forgetting it by default (Jozefowicz et al. 2015).
//!
//! The discriminator is pix2pix's PatchGAN (Isola et al. 2017) on `concat [centre, mask]`:
//! ```text
//! first            Conv2d(2 -> b, k4 s2 p1) + LeakyReLU(0.2), no norm
//! strided          layers - 1 times Conv2d(k4 s2 p1) + norm + LeakyReLU, channels doubling (cap 8b)
//! last stage       Conv2d(k4 s1 p1) + norm + LeakyReLU, channels doubling (cap 8b)
//! head             Conv2d(k4 s1 p1) to 1 channel: a real-vs-fake logit per patch
//! ```
//! pix2pix's 3 strided layers see 70x70 patches of 256 px images; our slices are 32 px, so the
//! default 1 layer sees 16 px, half a slice ([`DiscriminatorConfig::receptive_field`]). A
//! 32^2 pair gives `[B, 1, 14, 14]` logits.
//!
//! Layers are plain Burn layers (Conv2d, ConvTranspose2d, the norms, LeakyRelu) and the
//! recurrences elementwise tensor operations, so that `crate::onnx::p2p` can walk the structs.

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{LeakyRelu, LeakyReluConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::store::RecordError;
use burn::tensor::activation::{relu, sigmoid};
use serde::{Deserialize, Serialize};

use crate::vae::config::NormKind;
use crate::vae::model::{Norm, init_seeded};

/// The generator, section `[generator]` of `configs/p2p_lstm.toml`. Every field may be left
/// out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeneratorConfig {
    /// An axial slice `[y, x]` in voxels; both multiples of `2^(levels - 1)`.
    pub slice_shape: [usize; 2],
    /// Slices in a sequence, odd: the target is the centre one, `context / 2`.
    pub context: usize,
    /// Channels of the full-resolution level; doubled at every further level.
    pub base_channels: usize,
    /// Resolutions, the bottleneck's included: 3 takes 32^2 down to 8^2.
    pub levels: usize,
    pub norm: NormKind,
    /// Upper bound on GroupNorm's groups: a layer of `c` channels uses `gcd(c, norm_groups)`.
    pub norm_groups: usize,
    /// nnU-Net's 0.01, as the 3D U-Net of `weak::model`: a small slope keeps narrow layers
    /// from losing units to a dead ReLU, and the features feed further convolutions, not a
    /// latent code.
    pub leaky_relu_slope: f64,
    /// What the untrained generator outputs everywhere, in `(0, 1)`: the head's bias starts at
    /// its logit, as `weak::model`'s U-Net does (fractures are about 1% of a slice).
    pub output_prior: f64,
    /// A second ConvLSTM from the last slice back to the centre, so that the output sees the
    /// slices after the centre too.
    pub bidirectional: bool,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            slice_shape: [32, 32],
            context: 5,
            base_channels: 16,
            levels: 3,
            norm: NormKind::Group,
            norm_groups: 8,
            leaky_relu_slope: 0.01,
            output_prior: 0.01,
            bidirectional: true,
        }
    }
}

/// The discriminator, section `[discriminator]`. Every field may be left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscriminatorConfig {
    /// Channels of the first convolution; doubled by every further one up to 8 times this.
    pub base_channels: usize,
    /// Strided (k4 s2) convolutions: 3 in pix2pix (70 px patches), 1 here (16 px patches of
    /// 32 px slices).
    pub layers: usize,
    /// pix2pix's instance norm: batches are small, and a GAN's batch statistics would mix
    /// real and fake pairs.
    pub norm: NormKind,
    /// Upper bound on GroupNorm's groups, as in [`GeneratorConfig`].
    pub norm_groups: usize,
    /// pix2pix's 0.2.
    pub leaky_relu_slope: f64,
}

impl Default for DiscriminatorConfig {
    fn default() -> Self {
        DiscriminatorConfig {
            base_channels: 32,
            layers: 1,
            norm: NormKind::Instance,
            norm_groups: 8,
            leaky_relu_slope: 0.2,
        }
    }
}

/// A field of [`GeneratorConfig`] or [`DiscriminatorConfig`] out of range, named by its path in
/// the configuration file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} = {value}: {reason}")]
pub struct P2pModelConfigError {
    pub field: &'static str,
    pub value: String,
    pub reason: String,
}

/// A convolution, its norm and its activation.
#[derive(Module, Debug)]
pub struct ConvStage {
    pub conv: Conv2d,
    pub norm: Norm,
    pub activation: LeakyRelu,
}

/// The two 3x3 conv stages of a U-Net level.
#[derive(Module, Debug)]
pub struct DoubleConv {
    pub first: ConvStage,
    pub second: ConvStage,
}

/// An encoder level above the bottleneck: its features (of the centre slice) are the skip of
/// the decoder level at the same resolution; `down` halves both axes and doubles the channels.
#[derive(Module, Debug)]
pub struct EncoderLevel {
    pub convs: DoubleConv,
    pub down: Conv2d,
}

/// Oktay et al.'s additive attention gate: weights every pixel of a skip by how relevant the
/// coarser decoder features find it (see the module doc).
#[derive(Module, Debug)]
pub struct AttentionGate {
    /// The skip to the gating signal's resolution: `c -> inter`, k2 s2, no bias (`phi` has one).
    pub theta: Conv2d,
    /// The gating signal, `2c -> inter`, 1x1.
    pub phi: Conv2d,
    /// To one attention logit per pixel, `inter -> 1`, 1x1.
    pub psi: Conv2d,
}

/// One ConvLSTM cell (see the module doc); input and hidden state have the same channels.
#[derive(Module, Debug)]
pub struct ConvLstmCell {
    /// `concat [x_t, h_{t-1}]` (`2C`) to the gates `[i, f, g, o]` (`4C`), 3x3 p1.
    pub gates: Conv2d,
    pub hidden_channels: usize,
}

/// The backward half of a bidirectional LSTM and the 1x1 merge of both halves' outputs.
#[derive(Module, Debug)]
pub struct BackwardLstm {
    pub cell: ConvLstmCell,
    /// `concat [h_fwd, h_bwd]` (`2C`) to `C`, 1x1, linear.
    pub merge: Conv2d,
}

/// A decoder level: the gate weighs the skip by the coarser features, `up` doubles both axes
/// and halves the channels, the gated skip goes first in the concatenation.
#[derive(Module, Debug)]
pub struct DecoderLevel {
    pub gate: AttentionGate,
    pub up: ConvTranspose2d,
    pub convs: DoubleConv,
}

#[derive(Module, Debug)]
pub struct Generator {
    /// `levels - 1` levels, full resolution first; run on every slice.
    pub encoder: Vec<EncoderLevel>,
    /// At `1 / 2^(levels - 1)` of the resolution; run on every slice.
    pub bottleneck: DoubleConv,
    /// Over the bottleneck maps of slices `0 ..= context / 2`.
    pub forward_lstm: ConvLstmCell,
    /// Over the slices `context - 1 ..= context / 2`, when bidirectional.
    pub backward_lstm: Option<BackwardLstm>,
    /// `levels - 1` levels, the coarsest first: `decoder[j]` mirrors `encoder[levels - 2 - j]`.
    pub decoder: Vec<DecoderLevel>,
    /// The last features to one channel of logits, 1x1, linear.
    pub head: Conv2d,
    /// Slices in a sequence (odd).
    pub context: usize,
    /// `[y, x]` of a slice.
    pub slice_shape: [usize; 2],
}

/// pix2pix's PatchGAN (see the module doc).
#[derive(Module, Debug)]
pub struct Discriminator {
    /// k4 s2 p1, `2 -> base`, no norm.
    pub first: Conv2d,
    pub first_activation: LeakyRelu,
    /// `layers - 1` strided stages, then the stride-1 one.
    pub stages: Vec<ConvStage>,
    /// k4 s1 p1 to one channel, linear.
    pub head: Conv2d,
}

impl GeneratorConfig {
    /// A freshly initialised generator whose weights depend only on `seed`.
    pub fn init(&self, device: &Device, seed: u64) -> Generator {
        init_seeded(device, seed, || self.build(device))
    }

    /// The generator of a burnpack file written by `Module::save_file` for this configuration.
    pub fn load(&self, path: &std::path::Path, device: &Device) -> Result<Generator, RecordError> {
        // Lazy parameters are replaced by the file's values without ever being drawn.
        self.build(device).try_load_file(path)
    }

    /// Channels at level `i` (0-based, full resolution first).
    pub fn level_channels(&self, i: usize) -> usize {
        self.base_channels << i
    }

    pub fn validate(&self) -> Result<(), P2pModelConfigError> {
        check("generator.levels", self.levels, (1..=6).contains(&self.levels), "must be 1 to 6")?;
        let unit = 1usize << (self.levels - 1);
        let shape = self.slice_shape;
        let fits = shape.iter().all(|&n| n >= unit && n % unit == 0);
        let reason = format!("both axes must be positive multiples of 2^(levels - 1) = {unit}");
        check("generator.slice_shape", format!("{shape:?}"), fits, &reason)?;
        check("generator.context", self.context, self.context % 2 == 1, "must be odd (the target is the centre)")?;
        check("generator.base_channels", self.base_channels, self.base_channels > 0, "must be at least 1")?;
        check("generator.norm_groups", self.norm_groups, self.norm_groups > 0, "must be at least 1")?;
        check_slope("generator.leaky_relu_slope", self.leaky_relu_slope)?;
        let prior = self.output_prior;
        check("generator.output_prior", prior, prior > 0.0 && prior < 1.0, "must be in (0, 1)")
    }

    fn build(&self, device: &Device) -> Generator {
        let stage = |c_in, c_out| ConvStage {
            conv: conv3x3(c_in, c_out).init(device),
            norm: Norm::new(self.norm, c_out, self.norm_groups, device),
            activation: LeakyReluConfig::new().with_negative_slope(self.leaky_relu_slope).init(),
        };
        let convs = |c_in, c_out| DoubleConv { first: stage(c_in, c_out), second: stage(c_out, c_out) };
        let deepest = self.levels - 1;
        let encoder = (0..deepest)
            .map(|i| {
                let c_in = if i == 0 { 1 } else { self.level_channels(i) };
                let c = self.level_channels(i);
                EncoderLevel { convs: convs(c_in, c), down: down_conv(c, 2 * c).init(device) }
            })
            .collect();
        let bottleneck_in = if deepest == 0 { 1 } else { self.level_channels(deepest) };
        let hidden = self.level_channels(deepest);
        let backward_lstm = self.bidirectional.then(|| BackwardLstm {
            cell: ConvLstmCell::new(hidden, device),
            merge: Conv2dConfig::new([2 * hidden, hidden], [1, 1]).init(device),
        });
        let decoder = (0..deepest)
            .rev()
            .map(|i| {
                let c = self.level_channels(i);
                DecoderLevel {
                    gate: AttentionGate::new(c, 2 * c, c, device),
                    up: ConvTranspose2dConfig::new([2 * c, c], [2, 2]).with_stride([2, 2]).init(device),
                    convs: convs(2 * c, c),
                }
            })
            .collect();
        Generator {
            encoder,
            bottleneck: convs(bottleneck_in, hidden),
            forward_lstm: ConvLstmCell::new(hidden, device),
            backward_lstm,
            decoder,
            head: self.head(device),
            context: self.context,
            slice_shape: self.slice_shape,
        }
    }

    /// The 1x1 head to one logit channel, its bias at the logit of `output_prior`.
    fn head(&self, device: &Device) -> Conv2d {
        let mut head = Conv2dConfig::new([self.base_channels, 1], [1, 1]).init(device);
        let logit = (self.output_prior / (1.0 - self.output_prior)).ln() as f32;
        head.bias = Some(Param::from_tensor(Tensor::from_data(TensorData::new(vec![logit], [1]), device)));
        head
    }
}

impl DiscriminatorConfig {
    /// A freshly initialised discriminator whose weights depend only on `seed`.
    pub fn init(&self, device: &Device, seed: u64) -> Discriminator {
        init_seeded(device, seed, || self.build(device))
    }

    /// The discriminator of a burnpack file written by `Module::save_file` for this
    /// configuration.
    pub fn load(&self, path: &std::path::Path, device: &Device) -> Result<Discriminator, RecordError> {
        self.build(device).try_load_file(path)
    }

    pub fn validate(&self) -> Result<(), P2pModelConfigError> {
        check("discriminator.base_channels", self.base_channels, self.base_channels > 0, "must be at least 1")?;
        check("discriminator.layers", self.layers, (1..=5).contains(&self.layers), "must be 1 to 5")?;
        check("discriminator.norm_groups", self.norm_groups, self.norm_groups > 0, "must be at least 1")?;
        check_slope("discriminator.leaky_relu_slope", self.leaky_relu_slope)
    }

    /// The side in pixels of the input patch that one output logit sees: 16 for 1 layer, 34
    /// for 2, pix2pix's 70 for 3.
    pub fn receptive_field(&self) -> usize {
        // Back from one output pixel: the head and the stride-1 stage (k4 s1), then the
        // strided layers (k4 s2); each layer widens the field to (field - 1) * stride + k.
        let strides = std::iter::repeat_n(1, 2).chain(std::iter::repeat_n(2, self.layers));
        strides.fold(1, |field, stride| (field - 1) * stride + 4)
    }

    /// Channels of the `i`-th convolution (0 = the first), pix2pix's doubling capped at 8x.
    fn channels(&self, i: usize) -> usize {
        self.base_channels << i.min(3)
    }

    fn build(&self, device: &Device) -> Discriminator {
        let stage = |i: usize, stride| ConvStage {
            conv: patch_conv(self.channels(i - 1), self.channels(i), stride).init(device),
            norm: Norm::new(self.norm, self.channels(i), self.norm_groups, device),
            activation: self.activation(),
        };
        let stages = (1..self.layers).map(|i| stage(i, 2)).chain([stage(self.layers, 1)]).collect();
        Discriminator {
            first: patch_conv(2, self.base_channels, 2).init(device),
            first_activation: self.activation(),
            stages,
            head: patch_conv(self.channels(self.layers), 1, 1).init(device),
        }
    }

    fn activation(&self) -> LeakyRelu {
        LeakyReluConfig::new().with_negative_slope(self.leaky_relu_slope).init()
    }
}

impl ConvStage {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.activation.forward(normalize(&self.norm, self.conv.forward(x)))
    }
}

impl DoubleConv {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.second.forward(self.first.forward(x))
    }
}

impl AttentionGate {
    /// A gate for a skip of `skip_channels` under a gating signal of `gating_channels`, with
    /// `inter_channels` between them.
    pub fn new(skip_channels: usize, gating_channels: usize, inter_channels: usize, device: &Device) -> Self {
        AttentionGate {
            theta: down_conv(skip_channels, inter_channels).with_bias(false).init(device),
            phi: Conv2dConfig::new([gating_channels, inter_channels], [1, 1]).init(device),
            psi: Conv2dConfig::new([inter_channels, 1], [1, 1]).init(device),
        }
    }

    /// The skip `x [B, c, H, W]` weighed by the gating signal `g [B, 2c, H/2, W/2]`:
    /// `(x * alpha, alpha)` with the attention `alpha [B, 1, H, W]` in `(0, 1)`.
    pub fn forward(&self, x: Tensor<4>, g: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let joint = relu(self.theta.forward(x.clone()) + self.phi.forward(g));
        let alpha = upsample_nearest_x2(sigmoid(self.psi.forward(joint)));
        (x * alpha.clone(), alpha)
    }
}

impl ConvLstmCell {
    /// A cell of `channels` input and hidden channels, the forget gate's bias at 1.
    pub fn new(channels: usize, device: &Device) -> Self {
        let mut gates = conv3x3(2 * channels, 4 * channels).init(device);
        let bias: Vec<f32> = (0..4 * channels).map(|k| if k / channels == 1 { 1.0 } else { 0.0 }).collect();
        gates.bias = Some(Param::from_tensor(Tensor::from_data(TensorData::new(bias, [4 * channels]), device)));
        ConvLstmCell { gates, hidden_channels: channels }
    }

    /// One step on `x [B, C, H, W]` from `state = (h, c)` (zeros when `None`): the new
    /// `(h, c)`, each `[B, C, H, W]`.
    pub fn step(&self, x: Tensor<4>, state: Option<(Tensor<4>, Tensor<4>)>) -> (Tensor<4>, Tensor<4>) {
        let (h, c) = match state {
            Some((h, c)) => (h, Some(c)),
            None => {
                let [b, _, h, w] = x.dims();
                (Tensor::zeros([b, self.hidden_channels, h, w], &x.device()), None)
            }
        };
        let gates = self.gates.forward(Tensor::cat(vec![x, h], 1));
        let [i, f, g, o] = <[Tensor<4>; 4]>::try_from(gates.chunk(4, 1)).expect("four gates");
        let fresh = sigmoid(i) * g.tanh();
        // With no history `c_{t-1} = 0`: the forget term is skipped rather than multiplied out.
        let c = match c {
            Some(c) => sigmoid(f) * c + fresh,
            None => fresh,
        };
        (sigmoid(o) * c.clone().tanh(), c)
    }

    /// The hidden state after running over `sequence` in order from a zero state.
    pub fn run<'a>(&self, sequence: impl IntoIterator<Item = &'a Tensor<4>>) -> Tensor<4> {
        let state = sequence.into_iter().fold(None, |state, x| Some(self.step(x.clone(), state)));
        state.expect("a sequence of at least one step").0
    }
}

impl Generator {
    /// Resolutions, the bottleneck's included.
    pub fn levels(&self) -> usize {
        self.encoder.len() + 1
    }

    /// The index of the target slice in a sequence.
    pub fn centre(&self) -> usize {
        self.context / 2
    }

    /// The slices the output depends on, `0 .. encoded_slices()`: all of them when
    /// bidirectional, up to the centre otherwise.
    pub fn encoded_slices(&self) -> usize {
        if self.backward_lstm.is_some() { self.context } else { self.centre() + 1 }
    }

    /// `slices [B, context, H, W]` (CT windowed to `[0, 1]`) to the logits `[B, 1, H, W]` of
    /// the centre slice's mask.
    ///
    /// # Panics
    /// When `slices` has another number of slices than `context`, or an axis that is not a
    /// positive multiple of `2^(levels - 1)`.
    pub fn forward(&self, slices: Tensor<4>) -> Tensor<4> {
        let [batch, context, h, w] = slices.dims();
        let unit = 1 << (self.levels() - 1);
        assert!(
            context == self.context && [h, w].iter().all(|&n| n >= unit && n % unit == 0),
            "generator input {:?}: expected {} slices and both axes of [y, x] positive multiples of 2^(levels - 1) \
             = {unit}",
            slices.dims(),
            self.context
        );
        let (steps, centre) = (self.encoded_slices(), self.centre());
        let mut x = slices.narrow(1, 0, steps).reshape([batch * steps, 1, h, w]);
        let mut skips = Vec::with_capacity(self.encoder.len());
        for level in &self.encoder {
            let features = level.convs.forward(x);
            x = level.down.forward(features.clone());
            skips.push(step_of(features, batch, steps, centre));
        }
        let bottleneck = self.bottleneck.forward(x);
        let sequence: Vec<Tensor<4>> = (0..steps).map(|t| step_of(bottleneck.clone(), batch, steps, t)).collect();
        let h_fwd = self.forward_lstm.run(&sequence[..=centre]);
        x = match &self.backward_lstm {
            Some(backward) => {
                let h_bwd = backward.cell.run(sequence[centre..].iter().rev());
                backward.merge.forward(Tensor::cat(vec![h_fwd, h_bwd], 1))
            }
            None => h_fwd,
        };
        for (level, skip) in self.decoder.iter().zip(skips.into_iter().rev()) {
            let (gated, _) = level.gate.forward(skip, x.clone());
            x = level.convs.forward(Tensor::cat(vec![gated, level.up.forward(x)], 1));
        }
        self.head.forward(x)
    }

    /// The mask probability `sigmoid(forward(slices))`, `[B, 1, H, W]`: what the ONNX graph
    /// outputs.
    pub fn probability(&self, slices: Tensor<4>) -> Tensor<4> {
        sigmoid(self.forward(slices))
    }
}

impl Discriminator {
    /// The centre slice `[B, 1, H, W]` and a mask or probability `[B, 1, H, W]` to patch logits
    /// `[B, 1, h, w]` (real vs fake per patch).
    pub fn forward(&self, centre: Tensor<4>, mask: Tensor<4>) -> Tensor<4> {
        let x = self.first_activation.forward(self.first.forward(Tensor::cat(vec![centre, mask], 1)));
        let x = self.stages.iter().fold(x, |x, stage| stage.forward(x));
        self.head.forward(x)
    }
}

/// Burn's norms on a 2D feature map (`Norm::forward` is written for the 3D models).
fn normalize(norm: &Norm, x: Tensor<4>) -> Tensor<4> {
    match norm {
        Norm::Group(norm) => norm.forward(x),
        Norm::Instance(norm) => norm.forward(x),
        Norm::Batch(norm) => norm.forward(x),
    }
}

/// Step `t` of a sequence folded into the batch: `[B * steps, C, H, W]` (item `b * steps + t`)
/// to `[B, C, H, W]`.
fn step_of(folded: Tensor<4>, batch: usize, steps: usize, t: usize) -> Tensor<4> {
    let [_, c, h, w] = folded.dims();
    folded.reshape([batch, steps * c, h, w]).narrow(1, t * c, c)
}

/// Nearest-neighbour x2 on both axes, `[B, C, h, w]` to `[B, C, 2h, 2w]`, by reshape and
/// broadcast: exact, and the same three operators in ONNX.
fn upsample_nearest_x2(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1]).expand([b, c, h, 2, w, 2]).reshape([b, c, 2 * h, 2 * w])
}

/// 3x3, padding 1: keeps the shape.
fn conv3x3(c_in: usize, c_out: usize) -> Conv2dConfig {
    Conv2dConfig::new([c_in, c_out], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
}

/// Kernel 2, stride 2: halves both axes, each input pixel seen once.
fn down_conv(c_in: usize, c_out: usize) -> Conv2dConfig {
    Conv2dConfig::new([c_in, c_out], [2, 2]).with_stride([2, 2])
}

/// pix2pix's kernel 4, padding 1, at `stride`.
fn patch_conv(c_in: usize, c_out: usize, stride: usize) -> Conv2dConfig {
    Conv2dConfig::new([c_in, c_out], [4, 4])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
}

fn check_slope(field: &'static str, slope: f64) -> Result<(), P2pModelConfigError> {
    check(field, slope, slope.is_finite() && (0.0..1.0).contains(&slope), "must be in [0, 1)")
}

fn check(field: &'static str, value: impl ToString, ok: bool, reason: &str) -> Result<(), P2pModelConfigError> {
    if ok { Ok(()) } else { Err(P2pModelConfigError { field, value: value.to_string(), reason: reason.to_string() }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> GeneratorConfig {
        GeneratorConfig { slice_shape: [8, 12], context: 5, base_channels: 2, norm_groups: 2, ..Default::default() }
    }

    /// `batch` deterministic sequences of `context` slices of `shape` `[y, x]`, values in `[0, 1]`.
    fn slices(batch: usize, context: usize, shape: [usize; 2], device: &Device) -> Tensor<4> {
        let [h, w] = shape;
        let values: Vec<f32> = (0..batch * context * h * w).map(|i| ((i * 7919) % 101) as f32 / 100.0).collect();
        Tensor::<1>::from_floats(values.as_slice(), device).reshape([batch, context, h, w])
    }

    fn values<const D: usize>(x: Tensor<D>) -> Vec<f32> {
        x.into_data().try_to_vec::<f32>().unwrap()
    }

    fn max_difference(a: Tensor<4>, b: Tensor<4>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    /// Replaces a convolution's weight (its own shape) and bias by hand-set values.
    fn set_conv(conv: &mut Conv2d, weight: &[f32], bias: Option<&[f32]>) {
        let device = conv.weight.val().device();
        let shape = conv.weight.val().shape();
        conv.weight = Param::from_tensor(Tensor::from_data(TensorData::new(weight.to_vec(), shape), &device));
        conv.bias =
            bias.map(|b| Param::from_tensor(Tensor::from_data(TensorData::new(b.to_vec(), [b.len()]), &device)));
    }

    fn sigmoid_f64(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    #[test]
    fn the_generator_outputs_one_logit_map_for_every_context_depth_and_direction() {
        let device = Device::flex();
        for context in [3, 5] {
            for levels in [2, 3] {
                for bidirectional in [true, false] {
                    let config = GeneratorConfig { context, levels, bidirectional, ..tiny() };
                    let generator = config.init(&device, 0);
                    let logits = generator.forward(slices(2, context, [8, 12], &device));
                    assert_eq!(logits.dims(), [2, 1, 8, 12], "{config:?}");
                }
            }
        }
    }

    #[test]
    fn every_norm_and_a_single_level_build_and_give_probabilities() {
        let device = Device::flex();
        let configs = [NormKind::Group, NormKind::Instance, NormKind::Batch]
            .map(|norm| GeneratorConfig { norm, ..tiny() })
            .into_iter()
            .chain([GeneratorConfig { levels: 1, ..tiny() }]);
        for config in configs {
            let probability = config.init(&device, 0).probability(slices(1, 5, [8, 12], &device));
            assert_eq!(probability.dims(), [1, 1, 8, 12], "{config:?}");
            let (low, high): (f32, f32) = (probability.clone().min().into_scalar(), probability.max().into_scalar());
            assert!(0.0 < low && high < 1.0, "{config:?}: {low}..{high}");
        }
    }

    #[test]
    fn the_untrained_head_starts_at_the_prior() {
        let generator = GeneratorConfig { output_prior: 0.01, ..tiny() }.init(&Device::flex(), 0);
        let bias = generator.head.bias.as_ref().unwrap().val().into_scalar::<f32>();
        assert!((bias - (0.01f32 / 0.99).ln()).abs() < 1e-6, "{bias}");
    }

    #[test]
    #[should_panic(expected = "expected 5 slices")]
    fn a_sequence_of_another_length_is_refused() {
        let device = Device::flex();
        tiny().init(&device, 0).forward(slices(1, 3, [8, 12], &device));
    }

    #[test]
    fn the_attention_gate_matches_a_hand_computation() {
        // x [1, 1, 4, 4], g [1, 2, 2, 2]: theta sums each 2x2 block of x, phi picks g's first
        // channel and adds 0.5, psi doubles and subtracts 1; so per block
        // alpha = sigmoid(2 * relu(block_sum(x) + g0 + 0.5) - 1).
        let device = Device::flex();
        let mut gate = AttentionGate::new(1, 2, 1, &device);
        set_conv(&mut gate.theta, &[1.0; 4], None);
        set_conv(&mut gate.phi, &[1.0, 0.0], Some(&[0.5]));
        set_conv(&mut gate.psi, &[2.0], Some(&[-1.0]));
        let x_values: Vec<f32> = (0..16).map(|i| (i as f32 - 8.0) / 4.0).collect();
        let g_values = [-1.0f32, 0.0, 1.0, -3.0, 9.0, 9.0, 9.0, 9.0];
        let x = Tensor::<1>::from_floats(x_values.as_slice(), &device).reshape([1, 1, 4, 4]);
        let g = Tensor::<1>::from_floats(g_values, &device).reshape([1, 2, 2, 2]);
        let (gated, alpha) = gate.forward(x, g);
        assert_eq!((gated.dims(), alpha.dims()), ([1, 1, 4, 4], [1, 1, 4, 4]));
        let (gated, alpha) = (values(gated), values(alpha));
        for y in 0..4 {
            for x in 0..4 {
                let (by, bx) = (y / 2, x / 2);
                let block_sum: f64 = (0..4).map(|k| x_values[(2 * by + k / 2) * 4 + 2 * bx + k % 2] as f64).sum();
                let joint = (block_sum + g_values[by * 2 + bx] as f64 + 0.5).max(0.0);
                let expected_alpha = sigmoid_f64(2.0 * joint - 1.0);
                let pixel = y * 4 + x;
                assert!((alpha[pixel] as f64 - expected_alpha).abs() < 1e-6, "alpha at ({y}, {x})");
                let expected = x_values[pixel] as f64 * expected_alpha;
                assert!((gated[pixel] as f64 - expected).abs() < 1e-6, "gated x at ({y}, {x})");
            }
        }
        // Blocks 0 and 3 fall below zero before the ReLU: alpha = sigmoid(-1) there.
        assert!((alpha[0] as f64 - sigmoid_f64(-1.0)).abs() < 1e-6);
    }

    /// A one-channel cell whose 3x3 gate convolution on 1x1 maps reduces to its centre taps:
    /// `gate_k = wx[k] * x + wh[k] * h + b[k]` for `[i, f, g, o]`.
    fn hand_set_cell(wx: [f32; 4], wh: [f32; 4], b: [f32; 4]) -> ConvLstmCell {
        let mut cell = ConvLstmCell::new(1, &Device::flex());
        let mut weight = vec![0.0; 4 * 2 * 9];
        for k in 0..4 {
            weight[(k * 2) * 9 + 4] = wx[k];
            weight[(k * 2 + 1) * 9 + 4] = wh[k];
        }
        set_conv(&mut cell.gates, &weight, Some(&b));
        cell
    }

    fn scalar_map(value: f32) -> Tensor<4> {
        Tensor::<1>::from_floats([value], &Device::flex()).reshape([1, 1, 1, 1])
    }

    #[test]
    fn a_conv_lstm_step_matches_a_hand_computation() {
        let (wx, wh, b) = ([0.5, -1.0, 2.0, 1.5], [1.0, 0.25, -0.5, 2.0], [0.1, 1.0, -0.2, 0.0]);
        let cell = hand_set_cell(wx, wh, b);
        let (x, h0, c0) = (0.8f64, -0.3f64, 0.6f64);
        let gate = |k: usize| wx[k] as f64 * x + wh[k] as f64 * h0 + b[k] as f64;
        let c = sigmoid_f64(gate(1)) * c0 + sigmoid_f64(gate(0)) * gate(2).tanh();
        let h = sigmoid_f64(gate(3)) * c.tanh();
        let state = Some((scalar_map(h0 as f32), scalar_map(c0 as f32)));
        let (h_burn, c_burn) = cell.step(scalar_map(x as f32), state);
        let (h_burn, c_burn): (f32, f32) = (h_burn.into_scalar(), c_burn.into_scalar());
        assert!((h_burn as f64 - h).abs() < 1e-6, "h: {h_burn} vs {h}");
        assert!((c_burn as f64 - c).abs() < 1e-6, "c: {c_burn} vs {c}");
    }

    #[test]
    fn no_state_is_the_zero_state() {
        let cell = hand_set_cell([0.5, -1.0, 2.0, 1.5], [1.0, 0.25, -0.5, 2.0], [0.1, 1.0, -0.2, 0.0]);
        let (h_none, c_none) = cell.step(scalar_map(0.8), None);
        let (h_zero, c_zero) = cell.step(scalar_map(0.8), Some((scalar_map(0.0), scalar_map(0.0))));
        assert_eq!(values(h_none), values(h_zero));
        assert_eq!(values(c_none), values(c_zero));
    }

    #[test]
    fn the_state_carries_history() {
        let device = Device::flex();
        let cell = ConvLstmCell::new(2, &device);
        let map = |v: f32| Tensor::<4>::full([1, 2, 3, 3], v, &device);
        let after = |history: f32| cell.run([map(history), map(0.5)].iter());
        assert!(max_difference(after(0.0), after(1.0)) > 1e-4);
        assert_eq!(values(after(1.0)), values(after(1.0)));
    }

    #[test]
    fn the_forget_gate_bias_starts_at_one() {
        let cell = ConvLstmCell::new(2, &Device::flex());
        assert_eq!(values(cell.gates.bias.unwrap().val()), [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    }

    /// The change of the generator's output when the slice `index` changes.
    fn response_to_slice(config: &GeneratorConfig, index: usize) -> f32 {
        let device = Device::flex();
        let generator = config.init(&device, 1);
        let x = slices(2, config.context, config.slice_shape, &device);
        let mut perturbed = values(x.clone());
        let slice = config.slice_shape[0] * config.slice_shape[1];
        for item in 0..2 {
            let start = (item * config.context + index) * slice;
            perturbed[start..start + slice].iter_mut().for_each(|v| *v = 1.0 - *v);
        }
        let perturbed = Tensor::<1>::from_floats(perturbed.as_slice(), &device).reshape(x.dims());
        max_difference(generator.forward(x), generator.forward(perturbed))
    }

    #[test]
    fn only_a_bidirectional_generator_sees_the_slices_after_the_centre() {
        let last = tiny().context - 1;
        let bidirectional = GeneratorConfig { bidirectional: true, ..tiny() };
        let forward_only = GeneratorConfig { bidirectional: false, ..tiny() };
        assert!(response_to_slice(&bidirectional, last) > 1e-4);
        assert_eq!(response_to_slice(&forward_only, last), 0.0);
        // Both see the slices before the centre.
        assert!(response_to_slice(&bidirectional, 0) > 1e-4);
        assert!(response_to_slice(&forward_only, 0) > 1e-4);
    }

    #[test]
    fn the_same_seed_gives_the_same_weights_and_another_seed_does_not() {
        let device = Device::flex();
        let weights = |seed| {
            let generator = tiny().init(&device, seed);
            let discriminator = DiscriminatorConfig::default().init(&device, seed);
            [
                generator.encoder[0].convs.first.conv.weight.val(),
                generator.forward_lstm.gates.weight.val(),
                generator.decoder[1].gate.theta.weight.val(),
                discriminator.head.weight.val(),
            ]
            .map(|w| w.into_data())
        };
        let (first, again, other) = (weights(3), weights(3), weights(4));
        assert_eq!(first, again);
        for (a, b) in first.iter().zip(&other) {
            assert_ne!(a, b);
        }
    }

    #[test]
    fn the_gradient_reaches_the_first_layer_through_the_lstm() {
        let device = Device::flex().autodiff();
        let generator = tiny().init(&device, 0);
        let grads = generator.forward(slices(1, 5, [8, 12], &device)).sum().backward();
        for (name, weight) in [
            ("encoder.0", generator.encoder[0].convs.first.conv.weight.val()),
            ("forward_lstm", generator.forward_lstm.gates.weight.val()),
            ("backward_lstm", generator.backward_lstm.as_ref().unwrap().cell.gates.weight.val()),
        ] {
            let grad = weight.grad(&grads).unwrap_or_else(|| panic!("a gradient for {name}"));
            let magnitude: f32 = grad.abs().sum().into_scalar();
            assert!(magnitude > 0.0, "{name}: {magnitude}");
        }
    }

    #[test]
    fn models_round_trip_through_burnpack_files() {
        let device = Device::flex();
        let dir = tempfile::tempdir().unwrap();
        let config = GeneratorConfig { bidirectional: true, ..tiny() };
        let generator = config.init(&device, 5);
        let path = dir.path().join("generator.bpk");
        generator.clone().save_file(&path).unwrap();
        let loaded = config.load(&path, &device).unwrap();
        let x = slices(1, 5, [8, 12], &device);
        assert_eq!(values(generator.forward(x.clone())), values(loaded.forward(x)));

        let config = DiscriminatorConfig { base_channels: 4, ..Default::default() };
        let discriminator = config.init(&device, 5);
        let path = dir.path().join("discriminator.bpk");
        discriminator.clone().save_file(&path).unwrap();
        let loaded = config.load(&path, &device).unwrap();
        let [centre, mask] = [0, 1].map(|i| slices(1, 2, [16, 16], &device).narrow(1, i, 1));
        assert_eq!(values(discriminator.forward(centre.clone(), mask.clone())), values(loaded.forward(centre, mask)));
    }

    #[test]
    fn a_unidirectional_checkpoint_does_not_load_as_bidirectional() {
        let device = Device::flex();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("generator.bpk");
        GeneratorConfig { bidirectional: false, ..tiny() }.init(&device, 0).save_file(&path).unwrap();
        assert!(GeneratorConfig { bidirectional: true, ..tiny() }.load(&path, &device).is_err());
    }

    #[test]
    fn the_discriminator_gives_a_logit_per_patch() {
        let device = Device::flex();
        for (layers, side) in [(1, 14), (2, 6), (3, 2)] {
            let config = DiscriminatorConfig { base_channels: 2, layers, ..Default::default() };
            let [centre, mask] = [0, 1].map(|i| slices(3, 2, [32, 32], &device).narrow(1, i, 1));
            assert_eq!(config.init(&device, 0).forward(centre, mask).dims(), [3, 1, side, side], "{layers} layers");
        }
    }

    #[test]
    fn the_receptive_field_is_pix2pix_s() {
        let field = |layers| DiscriminatorConfig { layers, ..Default::default() }.receptive_field();
        assert_eq!([field(1), field(2), field(3)], [16, 34, 70]);
    }

    /// The rows of a `side`^2 input on which the discriminator's middle output pixel depends:
    /// each batch item changes one row of both channels. BatchNorm outside autodiff uses its
    /// running statistics, so no statistic couples the pixels as the other norms would.
    fn rows_seen(layers: usize, side: usize) -> usize {
        let device = Device::flex();
        let config = DiscriminatorConfig { base_channels: 2, layers, norm: NormKind::Batch, ..Default::default() };
        let discriminator = config.init(&device, 0);
        let plain = Tensor::<4>::full([side + 1, 1, side, side], 0.5, &device);
        let mut changed = values(plain.clone());
        for row in 0..side {
            let start = (row + 1) * side * side + row * side;
            changed[start..start + side].iter_mut().for_each(|v| *v = 1.0);
        }
        let changed = Tensor::<1>::from_floats(changed.as_slice(), &device).reshape(plain.dims());
        let logits = discriminator.forward(changed.clone(), changed);
        let [_, _, out, _] = logits.dims();
        let middle = values(logits.narrow(2, out / 2, 1).narrow(3, out / 2, 1));
        middle[1..].iter().filter(|&&v| (v - middle[0]).abs() > 0.0).count()
    }

    #[test]
    fn the_receptive_field_is_what_the_discriminator_sees() {
        assert_eq!(rows_seen(1, 32), 16);
        assert_eq!(rows_seen(2, 64), 34);
    }

    #[test]
    fn configs_round_trip_through_toml_and_refuse_unknown_fields() {
        let config = GeneratorConfig { norm: NormKind::Instance, bidirectional: false, ..Default::default() };
        assert_eq!(toml::from_str::<GeneratorConfig>(&toml::to_string(&config).unwrap()).unwrap(), config);
        assert_eq!(toml::from_str::<GeneratorConfig>("").unwrap(), GeneratorConfig::default());
        assert_eq!(toml::from_str::<DiscriminatorConfig>("").unwrap(), DiscriminatorConfig::default());
        let err = toml::from_str::<GeneratorConfig>("contxt = 3\n").unwrap_err();
        assert!(err.to_string().contains("contxt"), "{err}");
        assert!(toml::from_str::<DiscriminatorConfig>("layer = 3\n").is_err());
    }

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(GeneratorConfig::default().validate(), Ok(()));
        assert_eq!(DiscriminatorConfig::default().validate(), Ok(()));
    }

    #[test]
    fn out_of_range_fields_are_named() {
        let generator = [
            (GeneratorConfig { levels: 0, ..Default::default() }, "generator.levels"),
            (GeneratorConfig { slice_shape: [32, 20], levels: 4, ..Default::default() }, "generator.slice_shape"),
            (GeneratorConfig { context: 4, ..Default::default() }, "generator.context"),
            (GeneratorConfig { base_channels: 0, ..Default::default() }, "generator.base_channels"),
            (GeneratorConfig { norm_groups: 0, ..Default::default() }, "generator.norm_groups"),
            (GeneratorConfig { leaky_relu_slope: f64::NAN, ..Default::default() }, "generator.leaky_relu_slope"),
            (GeneratorConfig { output_prior: 1.0, ..Default::default() }, "generator.output_prior"),
        ];
        for (config, field) in generator {
            assert_eq!(config.validate().unwrap_err().field, field);
        }
        let discriminator = [
            (DiscriminatorConfig { base_channels: 0, ..Default::default() }, "discriminator.base_channels"),
            (DiscriminatorConfig { layers: 0, ..Default::default() }, "discriminator.layers"),
            (DiscriminatorConfig { norm_groups: 0, ..Default::default() }, "discriminator.norm_groups"),
            (DiscriminatorConfig { leaky_relu_slope: -0.1, ..Default::default() }, "discriminator.leaky_relu_slope"),
        ];
        for (config, field) in discriminator {
            assert_eq!(config.validate().unwrap_err().field, field);
        }
        let err = GeneratorConfig { context: 4, ..Default::default() }.validate().unwrap_err();
        assert_eq!(err.to_string(), "generator.context = 4: must be odd (the target is the centre)");
    }
}
