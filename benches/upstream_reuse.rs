//! Messages per second through the delivery stage to an implicit-TLS upstream: one
//! reused connection (`max_messages_per_connection = 1000`) against a new connection,
//! TCP and TLS handshake per message (`max_messages_per_connection = 1`).
//!
//! The upstream is an in-process TLS sink on 127.0.0.1 that accepts everything.
//! Run: `cargo bench --bench upstream_reuse`.

use std::io::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use smarthost::config::{ConfigSource, load};
use smarthost::deliver::Deliverer;
use smarthost::message::{Envelope, Message, QueueId};
use smarthost::proto::{Address, ReversePath};

/// A TLS SMTP sink: greets, offers PIPELINING, accepts every transaction.
async fn sink(listener: TcpListener, acceptor: TlsAcceptor) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let (read, mut write) = tokio::io::split(tls);
            let mut read = BufReader::new(read);
            let _ = write.write_all(b"220 sink ESMTP\r\n").await;
            let mut line = String::new();
            loop {
                line.clear();
                if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                let reply: &[u8] = match verb.as_str() {
                    "EHLO" => {
                        b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n"
                    }
                    "DATA" => {
                        let _ = write.write_all(b"354 go\r\n").await;
                        let mut body = Vec::new();
                        loop {
                            let mut chunk = Vec::new();
                            if read.read_until(b'\n', &mut chunk).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if chunk == b".\r\n" {
                                break;
                            }
                            body.extend_from_slice(&chunk);
                        }
                        b"250 2.0.0 ok\r\n"
                    }
                    "QUIT" => {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        return;
                    }
                    _ => b"250 ok\r\n",
                };
                if write.write_all(reply).await.is_err() {
                    return;
                }
                let _ = write.flush().await;
            }
        });
    }
}

fn message(size: usize) -> Message {
    let mut content =
        b"From: <app@example.com>\r\nTo: <user@example.net>\r\nSubject: bench\r\n\r\n".to_vec();
    while content.len() < size {
        content.extend_from_slice(
            b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n",
        );
    }
    Message {
        id: QueueId::generate(),
        envelope: Envelope {
            sender: ReversePath::Mailbox(Address::parse("app@example.com").unwrap()),
            recipients: vec![Address::parse("user@example.net").unwrap()],
            smtputf8: false,
            eight_bit: false,
            route: None,
        },
        content,
        body: None,
        received_at: SystemTime::now(),
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, cert.cert.pem()).unwrap();
    let server_config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into()),
        )
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server_config));
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(sink(listener, acceptor));

    let deliverer = |per_connection: usize| {
        let path = dir.path().join(format!("c{per_connection}.toml"));
        let mut f = std::fs::File::create(&path).unwrap();
        write!(
            f,
            "[[upstream]]\nurl = \"smtps://localhost:{port}\"\nca_file = \"{}\"\nmax_messages_per_connection = {per_connection}\n",
            ca_path.display()
        )
        .unwrap();
        let config = load(&ConfigSource::File(path), &[]).unwrap();
        Deliverer::from_config(&config, Default::default()).unwrap()
    };

    let mut group = c.benchmark_group("upstream_tls_4KiB");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.measurement_time(std::time::Duration::from_secs(4));
    let msg = std::sync::Arc::new(message(4096));
    for (label, per_connection) in [
        ("reused_connection", 1000),
        ("new_connection_per_message", 1),
    ] {
        let d = deliverer(per_connection);
        group.bench_function(label, |b| {
            b.iter(|| {
                let report = rt.block_on(d.deliver(msg.clone()));
                assert!(report.all_delivered());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
