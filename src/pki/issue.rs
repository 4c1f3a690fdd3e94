//! Issuing end-entity certificates from a profile with the unlocked issuing CA.

use rcgen::PublicKeyData;
use time::OffsetDateTime;

use super::ca::random_serial;
use super::cert::{info_of, CertInfo};
use super::profile::{Profile, Vars};
use super::signer::CaSigner;
use crate::error::{Error, Result};

/// A freshly issued certificate and the facts recorded about it.
#[derive(Debug, Clone)]
pub struct Issued {
    pub der: Vec<u8>,
    pub info: CertInfo,
}

pub fn issue(
    signer: &CaSigner,
    profile: &Profile,
    vars: &Vars,
    public_key: &impl PublicKeyData,
    now: OffsetDateTime,
) -> Result<Issued> {
    if profile.is_ca {
        return Err(Error::input(format!(
            "profile '{}' is a CA profile; device certificates need an end-entity profile",
            profile.name
        )));
    }
    let mut params = profile.render(vars, now)?;
    params.serial_number = Some(random_serial());
    let cert = params
        .signed_by(public_key, signer.issuer())
        .map_err(|e| super::signer::signing_failed("signing certificate", e))?;
    let der = cert.der().to_vec();
    let info = info_of(&der)?;
    Ok(Issued { der, info })
}
