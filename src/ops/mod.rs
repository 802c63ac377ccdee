//! The op set the model is written over: the `Backend` trait, `cpu` (the f32 oracle) and `cuda`
//! (the engine), what they read (`Batch`, `Device`), and the memory checks before they allocate.
//! Nothing here imports from the layers above (tests/layers.rs).

pub mod backend;
pub mod batch;
pub mod cpu;
pub mod cuda;
mod device;
pub mod memory_budget;

pub use backend::Backend;
pub use batch::Batch;
pub use device::Device;
