//! Plain data shared by every layer: no I/O, no SQL, no clap.

mod actor;
mod ca;
mod event;
mod revoked;
mod timestamp;

pub use actor::Actor;
pub use ca::{CaRecord, CaRole, NewCa};
pub use event::EventKind;
pub use revoked::Revoked;
pub use timestamp::Timestamp;
