//! The op set the model is written over: `cpu` is the f32 oracle, `cuda` the engine.

pub mod cpu;
pub mod cuda;
mod device;

pub use device::Device;
