//! Plain data shared by every layer: no I/O, no SQL, no clap.

mod actor;
mod ca;
mod event;
mod revoked;

pub use actor::Actor;
pub use ca::{CaRecord, CaRole, NewCa};
pub use event::EventKind;
pub use revoked::Revoked;
