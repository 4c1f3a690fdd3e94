/// One revoked certificate as it goes into a CRL: serial (hex), when (RFC 3339) and
/// the RFC 5280 reason name, as the registry records them.
#[derive(Debug, Clone)]
pub struct Revoked {
    pub serial_hex: String,
    pub revoked_at: Option<String>,
    pub reason: Option<String>,
}
