//! fracmap-train as a library: the data layer (manifest, phantom), and later the models,
//! their training, evaluation and export. `main.rs` only parses arguments and calls in here.

pub mod crops;
pub mod device;
pub mod export;
pub mod folds;
pub mod import_labels;
pub mod levels;
pub mod manifest;
pub mod onnx;
pub mod p2p;
pub mod parallel;
pub mod phantom_set;
pub mod progress;
pub mod pseudo_labels;
pub mod run_record;
pub mod show;
pub mod synth;
pub mod training_data;
pub mod vae;
pub mod verse;
pub mod weak;
