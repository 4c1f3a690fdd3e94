//! Plain data shared by every layer: no I/O, no SQL, no clap.

mod actor;
mod event;
mod revoked;

pub use actor::Actor;
pub use event::EventKind;
pub use revoked::Revoked;
