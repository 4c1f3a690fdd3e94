use super::Timestamp;

/// One revoked certificate as it goes into a CRL: serial (hex), when, and the RFC 5280
/// reason name, as the registry records them.
#[derive(Debug, Clone)]
pub struct Revoked {
    pub serial_hex: String,
    /// `None` when the registry holds no (or no readable) revocation time.
    pub revoked_at: Option<Timestamp>,
    pub reason: Option<String>,
}
