//! A local OAuth 2.0 identity provider for the XOAUTH2 tests, modelled on the
//! Microsoft identity platform (`/{tenant}/oauth2/v2.0/token`) and Google's token
//! endpoint: HTTPS (real rustls, a certificate from the test CA) on `127.0.0.1:0`.
//!
//! It serves the `client_credentials`, `refresh_token` and device-code grants (and the
//! device authorization endpoint, RFC 8628), answers errors the way those providers do
//! (`invalid_client` with an AADSTS description, `invalid_grant`, ...), and can be made
//! to fail on demand. What it issued is tracked, so that [`IdentityProvider::validator`]
//! lets a fake upstream accept exactly the access tokens that are live.
//!
//! Use it from a test crate that also declares `mod fake_upstream;` (for the CA):
//!
//! ```ignore
//! mod fake_upstream;
//! mod oauth_idp;
//! let ca = TestCa::generate();
//! let idp = IdentityProvider::start(&ca).await;
//! idp.add_client("relay", "s3cret");
//! let upstream = FakeUpstream::builder(Mode::Implicit)
//!     .cert(&ca.leaf("localhost"))
//!     .auth(&["XOAUTH2"])
//!     .xoauth2_validator(idp.validator())
//!     .start()
//!     .await;
//! // upstream config: token_url = idp.token_url(), ca_file = ca.ca_file()
//! ```
//!
//! HTTP is deliberately small: one request per connection (`Connection: close`), headers
//! up to CRLFCRLF, then `Content-Length` bytes of form body; no chunked bodies (`411`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::prelude::{BASE64_STANDARD, Engine as _};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::fake_upstream::Xoauth2Validator;
use crate::fake_upstream::pki::TestCa;

/// The path of the token endpoint.
pub const TOKEN_PATH: &str = "/tenant/oauth2/v2.0/token";
/// The path of the device authorization endpoint.
pub const DEVICE_PATH: &str = "/tenant/oauth2/v2.0/devicecode";
/// The grant type of a device-code poll (RFC 8628 §3.4).
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// The largest request head or body the provider reads.
const MAX_REQUEST: usize = 64 * 1024;

/// One request to the token endpoint, as the provider saw it.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// The `grant_type` parameter (empty if missing).
    pub grant_type: String,
    /// The client, from the form or from HTTP Basic authentication.
    pub client_id: Option<String>,
    /// The `scope` parameter.
    pub scope: Option<String>,
    /// Whether the provider answered `200` with tokens.
    pub ok: bool,
    /// The `error` code answered, if it failed (`None` for `set_down`'s 503).
    pub error: Option<String>,
    /// Whether the client authenticated with HTTP Basic (RFC 6749 §2.3.1).
    pub basic_auth: bool,
    /// Every form parameter, in order (secrets included: this is a test).
    pub params: Vec<(String, String)>,
    /// When it arrived.
    pub at: Instant,
}

/// A live OAuth 2.0 identity provider; the server stops when this is dropped.
pub struct IdentityProvider {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for IdentityProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct AccessToken {
    expires: Instant,
    revoked: bool,
}

struct DeviceCode {
    client_id: String,
    scope: Option<String>,
    polls: usize,
    expired: bool,
    used: bool,
}

struct Failure {
    remaining: usize,
    status: u16,
    error: String,
    description: String,
}

struct State {
    clients: HashMap<String, String>,
    lifetime: Duration,
    rotate: bool,
    /// Refresh token → client.
    refresh_tokens: HashMap<String, String>,
    access_tokens: HashMap<String, AccessToken>,
    failure: Option<Failure>,
    down: bool,
    requests: Vec<TokenRequest>,
    device_codes: HashMap<String, DeviceCode>,
    device_authorizations: usize,
    approve_after: usize,
    slow_down_once: bool,
    deny: bool,
    serial: u64,
}

impl State {
    fn new_token(&mut self, prefix: &str) -> String {
        self.serial += 1;
        format!("{prefix}{:04}.{:032x}", self.serial, rand::random::<u128>())
    }

    fn valid(&self, token: &str) -> bool {
        self.access_tokens
            .get(token)
            .is_some_and(|t| !t.revoked && Instant::now() < t.expires)
    }
}

impl IdentityProvider {
    /// Listen on `127.0.0.1:0` with a certificate for `127.0.0.1` from `ca`, and serve.
    pub async fn start(ca: &TestCa) -> IdentityProvider {
        let acceptor = TlsAcceptor::from(ca.leaf("127.0.0.1").server_config());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind IdP");
        let addr = listener.local_addr().expect("IdP address");
        let state = Arc::new(Mutex::new(State {
            clients: HashMap::new(),
            lifetime: Duration::from_secs(3600),
            rotate: false,
            refresh_tokens: HashMap::new(),
            access_tokens: HashMap::new(),
            failure: None,
            down: false,
            requests: Vec::new(),
            device_codes: HashMap::new(),
            device_authorizations: 0,
            approve_after: 0,
            slow_down_once: false,
            deny: false,
            serial: 0,
        }));
        let accept_state = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let state = accept_state.clone();
                let acceptor = acceptor.clone();
                // No timer here: a test running on a paused clock would see it fire at
                // once while the client is still talking. A stuck connection ends with
                // the test's runtime.
                tokio::spawn(serve(state, acceptor, tcp));
            }
        });
        IdentityProvider { addr, state, task }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `https://127.0.0.1:PORT/tenant/oauth2/v2.0/token`.
    pub fn token_url(&self) -> String {
        format!("https://{}{TOKEN_PATH}", self.addr)
    }

    /// `https://127.0.0.1:PORT/tenant/oauth2/v2.0/devicecode`.
    pub fn device_url(&self) -> String {
        format!("https://{}{DEVICE_PATH}", self.addr)
    }

    /// Register a client (an app registration). A public client (device flow) may have
    /// an empty secret; a refresh or device poll that sends no secret is accepted.
    pub fn add_client(&self, client_id: &str, client_secret: &str) {
        self.state()
            .clients
            .insert(client_id.to_owned(), client_secret.to_owned());
    }

    /// The lifetime of access tokens issued from now on (`expires_in`, rounded up to
    /// whole seconds; the token really dies after exactly `lifetime`). Default 3600 s.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state().lifetime = lifetime;
    }

    /// When on, a `refresh_token` grant answers a new refresh token and the one used
    /// becomes invalid (`invalid_grant` on reuse), as Microsoft does for SPAs.
    pub fn set_rotate_refresh_tokens(&self, rotate: bool) {
        self.state().rotate = rotate;
    }

    /// A new refresh token for `client_id` (as if the user had consented earlier).
    pub fn issue_refresh_token(&self, client_id: &str) -> String {
        let mut state = self.state();
        let token = state.new_token("rt.");
        state
            .refresh_tokens
            .insert(token.clone(), client_id.to_owned());
        token
    }

    /// The next `n` token requests (any grant, device polls included) fail with
    /// `status` and `{"error": error, "error_description": description}`.
    pub fn fail_next(&self, n: usize, status: u16, error: &str, description: &str) {
        self.state().failure = Some(Failure {
            remaining: n,
            status,
            error: error.to_owned(),
            description: description.to_owned(),
        });
    }

    /// While down, every request (token and device authorization) gets `503` with an
    /// HTML body, as from a broken load balancer.
    pub fn set_down(&self, down: bool) {
        self.state().down = down;
    }

    /// Every access token issued so far stops being valid (expiry unchanged); tokens
    /// issued later are fine.
    pub fn revoke_access_tokens(&self) {
        for token in self.state().access_tokens.values_mut() {
            token.revoked = true;
        }
    }

    /// Whether `token` was issued here, is not revoked and has not expired.
    pub fn is_valid_access_token(&self, token: &str) -> bool {
        self.state().valid(token)
    }

    /// How many access tokens were issued so far.
    pub fn access_tokens_issued(&self) -> usize {
        self.state().access_tokens.len()
    }

    /// Every token-endpoint request so far, in order (device authorization requests are
    /// counted by [`IdentityProvider::device_authorizations`] instead).
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.state().requests.clone()
    }

    /// How many requests reached the device authorization endpoint.
    pub fn device_authorizations(&self) -> usize {
        self.state().device_authorizations
    }

    /// `(user, token) -> accepted` for [`crate::fake_upstream::Builder::xoauth2_validator`]:
    /// accepts a live access token with any non-empty user. It keeps the provider's
    /// records alive, not its server.
    pub fn validator(&self) -> Xoauth2Validator {
        let state = self.state.clone();
        Arc::new(move |user: &str, token: &str| {
            !user.is_empty() && state.lock().unwrap().valid(token)
        })
    }

    /// Device codes: the user "approves" after this many polls of a code (each answered
    /// `authorization_pending`, or `slow_down`); the next poll gets the tokens. Default
    /// 0: the first poll succeeds.
    pub fn approve_device_after(&self, polls: usize) {
        self.state().approve_after = polls;
    }

    /// When on, the next device-code poll gets `slow_down` (it still counts as a poll);
    /// then the flag clears itself.
    pub fn set_slow_down_once(&self, on: bool) {
        self.state().slow_down_once = on;
    }

    /// Every device code handed out so far expires: polls get `expired_token`. Codes
    /// requested later are fresh.
    pub fn expire_device_codes(&self) {
        for code in self.state().device_codes.values_mut() {
            code.expired = true;
        }
    }

    /// While on, the user "declines": polls get `access_denied`.
    pub fn set_device_denied(&self, denied: bool) {
        self.state().deny = denied;
    }
}

/// An HTTP response.
struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn json(status: u16, body: Value) -> Response {
        Response {
            status,
            content_type: "application/json; charset=utf-8",
            body: body.to_string(),
        }
    }

    /// An error the Microsoft way: `error`, `error_description`, and the AADSTS number
    /// in `error_codes` when the description starts with one.
    fn error(status: u16, error: &str, description: &str) -> Response {
        let mut body = json!({ "error": error, "error_description": description });
        if let Some(code) = description
            .strip_prefix("AADSTS")
            .and_then(|rest| rest.split(':').next())
            .and_then(|n| n.parse::<u64>().ok())
        {
            body["error_codes"] = json!([code]);
        }
        Response::json(status, body)
    }

    fn unavailable() -> Response {
        Response {
            status: 503,
            content_type: "text/html",
            body: "<html><head><title>503 Service Unavailable</title></head>\
                   <body><h1>Service Unavailable</h1><p>The service is temporarily \
                   unavailable. Please try again later.</p></body></html>"
                .into(),
        }
    }

    fn reason(&self) -> &'static str {
        match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            405 => "Method Not Allowed",
            411 => "Length Required",
            413 => "Payload Too Large",
            429 => "Too Many Requests",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "Status",
        }
    }

    fn encode(&self) -> Vec<u8> {
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nCache-Control: no-store\r\nPragma: no-cache\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{}",
            self.status,
            self.reason(),
            self.content_type,
            self.body.len(),
            self.body
        )
        .into_bytes()
    }
}

/// A parsed request.
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Read one request: the head up to CRLFCRLF, then `Content-Length` bytes.
async fn read_request<S: AsyncRead + Unpin>(io: &mut S) -> Result<Request, Response> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_REQUEST {
            return Err(Response::error(
                413,
                "invalid_request",
                "request head too large",
            ));
        }
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                return Err(Response::error(
                    400,
                    "invalid_request",
                    "incomplete request",
                ));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_owned();
    let target = first.next().unwrap_or("").to_owned();
    let path = target.split('?').next().unwrap_or("").to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut request = Request {
        method,
        path,
        headers,
        body: buf[head_end + 4..].to_vec(),
    };
    if request
        .header("transfer-encoding")
        .is_some_and(|te| !te.eq_ignore_ascii_case("identity"))
    {
        return Err(Response::error(
            411,
            "invalid_request",
            "this identity provider reads Content-Length bodies only",
        ));
    }
    let length = match request.header("content-length") {
        None => 0,
        Some(value) => value
            .parse::<usize>()
            .map_err(|_| Response::error(400, "invalid_request", "bad Content-Length"))?,
    };
    if length > MAX_REQUEST {
        return Err(Response::error(
            413,
            "invalid_request",
            "request body too large",
        ));
    }
    while request.body.len() < length {
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                return Err(Response::error(400, "invalid_request", "incomplete body"));
            }
            Ok(n) => request.body.extend_from_slice(&chunk[..n]),
        }
    }
    request.body.truncate(length);
    Ok(request)
}

async fn serve(state: Arc<Mutex<State>>, acceptor: TlsAcceptor, tcp: TcpStream) {
    let Ok(mut tls) = acceptor.accept(tcp).await else {
        return;
    };
    let response = match read_request(&mut tls).await {
        Ok(request) => route(&state, &request),
        Err(response) => response,
    };
    if tls.write_all(&response.encode()).await.is_ok() {
        let _ = tls.flush().await;
        // close_notify, so that the client sees a clean end of the body.
        let _ = tls.shutdown().await;
    }
}

fn route(state: &Mutex<State>, request: &Request) -> Response {
    let endpoint = match request.path.as_str() {
        TOKEN_PATH | DEVICE_PATH => request.path.as_str(),
        _ => {
            return Response::error(404, "not_found", "no such endpoint on this test IdP");
        }
    };
    if request.method != "POST" {
        return Response::error(
            405,
            "invalid_request",
            "AADSTS900561: The endpoint only accepts POST requests.",
        );
    }
    let mut state = state.lock().unwrap();
    if state.down {
        if endpoint == TOKEN_PATH {
            let params = form(&request.body);
            let (client_id, basic) = client_auth(request, &params);
            record(&mut state, &params, client_id.0, basic, None, false);
        }
        return Response::unavailable();
    }
    let form_body = request
        .header("content-type")
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|ct| {
            ct.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    let params = form(&request.body);
    if endpoint == DEVICE_PATH {
        state.device_authorizations += 1;
        if !form_body {
            return Response::error(
                400,
                "invalid_request",
                "AADSTS900144: The request body must contain the following parameter: 'client_id'.",
            );
        }
        return device_authorization(&mut state, &params);
    }
    let ((client_id, client_secret), basic) = client_auth(request, &params);
    let response = if !form_body {
        Response::error(
            400,
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'grant_type'.",
        )
    } else if let Some(failure) = state.failure.as_mut().filter(|f| f.remaining > 0) {
        failure.remaining -= 1;
        Response::error(failure.status, &failure.error, &failure.description)
    } else {
        token(
            &mut state,
            &params,
            client_id.as_deref(),
            client_secret.as_deref(),
        )
    };
    let error = serde_json::from_str::<Value>(&response.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned));
    record(
        &mut state,
        &params,
        client_id,
        basic,
        error,
        response.status == 200,
    );
    response
}

fn record(
    state: &mut State,
    params: &[(String, String)],
    client_id: Option<String>,
    basic_auth: bool,
    error: Option<String>,
    ok: bool,
) {
    state.requests.push(TokenRequest {
        grant_type: param(params, "grant_type").unwrap_or("").to_owned(),
        client_id,
        scope: param(params, "scope").map(str::to_owned),
        ok,
        error,
        basic_auth,
        params: params.to_vec(),
        at: Instant::now(),
    });
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

type ClientCredentials = (Option<String>, Option<String>);

/// The client id and secret: from `Authorization: Basic` (each form-urlencoded, RFC 6749
/// §2.3.1) or else from the form. The flag says whether Basic was used.
fn client_auth(request: &Request, params: &[(String, String)]) -> (ClientCredentials, bool) {
    let basic = request
        .header("authorization")
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, b64)| BASE64_STANDARD.decode(b64.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| {
            let (id, secret) = pair.split_once(':')?;
            let decode = |s: &str| -> String {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            Some((decode(id), decode(secret)))
        });
    match basic {
        Some((id, secret)) => ((Some(id), Some(secret)), true),
        None => (
            (
                param(params, "client_id").map(str::to_owned),
                param(params, "client_secret").map(str::to_owned),
            ),
            false,
        ),
    }
}

fn unknown_client(client_id: &str) -> Response {
    Response::error(
        400,
        "unauthorized_client",
        &format!(
            "AADSTS700016: Application with identifier '{client_id}' was not found in the \
             directory 'tenant'. This can happen if the application has not been installed \
             by the administrator of the tenant or consented to by any user in the tenant."
        ),
    )
}

fn bad_secret(client_id: &str) -> Response {
    Response::error(
        401,
        "invalid_client",
        &format!(
            "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in \
             the request is the client secret value, not the client secret ID, for a secret \
             added to app '{client_id}'."
        ),
    )
}

fn missing(name: &str) -> Response {
    Response::error(
        400,
        "invalid_request",
        &format!("AADSTS900144: The request body must contain the following parameter: '{name}'."),
    )
}

/// Check the client: known, and the secret right. `secret_required`: confidential
/// flows (client_credentials) must send one.
fn check_client(
    state: &State,
    client_id: Option<&str>,
    client_secret: Option<&str>,
    secret_required: bool,
) -> Result<String, Response> {
    let client_id = client_id.ok_or_else(|| missing("client_id"))?;
    let expected = state
        .clients
        .get(client_id)
        .ok_or_else(|| unknown_client(client_id))?;
    match client_secret {
        Some(secret) if secret != expected => Err(bad_secret(client_id)),
        None if secret_required => Err(Response::error(
            401,
            "invalid_client",
            "AADSTS7000218: The request body must contain the following parameter: \
             'client_assertion' or 'client_secret'.",
        )),
        _ => Ok(client_id.to_owned()),
    }
}

fn issue_access_token(state: &mut State) -> (String, u64) {
    let token = state.new_token("at.");
    let lifetime = state.lifetime;
    state.access_tokens.insert(
        token.clone(),
        AccessToken {
            expires: Instant::now() + lifetime,
            revoked: false,
        },
    );
    let expires_in = lifetime.as_secs() + u64::from(lifetime.subsec_nanos() > 0);
    (token, expires_in)
}

fn token(
    state: &mut State,
    params: &[(String, String)],
    client_id: Option<&str>,
    client_secret: Option<&str>,
) -> Response {
    let scope = param(params, "scope");
    match param(params, "grant_type") {
        None => missing("grant_type"),
        Some("client_credentials") => {
            if let Err(response) = check_client(state, client_id, client_secret, true) {
                return response;
            }
            let (access_token, expires_in) = issue_access_token(state);
            Response::json(
                200,
                json!({
                    "token_type": "Bearer",
                    "expires_in": expires_in,
                    "ext_expires_in": expires_in,
                    "access_token": access_token,
                }),
            )
        }
        Some("refresh_token") => {
            let client_id = match check_client(state, client_id, client_secret, false) {
                Ok(id) => id,
                Err(response) => return response,
            };
            let Some(refresh_token) = param(params, "refresh_token") else {
                return missing("refresh_token");
            };
            if state.refresh_tokens.get(refresh_token) != Some(&client_id) {
                return Response::error(
                    400,
                    "invalid_grant",
                    "AADSTS70000: Provided grant is invalid or malformed. The refresh token \
                     was not issued to this client, was already used, or has been revoked.",
                );
            }
            let refresh_token = if state.rotate {
                state.refresh_tokens.remove(refresh_token);
                let new = state.new_token("rt.");
                state.refresh_tokens.insert(new.clone(), client_id.clone());
                new
            } else {
                refresh_token.to_owned()
            };
            let (access_token, expires_in) = issue_access_token(state);
            Response::json(
                200,
                json!({
                    "token_type": "Bearer",
                    "scope": scope.unwrap_or("https://outlook.office.com/SMTP.Send offline_access"),
                    "expires_in": expires_in,
                    "ext_expires_in": expires_in,
                    "access_token": access_token,
                    "refresh_token": refresh_token,
                }),
            )
        }
        Some(DEVICE_GRANT) => device_poll(state, params, client_id, client_secret),
        Some(other) => Response::error(
            400,
            "unsupported_grant_type",
            &format!("AADSTS70003: The app requested an unsupported grant type '{other}'."),
        ),
    }
}

fn device_authorization(state: &mut State, params: &[(String, String)]) -> Response {
    let client_id = match check_client(state, param(params, "client_id"), None, false) {
        Ok(id) => id,
        Err(response) => return response,
    };
    let device_code = state.new_token("dc.");
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let user_code: String = (0..9)
        .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
        .collect();
    state.device_codes.insert(
        device_code.clone(),
        DeviceCode {
            client_id,
            scope: param(params, "scope").map(str::to_owned),
            polls: 0,
            expired: false,
            used: false,
        },
    );
    Response::json(
        200,
        json!({
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": "https://microsoft.com/devicelogin",
            "expires_in": 900,
            "interval": 1,
            "message": format!(
                "To sign in, use a web browser to open the page \
                 https://microsoft.com/devicelogin and enter the code {user_code} to \
                 authenticate."
            ),
        }),
    )
}

fn device_poll(
    state: &mut State,
    params: &[(String, String)],
    client_id: Option<&str>,
    client_secret: Option<&str>,
) -> Response {
    let client_id = match check_client(state, client_id, client_secret, false) {
        Ok(id) => id,
        Err(response) => return response,
    };
    let Some(device_code) = param(params, "device_code") else {
        return missing("device_code");
    };
    let approve_after = state.approve_after;
    let deny = state.deny;
    let slow_down = std::mem::take(&mut state.slow_down_once);
    let Some(code) = state
        .device_codes
        .get_mut(device_code)
        .filter(|c| c.client_id == client_id)
    else {
        return Response::error(
            400,
            "invalid_grant",
            "AADSTS70000: Provided grant is invalid or malformed. Unknown device code.",
        );
    };
    if code.used {
        return Response::error(
            400,
            "invalid_grant",
            "AADSTS54005: OAuth2 Authorization code was already redeemed.",
        );
    }
    if code.expired {
        return Response::error(
            400,
            "expired_token",
            "AADSTS70020: The provided value for the input parameter 'device_code' is not \
             valid. This device code has expired.",
        );
    }
    code.polls += 1;
    if deny {
        return Response::error(
            400,
            "access_denied",
            "AADSTS70016: The user has declined to authorize the application.",
        );
    }
    if slow_down {
        return Response::error(
            400,
            "slow_down",
            "AADSTS70016: The client is polling too quickly; slow down.",
        );
    }
    if code.polls <= approve_after {
        return Response::error(
            400,
            "authorization_pending",
            "AADSTS70016: OAuth 2.0 device flow error. Authorization is pending. Continue \
             polling.",
        );
    }
    code.used = true;
    let scope = code
        .scope
        .clone()
        .unwrap_or_else(|| "https://outlook.office.com/SMTP.Send offline_access".into());
    let refresh_token = state.new_token("rt.");
    state
        .refresh_tokens
        .insert(refresh_token.clone(), client_id.clone());
    let (access_token, expires_in) = issue_access_token(state);
    Response::json(
        200,
        json!({
            "token_type": "Bearer",
            "scope": scope,
            "expires_in": expires_in,
            "ext_expires_in": expires_in,
            "access_token": access_token,
            "refresh_token": refresh_token,
        }),
    )
}
