//! DKIM private keys: loading the PEM (PKCS#8, ed25519 or RSA) a `[[dkim]]` entry names, and
//! making new ones for `mailflow dkim keygen` with the DNS TXT record to publish.
//!
//! Security: key files are secrets; errors name the file, never its content.

use std::path::{Path, PathBuf};

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

use crate::config::{DkimAlgorithm, DkimConfig};

/// A key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("[[dkim]] {domain}: key file {path}: cannot read: {source}")]
    Read { domain: String, path: PathBuf, source: std::io::Error },
    #[error("[[dkim]] {domain}: key file {path}: {message}")]
    Parse { domain: String, path: PathBuf, message: String },
    #[error("cannot generate a key: {0}")]
    Generate(String),
}

/// A loaded private key.
pub enum DkimKey {
    Ed25519(Ed25519Key),
    Rsa(RsaKey<Sha256>),
}

/// Reads and parses the key of `config` (blocking).
pub fn load(config: &DkimConfig) -> Result<DkimKey, KeyError> {
    let parse_error =
        |message: String| KeyError::Parse { domain: config.domain.clone(), path: config.key.clone(), message };
    let pem = std::fs::read(&config.key).map_err(|source| KeyError::Read {
        domain: config.domain.clone(),
        path: config.key.clone(),
        source,
    })?;
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| parse_error(format!("not a PEM private key ({e})")))?;
    match (config.algorithm, der) {
        (DkimAlgorithm::Ed25519Sha256, PrivateKeyDer::Pkcs8(der)) => {
            // "maybe unchecked": accepts PKCS#8 v1 (OpenSSL) as well as v2 (with public key).
            Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_pkcs8_der())
                .map(DkimKey::Ed25519)
                .map_err(|e| parse_error(format!("not an ed25519 PKCS#8 key ({e})")))
        }
        (DkimAlgorithm::Ed25519Sha256, _) => Err(parse_error("ed25519 keys must be PKCS#8 (BEGIN PRIVATE KEY)".into())),
        (DkimAlgorithm::RsaSha256, der) => RsaKey::<Sha256>::from_key_der(der)
            .map(DkimKey::Rsa)
            .map_err(|e| parse_error(format!("not an RSA key ({e})"))),
    }
}

impl DkimKey {
    /// The `p=` value of the DNS record: the raw 32-byte key for ed25519 (RFC 8463), the
    /// SubjectPublicKeyInfo DER for RSA (RFC 6376).
    pub fn public_record_value(&self) -> String {
        use base64::Engine as _;
        let bytes = match self {
            DkimKey::Ed25519(key) => key.public_key(),
            DkimKey::Rsa(key) => rsa_spki(&key.public_key()),
        };
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}

/// `v=DKIM1; k=…; p=…` for `algorithm`.
pub fn txt_value(algorithm: DkimAlgorithm, p: &str) -> String {
    let k = match algorithm {
        DkimAlgorithm::Ed25519Sha256 => "ed25519",
        DkimAlgorithm::RsaSha256 => "rsa",
    };
    format!("v=DKIM1; k={k}; p={p}")
}

/// The zone-file line to publish: `selector._domainkey.domain. IN TXT "…"`, the value split
/// into quoted strings of at most 255 characters (a TXT string's limit).
pub fn dns_record(domain: &str, selector: &str, value: &str) -> String {
    let chunks: Vec<String> =
        value.as_bytes().chunks(255).map(|c| format!("\"{}\"", String::from_utf8_lossy(c))).collect();
    format!("{selector}._domainkey.{domain}. IN TXT ( {} )", chunks.join(" "))
}

/// A new private key as PKCS#8 PEM.
pub fn generate(algorithm: DkimAlgorithm) -> Result<String, KeyError> {
    let der = match algorithm {
        DkimAlgorithm::Ed25519Sha256 => Ed25519Key::generate_pkcs8().map_err(|e| KeyError::Generate(e.to_string()))?,
        DkimAlgorithm::RsaSha256 => {
            let pair = mail_auth::dkim::generate::DkimKeyPair::generate_rsa(2048)
                .map_err(|e| KeyError::Generate(e.to_string()))?;
            rsa_pkcs8(pair.private_key())
        }
    };
    Ok(pem("PRIVATE KEY", &der))
}

/// Writes `pem` to `path` with mode 0600, refusing to overwrite an existing file.
pub fn write_new(path: &Path, pem: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(pem.as_bytes())?;
    file.sync_all()
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = text.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap_or("")).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// DER of the rsaEncryption AlgorithmIdentifier: SEQUENCE { OID 1.2.840.113549.1.1.1, NULL }.
const RSA_ALGORITHM: &[u8] =
    &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];

/// PKCS#1 RSAPrivateKey → PKCS#8 PrivateKeyInfo (version 0, the algorithm, the key).
fn rsa_pkcs8(pkcs1: &[u8]) -> Vec<u8> {
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend_from_slice(RSA_ALGORITHM);
    body.extend(der_tlv(0x04, pkcs1));
    der_tlv(0x30, &body)
}

/// PKCS#1 RSAPublicKey → SubjectPublicKeyInfo.
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    let mut bits = vec![0u8];
    bits.extend_from_slice(pkcs1);
    let mut body = RSA_ALGORITHM.to_vec();
    body.extend(der_tlv(0x03, &bits));
    der_tlv(0x30, &body)
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_ed25519_key_loads_and_has_a_32_byte_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        write_new(&path, &generate(DkimAlgorithm::Ed25519Sha256).unwrap()).unwrap();
        let config = DkimConfig {
            domain: "example.org".into(),
            selector: "s".into(),
            key: path.clone(),
            algorithm: DkimAlgorithm::Ed25519Sha256,
        };
        let key = load(&config).unwrap();
        assert_eq!(key.public_record_value().len(), 44);
        assert!(write_new(&path, "x").is_err(), "an existing key is never overwritten");
        let missing = DkimConfig { key: dir.path().join("none.pem"), ..config };
        let err = load(&missing).err().unwrap().to_string();
        assert!(err.contains("none.pem"), "{err}");
    }

    #[test]
    fn long_records_are_split_into_255_character_strings() {
        let value = "p".repeat(400);
        let record = dns_record("example.org", "s1", &value);
        assert!(record.starts_with("s1._domainkey.example.org. IN TXT ( \""), "{record}");
        assert_eq!(record.matches('"').count(), 4);
    }
}
