//! PROXY protocol: a trusted proxy's header decides which client `trusted_networks`
//! judges; anyone else cannot claim an address.

pub mod support;

use std::sync::Arc;

use support::{HANG_GUARD, TestConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

async fn relay(dir: &std::path::Path, trusted_proxies: &str) -> smarthost::RelayHandle {
    let config = TestConfig::new(dir)
        .toml(&format!(
            "[server]\ntrusted_networks = [\"203.0.113.0/24\"]\nproxy_protocol = true\ntrusted_proxies = [\"{trusted_proxies}\"]\n[delivery]\nmode = \"passthrough\"\n"
        ))
        .load();
    smarthost::start(Arc::new(config)).await.unwrap()
}

/// Send `header`, then read the greeting; None if the connection closed without one.
async fn greeting(
    addr: std::net::SocketAddr,
    header: &[u8],
) -> (Option<String>, BufReader<TcpStream>) {
    let mut stream = tokio::time::timeout(HANG_GUARD, TcpStream::connect(addr))
        .await
        .expect("connect: hang guard")
        .unwrap();
    tokio::time::timeout(HANG_GUARD, stream.write_all(header))
        .await
        .expect("write: hang guard")
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let n = tokio::time::timeout(HANG_GUARD, reader.read_line(&mut line))
        .await
        .unwrap()
        .unwrap_or(0);
    ((n > 0).then_some(line), reader)
}

async fn command(reader: &mut BufReader<TcpStream>, line: &str) -> String {
    tokio::time::timeout(HANG_GUARD, reader.get_mut().write_all(line.as_bytes()))
        .await
        .expect("write: hang guard")
        .unwrap();
    let mut reply = String::new();
    loop {
        let mut l = String::new();
        tokio::time::timeout(HANG_GUARD, reader.read_line(&mut l))
            .await
            .unwrap()
            .unwrap();
        reply.push_str(&l);
        if l.as_bytes().get(3) != Some(&b'-') {
            return reply;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxys_header_decides_the_client_address() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "127.0.0.1/32").await;
    let addr = relay.local_addrs()[0];

    let (hello, mut conn) = greeting(addr, b"PROXY TCP4 203.0.113.5 127.0.0.1 40000 25\r\n").await;
    assert!(hello.unwrap().starts_with("220 "));
    assert!(command(&mut conn, "EHLO app\r\n").await.starts_with("250"));
    assert!(
        command(&mut conn, "MAIL FROM:<app@example.com>\r\n")
            .await
            .starts_with("250")
    );
    assert!(
        command(&mut conn, "RCPT TO:<user@example.net>\r\n")
            .await
            .starts_with("250")
    );
    assert!(command(&mut conn, "DATA\r\n").await.starts_with("354"));
    let done = command(
        &mut conn,
        "From: <app@example.com>\r\nSubject: via proxy\r\n\r\nhi\r\n.\r\n",
    )
    .await;
    assert!(done.starts_with("250"), "{done}");
    let stored: Vec<_> = std::fs::read_dir(dir.path().join("maildir/new"))
        .unwrap()
        .collect();
    let text = std::fs::read_to_string(stored[0].as_ref().unwrap().path()).unwrap();
    assert!(
        text.contains("([203.0.113.5])"),
        "the Received header names the real client:\n{text}"
    );

    // The header names a client outside trusted_networks: refused as that client.
    let (hello, _) = greeting(addr, b"PROXY TCP4 198.51.100.1 127.0.0.1 40001 25\r\n").await;
    let hello = hello.unwrap();
    assert!(
        hello.starts_with("554 5.7.1") && hello.contains("198.51.100.1"),
        "{hello}"
    );

    // No header at all: the connection is closed without a greeting.
    let (hello, _) = greeting(addr, b"EHLO sneaky\r\n").await;
    assert_eq!(hello, None);
    relay.shutdown().await;
}

#[tokio::test]
async fn an_untrusted_proxy_cannot_claim_an_address() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "10.0.0.0/8").await;
    let (hello, _) = greeting(
        relay.local_addrs()[0],
        b"PROXY TCP4 203.0.113.5 127.0.0.1 40000 25\r\n",
    )
    .await;
    let hello = hello.unwrap();
    assert!(
        hello.starts_with("554 5.7.1") && hello.contains("trusted proxy"),
        "{hello}"
    );
    relay.shutdown().await;
}
