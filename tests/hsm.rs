//! CA keys on a PKCS#11 token: a real SoftHSM2 token in a temp dir (SOFTHSM2_CONF),
//! `openssl verify` / `openssl crl -verify` on what it signs, and pkcs11-tool (OpenSC)
//! showing the keys are sensitive and never extractable.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{openssl, Env};

const PIN: &str = "314159";
const SO_PIN: &str = "271828";

/// The SoftHSM2 module: CRADLE_TEST_SOFTHSM_MODULE (set by .ci/run), else Debian's path.
fn module() -> Option<PathBuf> {
    let m = std::env::var_os("CRADLE_TEST_SOFTHSM_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
    let tools = ["softhsm2-util", "pkcs11-tool"]
        .iter()
        .all(|t| Command::new(t).arg("--help").output().is_ok());
    if m.is_file() && tools {
        return Some(m);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "SoftHSM2 module {} or softhsm2-util / pkcs11-tool missing (.ci/run installs softhsm2 and opensc)",
        m.display()
    );
    eprintln!("skipping: SoftHSM2 not installed (apt-get install softhsm2 opensc)");
    None
}

/// A SoftHSM2 token store in its own temp dir, with one initialised token.
struct Hsm {
    _dir: tempfile::TempDir,
    conf: PathBuf,
    module: PathBuf,
}

impl Hsm {
    fn new(label: &str) -> Option<Hsm> {
        let module = module()?;
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let h = Hsm {
            _dir: dir,
            conf,
            module,
        };
        h.add_token(label);
        Some(h)
    }

    fn add_token(&self, label: &str) {
        let o = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", label])
            .args(["--so-pin", SO_PIN, "--pin", PIN])
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    /// A URI for `object` on `token` (module-path in the query, as RFC 7512 puts it).
    fn uri(&self, token: &str, object: &str) -> String {
        format!(
            "pkcs11:token={token};object={object}?module-path={}",
            self.module.display()
        )
    }

    /// A home whose commands see this token store, with the PIN in a file.
    fn env(&self) -> Env {
        let e = Env::init().with_var("SOFTHSM2_CONF", self.conf.to_str().unwrap());
        std::fs::write(e.path("hsm.pin"), format!("{PIN}\n")).unwrap();
        private(&e.path("hsm.pin"));
        e
    }

    /// `pkcs11-tool -O` on token `label`: every object with its attributes.
    fn objects(&self, label: &str) -> String {
        let o = Command::new("pkcs11-tool")
            .arg("--module")
            .arg(&self.module)
            .args(["--token-label", label, "--login", "--pin", PIN, "-O"])
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }
}

/// The objects of a `pkcs11-tool -O` listing, one string each (a heading line and
/// its indented attributes).
fn each_object(listing: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in listing.lines() {
        match out.last_mut() {
            Some(o) if line.starts_with(' ') => {
                o.push_str(line);
                o.push('\n');
            }
            _ => out.push(format!("{line}\n")),
        }
    }
    out
}

fn pin(e: &Env) -> String {
    e.path("hsm.pin").to_str().unwrap().to_string()
}

/// `cradle ca init --hsm` on `token` with the keys labelled OBJECT-root / -issuing.
fn ca_on_token(h: &Hsm, e: &Env, token: &str, object: &str) -> serde_json::Value {
    e.json(&[
        "ca",
        "init",
        "--name",
        "Token",
        "--hsm",
        &h.uri(token, object),
        "--pin-file",
        &pin(e),
    ])
}

fn verify(e: &Env, extra: &[&str], certs: &[&Path]) -> (bool, String) {
    let chain = e.home.join("ca/chain.pem");
    let root = e.home.join("ca/root.pem");
    let mut a = vec![
        "verify",
        "-CAfile",
        root.to_str().unwrap(),
        "-untrusted",
        chain.to_str().unwrap(),
    ];
    a.extend_from_slice(extra);
    a.extend(certs.iter().map(|c| c.to_str().unwrap()));
    openssl(&a)
}

#[test]
fn a_ca_on_a_token_signs_everything_and_its_keys_never_leave_it() {
    let Some(h) = Hsm::new("ca") else { return };
    let e = h.env();
    let p = pin(&e);
    let v = ca_on_token(&h, &e, "ca", "acme");
    let uri = v["key_uri"].as_str().unwrap().to_string();
    assert!(
        uri.starts_with("pkcs11:token=ca;object=acme-issuing;id=%")
            && uri.ends_with("libsofthsm2.so"),
        "{uri}"
    );

    // No key files: the registry records the keys' URIs.
    for f in ["root.key", "issuing.key"] {
        assert!(!e.home.join("ca").join(f).exists(), "{f} written");
    }
    let recorded = e.sql("SELECT role, key_file FROM cas ORDER BY id");
    assert!(
        recorded.contains("root|pkcs11:token=ca;object=acme-root;id=%"),
        "{recorded}"
    );
    assert!(recorded.contains(&format!("issuing|{uri}")), "{recorded}");

    // The token holds both private keys: sensitive, never extractable, signing only.
    let objects = h.objects("ca");
    for label in ["acme-root", "acme-issuing"] {
        let private = each_object(&objects)
            .into_iter()
            .find(|o| {
                o.starts_with("Private Key Object") && o.contains(&format!("label:      {label}\n"))
            })
            .unwrap_or_else(|| panic!("no private key {label}:\n{objects}"));
        assert!(private.contains("EC"), "{private}");
        assert!(
            private.contains("Access:     sensitive, always sensitive, never extractable, local"),
            "{private}"
        );
        assert!(private.contains("Usage:      sign\n"), "{private}");
    }

    // identity issue, batch and sign-csr: openssl verifies what the token signed.
    e.ok(&["identity", "issue", "T-1", "--out", "one", "--pin-file", &p]);
    e.ok(&[
        "identity",
        "batch",
        "--count",
        "40",
        "--serial-pattern",
        "B-{seq:03}",
        "--out",
        "many",
        "--pin-file",
        &p,
    ]);
    let csr = e.path("dev.csr");
    let (ok, out) = openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        e.path("dev.key").to_str().unwrap(),
        "-subj",
        "/CN=CSR-1",
        "-out",
        csr.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    e.ok(&[
        "identity",
        "sign-csr",
        "CSR-1",
        "--csr",
        csr.to_str().unwrap(),
        "-o",
        "csr.pem",
        "--pin-file",
        &p,
    ]);
    let mut certs: Vec<PathBuf> = (1..=40)
        .map(|i| e.path(&format!("many/B-{i:03}.pem")))
        .collect();
    certs.push(e.path("one/T-1.pem"));
    certs.push(e.path("csr.pem"));
    let refs: Vec<&Path> = certs.iter().map(PathBuf::as_path).collect();
    let (ok, out) = verify(&e, &[], &refs);
    assert!(ok && out.matches(": OK").count() == 42, "{out}");

    // Revocation republishes the CRL, signed on the token (PIN from the environment).
    let o = e
        .cmd(&["revoke", "B-007", "--reason", "key-compromise"])
        .env("CRADLE_PKCS11_PIN", PIN)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let crl = e.home.join("ca/crl.pem");
    let chain = e.home.join("ca/chain.pem");
    let (ok, out) = openssl(&[
        "crl",
        "-in",
        crl.to_str().unwrap(),
        "-CAfile",
        chain.to_str().unwrap(),
        "-noout",
        "-verify",
    ]);
    assert!(ok && out.contains("verify OK"), "{out}");
    let revoked = e.path("many/B-007.pem");
    let (ok, out) = verify(
        &e,
        &["-crl_check", "-CRLfile", crl.to_str().unwrap()],
        &[&revoked],
    );
    assert!(!ok && out.contains("certificate revoked"), "{out}");
    e.ok(&["ca", "crl", "--pin-file", &p]);

    // The PIN is nowhere: not in the registry, not in what cradle printed.
    assert!(!e.dump().contains(PIN), "PIN in the registry");
    let shown = e.ok(&["--json", "ca", "show"]);
    assert!(shown.contains(&uri) && !shown.contains(PIN), "{shown}");
    let shown = e.ok(&["ca", "show"]);
    assert!(
        shown.contains(&format!("  key          {uri}\n")),
        "{shown}"
    );
}

#[test]
fn a_token_ca_provisions_a_device_over_a_pty() {
    let Some(h) = Hsm::new("ca") else { return };
    let e = h.env();
    ca_on_token(&h, &e, "ca", "prov");
    let sim = common::Sim::start(&e, &["--hardware-id", "HW-TOK-1"], 1);
    let port = sim.paths[0].to_str().unwrap().to_string();
    let v = e.json(&[
        "provision",
        "--pin-file",
        &pin(&e),
        "--baud",
        common::SIM_BAUD,
        "--timeout",
        "2",
        "--port",
        &port,
    ]);
    assert_eq!(v[0]["result"], "PASS", "{v:#}");
    let der = hex::decode(e.sql("SELECT hex(der) FROM certificates").trim()).unwrap();
    std::fs::write(e.path("dev.der"), der).unwrap();
    let out = e.path("dev.pem");
    let (ok, text) = openssl(&[
        "x509",
        "-inform",
        "DER",
        "-in",
        e.path("dev.der").to_str().unwrap(),
        "-out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let (ok, text) = verify(&e, &[], &[&out]);
    assert!(ok, "{text}");
}

#[test]
fn wrong_pin_absent_token_missing_module_and_refused_uris_each_get_one_line() {
    let Some(h) = Hsm::new("ca") else { return };
    let e = h.env();
    let bad_pin = e.path("bad.pin");
    std::fs::write(&bad_pin, "000000\n").unwrap();
    private(&bad_pin);
    let before = e.dump();

    let init = |uri: &str, pin: &Path, code: i32| {
        let err = e.fails(
            &[
                "ca",
                "init",
                "--name",
                "X",
                "--hsm",
                uri,
                "--pin-file",
                pin.to_str().unwrap(),
            ],
            code,
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        err
    };
    let err = init(&h.uri("ca", "x"), &bad_pin, 5);
    assert!(
        err.contains("wrong PIN for PKCS#11 token 'ca'") && !err.contains("000000"),
        "{err}"
    );
    let err = init(&h.uri("elsewhere", "x"), &e.path("hsm.pin"), 6);
    assert!(
        err.contains("PKCS#11 token 'elsewhere' is absent (tokens present: 'ca')"),
        "{err}"
    );
    let err = init(
        "pkcs11:token=ca;object=x?module-path=/nonexistent/libpkcs11.so",
        &e.path("hsm.pin"),
        8,
    );
    assert!(
        err.contains("/nonexistent/libpkcs11.so: no such PKCS#11 module"),
        "{err}"
    );
    // A file that is not a PKCS#11 library.
    let not_a_module = format!(
        "pkcs11:token=ca;object=x?module-path={}",
        e.path("hsm.pin").display()
    );
    let err = init(&not_a_module, &e.path("hsm.pin"), 5);
    assert!(err.contains("cannot load it as a PKCS#11 module"), "{err}");
    let err = init(
        &format!("{}&pin-value={PIN}", h.uri("ca", "x")),
        &e.path("hsm.pin"),
        3,
    );
    assert!(
        err.contains("'pin-value' is refused") && !err.contains(PIN),
        "{err}"
    );
    // No PIN source and no terminal: told where a PIN may come from.
    let err = e.fails(
        &["ca", "init", "--name", "X", "--hsm", &h.uri("ca", "x")],
        3,
    );
    assert!(
        err.contains("--pin-file FILE or set CRADLE_PKCS11_PIN"),
        "{err}"
    );
    assert_eq!(e.dump(), before, "a refused ca init changed the registry");
    assert!(
        !h.objects("ca").contains("label:"),
        "keys left on the token"
    );

    // A CA on the token, then the same failures when signing.
    ca_on_token(&h, &e, "ca", "acme");
    let before = e.dump();
    let issue = |pin: &Path, code: i32| {
        e.fails(
            &[
                "identity",
                "issue",
                "T-1",
                "--out",
                "o",
                "--pin-file",
                pin.to_str().unwrap(),
            ],
            code,
        )
    };
    let err = issue(&bad_pin, 5);
    assert_eq!(
        err.trim_end(),
        "cradle: error: cannot unlock the issuing CA: wrong PIN for PKCS#11 token 'ca'"
    );
    // The token's store gone (unplugged): absent, exit 6.
    let moved = h.conf.with_extension("moved");
    std::fs::rename(&h.conf, &moved).unwrap();
    let empty = h.conf.parent().unwrap().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(
        &h.conf,
        format!(
            "directories.tokendir = {}\nlog.level = ERROR\n",
            empty.display()
        ),
    )
    .unwrap();
    let err = issue(&e.path("hsm.pin"), 6);
    assert!(err.contains("PKCS#11 token 'ca' is absent"), "{err}");
    std::fs::rename(&moved, &h.conf).unwrap();
    assert_eq!(e.dump(), before, "a failed unlock changed the registry");
    assert!(!e.path("o/T-1.pem").exists() && !e.path("o/T-1.key").exists());
    e.ok(&[
        "identity",
        "issue",
        "T-1",
        "--out",
        "o",
        "--pin-file",
        &pin(&e),
    ]);

    // A second ca init on the same labels is refused before touching the token.
    let other = h.env();
    let err = other.fails(
        &[
            "ca",
            "init",
            "--name",
            "Y",
            "--hsm",
            &h.uri("ca", "acme"),
            "--pin-file",
            &pin(&other),
        ],
        7,
    );
    assert!(
        err.contains("already holds a key labelled 'acme-root'"),
        "{err}"
    );
}

#[test]
fn import_uses_an_existing_token_key_only_when_it_matches_the_certificate() {
    let Some(h) = Hsm::new("ca") else { return };
    let src = h.env();
    let v = ca_on_token(&h, &src, "ca", "acme");
    let issuing_uri = v["key_uri"].as_str().unwrap().to_string();
    let cert = src.home.join("ca/issuing.pem");
    let root = src.home.join("ca/root.pem");

    let dst = h.env();
    let p = pin(&dst);
    let import = |uri: &str| {
        vec![
            "ca".to_string(),
            "import".into(),
            "--cert".into(),
            cert.to_str().unwrap().into(),
            "--chain".into(),
            root.to_str().unwrap().into(),
            "--hsm".into(),
            uri.into(),
            "--pin-file".into(),
            p.clone(),
        ]
    };
    fn args(a: &[String]) -> Vec<&str> {
        a.iter().map(String::as_str).collect()
    }
    // The root key is on the token too, but it is not the issuing certificate's key.
    let err = dst.fails(&args(&import(&h.uri("ca", "acme-root"))), 5);
    assert!(err.contains("does not match the certificate"), "{err}");
    let err = dst.fails(&args(&import(&h.uri("ca", "nothing"))), 5);
    assert!(
        err.contains("no key 'nothing' on PKCS#11 token 'ca'"),
        "{err}"
    );
    let err = dst.fails(
        &[
            "ca",
            "import",
            "--cert",
            cert.to_str().unwrap(),
            "--hsm",
            &issuing_uri,
            "--key",
            "k",
        ],
        2,
    );
    assert!(err.contains("cannot be used with"), "{err}");
    assert!(dst.sql("SELECT count(*) FROM cas").trim() == "0");

    // module-path as a path attribute, as step-ca writes it.
    let step_style = format!(
        "pkcs11:module-path={};token=ca;object=acme-issuing",
        h.module.display()
    );
    dst.ok(&args(&import(&step_style)));
    assert!(!dst.home.join("ca/issuing.key").exists());
    dst.ok(&["identity", "issue", "I-1", "--out", "o", "--pin-file", &p]);
    let (ok, out) = verify(&dst, &[], &[&dst.path("o/I-1.pem")]);
    assert!(ok, "{out}");
    let recorded = dst.sql("SELECT key_file FROM cas WHERE role = 'issuing'");
    assert_eq!(recorded.trim(), issuing_uri, "recorded in canonical form");
}

/// A secret's file as it should be: only its owner may read it.
fn private(p: &std::path::Path) {
    std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

#[test]
fn a_token_ca_renews_through_the_signer_seam() {
    let Some(h) = Hsm::new("ca") else { return };
    let e = h.env();
    ca_on_token(&h, &e, "ca", "renew");
    e.ok(&[
        "identity",
        "batch",
        "--count",
        "3",
        "--serial-pattern",
        "TR-{seq}",
        "--bundle",
        "b.jsonl",
        "--pin-file",
        &pin(&e),
    ]);
    let v = e.json(&[
        "renew",
        "--expiring-within",
        "100000",
        "--out",
        "renewed",
        "--revoke-old",
        "--pin-file",
        &pin(&e),
    ]);
    assert_eq!(
        (v["renewed"].clone(), v["revoked_old"].clone()),
        (3.into(), 3.into())
    );
    let files: Vec<std::path::PathBuf> = (1..=3)
        .map(|i| e.path(&format!("renewed/TR-{i}.pem")))
        .collect();
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let (ok, text) = verify(&e, &[], &refs);
    assert!(ok && text.matches(": OK").count() == 3, "{text}");
    // The CRL the token signed lists the three superseded certificates.
    let (ok, text) = openssl(&[
        "crl",
        "-in",
        e.home.join("ca/crl.pem").to_str().unwrap(),
        "-noout",
        "-text",
    ]);
    assert!(ok && text.matches("Superseded").count() == 3, "{text}");
}
