//! The cost of DKIM-signing an outgoing auto-reply (issue #22): one ed25519 and one RSA-2048
//! signature over a ~1 KB reply, as the queue does it before storing the entry.
//! `cargo bench -p mailflow --bench dkim_sign`. Target: under 0.5 ms per message (ed25519).

use criterion::{criterion_group, criterion_main, Criterion};
use mailflow::config::{Config, DkimAlgorithm, DkimConfig};
use mailflow::outbound::signing::keys;
use mailflow::outbound::Signer;

const REPLY: &str = "From: me@example.org\r\nTo: alice@remote.example\r\nSubject: Auto: are you there?\r\n\
Date: Mon, 1 Dec 2025 10:00:00 +0000\r\nMessage-ID: <r1@example.org>\r\nIn-Reply-To: <m1@remote.example>\r\n\
References: <m1@remote.example>\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\r\n";

fn signer(dir: &std::path::Path, algorithm: DkimAlgorithm) -> Signer {
    let key = dir.join(format!("{}.key", algorithm.name()));
    keys::write_new(&key, &keys::generate(algorithm).expect("keygen")).expect("write key");
    let config = Config {
        dkim: vec![DkimConfig { domain: "example.org".into(), selector: "s1".into(), key, algorithm }],
        ..Config::default()
    };
    let (signer, errors) = Signer::from_config(&config);
    assert!(errors.is_empty());
    signer
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let message = format!("{REPLY}{}", "I am away until Monday and will answer then.\r\n".repeat(20));
    for algorithm in [DkimAlgorithm::Ed25519Sha256, DkimAlgorithm::RsaSha256] {
        let signer = signer(dir.path(), algorithm);
        c.bench_function(&format!("dkim_sign/reply/{}", algorithm.name()), |b| {
            b.iter(|| signer.dkim_header(message.as_bytes()).expect("signed"))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
