use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// Every kind of event cradle appends to the hash-chained log. The text form is what
/// is hashed and stored, so a name never changes once shipped; add new kinds instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum EventKind {
    #[serde(rename = "home.initialised")]
    HomeInitialised,
    /// The log key was created: events from here on are HMAC-keyed.
    #[serde(rename = "log.keyed")]
    LogKeyed,
    #[serde(rename = "ca.created")]
    CaCreated,
    #[serde(rename = "ca.imported")]
    CaImported,
    #[serde(rename = "device.created")]
    DeviceCreated,
    #[serde(rename = "device.updated")]
    DeviceUpdated,
    #[serde(rename = "device.registered")]
    DeviceRegistered,
    #[serde(rename = "device.state")]
    DeviceState,
    #[serde(rename = "identity.issued")]
    IdentityIssued,
    #[serde(rename = "provision.started")]
    ProvisionStarted,
    #[serde(rename = "provision.passed")]
    ProvisionPassed,
    #[serde(rename = "provision.failed")]
    ProvisionFailed,
    #[serde(rename = "cert.revoked")]
    CertRevoked,
    #[serde(rename = "crl.issued")]
    CrlIssued,
    #[serde(rename = "decommission.step")]
    DecommissionStep,
    /// `identity reconcile` recorded a certificate our CA signed that the registry lacked.
    #[serde(rename = "identity.reconciled")]
    IdentityReconciled,
    /// Labels were rendered or printed (`cradle label`).
    #[serde(rename = "label.rendered")]
    LabelRendered,
    /// Devices handed to a cloud registry (`cradle export`): one event for the export
    /// (cloud, counts, file hashes) and one per device naming it.
    #[serde(rename = "cloud.exported")]
    CloudExported,
    /// A delegated OCSP signing certificate was issued (its key kept beside the CA's).
    #[serde(rename = "ocsp.signer_issued")]
    OcspSignerIssued,
    /// The device rows of a registry from before device marks were marked (once, by
    /// its first write): from here on a row without a mark is a finding.
    #[serde(rename = "devices.marked")]
    DevicesMarked,
    /// The firmware version a device reported on contact (first contact, then only when
    /// it changed), or one an operator set (`device set firmware=`).
    #[serde(rename = "firmware.reported")]
    FirmwareReported,
    /// A rendered configuration was written into the device's config slot and read back.
    #[serde(rename = "config.written")]
    ConfigWritten,
    /// A maintenance-log entry (`device maintenance`): the move into maintenance and/or
    /// a note of the work done, with its cost.
    #[serde(rename = "maintenance.logged")]
    MaintenanceLogged,
    /// The end of a maintenance period (`device return`): back to deployed, with a
    /// note and the supplier's RMA number when the device went back to the supplier.
    #[serde(rename = "maintenance.returned")]
    MaintenanceReturned,
    /// `cradle renew` issued a successor certificate superseding an older one (for the
    /// same key, or a new one with --rekey).
    #[serde(rename = "cert.renewed")]
    CertRenewed,
    /// A successor delivered over a port was verified and switched to on the device.
    #[serde(rename = "renewal.confirmed")]
    RenewalConfirmed,
}

impl EventKind {
    pub const ALL: [EventKind; 26] = [
        EventKind::HomeInitialised,
        EventKind::LogKeyed,
        EventKind::CaCreated,
        EventKind::CaImported,
        EventKind::DeviceCreated,
        EventKind::DeviceUpdated,
        EventKind::DeviceRegistered,
        EventKind::DeviceState,
        EventKind::IdentityIssued,
        EventKind::ProvisionStarted,
        EventKind::ProvisionPassed,
        EventKind::ProvisionFailed,
        EventKind::CertRevoked,
        EventKind::CrlIssued,
        EventKind::DecommissionStep,
        EventKind::IdentityReconciled,
        EventKind::LabelRendered,
        EventKind::CloudExported,
        EventKind::OcspSignerIssued,
        EventKind::DevicesMarked,
        EventKind::FirmwareReported,
        EventKind::ConfigWritten,
        EventKind::MaintenanceLogged,
        EventKind::MaintenanceReturned,
        EventKind::CertRenewed,
        EventKind::RenewalConfirmed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::HomeInitialised => "home.initialised",
            EventKind::LogKeyed => "log.keyed",
            EventKind::CaCreated => "ca.created",
            EventKind::CaImported => "ca.imported",
            EventKind::DeviceCreated => "device.created",
            EventKind::DeviceUpdated => "device.updated",
            EventKind::DeviceRegistered => "device.registered",
            EventKind::DeviceState => "device.state",
            EventKind::IdentityIssued => "identity.issued",
            EventKind::ProvisionStarted => "provision.started",
            EventKind::ProvisionPassed => "provision.passed",
            EventKind::ProvisionFailed => "provision.failed",
            EventKind::CertRevoked => "cert.revoked",
            EventKind::CrlIssued => "crl.issued",
            EventKind::DecommissionStep => "decommission.step",
            EventKind::IdentityReconciled => "identity.reconciled",
            EventKind::LabelRendered => "label.rendered",
            EventKind::CloudExported => "cloud.exported",
            EventKind::OcspSignerIssued => "ocsp.signer_issued",
            EventKind::DevicesMarked => "devices.marked",
            EventKind::FirmwareReported => "firmware.reported",
            EventKind::ConfigWritten => "config.written",
            EventKind::MaintenanceLogged => "maintenance.logged",
            EventKind::MaintenanceReturned => "maintenance.returned",
            EventKind::CertRenewed => "cert.renewed",
            EventKind::RenewalConfirmed => "renewal.confirmed",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| crate::Error::input(format!("'{s}' is not an event kind")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip_and_match_serde() {
        for k in EventKind::ALL {
            assert_eq!(k.as_str().parse::<EventKind>().unwrap(), k);
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }
}
