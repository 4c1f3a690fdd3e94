//! Schema migrations: an append-only list. Never edit or reorder a shipped entry;
//! add a new one at the end. `PRAGMA user_version` records how many have run.

/// `PRAGMA application_id` marks a file as a cradle registry ("CRDL").
pub const APPLICATION_ID: i64 = 0x4352_444C;

pub const MIGRATIONS: &[&str] = &[
    // 1: devices, CAs, certificates, the hash-chained event log.
    r#"
CREATE TABLE devices (
    id          INTEGER PRIMARY KEY,
    serial      TEXT NOT NULL UNIQUE,
    hardware_id TEXT,
    model       TEXT,
    hw_rev      TEXT,
    batch       TEXT,
    site        TEXT,
    location    TEXT,
    owner       TEXT,
    mac         TEXT,
    imei        TEXT,
    -- An OR chain, not IN (...): SQLite evaluates an IN list of more than two
    -- constants through a temporary b-tree built on every INSERT and UPDATE.
    status      TEXT NOT NULL DEFAULT 'registered'
                CHECK (status = 'registered' OR status = 'provisioned' OR status = 'deployed'
                       OR status = 'maintenance' OR status = 'retired' OR status = 'decommissioned'),
    notes       TEXT,
    attributes  TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX devices_hardware_id ON devices(hardware_id) WHERE hardware_id IS NOT NULL;
CREATE INDEX devices_mac ON devices(mac) WHERE mac IS NOT NULL;
CREATE INDEX devices_imei ON devices(imei) WHERE imei IS NOT NULL;
CREATE INDEX devices_status ON devices(status);

CREATE TABLE cas (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('root','issuing')),
    subject     TEXT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE,
    ski         TEXT,
    der         BLOB NOT NULL,
    not_before  INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    key_file    TEXT,
    active      INTEGER NOT NULL DEFAULT 1,
    created_at  TEXT NOT NULL
);

CREATE TABLE certificates (
    id                INTEGER PRIMARY KEY,
    device_id         INTEGER NOT NULL REFERENCES devices(id),
    ca_id             INTEGER REFERENCES cas(id),
    serial_hex        TEXT NOT NULL UNIQUE,
    fingerprint       TEXT NOT NULL UNIQUE,
    pubkey_sha256     TEXT NOT NULL,
    subject           TEXT NOT NULL,
    profile           TEXT NOT NULL,
    key_source        TEXT NOT NULL CHECK (key_source = 'host' OR key_source = 'device'),
    not_before        INTEGER NOT NULL,
    not_after         INTEGER NOT NULL,
    der               BLOB NOT NULL,
    status            TEXT NOT NULL DEFAULT 'active' CHECK (status = 'active' OR status = 'revoked' OR status = 'unused'),
    revoked_at        TEXT,
    revocation_reason TEXT,
    created_at        TEXT NOT NULL
);
CREATE INDEX certificates_device ON certificates(device_id);
CREATE INDEX certificates_pubkey ON certificates(pubkey_sha256);
CREATE INDEX certificates_not_after ON certificates(not_after);

CREATE TABLE events (
    id        INTEGER PRIMARY KEY,
    device_id INTEGER REFERENCES devices(id),
    kind      TEXT NOT NULL,
    actor     TEXT NOT NULL,
    station   TEXT NOT NULL,
    at        TEXT NOT NULL,
    details   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX events_device ON events(device_id);

-- Head of the event chain, so that deleting the newest events is detectable too.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Issued CRLs (the newest row is the current CRL).
CREATE TABLE crls (
    id          INTEGER PRIMARY KEY,
    ca_id       INTEGER NOT NULL REFERENCES cas(id),
    crl_number  INTEGER NOT NULL,
    this_update INTEGER NOT NULL,
    next_update INTEGER NOT NULL,
    entries     INTEGER NOT NULL,
    der         BLOB NOT NULL,
    created_at  TEXT NOT NULL,
    UNIQUE (ca_id, crl_number)
);

-- Single-use nonces sent to devices (wipe attestation); a nonce is never accepted twice.
CREATE TABLE nonces (
    nonce_hex  TEXT PRIMARY KEY,
    device_id  INTEGER REFERENCES devices(id),
    purpose    TEXT NOT NULL,
    issued_at  TEXT NOT NULL,
    used_at    TEXT
);

-- Wipe records: a device-signed attestation or a manual record (NIST SP 800-88 fields).
CREATE TABLE wipes (
    id                   INTEGER PRIMARY KEY,
    device_id            INTEGER NOT NULL REFERENCES devices(id),
    kind                 TEXT NOT NULL CHECK (kind IN ('attested','manual')),
    level                TEXT NOT NULL CHECK (level IN ('clear','purge','destroy')),
    method               TEXT NOT NULL,
    media_type           TEXT,
    tool                 TEXT,
    tool_version         TEXT,
    verification         TEXT,
    verified_by          TEXT,
    technician           TEXT,
    location             TEXT,
    destination          TEXT,
    nonce_hex            TEXT,
    attestation          TEXT,
    attestation_verified INTEGER,
    recorded_at          TEXT NOT NULL
);
CREATE INDEX wipes_device ON wipes(device_id);
"#,
    // 2: resumable decommission jobs (one row per device and step) and a partial
    // index for building CRLs from the revoked certificates of one CA.
    r#"
CREATE TABLE decommissions (
    device_id   INTEGER NOT NULL REFERENCES devices(id),
    step        TEXT NOT NULL CHECK (step IN ('retire','revoke','wipe','decommission')),
    status      TEXT NOT NULL CHECK (status IN ('running','done','failed')),
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    error       TEXT,
    options     TEXT,
    attempts    INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (device_id, step)
);
CREATE INDEX certificates_revoked ON certificates(ca_id) WHERE status = 'revoked';
"#,
    // 3: audit looks up revoked and unused certificates without scanning every row.
    r#"
CREATE INDEX certificates_status ON certificates(status, device_id);
"#,
    // 4: verification mark of certificates cradle recorded itself (HMAC-SHA256 keyed by
    // ca/audit.key over the certificate and CA fingerprints); NULL for older rows and
    // anything inserted behind cradle's back. Lets the audit skip the ECDSA check of
    // certificates whose stored DER is exactly what cradle issued.
    r#"
ALTER TABLE certificates ADD COLUMN verified_mac BLOB;
"#,
    // 5: the device's own attestation of the key a certificate was issued for (JSON:
    // for nRF91 modems the %KEYGEN COSE_Sign1, device UUID and whether its identity
    // signature was verified); NULL where the device gave none.
    r#"
ALTER TABLE certificates ADD COLUMN device_attestation TEXT;
"#,
    // 6: a third kind of wipe record, 'read-back': a device that cannot sign (an ESP32 in
    // its ROM bootloader) is erased and the region read back as erased by the chip's own
    // flash MD5. SQLite cannot change a CHECK, so the table is rebuilt as it was plus that.
    r#"
CREATE TABLE wipes_new (
    id                   INTEGER PRIMARY KEY,
    device_id            INTEGER NOT NULL REFERENCES devices(id),
    kind                 TEXT NOT NULL CHECK (kind IN ('attested','manual','read-back')),
    level                TEXT NOT NULL CHECK (level IN ('clear','purge','destroy')),
    method               TEXT NOT NULL,
    media_type           TEXT,
    tool                 TEXT,
    tool_version         TEXT,
    verification         TEXT,
    verified_by          TEXT,
    technician           TEXT,
    location             TEXT,
    destination          TEXT,
    nonce_hex            TEXT,
    attestation          TEXT,
    attestation_verified INTEGER,
    recorded_at          TEXT NOT NULL
);
INSERT INTO wipes_new SELECT * FROM wipes;
DROP TABLE wipes;
ALTER TABLE wipes_new RENAME TO wipes;
CREATE INDEX wipes_device ON wipes(device_id);
"#,
    // 7: keyed mark of each device row (HMAC-SHA256 under a key derived from HOME/log.key
    // over every other column, see store::rowmark), set by every cradle write; NULL for
    // rows from before this migration until the first writer backfills them (recorded
    // in meta 'device_marks' and a devices.marked event), and for rows written behind
    // cradle's back. A later migration adding a column with a non-NULL default must
    // re-mark every row.
    r#"
ALTER TABLE devices ADD COLUMN mark BLOB;
"#,
    // 8: the firmware version the device reported at its last contact
    // (or an operator set with `device set firmware=`), when a port command last talked
    // to it, and the configuration it holds (template name, SHA-256 of the rendered
    // bytes as read back). The trail of versions is in the event log (firmware.reported).
    r#"
ALTER TABLE devices ADD COLUMN firmware TEXT;
ALTER TABLE devices ADD COLUMN last_contact_at TEXT;
ALTER TABLE devices ADD COLUMN config_name TEXT;
ALTER TABLE devices ADD COLUMN config_sha256 TEXT;
"#,
    // 9: asset data, validated by app::inventory::asset and stored as canonical text:
    // dates YYYY-MM-DD, the cost an exact decimal (never a REAL, which would round) in
    // an ISO 4217 currency, criticality low|medium|high|critical. NULL for old rows, so
    // their device marks stay valid; the marks cover these columns like every other.
    r#"
ALTER TABLE devices ADD COLUMN purchase_date TEXT;
ALTER TABLE devices ADD COLUMN warranty_until TEXT;
ALTER TABLE devices ADD COLUMN cost TEXT;
ALTER TABLE devices ADD COLUMN currency TEXT;
ALTER TABLE devices ADD COLUMN supplier TEXT;
ALTER TABLE devices ADD COLUMN criticality TEXT;
ALTER TABLE devices ADD COLUMN end_of_life TEXT;
"#,
    // 10: renewals (`cradle renew`): which certificate succeeds which, and whether the
    // successor is confirmed on the device. `pending` = issued for delivery over a port
    // but not yet switched to on the device (the old identity is still the one in use);
    // `delivered` = handed out as files or a bundle; `abandoned` = a pending successor a
    // re-run replaced (revoked, superseded). At most one pending successor per device.
    r#"
CREATE TABLE renewals (
    id           INTEGER PRIMARY KEY,
    device_id    INTEGER NOT NULL REFERENCES devices(id),
    old_cert_id  INTEGER NOT NULL REFERENCES certificates(id),
    new_cert_id  INTEGER NOT NULL UNIQUE REFERENCES certificates(id),
    rekey        INTEGER NOT NULL DEFAULT 0,
    delivery     TEXT NOT NULL CHECK (delivery = 'files' OR delivery = 'bundle' OR delivery = 'port'),
    state        TEXT NOT NULL CHECK (state = 'pending' OR state = 'confirmed' OR state = 'delivered' OR state = 'abandoned'),
    issued_at    TEXT NOT NULL,
    confirmed_at TEXT
);
-- Also the index for "the device's pending successor" (the queries say state = 'pending').
CREATE UNIQUE INDEX renewals_one_pending ON renewals(device_id) WHERE state = 'pending';
"#,
    // 11: nothing on SQLite. The PostgreSQL twin adds the trigger that tells a cradle
    // connection which device rows its transaction changed (device marks are computed
    // in Rust there); SQLite registries mark rows with TEMP triggers. The version moves
    // with PostgreSQL's so that both backends share one schema version.
    "-- 11: PostgreSQL only (device-mark trigger)\n",
];

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    /// SHA-256 of every published migration, in order. A registry records only how
    /// many migrations ran, so a changed entry would silently leave older registries
    /// on the old schema: never edit one, append a new migration instead (and its
    /// hash here).
    const PUBLISHED: &[&str] = &[
        "66f6db6e58ba39dc0412ee3500d1a4ce5215f72a8872b18eb900ba787ce84b3c",
        "eb20b189fafaf069d175154ffd9040e43771cd86d001fa01fe95fb6c5c16dae5",
        "1c9e06f5313a1cdab83ee488d21ea19ff4a444bbf7c6eccd4496a7422f066f0d",
        "072434fccfcb348cc5c5a1eb26fc3577a03435c527772be70d349e79c4b552f1",
        "f75693bbf00366192125cb2922c41e692972b7f03e4bdaae2fded182223122aa",
        "574bd4a817d8294c486da6451a732057aa1227dd2b4d5413fc42715d335a7c56",
        "02ca18042d6d61c6dab4815edc5e7cc89c09ad21f783a8be4d242d0d2d8971b2",
        "5bed1ee22713c0345e61d41643302aa68fbdfaf0c750bdcbfce52d4e5ebffe5d",
        "11de30e9064a397b15f0c05c22af0aa17e6e34df2a1786be9aa9e61b3c7568fe",
        "7756fa3e01dcecf0b3b8c2d4e45a771b93c2f709c025df43ad0ede05931f0db6",
        "2f17560cccb870ac2501236df628d0611f59d9264b01b37d9be36450a7348efb",
    ];

    #[test]
    fn published_migrations_never_change() {
        assert!(
            super::MIGRATIONS.len() >= PUBLISHED.len(),
            "a published migration was removed"
        );
        for (i, (sql, want)) in super::MIGRATIONS.iter().zip(PUBLISHED).enumerate() {
            let got = hex::encode(Sha256::digest(sql.as_bytes()));
            assert_eq!(
                &got,
                want,
                "migration {} was edited after it was published: append a new migration instead",
                i + 1
            );
        }
        assert_eq!(
            super::MIGRATIONS.len(),
            PUBLISHED.len(),
            "a new migration needs its hash in PUBLISHED"
        );
    }
}
