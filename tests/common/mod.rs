//! Helpers shared by the engine tests (each test binary uses some of them): arrays built on
//! simulated members (`rig`), the data written to them (`data`), waiting for the engine's
//! background work (`wait`) and checks of what the members hold (`check`).
#![allow(dead_code, unused_imports)]

mod check;
mod data;
mod rig;
mod wait;

pub use check::*;
pub use data::*;
pub use rig::*;
pub use wait::*;
