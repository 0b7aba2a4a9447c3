//! Sekisho's built-in image filters: `face-detect` (CenterFace + Soft-NMS), `ng-image`
//! (an ONNX image classifier, open_nsfw by default) and `qr-code` (no model).
//!
//! The ONNX filters share one runtime ([`runtime`]: ONNX Runtime loaded dynamically, the
//! execution provider from config) and one way of serving a model ([`batch`]: dynamic
//! batching on worker threads that each own a session). Images come in through
//! [`intake`], which checks sizes before decoding.

pub mod batch;
pub mod binarize;
pub mod classify;
pub mod face;
pub mod finder;
pub mod intake;
pub mod jpeg;
pub mod model;
pub mod nms;
pub mod onnx_dims;
pub mod qr;
pub mod resize;
pub mod rmqr;
pub mod runtime;
pub mod work;

pub use batch::BatchSizes;
pub use classify::{ClassifierSpec, NgConfig, NgImage};
pub use face::{FaceConfig, FaceDetect};
pub use intake::Intake;
pub use model::{ModelOptions, WarmUp};
pub use qr::{QrCode, QrConfig};
