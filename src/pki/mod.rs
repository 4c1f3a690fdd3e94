//! PKI: keys, profiles from `templates/`, the CA, issuance, CSR checks, verification.

pub mod ca;
pub mod cert;
pub mod crl;
pub mod csr;
pub mod esp_secure_cert;
pub mod issue;
pub mod keys;
pub mod mark;
pub mod ocsp;
pub mod profile;
mod san;
pub mod signer;
#[cfg(test)]
pub(crate) mod testing;
pub mod token;
pub mod trust;
pub mod verify;

#[cfg(test)]
mod tests;
