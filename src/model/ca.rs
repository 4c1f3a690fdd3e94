use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CaRole {
    Root,
    Issuing,
}

impl CaRole {
    pub fn as_str(self) -> &'static str {
        match self {
            CaRole::Root => "root",
            CaRole::Issuing => "issuing",
        }
    }
}

pub struct NewCa<'a> {
    pub name: &'a str,
    pub role: CaRole,
    pub subject: &'a str,
    pub fingerprint: &'a str,
    pub ski: Option<&'a str>,
    pub der: &'a [u8],
    pub not_before: i64,
    pub not_after: i64,
    /// The key: a file name under the CA directory, or a `pkcs11:` URI (RFC 7512, no PIN).
    pub key_file: Option<&'a str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaRecord {
    pub id: i64,
    pub name: String,
    pub role: CaRole,
    pub subject: String,
    pub fingerprint: String,
    pub ski: Option<String>,
    #[serde(skip)]
    pub der: Vec<u8>,
    pub not_before: i64,
    pub not_after: i64,
    /// The key: a file name under the CA directory, or a `pkcs11:` URI (RFC 7512, no PIN).
    pub key_file: Option<String>,
    pub active: bool,
}
