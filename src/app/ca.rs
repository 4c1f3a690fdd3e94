//! The CA workflows: the registered CAs as a trust store.

use crate::error::Result;
use crate::pki::trust::{Anchor, TrustStore};
use crate::store::{cas, Reader};

/// Every CA the registry knows (active or not), parsed once.
pub fn trust_store(db: &Reader) -> Result<TrustStore> {
    Ok(TrustStore::new(cas::all_cas(db)?.into_iter().map(|c| {
        Anchor {
            id: c.id,
            name: c.name,
            der: c.der,
        }
    })))
}
