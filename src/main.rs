//! The `smarthost` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing::{error, info, warn};

use smarthost::config::{self, Config, ConfigSource};

/// mimalloc rather than the system allocator: it hands freed memory back to the system
/// within moments, so the relay's memory follows its load (after a burst of large
/// messages it does not stay at the peak), and it is faster on the many small objects
/// of a session.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its place in `mi_option_e`, the same in mimalloc
/// 2 and 3; the Rust bindings do not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Free memory goes back to the system at once instead of after mimalloc's delay. Memory
/// freed by a thread of the blocking pool is otherwise kept once the thread ends (file
/// I/O of large messages runs there), and the relay stayed above 120 MiB after a burst
/// of large messages; with this it is back under 64 MiB within seconds (docs/benchmarks.md).
fn release_freed_memory_promptly() {
    // SAFETY: mimalloc's documented option API, called before any other thread starts.
    // The option is only changed if it holds its documented default (10 ms), so a
    // renumbered enum in a future mimalloc changes nothing rather than something else.
    unsafe {
        if libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) == 10 {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        }
    }
}
use smarthost::ops;

/// A smart outbound SMTP relay.
#[derive(Parser)]
#[command(name = "smarthost", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (on the embedded default configuration unless -c or SMARTHOST_CONFIG names a file).
    Serve {
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and probe every upstream.
    Check {
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Also send a test message to this address.
        #[arg(long)]
        send_to: Option<String>,
    },
    /// DKIM keys: generate one, print DNS records.
    Dkim {
        #[command(subcommand)]
        action: DkimAction,
    },
    /// Inspect and manage the spool.
    Queue {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// OAuth 2.0 for upstreams: sign in once to get a refresh token.
    Oauth {
        #[command(subcommand)]
        action: OauthAction,
    },
    /// Show the [[route]] mail from a sender takes, its upstreams in order, and its DKIM key.
    Route {
        /// Envelope sender (`""` or `<>` for the null sender).
        #[arg(long)]
        from: String,
        /// The client's address.
        #[arg(long, default_value = "127.0.0.1")]
        client: std::net::IpAddr,
        /// The authenticated user, if any.
        #[arg(long)]
        user: Option<String>,
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Users of authenticated submission: the file of [auth] users_file.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Submit a test message to an SMTP server.
    Send {
        /// Server as HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:2525")]
        server: String,
        /// Sender address (envelope and From).
        #[arg(long)]
        from: String,
        /// Recipient address; repeat for several.
        #[arg(long, required = true)]
        to: Vec<String>,
        /// Subject line.
        #[arg(long, default_value = "smarthost test message")]
        subject: String,
        /// Message body.
        #[arg(long, default_value = "This is a test message sent by smarthost send.")]
        body: String,
        /// Send this file (or - for stdin) as the complete message instead.
        #[arg(long, value_name = "FILE")]
        data: Option<PathBuf>,
        /// Name to give in EHLO.
        #[arg(long, default_value = "smarthost-send")]
        helo: String,
        /// Seconds to wait for the connection and for each reply.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum DkimAction {
    /// Write a new private key and print the DNS TXT record to publish.
    Keygen {
        /// Domain to sign for.
        #[arg(long)]
        domain: String,
        /// Selector.
        #[arg(long, default_value = "smarthost")]
        selector: String,
        /// rsa-sha256 or ed25519-sha256.
        #[arg(long, default_value = "rsa-sha256")]
        algorithm: String,
        /// RSA key size.
        #[arg(long, default_value_t = 2048)]
        bits: u32,
        /// Directory to write the key to.
        #[arg(long, default_value = "data/dkim")]
        out: PathBuf,
    },
    /// Print the DNS records for every configured key.
    Dns {
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum OauthAction {
    /// Device login (RFC 8628): prints a URL and a code to enter there, waits for the
    /// sign-in, and writes the upstream's refresh_token_file.
    Login {
        /// The upstream (its `name`).
        #[arg(long)]
        upstream: String,
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum UserAction {
    /// Add a user; the password comes from standard input (one line) or, on a terminal,
    /// a prompt.
    Add {
        /// The user name (letters, digits, `.`, `_`, `@`, `-`).
        name: String,
        /// An address the user may send as, e.g. `*@example.com`; repeat for several.
        #[arg(long = "sender", value_name = "GLOB", required = true)]
        senders: Vec<String>,
        /// Most messages per period, e.g. `100/min`.
        #[arg(long, value_name = "R")]
        rate_limit: Option<String>,
        /// Change an existing user of that name instead of refusing.
        #[arg(long)]
        replace: bool,
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// One line per user: name, allowed senders, rate limit.
    List {
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Remove a user.
    Delete {
        /// The user name.
        name: String,
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// One line per queued message.
    List {
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Everything about one message.
    Show {
        /// Queue id.
        id: String,
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Retry one message now, or all with --all.
    Retry {
        /// Queue id.
        id: Option<String>,
        /// Retry every message.
        #[arg(long)]
        all: bool,
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Remove a message from the queue.
    Delete {
        /// Queue id.
        id: String,
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Hand every queued message to another relay over SMTP (scale-down); each leaves
    /// the queue only after that relay answered 250.
    Drain {
        /// The other relay, as HOST:PORT.
        #[arg(long, value_name = "HOST:PORT")]
        to: String,
        /// Give up (and report what is left) after this long.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
}

/// Exit code for an invalid configuration (and for commands this version lacks).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    release_freed_memory_promptly();
    let cli = Cli::parse();
    // `serve` sets up logging once its configuration (with `[log] format`) is loaded.
    if !matches!(cli.command, Command::Serve { .. }) {
        init_logging(config::LogFormat::Text);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("smarthost: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve { config } => runtime.block_on(serve(config)),
        Command::Check { config, send_to } => runtime.block_on(check(config, send_to)),
        Command::Send {
            server,
            from,
            to,
            subject,
            body,
            data,
            helo,
            timeout,
        } => {
            let raw = match data.as_deref().map(read_message).transpose() {
                Ok(raw) => raw,
                Err(e) => {
                    eprintln!("smarthost send: cannot read the message: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let req = ops::send::SendRequest {
                server,
                from,
                to,
                subject,
                body,
                raw,
                helo,
                timeout: Duration::from_secs(timeout),
            };
            match runtime.block_on(ops::send::send(&req)) {
                Ok(response) => {
                    println!("{response}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("smarthost send: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Dkim { action } => dkim(action),
        Command::Route {
            from,
            client,
            user,
            config,
        } => route(config, &from, client, user.as_deref()),
        Command::Queue {
            action:
                QueueAction::Drain {
                    to,
                    timeout,
                    config,
                },
        } => runtime.block_on(queue_drain(config, &to, timeout)),
        Command::Queue { action } => queue(action),
        Command::User { action } => user(action),
        Command::Oauth {
            action: OauthAction::Login { upstream, config },
        } => runtime.block_on(oauth_login(config, upstream)),
    }
}

fn queue(action: QueueAction) -> ExitCode {
    let path = match &action {
        QueueAction::List { config }
        | QueueAction::Show { config, .. }
        | QueueAction::Retry { config, .. }
        | QueueAction::Delete { config, .. }
        | QueueAction::Drain { config, .. } => config.clone(),
    };
    if let QueueAction::Retry { id, all, .. } = &action
        && id.is_some() == *all
    {
        eprintln!("smarthost queue retry: give either a queue id or --all");
        return ExitCode::from(EXIT_CONFIG);
    }
    let (config, _) = match load_config(path) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let dir = &config.spool.dir;
    let result = match action {
        QueueAction::List { .. } => ops::queue::list(dir),
        QueueAction::Show { id, .. } => ops::queue::show(dir, &id),
        QueueAction::Retry { id, .. } => ops::queue::retry(dir, id.as_deref()),
        QueueAction::Delete { id, .. } => ops::queue::delete(dir, &id),
        QueueAction::Drain { .. } => unreachable!("run by queue_drain"),
    };
    match result {
        Ok(text) => {
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("smarthost queue: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `smarthost queue drain`: exit 0 when the queue is empty at the end, 1 when something
/// is left (the output says why), 2 for an invalid configuration or `--to`.
async fn queue_drain(path: Option<PathBuf>, to: &str, timeout: Duration) -> ExitCode {
    let (config, _) = match load_config(path) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let mut say = |line: &str| println!("{line}");
    match ops::queue::drain(
        &config.spool.dir,
        &config.server.hostname,
        to,
        timeout,
        &mut say,
    )
    .await
    {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e @ ops::queue::QueueError::BadTarget(_)) => {
            eprintln!("smarthost queue drain: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            eprintln!("smarthost queue drain: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `smarthost user`: exit 0 when done, 1 on failure, 2 for an invalid configuration
/// (or one without `[auth] users_file`).
fn user(action: UserAction) -> ExitCode {
    let path = match &action {
        UserAction::Add { config, .. }
        | UserAction::List { config }
        | UserAction::Delete { config, .. } => config.clone(),
    };
    let (config, source) = match load_config(path) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let Some(file) = config.auth.users_file else {
        eprintln!(
            "smarthost user: {source} sets no [auth] users_file: set it (e.g. users_file = \"data/users.toml\", or SMARTHOST__AUTH__USERS_FILE) to say where the users are kept"
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let result = match action {
        UserAction::Add {
            name,
            senders,
            rate_limit,
            replace,
            ..
        } => ops::user::read_password(&name).and_then(|password| {
            let request = ops::user::AddRequest {
                name,
                password,
                senders,
                rate_limit,
                replace,
            };
            ops::user::add(&file, request)
        }),
        UserAction::List { .. } => ops::user::list(&file),
        UserAction::Delete { name, .. } => ops::user::delete(&file, &name),
    };
    match result {
        Ok(text) => {
            println!("{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("smarthost user: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dkim(action: DkimAction) -> ExitCode {
    match action {
        DkimAction::Keygen {
            domain,
            selector,
            algorithm,
            bits,
            out,
        } => {
            let algorithm = match config::DkimAlgorithm::try_from(algorithm) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("smarthost dkim keygen: --algorithm: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            match ops::dkim::keygen(&domain, &selector, algorithm, bits, &out) {
                Ok((_, text)) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("smarthost dkim keygen: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        DkimAction::Dns { config } => {
            let (config, _) = match load_config(config) {
                Ok(loaded) => loaded,
                Err(code) => return code,
            };
            match ops::dkim::dns_records(&config) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("smarthost dkim dns: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `smarthost route`: exit 0 when the relay takes the mail, 1 when it refuses the
/// sender, 2 for an invalid configuration or address.
fn route(
    path: Option<PathBuf>,
    from: &str,
    client: std::net::IpAddr,
    user: Option<&str>,
) -> ExitCode {
    let (config, _) = match load_config(path) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let sender = match ops::route::parse_sender(from) {
        Ok(sender) => sender,
        Err(e) => {
            eprintln!("smarthost route: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let keys = match ops::route::existing_keys(&config) {
        Ok(keys) => keys,
        Err(e) => {
            eprintln!("smarthost: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let report = ops::route::report(&config, &keys, &sender, client, user);
    print!("{}", report.text);
    if report.accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn read_message(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
        Ok(buf)
    } else {
        std::fs::read(path)
    }
}

/// The level filter: `SMARTHOST_LOG`, else `RUST_LOG`, else `info`. A variable that is
/// empty counts as unset (`SMARTHOST_LOG=` in a compose file must not silence the log);
/// one that does not parse is skipped with a warning once logging is up.
fn log_filter(
    var: impl Fn(&str) -> Option<String>,
) -> (tracing_subscriber::EnvFilter, Vec<String>) {
    let mut skipped = Vec::new();
    for name in ["SMARTHOST_LOG", "RUST_LOG"] {
        let Some(value) = var(name).filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        match tracing_subscriber::EnvFilter::try_new(value.trim()) {
            Ok(filter) => return (filter, skipped),
            Err(e) => skipped.push(format!(
                "{name}={value:?} is not a log filter ({e}); it is ignored. Use a level such as \"info\" or \"debug\", or directives such as \"info,smarthost::accept=debug\""
            )),
        }
    }
    (tracing_subscriber::EnvFilter::new("info"), skipped)
}

fn init_logging(format: config::LogFormat) {
    let (filter, skipped) = log_filter(|name| std::env::var(name).ok());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Text => {
            use std::io::IsTerminal as _;
            builder.with_ansi(std::io::stderr().is_terminal()).init();
        }
        // One JSON object per line; the event's fields are flattened into it.
        config::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    for note in skipped {
        warn!("{note}");
    }
}

fn load_config(path: Option<PathBuf>) -> Result<(Config, ConfigSource), ExitCode> {
    config::load_from_process(path.as_deref()).map_err(|e| {
        eprintln!("smarthost: configuration error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

async fn serve(path: Option<PathBuf>) -> ExitCode {
    let (config, source) = match load_config(path.clone()) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    init_logging(config.log.format);
    info!(source = %source, "configuration loaded");
    log_effective_config(&config);
    raise_open_file_limit();
    // Before anything listens: a SIGHUP that arrives once the relay is up must reload,
    // not end the process with the default action.
    install_signal_handlers();
    let config = Arc::new(config);
    let relay = match smarthost::start(config).await {
        Ok(relay) => relay,
        Err(e) => {
            error!("cannot start: {e}");
            eprintln!("smarthost: cannot start: {e}");
            // A users file is configuration: the same exit code as a bad config file.
            return match e {
                smarthost::relay::StartError::Users(_) => ExitCode::from(EXIT_CONFIG),
                _ => ExitCode::FAILURE,
            };
        }
    };
    while let Signal::Reload = next_signal().await {
        reload(&relay, path.as_deref()).await;
    }
    relay.shutdown().await;
    ExitCode::SUCCESS
}

/// SIGHUP: read the configuration again the way it was read at start; apply it, or keep
/// the running one and say why.
async fn reload(relay: &smarthost::RelayHandle, path: Option<&std::path::Path>) {
    let config = match config::load_from_process(path) {
        Ok((config, _)) => config,
        Err(e) => {
            error!("reload refused, the running configuration stays: {e}");
            return;
        }
    };
    log_effective_config(&config);
    match relay.reload(config).await {
        Ok(notes) => {
            for note in notes {
                warn!("{note}");
            }
            info!("configuration reloaded");
        }
        Err(e) => error!("reload refused, the running configuration stays: {e}"),
    }
}

/// One line per section; secrets are redacted by their types.
fn log_effective_config(config: &Config) {
    let s = &config.server;
    if s.allow_open_relay {
        warn!(
            trusted_networks = ?s.trusted_networks, trusted_proxies = ?s.trusted_proxies,
            "server.allow_open_relay = true: the open-relay guard is off; make sure a firewall or a private network limits who can reach the SMTP port"
        );
    }
    info!(
        hostname = %s.hostname, listen = ?s.listen, trusted_networks = ?s.trusted_networks,
        max_message_size = s.max_message_size, max_connections = s.max_connections,
        max_connections_per_client = s.max_connections_per_client, max_recipients = s.max_recipients,
        starttls = s.tls_cert_file.is_some(), "config: server"
    );
    info!(
        mode = %config.delivery.mode, max_queue_lifetime = ?config.delivery.max_queue_lifetime,
        retry_base = ?config.delivery.retry_base, retry_max = ?config.delivery.retry_max,
        breaker_threshold = config.delivery.breaker_threshold, breaker_cooldown = ?config.delivery.breaker_cooldown,
        "config: delivery"
    );
    info!(format = %config.log.format, "config: log");
    info!(
        dir = %config.spool.dir.display(), max_disk_usage = config.spool.max_disk_usage,
        memory_limit = config.spool.memory_limit, "config: spool"
    );
    for key in &config.dkim {
        info!(domain = %key.domain, selector = %key.selector, algorithm = %key.algorithm, key_file = %key.key_file.display(), generate = key.generate, "config: dkim");
    }
    for up in &config.upstream {
        info!(
            name = %up.display_name(), url = %up.url, priority = up.priority, weight = up.weight,
            auth = up.username.is_some(), sender = ?up.sender, tls_verify = up.tls_verify, "config: upstream"
        );
    }
}

/// Every connection is a file descriptor: allow as many as the hard limit permits
/// (the soft limit is often 1024, below `server.max_connections` plus upstream connections).
fn raise_open_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            warn!(error = %e, "cannot raise the open-file limit");
        }
    }
}

/// What a signal asks for.
enum Signal {
    /// SIGTERM or SIGINT: stop gracefully.
    Stop,
    /// SIGHUP: reload the configuration.
    Reload,
}

#[cfg(unix)]
type Handlers = (
    tokio::signal::unix::Signal,
    tokio::signal::unix::Signal,
    tokio::signal::unix::Signal,
);

/// The process's signal handlers, installed on first use and kept for its lifetime, so
/// no signal is missed between waits.
#[cfg(unix)]
fn signal_handlers() -> Option<&'static tokio::sync::Mutex<Handlers>> {
    use std::sync::OnceLock;
    use tokio::signal::unix::{SignalKind, signal};
    static HANDLERS: OnceLock<Option<tokio::sync::Mutex<Handlers>>> = OnceLock::new();
    HANDLERS
        .get_or_init(|| {
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
                signal(SignalKind::hangup()),
            ) {
                (Ok(t), Ok(i), Ok(h)) => Some(tokio::sync::Mutex::new((t, i, h))),
                _ => None,
            }
        })
        .as_ref()
}

#[cfg(unix)]
fn install_signal_handlers() {
    let _ = signal_handlers();
}

#[cfg(not(unix))]
fn install_signal_handlers() {}

#[cfg(unix)]
async fn next_signal() -> Signal {
    let handlers = signal_handlers();
    let Some(handlers) = handlers else {
        warn!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    let mut guard = handlers.lock().await;
    let (term, int, hup) = &mut *guard;
    tokio::select! {
        _ = term.recv() => { info!("SIGTERM received"); Signal::Stop }
        _ = int.recv() => { info!("SIGINT received"); Signal::Stop }
        _ = hup.recv() => { info!("SIGHUP received: reloading the configuration"); Signal::Reload }
    }
}

#[cfg(not(unix))]
async fn next_signal() -> Signal {
    let _ = tokio::signal::ctrl_c().await;
    Signal::Stop
}

async fn oauth_login(path: Option<PathBuf>, upstream: String) -> ExitCode {
    let (config, _) = match load_config(path) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let tell = |line: &str| {
        use std::io::Write as _;
        println!("{line}");
        let _ = std::io::stdout().flush();
    };
    match ops::oauth::login(&config, &upstream, tell).await {
        Ok(file) => {
            println!(
                "signed in: the refresh token is saved in {}; `smarthost serve` uses it from now on (a running relay with the next token it fetches)",
                file.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("smarthost: oauth login failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn check(path: Option<PathBuf>, send_to: Option<String>) -> ExitCode {
    let (config, source) = match load_config(path) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    println!("config ok: {source}");
    let report = ops::check::check_upstreams(&config, send_to.as_deref()).await;
    print!("{}", report.text);
    let keys = ops::check::check_dkim(&config);
    print!("{}", keys.text);
    if report.all_ok && keys.all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    fn filter_for(vars: &[(&str, &str)]) -> (String, Vec<String>) {
        let (filter, skipped) = log_filter(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        });
        (filter.to_string(), skipped)
    }

    #[test]
    fn the_log_level_falls_back_past_empty_and_invalid_variables() {
        assert_eq!(filter_for(&[]), ("info".to_owned(), vec![]));
        assert_eq!(filter_for(&[("SMARTHOST_LOG", "debug")]).0, "debug");
        assert_eq!(
            filter_for(&[("SMARTHOST_LOG", "warn"), ("RUST_LOG", "trace")]).0,
            "warn"
        );
        // Empty or blank: as if unset.
        assert_eq!(
            filter_for(&[("SMARTHOST_LOG", "")]),
            ("info".into(), vec![])
        );
        assert_eq!(filter_for(&[("SMARTHOST_LOG", "  ")]).0, "info");
        assert_eq!(
            filter_for(&[("SMARTHOST_LOG", ""), ("RUST_LOG", "error")]).0,
            "error"
        );
        // Invalid: skipped, and said why.
        let (filter, skipped) = filter_for(&[("SMARTHOST_LOG", "verbose=on=2")]);
        assert_eq!(filter, "info");
        assert_eq!(skipped.len(), 1);
        assert!(
            skipped[0].starts_with("SMARTHOST_LOG=\"verbose=on=2\" is not a log filter"),
            "{skipped:?}"
        );
    }
}
