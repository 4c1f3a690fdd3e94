//! CA keys on a PKCS#11 token (an HSM, or SoftHSM2 in tests). The private key never
//! leaves the token: cradle hashes with SHA-256 on the host, has the token sign the
//! digest with raw CKM_ECDSA (all SoftHSM2 offers) and DER-encodes the r||s it returns.
//! Batches sign from the rayon pool: each signing thread borrows a session of its own
//! from a pool, since a PKCS#11 session serves one thread at a time.

pub mod uri;

use std::sync::{Arc, Mutex};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use p256::ecdsa::signature::Verifier;
use rcgen::{PublicKeyData, SignatureAlgorithm, SigningKey, PKCS_ECDSA_P256_SHA256};
use sha2::{Digest, Sha256};

pub use uri::Pkcs11Uri;

use crate::error::{Error, Result};

/// DER of the prime256v1 OID: CKA_EC_PARAMS of a P-256 key.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// A logged-in token: the module, the slot and a pool of sessions. The login belongs
/// to the application, so every session opened after the first is logged in too, as
/// long as one stays open (the pool keeps them all).
struct Login {
    ctx: Pkcs11,
    slot: Slot,
    /// The token as the URI names it, for messages.
    name: String,
    sessions: Mutex<Vec<Session>>,
}

impl Login {
    /// Loads the module of `uri`, finds its token and logs in with `pin`. `rw` opens the
    /// first session read-write (to create keys).
    fn open(uri: &Pkcs11Uri, pin: &str, rw: bool) -> Result<Arc<Login>> {
        let module = &uri.module_path;
        if !module.is_file() {
            return Err(Error::io(
                module,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such PKCS#11 module"),
            ));
        }
        let ctx = Pkcs11::new(module).map_err(|e| {
            Error::crypto(format!(
                "{}: cannot load it as a PKCS#11 module: {e}",
                module.display()
            ))
        })?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => {
                return Err(failed(
                    e,
                    "initialising the module",
                    &module.display().to_string(),
                ))
            }
        }
        let name = format!("PKCS#11 token {}", uri.token_name());
        let slot = find_slot(&ctx, uri, &name)?;
        let info = ctx
            .get_token_info(slot)
            .map_err(|e| failed(e, "reading the token", &name))?;
        if info.user_pin_locked() {
            return Err(pin_locked(&name));
        }
        let session = if rw {
            ctx.open_rw_session(slot)
        } else {
            ctx.open_ro_session(slot)
        }
        .map_err(|e| failed(e, "opening a session", &name))?;
        match session.login(UserType::User, Some(&AuthPin::from(pin))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(failed(e, "logging in", &name)),
        }
        Ok(Arc::new(Login {
            ctx,
            slot,
            name,
            sessions: Mutex::new(vec![session]),
        }))
    }

    /// Runs `f` on a session no other thread is using (opening one when all are busy).
    fn with_session<T>(&self, f: impl FnOnce(&Session) -> Result<T>) -> Result<T> {
        let pooled = self.sessions.lock().map_err(|_| poisoned())?.pop();
        let session = match pooled {
            Some(s) => s,
            None => self
                .ctx
                .open_ro_session(self.slot)
                .map_err(|e| failed(e, "opening a session", &self.name))?,
        };
        let out = f(&session);
        self.sessions.lock().map_err(|_| poisoned())?.push(session);
        out
    }
}

fn poisoned() -> Error {
    Error::Internal("the PKCS#11 session pool was poisoned by a panic".into())
}

fn find_slot(ctx: &Pkcs11, uri: &Pkcs11Uri, name: &str) -> Result<Slot> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| failed(e, "listing slots", name))?;
    let mut seen = Vec::new();
    let mut found = Vec::new();
    for slot in slots {
        // SoftHSM2 always offers a free slot with an uninitialised token.
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        if !info.token_initialized() {
            continue;
        }
        let label = info.label().trim_end().to_string();
        let serial = info.serial_number().trim_end().to_string();
        let matches = uri.token.as_ref().is_none_or(|t| *t == label)
            && uri.serial.as_ref().is_none_or(|s| *s == serial)
            && uri.slot_id.is_none_or(|id| id == slot.id());
        if matches {
            found.push(slot);
        }
        seen.push(format!("'{label}'"));
    }
    match found.len() {
        1 => Ok(found[0]),
        0 => Err(Error::Device(format!(
            "{name} is absent (tokens present: {})",
            if seen.is_empty() {
                "none".to_string()
            } else {
                seen.join(", ")
            }
        ))),
        n => Err(Error::crypto(format!(
            "{n} tokens match {name}: add serial= or slot-id= to the PKCS#11 URI"
        ))),
    }
}

fn pin_locked(name: &str) -> Error {
    Error::crypto(format!(
        "the user PIN of {name} is locked (too many wrong PINs): its security officer must unlock it"
    ))
}

/// One line for a failed PKCS#11 call, naming the cases an operator can act on.
fn failed(e: CkError, doing: &str, name: &str) -> Error {
    match e {
        CkError::Pkcs11(RvError::PinIncorrect | RvError::PinLenRange | RvError::PinInvalid, _) => {
            Error::crypto(format!("wrong PIN for {name}"))
        }
        CkError::Pkcs11(RvError::PinLocked, _) => pin_locked(name),
        CkError::Pkcs11(
            RvError::TokenNotPresent | RvError::DeviceRemoved | RvError::SlotIdInvalid,
            _,
        ) => Error::Device(format!("{name} is absent")),
        e => Error::crypto(format!("{name}: {doing}: {e}")),
    }
}

/// A P-256 private key on a token, with its public key.
pub struct TokenKey {
    login: Arc<Login>,
    key: ObjectHandle,
    /// The uncompressed public point (SEC1), what rcgen calls the key's DER bytes.
    point: Vec<u8>,
    /// The key's URI with its label and id, as recorded.
    uri: Pkcs11Uri,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenKey({})", self.uri)
    }
}

impl TokenKey {
    /// Opens the key `uri` names, logging in with `pin`, and checks that its private
    /// and public halves belong together.
    pub fn open(uri: &Pkcs11Uri, pin: &str) -> Result<TokenKey> {
        let login = Login::open(uri, pin, false)?;
        TokenKey::locate(login, uri)
    }

    fn locate(login: Arc<Login>, uri: &Pkcs11Uri) -> Result<TokenKey> {
        let name = login.name.clone();
        let what = format!("key {}", uri.object_name());
        let (key, label, id, point) = login.with_session(|s| {
            let private = find_one(s, ObjectClass::PRIVATE_KEY, uri, &name, &what)?;
            let attrs = s
                .get_attributes(
                    private,
                    &[
                        AttributeType::KeyType,
                        AttributeType::EcParams,
                        AttributeType::Label,
                        AttributeType::Id,
                    ],
                )
                .map_err(|e| failed(e, "reading the key", &name))?;
            let (mut ec, mut p256, mut label, mut id) = (false, false, None, None);
            for a in attrs {
                match a {
                    Attribute::KeyType(t) => ec = t == KeyType::EC,
                    Attribute::EcParams(p) => p256 = p == P256_PARAMS,
                    Attribute::Label(l) => label = String::from_utf8(l).ok(),
                    Attribute::Id(i) => id = Some(i),
                    _ => {}
                }
            }
            if !ec || !p256 {
                return Err(Error::crypto(format!(
                    "{what} on {name} is not a P-256 EC key (cradle's CAs use P-256)"
                )));
            }
            // The public half, found by the same id (else label).
            let by = Pkcs11Uri {
                object: if id.as_ref().is_some_and(|i| !i.is_empty()) {
                    None
                } else {
                    label.clone()
                },
                id: id.clone().filter(|i| !i.is_empty()),
                ..uri.clone()
            };
            let public = find_one(
                s,
                ObjectClass::PUBLIC_KEY,
                &by,
                &name,
                &format!("public {what}"),
            )?;
            let point = s
                .get_attributes(public, &[AttributeType::EcPoint])
                .map_err(|e| failed(e, "reading the public key", &name))?
                .into_iter()
                .find_map(|a| match a {
                    Attribute::EcPoint(p) => Some(p),
                    _ => None,
                })
                .ok_or_else(|| {
                    Error::crypto(format!("public {what} on {name} has no CKA_EC_POINT"))
                })?;
            Ok((private, label, id, unwrap_point(&point)))
        })?;
        let uri = Pkcs11Uri {
            object: label.or_else(|| uri.object.clone()),
            id: id.filter(|i| !i.is_empty()).or_else(|| uri.id.clone()),
            ..uri.clone()
        };
        let k = TokenKey {
            login,
            key,
            point,
            uri,
        };
        k.check_halves(&what)?;
        Ok(k)
    }

    /// A token whose public object does not belong to its private key would sign
    /// certificates no one can verify: sign a probe and verify it on the host.
    fn check_halves(&self, what: &str) -> Result<()> {
        let name = &self.login.name;
        let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&self.point)
            .map_err(|_| Error::crypto(format!("public {what} on {name} is not a P-256 point")))?;
        let probe = b"cradle: does this private key match its public key?";
        let der = self.sign_der(probe)?;
        let sig = p256::ecdsa::Signature::from_der(&der)
            .map_err(|_| Error::crypto(format!("{name} returned a malformed signature")))?;
        vk.verify(probe, &sig).map_err(|_| {
            Error::crypto(format!(
                "{what} on {name} does not match its public key object"
            ))
        })
    }

    /// The ECDSA signature of `msg` (SHA-256), DER as X.509 wants it.
    fn sign_der(&self, msg: &[u8]) -> Result<Vec<u8>> {
        let digest = Sha256::digest(msg);
        let raw = self.login.with_session(|s| {
            s.sign(&Mechanism::Ecdsa, self.key, &digest)
                .map_err(|e| failed(e, "signing", &self.login.name))
        })?;
        let sig = p256::ecdsa::Signature::from_slice(&raw).map_err(|_| {
            Error::crypto(format!(
                "{} returned a {}-byte signature, not P-256 r||s",
                self.login.name,
                raw.len()
            ))
        })?;
        Ok(sig.to_der().as_bytes().to_vec())
    }

    /// The key's URI as recorded: token, label, id and module, no PIN.
    pub fn uri(&self) -> &Pkcs11Uri {
        &self.uri
    }

    /// Removes the key pair from the token (undoing a `ca init` that failed later).
    pub fn destroy(self) -> Result<()> {
        let name = self.login.name.clone();
        let s = self.login.rw_session()?;
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
            let found = s
                .find_objects(&template(class, &self.uri))
                .map_err(|e| failed(e, "finding the key", &name))?;
            for h in found {
                s.destroy_object(h)
                    .map_err(|e| failed(e, "deleting the key", &name))?;
            }
        }
        Ok(())
    }
}

impl Login {
    /// A read-write session on the logged-in token.
    fn rw_session(&self) -> Result<Session> {
        self.ctx
            .open_rw_session(self.slot)
            .map_err(|e| failed(e, "opening a read-write session", &self.name))
    }
}

/// The search template for keys of `class` named by `uri`'s object / id.
fn template(class: ObjectClass, uri: &Pkcs11Uri) -> Vec<Attribute> {
    let mut t = vec![Attribute::Class(class)];
    if let Some(o) = &uri.object {
        t.push(Attribute::Label(o.as_bytes().to_vec()));
    }
    if let Some(id) = &uri.id {
        t.push(Attribute::Id(id.clone()));
    }
    t
}

fn find_one(
    s: &Session,
    class: ObjectClass,
    uri: &Pkcs11Uri,
    name: &str,
    what: &str,
) -> Result<ObjectHandle> {
    let found = s
        .find_objects(&template(class, uri))
        .map_err(|e| failed(e, "finding the key", name))?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(Error::crypto(format!("no {what} on {name}"))),
        more => Err(Error::crypto(format!(
            "{} objects match {what} on {name}: add id= to the PKCS#11 URI",
            more.len()
        ))),
    }
}

/// CKA_EC_POINT is a DER OCTET STRING around the point; some tokens give it bare.
fn unwrap_point(p: &[u8]) -> Vec<u8> {
    match p {
        [0x04, len, rest @ ..] if *len as usize == rest.len() && rest.first() == Some(&0x04) => {
            rest.to_vec()
        }
        _ => p.to_vec(),
    }
}

/// Creates the root and issuing CA key pairs of a new CA on the token `uri` names:
/// P-256, on the token, private, sensitive, never extractable. Labelled
/// `OBJECT-root` and `OBJECT-issuing`, each with a random id; refused when a key of
/// either label exists already.
pub fn create_ca_keys(uri: &Pkcs11Uri, pin: &str) -> Result<(TokenKey, TokenKey)> {
    let base = uri.object.as_deref().ok_or_else(|| {
        Error::input("PKCS#11 URI: `ca init --hsm` needs object=LABEL (the keys are labelled LABEL-root and LABEL-issuing)")
    })?;
    let login = Login::open(uri, pin, true)?;
    let mut made: Vec<TokenKey> = Vec::new();
    for role in ["root", "issuing"] {
        let label = format!("{base}-{role}");
        match generate(&login, uri, &label) {
            Ok(k) => made.push(k),
            Err(e) => {
                for k in made {
                    let _ = k.destroy();
                }
                return Err(e);
            }
        }
    }
    let issuing = made.pop().expect("two keys");
    let root = made.pop().expect("two keys");
    Ok((root, issuing))
}

fn generate(login: &Arc<Login>, uri: &Pkcs11Uri, label: &str) -> Result<TokenKey> {
    use rand_core::{OsRng, RngCore};
    let name = login.name.clone();
    let mut id = vec![0u8; 8];
    OsRng.fill_bytes(&mut id);
    let by_label = Pkcs11Uri {
        object: Some(label.to_string()),
        id: None,
        ..uri.clone()
    };
    login.with_session(|s| {
        let mut any = Vec::new();
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
            any.extend(
                s.find_objects(&template(class, &by_label))
                    .map_err(|e| failed(e, "finding keys", &name))?,
            );
        }
        if !any.is_empty() {
            return Err(Error::conflict(format!(
                "{name} already holds a key labelled '{label}': refusing to add another (choose another object= or delete it)"
            )));
        }
        let label = label.as_bytes().to_vec();
        let public = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::EcParams(P256_PARAMS.to_vec()),
            Attribute::Label(label.clone()),
            Attribute::Id(id.clone()),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            // A CA key signs, nothing else.
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::Label(label),
            Attribute::Id(id.clone()),
        ];
        s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
            .map_err(|e| failed(e, "generating a P-256 key pair", &name))?;
        Ok(())
    })?;
    TokenKey::locate(login.clone(), &uri.for_object(label, &id))
}

impl PublicKeyData for TokenKey {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

thread_local! {
    /// Why the last token signature on this thread failed: rcgen's error carries no
    /// cause, and rcgen calls `sign` on the caller's thread, so the caller takes it here.
    static SIGN_FAILURE: std::cell::RefCell<Option<Error>> = const { std::cell::RefCell::new(None) };
}

/// The cause of the last failed token signature on this thread, once.
pub fn take_sign_failure() -> Option<Error> {
    SIGN_FAILURE.with(|f| f.borrow_mut().take())
}

impl SigningKey for TokenKey {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        self.sign_der(msg).map_err(|e| {
            SIGN_FAILURE.with(|f| *f.borrow_mut() = Some(e));
            rcgen::Error::RemoteKeyError
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SoftHSM2 token in a temp dir (tests/hsm.rs covers the commands; this checks
    /// the session pool from inside). None, with a note, when SoftHSM2 is missing
    /// outside CI.
    fn softhsm_token(dir: &std::path::Path) -> Option<Pkcs11Uri> {
        let module = std::env::var("CRADLE_TEST_SOFTHSM_MODULE")
            .unwrap_or_else(|_| "/usr/lib/softhsm/libsofthsm2.so".into());
        if !std::path::Path::new(&module).is_file() {
            assert!(
                std::env::var_os("CI").is_none(),
                "no SoftHSM2 module at {module}"
            );
            eprintln!("skipping: SoftHSM2 not installed");
            return None;
        }
        let conf = dir.join("softhsm2.conf");
        std::fs::create_dir(dir.join("t")).unwrap();
        let text = format!("directories.tokendir = {}\n", dir.join("t").display());
        std::fs::write(&conf, text).unwrap();
        // The only PKCS#11 user in this test binary: the module reads this at C_Initialize.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let st = std::process::Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", "pool"])
            .args(["--so-pin", "12345678", "--pin", "87654321"])
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        Some(Pkcs11Uri::parse(&format!("pkcs11:token=pool;object=k?module-path={module}")).unwrap())
    }

    #[test]
    fn concurrent_signers_each_borrow_a_session_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let Some(uri) = softhsm_token(dir.path()) else {
            return;
        };
        let (_root, key) = create_ca_keys(&uri, "87654321").unwrap();
        let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&key.point).unwrap();
        let threads = 4;
        let go = std::sync::Barrier::new(threads);
        std::thread::scope(|s| {
            for t in 0..threads {
                let (key, vk, go) = (&key, &vk, &go);
                s.spawn(move || {
                    go.wait();
                    for i in 0..25 {
                        let msg = format!("thread {t} message {i}");
                        let der = key.sign(msg.as_bytes()).unwrap();
                        let sig = p256::ecdsa::Signature::from_der(&der).unwrap();
                        vk.verify(msg.as_bytes(), &sig)
                            .expect("verifies on the host");
                    }
                });
            }
        });
        // Never more sessions than threads signing at once (the pool reuses them). How
        // many were needed depends on how the scheduler interleaved the threads (on a
        // loaded machine they may run one after another), so at least one.
        let open = key.login.sessions.lock().unwrap().len();
        assert!(
            (1..=threads).contains(&open),
            "{open} sessions for {threads} threads"
        );

        // A key the token refuses to sign with (here: a public-key object): rcgen sees
        // only "remote key error"; the caller gets the token's own cause, once.
        let public = key
            .login
            .with_session(|s| {
                s.find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY)])
                    .map_err(|e| failed(e, "finding", "test"))
            })
            .unwrap();
        let refused = TokenKey {
            login: key.login.clone(),
            key: public[0],
            point: key.point.clone(),
            uri: key.uri.clone(),
        };
        assert_eq!(refused.sign(b"no"), Err(rcgen::Error::RemoteKeyError));
        let e =
            crate::pki::signer::signing_failed("signing certificate", rcgen::Error::RemoteKeyError);
        assert!(e.to_string().contains(": signing: "), "{e}");
        assert!(take_sign_failure().is_none());
        let e =
            crate::pki::signer::signing_failed("signing certificate", rcgen::Error::RemoteKeyError);
        assert_eq!(e.to_string(), "signing certificate: Remote key error");
    }

    #[test]
    fn the_public_point_is_unwrapped_from_its_octet_string() {
        let mut point = vec![0x04];
        point.extend([7u8; 64]);
        let mut wrapped = vec![0x04, 65];
        wrapped.extend(&point);
        assert_eq!(unwrap_point(&wrapped), point);
        assert_eq!(unwrap_point(&point), point);
    }

    #[test]
    fn failures_an_operator_can_act_on_get_their_own_line() {
        use crate::error::exit;
        use cryptoki::context::Function;
        let t = "PKCS#11 token 'ca'";
        let e = failed(
            CkError::Pkcs11(RvError::PinIncorrect, Function::Login),
            "x",
            t,
        );
        assert_eq!(
            (e.to_string(), e.exit_code()),
            (format!("wrong PIN for {t}"), exit::CRYPTO)
        );
        let e = failed(CkError::Pkcs11(RvError::PinLocked, Function::Login), "x", t);
        assert!(
            e.to_string().contains("is locked") && e.exit_code() == exit::CRYPTO,
            "{e}"
        );
        let e = failed(
            CkError::Pkcs11(RvError::DeviceRemoved, Function::Sign),
            "x",
            t,
        );
        assert_eq!(
            (e.to_string(), e.exit_code()),
            (format!("{t} is absent"), exit::DEVICE)
        );
        let e = failed(
            CkError::Pkcs11(RvError::GeneralError, Function::Sign),
            "signing",
            t,
        );
        assert!(
            e.to_string().starts_with("PKCS#11 token 'ca': signing: "),
            "{e}"
        );
    }
}
