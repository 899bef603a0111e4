//! Opening a ready-to-send session with an upstream: DNS, TCP, TLS (implicit, STARTTLS,
//! or detected), EHLO, AUTH — each step reported to an observer, so that
//! `smarthost check` can print it with its time.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

use super::client::{BoxStream, ClientError, Credentials, Mechanism, SmtpClient, tls_handshake};
use super::outcome::{Failure, Stage};
use crate::config::TlsMode;
use crate::proto::{Capabilities, Response};

/// How long `tls=auto` waits for a plaintext greeting before it assumes implicit TLS.
/// A server on an implicit-TLS port says nothing until the client's TLS hello.
pub const DETECT_WAIT: Duration = Duration::from_secs(3);

/// Everything needed to open a session with one upstream.
#[derive(Clone)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS mode to use (for `auto`, the detected mode once known).
    pub mode: TlsMode,
    /// TLS client set-up.
    pub connector: TlsConnector,
    /// Our EHLO name.
    pub helo: String,
    /// Limit for each step.
    pub timeout: Duration,
    /// Limit for the reply to the end of the message data.
    pub data_timeout: Duration,
    /// Allow AUTH without TLS.
    pub allow_plaintext_auth: bool,
}

/// A step that succeeded, for observers.
#[derive(Debug)]
pub enum Event<'a> {
    /// The host resolved to these addresses.
    Resolved(&'a [SocketAddr]),
    /// TCP connected to this address.
    Connected(SocketAddr),
    /// `tls=auto` found this mode.
    Detected(TlsMode),
    /// TLS is up (version and cipher suite).
    Tls(&'a str),
    /// The server's greeting.
    Greeting(&'a Response),
    /// The EHLO capabilities (after STARTTLS, the second EHLO).
    Ehlo(&'a Capabilities),
    /// AUTH succeeded with this mechanism.
    Authenticated(Mechanism),
}

/// A session ready for mail transactions.
pub struct Session {
    /// The client.
    pub client: SmtpClient<BoxStream>,
    /// What the server offers.
    pub caps: Capabilities,
    /// TLS version and cipher, if encrypted.
    pub tls: Option<String>,
    /// The mode that was used (`auto` resolved to `implicit` or `starttls`).
    pub mode: TlsMode,
}

/// Open a session: connect, secure, greet, authenticate.
pub async fn establish(
    ep: &Endpoint,
    credentials: Option<&Credentials>,
    observe: &mut (dyn FnMut(Event<'_>) + Send),
) -> Result<Session, Failure> {
    let addrs = resolve(ep).await?;
    observe(Event::Resolved(&addrs));
    let (tcp, addr) = connect(&addrs, ep.timeout).await?;
    observe(Event::Connected(addr));
    let stream: BoxStream = Box::new(tcp);
    let name = ServerName::try_from(ep.host.clone()).map_err(|e| Failure::Tls {
        problem: super::outcome::TlsProblem::Other(e.to_string()),
        detail: format!("{:?} is not a valid TLS server name", ep.host),
    })?;

    let step = |stage: Stage| move |e: ClientError| Failure::from_client(stage, e);
    let mut tls = None;
    let (client, mode) = match ep.mode {
        TlsMode::Implicit => {
            let (stream, info) = tls_handshake(stream, &ep.connector, name.clone(), ep.timeout)
                .await
                .map_err(step(Stage::Tls))?;
            observe(Event::Tls(&info));
            tls = Some(info);
            (SmtpClient::new(stream, ep.timeout), TlsMode::Implicit)
        }
        TlsMode::Auto => {
            let mut client = SmtpClient::new(stream, ep.timeout);
            match client
                .read_response_within(DETECT_WAIT.min(ep.timeout))
                .await
            {
                Ok(greeting) => {
                    observe(Event::Detected(TlsMode::StartTls));
                    check_greeting(greeting, observe)?;
                    (client, TlsMode::StartTls)
                }
                Err(ClientError::Timeout(_)) if !client.has_buffered_input() => {
                    observe(Event::Detected(TlsMode::Implicit));
                    let stream = client.into_stream();
                    let (stream, info) =
                        tls_handshake(stream, &ep.connector, name.clone(), ep.timeout)
                            .await
                            .map_err(step(Stage::Tls))?;
                    observe(Event::Tls(&info));
                    tls = Some(info);
                    (SmtpClient::new(stream, ep.timeout), TlsMode::Implicit)
                }
                Err(e) => return Err(step(Stage::Greeting)(e)),
            }
        }
        other => (SmtpClient::new(stream, ep.timeout), other),
    };
    let mut client = client.with_final_reply_timeout(ep.data_timeout);
    let greeted_already = ep.mode == TlsMode::Auto && mode == TlsMode::StartTls;
    if !greeted_already {
        let greeting = client.greeting().await.map_err(step(Stage::Greeting))?;
        observe(Event::Greeting(&greeting));
    }
    let mut caps = client.ehlo(&ep.helo).await.map_err(step(Stage::Ehlo))?;
    observe(Event::Ehlo(&caps));

    let wants_starttls = match mode {
        TlsMode::StartTls => {
            if !caps.has("STARTTLS") {
                return Err(Failure::MissingStartTls);
            }
            true
        }
        TlsMode::Opportunistic => caps.has("STARTTLS"),
        _ => false,
    };
    if wants_starttls {
        let (upgraded, info) = client
            .starttls(&ep.connector, name)
            .await
            .map_err(step(Stage::StartTls))?;
        observe(Event::Tls(&info));
        tls = Some(info);
        client = upgraded;
        // RFC 3207 §4.2: forget everything learned before TLS and ask again.
        caps = client.ehlo(&ep.helo).await.map_err(step(Stage::Ehlo))?;
        observe(Event::Ehlo(&caps));
    }

    if let Some(creds) = credentials {
        if tls.is_none() && !ep.allow_plaintext_auth {
            return Err(Failure::PlaintextAuth);
        }
        let offered = caps
            .params("AUTH")
            .filter(|p| !p.is_empty())
            .unwrap_or("none")
            .to_owned();
        let mechanism =
            Mechanism::choose(&caps, creds.kind).ok_or(Failure::NoAuthMechanism { offered })?;
        client
            .authenticate(mechanism, creds)
            .await
            .map_err(step(Stage::Auth))?;
        observe(Event::Authenticated(mechanism));
    }
    Ok(Session {
        client,
        caps,
        tls,
        mode,
    })
}

fn check_greeting(
    greeting: Response,
    observe: &mut (dyn FnMut(Event<'_>) + Send),
) -> Result<(), Failure> {
    if greeting.code != 220 {
        return Err(Failure::Greeting(greeting));
    }
    observe(Event::Greeting(&greeting));
    Ok(())
}

async fn resolve(ep: &Endpoint) -> Result<Vec<SocketAddr>, Failure> {
    let lookup = tokio::net::lookup_host((ep.host.as_str(), ep.port));
    let addrs: Vec<SocketAddr> = tokio::time::timeout(ep.timeout, lookup)
        .await
        .map_err(|_| Failure::Timeout {
            stage: Stage::Dns,
            after: ep.timeout,
        })?
        .map_err(|e| Failure::Dns {
            host: ep.host.clone(),
            detail: e.to_string(),
        })?
        .collect();
    if addrs.is_empty() {
        return Err(Failure::Dns {
            host: ep.host.clone(),
            detail: "no addresses".into(),
        });
    }
    Ok(addrs)
}

/// Try each address in turn; the first connection wins.
async fn connect(
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), Failure> {
    let mut last = None;
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok((stream, *addr));
            }
            Ok(Err(error)) => last = Some(Failure::Connect { addr: *addr, error }),
            Err(_) => {
                last = Some(Failure::Timeout {
                    stage: Stage::Connect,
                    after: timeout,
                })
            }
        }
    }
    Err(last.expect("resolve returns at least one address"))
}
