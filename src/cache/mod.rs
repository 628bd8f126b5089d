//! The write-back cache (ARCHITECTURE.md), between the frontends and the engine.
//!
//! - [`policy`]: configured mode + battery flag -> write-back or write-through, and why (pure).
//! - [`index`]: which 4 KiB blocks are cached in which slot, dirty tracking per stripe, LRU of
//!   clean blocks, and the choice of stripes to destage (pure).
//! - [`layer`]: the data path the frontends call (read, write, flush, trim, write-zeroes).
//! - [`destage`]: the destager, policy changes, the battery file, status.
//! - [`handle`]: reaching the cache from other threads (FUSE).

mod destage;
mod handle;
pub mod index;
mod layer;
pub mod policy;
mod volume;

pub use destage::{check_battery_file, CacheReport};
pub use handle::{install_engine, uninstall_engine, EngineHandle};
pub use layer::{Cache, CacheConfig, PolicyStore, SavedPolicy};

pub use index::{CacheIndex, CacheStats, DestageStripe, Slot, BLOCK_SIZE};
pub use policy::{effective, Battery, CacheMode, CachePolicy, Effective};
