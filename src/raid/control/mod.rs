//! The control plane: the jobs that run beside the data path and drive it. Assembly and
//! creation build the engine; the scheduler promotes spares and runs recoveries (with
//! `region` to read a slot's region from the others and `throttle` for md's speed limits);
//! `scrub` checks, repairs and resyncs; `replace` copies a member onto its successor;
//! `manage` fails, removes and adds members; `settings` keeps what md has no field for.
//!
//! The boundary is the compiler's: what is declared here with `pub(super)` is visible in
//! `control` only, so the engine's data path (the files beside this directory) cannot call
//! it. The engine tells the control plane what happened through its queues
//! (`Array::emit`, `Array::needs_attention`); the jobs here still live as `impl Array` blocks.

mod assemble;
mod create;
mod manage;
mod rebuild;
mod region;
mod replace;
mod scrub;
mod settings;
mod throttle;

pub use assemble::{assemble, AssembleOptions, Assembled};
pub use create::{create, CreateOptions, CreatedArray};
pub use rebuild::RebuildState;
pub use scrub::ScrubState;
