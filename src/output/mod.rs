//! How prefer writes what a user asked for without destroying anything the user owns:
//! - [`atomic_file`]: a file is written beside its target under a unique name and renamed over it
//!   only when whole, and only over a regular file or nothing (a link is followed; a device or a
//!   FIFO is written through, never replaced);
//! - [`folder`]: an output folder must be absent, empty, or made by prefer for the same purpose,
//!   and never one of the command's inputs;
//! - [`lock`]: one process writes a run folder at a time.

pub mod atomic_file;
pub mod folder;
pub mod lock;

pub use atomic_file::{write_file_atomically, AtomicFile};
pub use folder::{inspect_folder, refuse_output_that_is_an_input, FolderState};
pub use lock::FolderLock;
