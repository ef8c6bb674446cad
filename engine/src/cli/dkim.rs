//! `mailflow dkim keygen`: a new DKIM private key (PKCS#8 PEM, mode 0600) and the DNS TXT
//! record that publishes its public half.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::config::{DkimAlgorithm, DkimConfig};
use crate::outbound::signing::keys;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KeyAlgorithm {
    Ed25519,
    Rsa,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// The signing domain (`d=`).
    #[arg(long)]
    pub domain: String,
    /// The selector (`s=`): the record is published at SELECTOR._domainkey.DOMAIN.
    #[arg(long)]
    pub selector: String,
    #[arg(long, value_enum, default_value = "ed25519")]
    pub algorithm: KeyAlgorithm,
    /// Where to write the key (default: dkim/DOMAIN.SELECTOR.key). An existing file is never
    /// overwritten.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Returns the process exit code.
pub fn keygen(args: &KeygenArgs) -> i32 {
    let algorithm = match args.algorithm {
        KeyAlgorithm::Ed25519 => DkimAlgorithm::Ed25519Sha256,
        KeyAlgorithm::Rsa => DkimAlgorithm::RsaSha256,
    };
    let domain = args.domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let path = args.out.clone().unwrap_or_else(|| PathBuf::from(format!("dkim/{domain}.{}.key", args.selector)));
    let result = keys::generate(algorithm).and_then(|pem| {
        keys::write_new(&path, &pem).map_err(|e| keys::KeyError::Generate(format!("{}: {e}", path.display())))?;
        let config =
            DkimConfig { domain: domain.clone(), selector: args.selector.clone(), key: path.clone(), algorithm };
        keys::load(&config)
    });
    match result {
        Ok(key) => {
            let value = keys::txt_value(algorithm, &key.public_record_value());
            crate::errln!(
                "wrote {} ({}); publish this record, then add to mailflow.toml:",
                path.display(),
                algorithm.name()
            );
            crate::errln!(
                "  [[dkim]]\n  domain = \"{domain}\"\n  selector = \"{}\"\n  key = \"{}\"\n  algorithm = \"{}\"",
                args.selector,
                path.display(),
                algorithm.name()
            );
            crate::outln!("{}", keys::dns_record(&domain, &args.selector, &value));
            0
        }
        Err(e) => {
            crate::errln!("mailflow dkim keygen: {e}");
            1
        }
    }
}
