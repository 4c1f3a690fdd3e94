//! A simulated nRF91-style modem: the AT commands of the nrf91 device profile.

use rcgen::PublicKeyData;

use super::device::{Device, Reply};
use super::faults::Rng;
use super::Responder;
use crate::wire::nrf91::{cmng_sha, cose_for_csr, AT_MAX_LINE, TYPE_PRIVATE_KEY};

/// A plausible IMEI for simulated modem `i` (TAC 35265610, random serial part).
pub fn fake_imei(i: usize) -> String {
    let mut r = Rng::new();
    format!("35265610{:05}{:02}", r.next_u64() % 100_000, i % 100)
}

pub struct NrfResponder {
    pub dev: Device,
    buf: Vec<u8>,
    in_quotes: bool,
    overflow: bool,
    /// Functional mode: the modem boots active (1); credentials need offline (4).
    cfun: u8,
}

impl NrfResponder {
    pub fn new(dev: Device) -> NrfResponder {
        NrfResponder {
            dev,
            buf: Vec::new(),
            in_quotes: false,
            overflow: false,
            cfun: 1,
        }
    }

    fn reply(lines: &[String]) -> Reply {
        let mut s = String::new();
        for l in lines {
            s.push_str("\r\n");
            s.push_str(l);
        }
        s.push_str("\r\nOK\r\n");
        Reply {
            bytes: s.into_bytes(),
            ..Default::default()
        }
    }

    fn cme(code: u32) -> Reply {
        Reply {
            bytes: format!("\r\n+CME ERROR: {code}\r\n").into_bytes(),
            ..Default::default()
        }
    }

    fn error() -> Reply {
        Reply {
            bytes: b"\r\nERROR\r\n".to_vec(),
            ..Default::default()
        }
    }

    fn handle(&mut self, cmd: &str) -> Reply {
        let st = &mut self.dev.state;
        let upper = cmd
            .get(..cmd.find(['=', '?']).unwrap_or(cmd.len()))
            .unwrap_or("")
            .to_ascii_uppercase();
        let arg = cmd.split_once('=').map(|(_, a)| a).unwrap_or("");
        match upper.as_str() {
            "AT" => Self::reply(&[]),
            "AT+CGSN" => Self::reply(&[format!("+CGSN: \"{}\"", st.hardware_id)]),
            "AT+CGMM" => Self::reply(std::slice::from_ref(&st.model)),
            "AT+CGMR" => Self::reply(std::slice::from_ref(&st.firmware)),
            "AT+CFUN" if cmd.ends_with('?') => Self::reply(&[format!("+CFUN: {}", self.cfun)]),
            "AT+CFUN" => match arg.parse::<u8>() {
                Ok(n @ (0 | 1 | 4)) => {
                    self.cfun = n;
                    Self::reply(&[])
                }
                _ => Self::error(),
            },
            "AT%KEYGEN" => {
                let p: Vec<&str> = arg.split(',').collect();
                if p.len() < 2 || p[1] != "2" || p[0].parse::<u32>().is_err() {
                    return Self::error();
                }
                if self.cfun != 4 && self.cfun != 0 {
                    return Self::cme(518);
                }
                let Ok(kp) = crate::pki::keys::generate() else {
                    return Self::cme(520);
                };
                let csr_key = if self.dev.faults.csr_wrong_key {
                    self.dev.faults.csr_wrong_key = false;
                    match crate::pki::keys::generate() {
                        Ok(k) => k,
                        Err(_) => return Self::cme(520),
                    }
                } else {
                    match rcgen::KeyPair::try_from(kp.serialize_der().as_slice()) {
                        Ok(k) => k,
                        Err(_) => return Self::cme(520),
                    }
                };
                let Ok(params) = rcgen::CertificateParams::new(Vec::<String>::new()) else {
                    return Self::cme(520);
                };
                let Ok(csr) = params.serialize_request(&csr_key) else {
                    return Self::cme(520);
                };
                let csr = csr.der().to_vec();
                // The COSE is made by the key the modem keeps (so a wrong-key CSR shows).
                let Ok(cose) = cose_for_csr(&kp.serialize_der(), &csr) else {
                    return Self::cme(520);
                };
                let _ = kp.subject_public_key_info();
                st.key = Some(kp.serialize_der());
                self.dev.save();
                use base64::Engine;
                let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                let csr_text = if self.dev.faults.bad_base64 {
                    self.dev.faults.bad_base64 = false;
                    "!!not base64!!".to_string()
                } else {
                    e.encode(&csr)
                };
                Self::reply(&[format!("%KEYGEN: \"{csr_text}.{}\"", e.encode(&cose))])
            }
            "AT%CMNG" => {
                let mut p = arg.splitn(4, ',');
                let op = p.next().unwrap_or("");
                let tag = p.next().and_then(|t| t.trim().parse::<u32>().ok());
                let kind = p.next().and_then(|t| t.trim().parse::<u8>().ok());
                match op {
                    "0" => {
                        let (Some(tag), Some(kind)) = (tag, kind) else {
                            return Self::error();
                        };
                        let Some(content) = p
                            .next()
                            .and_then(|c| c.strip_prefix('"'))
                            .and_then(|c| c.strip_suffix('"'))
                        else {
                            return Self::error();
                        };
                        if self.cfun != 4 && self.cfun != 0 {
                            return Self::cme(518);
                        }
                        if kind > 2 {
                            return Self::cme(513);
                        }
                        if kind == TYPE_PRIVATE_KEY {
                            let Ok(der) =
                                crate::pki::keys::read_private_key_pem(content, None, "key")
                            else {
                                return Self::cme(514);
                            };
                            st.key = Some(der.to_vec());
                        }
                        st.cmng.insert(format!("{tag},{kind}"), content.to_string());
                        self.dev.save();
                        Self::reply(&[])
                    }
                    "1" => {
                        let lines: Vec<String> = self
                            .dev
                            .state
                            .cmng
                            .iter()
                            .filter_map(|(k, v)| {
                                let (t, ty) = k.split_once(',')?;
                                let t: u32 = t.parse().ok()?;
                                if tag.is_some_and(|want| want != t) {
                                    return None;
                                }
                                let mut sha = cmng_sha(v);
                                if self.dev.faults.hash_mismatch && ty == "1" {
                                    self.dev.faults.hash_mismatch = false;
                                    sha.replace_range(
                                        0..1,
                                        if sha.starts_with('0') { "1" } else { "0" },
                                    );
                                }
                                Some(format!("%CMNG: {t},{ty},\"{sha}\""))
                            })
                            .collect();
                        Self::reply(&lines)
                    }
                    "3" => {
                        let (Some(tag), Some(kind)) = (tag, kind) else {
                            return Self::error();
                        };
                        if self.cfun != 4 && self.cfun != 0 {
                            return Self::cme(518);
                        }
                        if st.cmng.remove(&format!("{tag},{kind}")).is_none() {
                            return Self::cme(513);
                        }
                        self.dev.save();
                        Self::reply(&[])
                    }
                    _ => Self::error(),
                }
            }
            _ => Self::error(),
        }
    }

    fn step_name(cmd: &str) -> &'static str {
        let u = cmd.to_ascii_uppercase();
        if u.starts_with("AT%KEYGEN") {
            "keygen"
        } else if u.starts_with("AT%CMNG=0") {
            "cmng-write"
        } else if u.starts_with("AT%CMNG=1") {
            "cmng-list"
        } else if u.starts_with("AT+CGSN") {
            "hello"
        } else {
            "other"
        }
    }
}

impl Responder for NrfResponder {
    fn feed(&mut self, data: &[u8]) -> Vec<(usize, Reply)> {
        let mut out = Vec::new();
        for &b in data {
            let end = (b == b'\r' || b == b'\n') && !self.in_quotes;
            if !end {
                if b == b'"' {
                    self.in_quotes = !self.in_quotes;
                }
                if self.buf.len() >= AT_MAX_LINE {
                    self.overflow = true;
                } else {
                    self.buf.push(b);
                }
                continue;
            }
            if self.overflow {
                self.overflow = false;
                self.in_quotes = false;
                let n = self.buf.len();
                self.buf.clear();
                out.push((n, Self::error()));
                continue;
            }
            if self.buf.is_empty() {
                continue;
            }
            let line = std::mem::take(&mut self.buf);
            let cost = line.len() + 2;
            let cmd = String::from_utf8_lossy(&line).trim().to_string();
            if self.dev.faults.long_line && Self::step_name(&cmd) == "hello" {
                self.dev.faults.long_line = false;
                out.push((
                    cost,
                    Reply {
                        bytes: vec![b'A'; 1 << 20],
                        ..Default::default()
                    },
                ));
                continue;
            }
            let mut reply = self.handle(&cmd);
            if self.dev.step(Self::step_name(&cmd)) {
                reply.hangup = true;
            }
            out.push((cost, reply));
        }
        out
    }

    fn device(&mut self) -> &mut Device {
        &mut self.dev
    }
}
