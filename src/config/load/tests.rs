//! Tests of loading: layering, environment overrides, interpolation, and the errors
//! that name the key, the origin and the fix.

use super::*;
use crate::config::{DeliveryMode, TlsMode, UpstreamUrl};
use std::io::Write;

fn file(text: &str) -> (tempfile::NamedTempFile, ConfigSource) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    let source = ConfigSource::File(f.path().to_owned());
    (f, source)
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const MINIMAL: &str = "[[upstream]]\nurl = \"maildir:/tmp/out\"\n";

#[test]
fn embedded_default_is_valid() {
    let c = load(&ConfigSource::Embedded, &[]).unwrap();
    assert_eq!(c.server.listen[0].to_string(), "127.0.0.1:2525");
    assert_eq!(c.delivery.mode, DeliveryMode::Queue);
    assert_eq!(c.upstream[0].url, "maildir:data/outbox".parse().unwrap());
}

#[test]
fn a_file_is_complete_on_its_own() {
    let (_f, src) = file(MINIMAL);
    let c = load(&src, &[]).unwrap();
    assert_eq!(c.server.max_recipients, 1000);
    assert_eq!(c.upstream.len(), 1);
    assert!(c.dkim.is_empty());
}

#[test]
fn environment_overrides_and_creates_keys() {
    let (_f, src) = file(MINIMAL);
    let vars = env(&[
        ("SMARTHOST__SERVER__MAX_RECIPIENTS", "5"),
        (
            "SMARTHOST__SERVER__TRUSTED_NETWORKS",
            "10.0.0.0/8, 172.16.0.0/12",
        ),
        ("SMARTHOST__UPSTREAM__1__URL", "smtps://smtp.example.com"),
        ("SMARTHOST__UPSTREAM__1__PASSWORD", "pw"),
        ("SMARTHOST__UPSTREAM__1__USERNAME", "me"),
        ("SMARTHOST__DELIVERY__MODE", "passthrough"),
        ("UNRELATED", "x"),
    ]);
    let c = load(&src, &vars).unwrap();
    assert_eq!(c.server.max_recipients, 5);
    assert_eq!(c.server.trusted_networks.len(), 2);
    assert_eq!(c.upstream.len(), 2);
    assert!(matches!(
        c.upstream[1].url,
        UpstreamUrl::Smtp {
            tls: TlsMode::Implicit,
            ..
        }
    ));
    assert_eq!(c.upstream[1].password.as_ref().unwrap().expose(), "pw");
    assert_eq!(c.delivery.mode, DeliveryMode::Passthrough);
}

#[test]
fn policy_from_a_file_and_from_the_environment() {
    let (_f, src) = file(&format!(
        "{MINIMAL}\n[policy]\nallowed_senders = [\"*@example.com\", \"invoices@billing.test\"]\n"
    ));
    let c = load(&src, &[]).unwrap();
    assert_eq!(c.policy.allowed_senders.len(), 2);
    assert!(c.policy.sender_allowed("App@Example.com"));
    assert!(!c.policy.sender_allowed("app@other.test"));
    assert!(
        c.policy.recipient_allowed("anyone@anywhere.test"),
        "no list: any"
    );
    assert_eq!(c.policy.redirect_all_to, None);

    let vars = env(&[
        (
            "SMARTHOST__POLICY__ALLOWED_RECIPIENTS",
            "*@example.com, *@partner.org",
        ),
        ("SMARTHOST__POLICY__REDIRECT_ALL_TO", "staging@example.com"),
    ]);
    let c = load(&src, &vars).unwrap();
    assert!(c.policy.recipient_allowed("x@partner.org"));
    assert!(!c.policy.recipient_allowed("x@customer.test"));
    assert_eq!(
        c.policy.redirect_all_to.map(|a| a.to_string()).as_deref(),
        Some("staging@example.com")
    );
}

#[test]
fn policy_mistakes_name_the_key() {
    for (section, want) in [
        (
            "allowed_senders = [\"example.com\"]",
            "`policy.allowed_senders`: `example.com` has no `@`; write `*@example.com`",
        ),
        (
            "allowed_recipients = [\"<a@example.com>\"]",
            "`policy.allowed_recipients`: `<a@example.com>` contains '<'",
        ),
        (
            "redirect_all_to = \"not an address\"",
            "`policy.redirect_all_to`: `not an address` is not a mail address",
        ),
        ("allow_senders = []", "unknown key `allow_senders`"),
    ] {
        let got = error(
            &format!("[policy]\n{section}\n[[upstream]]\nurl = \"maildir:x\"\n"),
            &[],
        );
        assert!(got.contains(want), "{section}:\n got: {got}\nwant: {want}");
    }
}

#[test]
fn log_format_defaults_to_text_and_is_set_by_file_or_environment() {
    use crate::config::LogFormat;
    let (_f, src) = file(MINIMAL);
    assert_eq!(load(&src, &[]).unwrap().log.format, LogFormat::Text);
    let (_f, src) = file(&format!("[log]\nformat = \"json\"\n{MINIMAL}"));
    assert_eq!(load(&src, &[]).unwrap().log.format, LogFormat::Json);
    let vars = env(&[("SMARTHOST__LOG__FORMAT", "JSON")]);
    let c = load(&ConfigSource::Embedded, &vars).unwrap();
    assert_eq!(c.log.format, LogFormat::Json);
}

#[test]
fn env_without_index_means_the_first_entry() {
    let vars = env(&[("SMARTHOST__UPSTREAM__URL", "smtp://mail.example.com")]);
    let c = load(&ConfigSource::Embedded, &vars).unwrap();
    assert!(matches!(
        c.upstream[0].url,
        UpstreamUrl::Smtp { port: 587, .. }
    ));
}

#[test]
fn variables_are_interpolated_and_secret_files_read() {
    let mut pw = tempfile::NamedTempFile::new().unwrap();
    writeln!(pw, "from-file").unwrap();
    let text = format!(
        "[server]\nhostname = \"${{HOST}}\"\n[[upstream]]\nurl = \"smtps://mx.example\"\nusername = \"u\"\npassword_file = \"{}\"\n[[upstream]]\nname = \"b\"\nurl = \"smtps://mx2.example\"\nusername = \"u\"\npassword = \"a$${{b}}${{PW}}\"\n",
        pw.path().display()
    );
    let (_f, src) = file(&text);
    let c = load(&src, &env(&[("HOST", "relay.internal"), ("PW", "secret")])).unwrap();
    assert_eq!(c.server.hostname, "relay.internal");
    assert_eq!(
        c.upstream[0].password.as_ref().unwrap().expose(),
        "from-file"
    );
    assert_eq!(
        c.upstream[1].password.as_ref().unwrap().expose(),
        "a${b}secret"
    );
}

fn error(text: &str, vars: &[(&str, &str)]) -> String {
    let (f, src) = file(text);
    let e = load(&src, &env(vars)).unwrap_err().to_string();
    e.replace(&f.path().display().to_string(), "FILE")
}

#[test]
fn errors_name_the_key_the_origin_and_the_valid_values() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            "[server]\nmax_conections = 5\n[[upstream]]\nurl = \"maildir:x\"\n",
            &[],
            "FILE: `server.max_conections`: unknown key `max_conections`, valid keys here are `hostname`",
        ),
        (
            "[delivery]\nmode = \"fast\"\n[[upstream]]\nurl = \"maildir:x\"\n",
            &[],
            "FILE: `delivery.mode`: unknown value \"fast\"; valid values are \"queue\", \"passthrough\"",
        ),
        (
            "[[upstream]]\nurl = \"smtp://smtp.qq.com:465\"\n",
            &[],
            "FILE: `upstream[0].url`: port 465 expects TLS from the first byte",
        ),
        (
            "[[upstream]]\nprovider = \"gmial\"\n",
            &[],
            "FILE: `upstream[0].provider`: unknown provider preset \"gmial\"; valid presets are \"gmail\", \"outlook\", \"office365\", \"qq\", \"exmail\", \"163\", \"ses:REGION\" (e.g. \"ses:us-east-1\"), \"sendgrid\", \"mailgun\"",
        ),
        (
            MINIMAL,
            &[("SMARTHOST__UPSTREAM__0__PROVIDER", "gmial")],
            "environment variable SMARTHOST__UPSTREAM__0__PROVIDER: `upstream[0].provider`: unknown provider preset \"gmial\"",
        ),
        (
            MINIMAL,
            &[("SMARTHOST__SERVER__MAX_CONNECTIONS", "lots")],
            "environment variable SMARTHOST__SERVER__MAX_CONNECTIONS: `server.max_connections`",
        ),
        (
            MINIMAL,
            &[("SMARTHOST__SERVER__BOGUS", "1")],
            "environment variable SMARTHOST__SERVER__BOGUS: `server.bogus`: unknown key",
        ),
        (
            "[[upstream]]\nurl = \"maildir:x\"\n[[dkim]]\ndomain = \"example.com\"\n",
            &[],
            "FILE: `dkim[0].key_file`: missing required key `key_file`",
        ),
        (
            "[server]\nlisten = [\"localhost:25\"]\n",
            &[],
            "FILE: `server.listen`: invalid address \"localhost:25\": expected IP:PORT",
        ),
        (
            "[server]\ntrusted_networks = [\"lan\"]\n",
            &[],
            "FILE: `server.trusted_networks`: invalid network \"lan\"",
        ),
        (
            "[server]\nshutdown_grace = \"soon\"\n",
            &[],
            "FILE: `server.shutdown_grace`: invalid duration \"soon\"",
        ),
        (
            "[server]\n",
            &[],
            "FILE: `upstream`: no upstream configured",
        ),
        (
            "[[upstream]]\nurl = \"smtps://x\"\npassword = \"${NOPE}\"\n",
            &[],
            "FILE: `upstream[0].password`: uses ${NOPE} but the environment variable NOPE is not set",
        ),
        (
            "[[upstream]]\nurl = \"smtps://x\"\npassword = \"p\"\n",
            &[],
            "FILE: `upstream[0].username`: a password or token is configured but no username",
        ),
        (
            "[log]\nformat = \"xml\"\n[[upstream]]\nurl = \"maildir:x\"\n",
            &[],
            "FILE: `log.format`: unknown value \"xml\"; valid values are \"text\", \"json\"",
        ),
        (
            MINIMAL,
            &[("SMARTHOST__LOG__FORMAT", "yaml")],
            "environment variable SMARTHOST__LOG__FORMAT: `log.format`: unknown value \"yaml\"; valid values are \"text\", \"json\"",
        ),
        ("[server\n", &[], "FILE: not valid TOML"),
        (
            "[spool]\nmemory_limit = 65536\n[[upstream]]\nurl = \"maildir:x\"\n",
            &[],
            "FILE: `spool.memory_limit`: must be at least 1048576 (1 MiB)",
        ),
    ];
    for (text, vars, want) in cases {
        let got = error(text, vars);
        assert!(got.starts_with(want), "\n got: {got}\nwant: {want}");
    }
}

#[test]
fn upstream_values_are_checked() {
    for (extra, want) in [
        (
            "max_messages_per_connection = 0",
            "`upstream[0].max_messages_per_connection`: must be at least 1",
        ),
        (
            "max_recipients = 0",
            "`upstream[0].max_recipients`: must be at least 1",
        ),
        (
            "timeout = \"0s\"",
            "`upstream[0].timeout`: must be longer than zero",
        ),
        (
            "daily_limit = 0",
            "`upstream[0].daily_limit`: must be at least 1",
        ),
        (
            "username = \"u\"\npassword = \"p\"\noauth_token = \"t\"",
            "give either a password or an OAuth token",
        ),
    ] {
        let got = error(
            &format!("[[upstream]]\nurl = \"smtps://x\"\n{extra}\n"),
            &[],
        );
        assert!(got.contains(want), "{extra}: {got}");
    }
}

#[test]
fn idn_dkim_domains_are_kept_in_a_labels() {
    let (_f, src) = file(
        "[[upstream]]\nurl = \"maildir:x\"\n[[dkim]]\ndomain = \"bücher.example\"\nkey_file = \"k.pem\"\n",
    );
    assert_eq!(
        load(&src, &[]).unwrap().dkim[0].domain,
        "xn--bcher-kva.example"
    );
}

#[test]
fn empty_credentials_mean_no_auth() {
    let (_f, src) = file("[[upstream]]\nurl = \"smtps://x\"\nusername = \"\"\npassword = \"\"\n");
    let c = load(&src, &[]).unwrap();
    assert!(c.upstream[0].username.is_none() && c.upstream[0].password.is_none());
}

fn upstream(text: &str, vars: &[(&str, &str)]) -> crate::config::UpstreamConfig {
    let (_f, src) = file(text);
    load(&src, &env(vars)).unwrap().upstream.remove(0)
}

#[test]
fn every_provider_preset_fills_the_url() {
    let cases = [
        ("gmail", "smtp.gmail.com", 465, TlsMode::Implicit),
        ("outlook", "smtp-mail.outlook.com", 587, TlsMode::StartTls),
        ("office365", "smtp.office365.com", 587, TlsMode::StartTls),
        ("qq", "smtp.qq.com", 465, TlsMode::Implicit),
        ("exmail", "smtp.exmail.qq.com", 465, TlsMode::Implicit),
        ("163", "smtp.163.com", 465, TlsMode::Implicit),
        (
            "ses:us-east-1",
            "email-smtp.us-east-1.amazonaws.com",
            587,
            TlsMode::StartTls,
        ),
        (
            "ses:eu-west-2",
            "email-smtp.eu-west-2.amazonaws.com",
            587,
            TlsMode::StartTls,
        ),
        ("sendgrid", "smtp.sendgrid.net", 587, TlsMode::StartTls),
        ("mailgun", "smtp.mailgun.org", 587, TlsMode::StartTls),
        ("Gmail", "smtp.gmail.com", 465, TlsMode::Implicit),
    ];
    for (preset, want_host, want_port, want_tls) in cases {
        let up = upstream(
            &format!(
                "[[upstream]]\nprovider = \"{preset}\"\nusername = \"me@example.com\"\npassword = \"p\"\n"
            ),
            &[],
        );
        let UpstreamUrl::Smtp {
            host, port, tls, ..
        } = &up.url
        else {
            panic!("{preset}: {:?}", up.url);
        };
        assert_eq!(
            (host.as_str(), *port, *tls),
            (want_host, want_port, want_tls),
            "{preset}"
        );
        assert_eq!(
            up.provider.as_ref().unwrap().to_string(),
            preset.to_ascii_lowercase()
        );
        assert_eq!(up.display_name(), format!("{want_host}:{want_port}"));
        assert_eq!(up.username.as_deref(), Some("me@example.com"), "{preset}");
    }
    // 163 is also accepted as a TOML integer.
    let up = upstream("[[upstream]]\nprovider = 163\n", &[]);
    assert_eq!(up.url, "smtps://smtp.163.com:465".parse().unwrap());
}

#[test]
fn bad_ses_regions_are_refused() {
    for region in [
        "ses:",
        "ses:virginia",
        "ses:us-east",
        "ses:us-east-1.evil.example",
    ] {
        let got = error(&format!("[[upstream]]\nprovider = \"{region}\"\n"), &[]);
        assert!(
            got.starts_with("FILE: `upstream[0].provider`: invalid SES region"),
            "{region}: {got}"
        );
        assert!(got.contains("\"ses:us-east-1\""), "{got}");
    }
}

#[test]
fn url_and_provider_are_exclusive() {
    let got = error(
        "[[upstream]]\nurl = \"smtps://smtp.example.com\"\nprovider = \"gmail\"\n",
        &[],
    );
    assert!(
        got.starts_with(
            "FILE: `upstream[0]`: both `url` and `provider` (\"gmail\") are set; give exactly one"
        ),
        "{got}"
    );
    let got = error("[[upstream]]\nname = \"x\"\n", &[]);
    assert!(
        got.starts_with("FILE: `upstream[0]`: needs `url`") && got.contains("\"sendgrid\""),
        "{got}"
    );
    // Both from the environment, in one layer: a conflict too.
    let got = error(
        "[server]\n",
        &[
            ("SMARTHOST__UPSTREAM__0__URL", "smtps://smtp.example.com"),
            ("SMARTHOST__UPSTREAM__0__PROVIDER", "gmail"),
        ],
    );
    assert!(got.contains("both `url` and `provider`"), "{got}");
}

#[test]
fn provider_from_the_environment_replaces_the_files_url() {
    let vars = env(&[
        ("SMARTHOST__UPSTREAM__0__PROVIDER", "gmail"),
        ("SMARTHOST__UPSTREAM__0__USERNAME", "me@gmail.com"),
        ("SMARTHOST__UPSTREAM__0__PASSWORD", "app-password"),
    ]);
    let c = load(&ConfigSource::Embedded, &vars).unwrap();
    assert_eq!(
        c.upstream[0].url,
        "smtps://smtp.gmail.com:465".parse().unwrap()
    );
    assert_eq!(c.upstream[0].sender.as_deref(), Some("me@gmail.com"));
    // And a URL from the environment replaces the file's provider.
    let up = upstream(
        "[[upstream]]\nprovider = \"gmail\"\n",
        &[("SMARTHOST__UPSTREAM__0__URL", "smtp://mx.example.com")],
    );
    assert_eq!(up.url, "smtp://mx.example.com:587".parse().unwrap());
    assert!(up.provider.is_none());
}

#[test]
fn sender_defaults_to_the_account_where_the_provider_requires_it() {
    for preset in ["gmail", "outlook", "office365", "qq", "exmail", "163"] {
        let up = upstream(
            &format!(
                "[[upstream]]\nprovider = \"{preset}\"\nusername = \"me@example.com\"\npassword = \"p\"\n"
            ),
            &[],
        );
        assert_eq!(up.sender.as_deref(), Some("me@example.com"), "{preset}");
    }
    // An explicit sender wins.
    let up = upstream(
        "[[upstream]]\nprovider = \"gmail\"\nusername = \"me@gmail.com\"\npassword = \"p\"\nsender = \"alias@example.com\"\n",
        &[],
    );
    assert_eq!(up.sender.as_deref(), Some("alias@example.com"));
    // Relay services do not force the From.
    for preset in ["ses:us-east-1", "sendgrid", "mailgun"] {
        let up = upstream(
            &format!(
                "[[upstream]]\nprovider = \"{preset}\"\nusername = \"AKIAEXAMPLE\"\npassword = \"p\"\n"
            ),
            &[],
        );
        assert_eq!(up.sender, None, "{preset}");
    }
    // Without credentials there is no account to default to.
    assert_eq!(
        upstream("[[upstream]]\nprovider = \"qq\"\n", &[]).sender,
        None
    );
    // A username that is not an address cannot be the From.
    let got = error(
        "[[upstream]]\nprovider = \"office365\"\nusername = \"relay\"\npassword = \"p\"\n",
        &[],
    );
    assert!(
        got.starts_with(
            "FILE: `upstream[0].username`: office365 accepts mail only From the account"
        ),
        "{got}"
    );
}

#[test]
fn sendgrid_username_defaults_to_apikey() {
    let up = upstream(
        "[[upstream]]\nprovider = \"sendgrid\"\npassword = \"SG.key\"\n",
        &[],
    );
    assert_eq!(up.username.as_deref(), Some("apikey"));
    let up = upstream(
        "[[upstream]]\nprovider = \"sendgrid\"\nusername = \"other\"\npassword = \"SG.key\"\n",
        &[],
    );
    assert_eq!(up.username.as_deref(), Some("other"));
}

#[test]
fn max_recipients_defaults_to_100_or_the_presets_cap() {
    let up = upstream("[[upstream]]\nurl = \"smtps://x\"\n", &[]);
    assert_eq!(up.max_recipients, 100);
    for (preset, want) in [
        ("gmail", 100),
        ("office365", 500),
        ("outlook", 100),
        ("ses:us-east-1", 50),
        ("sendgrid", 100),
        ("mailgun", 100),
        ("qq", 100),
    ] {
        let up = upstream(
            &format!(
                "[[upstream]]\nprovider = \"{preset}\"\nusername = \"me@example.com\"\npassword = \"p\"\n"
            ),
            &[],
        );
        assert_eq!(up.max_recipients, want, "{preset}");
    }
    // Set explicitly, it wins over the preset; the environment wins over the file.
    let up = upstream(
        "[[upstream]]\nprovider = \"ses:us-east-1\"\nusername = \"AKIA\"\npassword = \"p\"\nmax_recipients = 20\n",
        &[],
    );
    assert_eq!(up.max_recipients, 20);
    let up = upstream(
        "[[upstream]]\nurl = \"smtps://x\"\nmax_recipients = 20\n",
        &[("SMARTHOST__UPSTREAM__0__MAX_RECIPIENTS", "7")],
    );
    assert_eq!(up.max_recipients, 7);
    for (preset, want) in [("sendgrid", 5000), ("gmail", 100), ("ses:us-east-1", 100)] {
        let up = upstream(
            &format!(
                "[[upstream]]\nprovider = \"{preset}\"\nusername = \"me@example.com\"\npassword = \"p\"\n"
            ),
            &[],
        );
        assert_eq!(up.max_messages_per_connection, want, "{preset}");
    }
    let up = upstream(
        "[[upstream]]\nprovider = \"sendgrid\"\npassword = \"p\"\nmax_messages_per_connection = 20\n",
        &[],
    );
    assert_eq!(up.max_messages_per_connection, 20);
    let got = error(
        "[[upstream]]\nurl = \"smtps://x\"\n",
        &[("SMARTHOST__UPSTREAM__0__MAX_RECIPIENTS", "0")],
    );
    assert!(
        got.starts_with(
            "environment variable SMARTHOST__UPSTREAM__0__MAX_RECIPIENTS: `upstream[0].max_recipients`: must be at least 1"
        ),
        "{got}"
    );
}

#[test]
fn a_network_covering_everything_needs_allow_open_relay() {
    for nets in ["0.0.0.0/0", "::/0", "10.0.0.0/8, 128.0.0.0/0"] {
        let text = format!("[server]\ntrusted_networks = \"{nets}\"\n{MINIMAL}");
        let got = error(&text, &[]);
        assert!(
            got.starts_with("FILE: `server.trusted_networks`: ")
                && got.contains("open relay: anyone who can reach the SMTP port can send mail through your upstream accounts")
                && got.contains("server.allow_open_relay = true"),
            "{nets}: {got}"
        );
        let got = error(MINIMAL, &[("SMARTHOST__SERVER__TRUSTED_NETWORKS", nets)]);
        assert!(
            got.starts_with("environment variable SMARTHOST__SERVER__TRUSTED_NETWORKS: `server.trusted_networks`"),
            "{got}"
        );
        let (_f, src) = file(&format!(
            "[server]\ntrusted_networks = \"{nets}\"\nallow_open_relay = true\n{MINIMAL}"
        ));
        assert!(load(&src, &[]).unwrap().server.allow_open_relay);
        let (_f, src) = file(MINIMAL);
        let vars = env(&[
            ("SMARTHOST__SERVER__TRUSTED_NETWORKS", nets),
            ("SMARTHOST__SERVER__ALLOW_OPEN_RELAY", "true"),
        ]);
        assert!(load(&src, &vars).is_ok(), "{nets}");
    }
    // Wide but not everything is fine.
    let (_f, src) = file(&format!(
        "[server]\ntrusted_networks = [\"0.0.0.0/1\", \"::/1\"]\n{MINIMAL}"
    ));
    assert!(!load(&src, &[]).unwrap().server.allow_open_relay);
}

#[test]
fn halves_that_together_cover_everything_need_allow_open_relay() {
    let got = error(
        &format!("[server]\ntrusted_networks = [\"0.0.0.0/1\", \"128.0.0.0/1\"]\n{MINIMAL}"),
        &[],
    );
    assert!(
        got.contains("0.0.0.0/1, 128.0.0.0/1 trusts every address"),
        "{got}"
    );
}

#[test]
fn a_proxy_list_covering_everything_needs_allow_open_relay() {
    for nets in ["0.0.0.0/0", "::/0", "0.0.0.0/1, 128.0.0.0/1"] {
        let text =
            format!("[server]\nproxy_protocol = true\ntrusted_proxies = \"{nets}\"\n{MINIMAL}");
        let got = error(&text, &[]);
        assert!(
            got.starts_with("FILE: `server.trusted_proxies`: ")
                && got.contains("open relay: any client can send a PROXY header claiming an address in trusted_networks")
                && got.contains("server.allow_open_relay = true"),
            "{nets}: {got}"
        );
        // Even with PROXY off: turning it on later must not open the relay silently.
        let got = error(MINIMAL, &[("SMARTHOST__SERVER__TRUSTED_PROXIES", nets)]);
        assert!(
            got.starts_with(
                "environment variable SMARTHOST__SERVER__TRUSTED_PROXIES: `server.trusted_proxies`"
            ),
            "{got}"
        );
        let (_f, src) = file(&format!(
            "[server]\nproxy_protocol = true\ntrusted_proxies = \"{nets}\"\nallow_open_relay = true\n{MINIMAL}"
        ));
        assert!(load(&src, &[]).is_ok(), "{nets}");
    }
    let (_f, src) = file(&format!(
        "[server]\nproxy_protocol = true\ntrusted_proxies = \"172.17.0.1/32, 10.0.0.0/8\"\n{MINIMAL}"
    ));
    assert!(load(&src, &[]).is_ok());
}

#[test]
fn oauth_tables_from_a_file_and_from_the_environment() {
    let up = upstream(
        "[[upstream]]\nname = \"m365\"\nprovider = \"office365\"\nusername = \"relay@contoso.com\"\n\
         [upstream.oauth]\nflow = \"client_credentials\"\ntenant = \"contoso.onmicrosoft.com\"\n\
         client_id = \"app-id\"\nclient_secret = \"s3cret\"\n",
        &[],
    );
    let oauth = up.oauth.unwrap();
    assert_eq!(
        oauth.token_url.as_deref(),
        Some("https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token")
    );
    assert_eq!(up.sender.as_deref(), Some("relay@contoso.com"));

    let (_f, src) = file("");
    let vars = env(&[
        ("SMARTHOST__UPSTREAM__0__PROVIDER", "gmail"),
        ("SMARTHOST__UPSTREAM__0__USERNAME", "me@gmail.com"),
        ("SMARTHOST__UPSTREAM__0__OAUTH__FLOW", "refresh_token"),
        (
            "SMARTHOST__UPSTREAM__0__OAUTH__CLIENT_ID",
            "id.apps.googleusercontent.com",
        ),
        ("SMARTHOST__UPSTREAM__0__OAUTH__CLIENT_SECRET", "gsecret"),
    ]);
    let up = load(&src, &vars).unwrap().upstream.remove(0);
    let oauth = up.oauth.unwrap();
    assert_eq!(oauth.scope.as_deref(), Some("https://mail.google.com/"));
    assert_eq!(
        oauth.refresh_token_file.as_deref(),
        Some(std::path::Path::new("data/oauth/smtp.gmail.com:465.json"))
    );
    assert_eq!(oauth.client_secret.unwrap().expose(), "gsecret");
}

#[test]
fn oauth_mistakes_name_the_key() {
    let base = "[[upstream]]\nprovider = \"office365\"\nusername = \"relay@contoso.com\"\n";
    let got = error(
        &format!(
            "{base}password = \"pw\"\n[upstream.oauth]\nflow = \"client_credentials\"\ntenant = \"t\"\nclient_id = \"a\"\nclient_secret = \"s\"\n"
        ),
        &[],
    );
    assert!(
        got.starts_with("FILE: `upstream[0].password`: [upstream.oauth] fetches the tokens"),
        "{got}"
    );
    let got = error(
        &format!(
            "{base}[upstream.oauth]\nflow = \"client_credentials\"\nclient_id = \"a\"\nclient_secret = \"s\"\n"
        ),
        &[],
    );
    assert!(
        got.starts_with("FILE: `upstream[0].oauth.tenant`: the office365 preset builds token_url from the tenant"),
        "{got}"
    );
    let got = error(
        &format!("{base}[upstream.oauth]\nflow = \"device\"\nclient_id = \"a\"\n"),
        &[],
    );
    assert!(
        got.contains("\"client_credentials\", \"refresh_token\""),
        "{got}"
    );
    let got = error(
        "[[upstream]]\nprovider = \"office365\"\n[upstream.oauth]\nflow = \"client_credentials\"\ntenant = \"t\"\nclient_id = \"a\"\nclient_secret = \"s\"\n",
        &[],
    );
    assert!(
        got.starts_with("FILE: `upstream[0].username`: [upstream.oauth] needs the mailbox"),
        "{got}"
    );
}

#[test]
fn a_missing_file_says_so() {
    let e = load(
        &ConfigSource::File("/nonexistent/smarthost.toml".into()),
        &[],
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot read config file /nonexistent/smarthost.toml"),
        "{e}"
    );
}

#[test]
fn header_rules_and_transform_from_a_file() {
    use crate::config::{HeaderAction, HeaderRule};
    let (_f, src) = file(&format!(
        "[[header_rule]]\naction = \"remove\"\nname = \"X-Mailer\"\n\
         [[header_rule]]\naction = \"SET\"\nname = \"X-Env\"\nvalue = \"prod\"\n\
         [[header_rule]]\naction = \"add\"\nname = \"X-Note\"\nvalue = \"Grüße, relayed\"\n\
         [transform]\nhide_client = true\n{MINIMAL}"
    ));
    let c = load(&src, &[]).unwrap();
    let rule = |action, name: &str, value: Option<&str>| HeaderRule {
        action,
        name: name.into(),
        value: value.map(str::to_owned),
    };
    assert_eq!(
        c.header_rule,
        [
            rule(HeaderAction::Remove, "X-Mailer", None),
            rule(HeaderAction::Set, "X-Env", Some("prod")),
            rule(HeaderAction::Add, "X-Note", Some("Grüße, relayed")),
        ]
    );
    assert!(c.transform.hide_client);
    // Defaults: no rules, the client shown.
    let c = load(&ConfigSource::Embedded, &[]).unwrap();
    assert!(c.header_rule.is_empty() && !c.transform.hide_client);
}

#[test]
fn header_rules_and_transform_from_the_environment_only() {
    use crate::config::HeaderAction;
    let vars = env(&[
        ("SMARTHOST__HEADER_RULE__0__ACTION", "remove"),
        ("SMARTHOST__HEADER_RULE__0__NAME", "X-Mailer"),
        ("SMARTHOST__HEADER_RULE__1__ACTION", "set"),
        ("SMARTHOST__HEADER_RULE__1__NAME", "X-Env"),
        ("SMARTHOST__HEADER_RULE__1__VALUE", "prod"),
        ("SMARTHOST__TRANSFORM__HIDE_CLIENT", "true"),
    ]);
    let c = load(&ConfigSource::Embedded, &vars).unwrap();
    assert_eq!(c.header_rule.len(), 2);
    assert_eq!(c.header_rule[0].action, HeaderAction::Remove);
    assert_eq!(c.header_rule[0].name, "X-Mailer");
    assert_eq!(c.header_rule[1].value.as_deref(), Some("prod"));
    assert!(c.transform.hide_client);
    // Without an index, the first rule is meant; on top of a file's rule, only the
    // named key changes.
    let (_f, src) = file(&format!(
        "[[header_rule]]\naction = \"set\"\nname = \"X-Env\"\nvalue = \"dev\"\n{MINIMAL}"
    ));
    let c = load(&src, &env(&[("SMARTHOST__HEADER_RULE__VALUE", "staging")])).unwrap();
    assert_eq!(c.header_rule[0].name, "X-Env");
    assert_eq!(c.header_rule[0].value.as_deref(), Some("staging"));
}

#[test]
fn header_rule_mistakes_name_the_key_and_the_fix() {
    let rule = |body: &str| format!("[[header_rule]]\n{body}\n{MINIMAL}");
    let cases: &[(String, &str)] = &[
        (
            rule("action = \"replace\"\nname = \"X-Mailer\""),
            "FILE: `header_rule[0].action`: unknown value \"replace\"; valid values are \"remove\", \"set\", \"add\"",
        ),
        (
            rule("name = \"X-Mailer\""),
            "FILE: `header_rule[0].action`: missing required key `action`",
        ),
        (
            rule("action = \"remove\""),
            "FILE: `header_rule[0].name`: missing required key `name`",
        ),
        (
            rule("action = \"set\"\nname = \"X-Env\""),
            "FILE: `header_rule[0].value`: action \"set\" needs a value: add value = \"...\"",
        ),
        (
            rule("action = \"add\"\nname = \"X-Env\""),
            "FILE: `header_rule[0].value`: action \"add\" needs a value",
        ),
        (
            rule("action = \"remove\"\nname = \"X-Mailer\"\nvalue = \"x\""),
            "FILE: `header_rule[0].value`: action \"remove\" takes no value",
        ),
        (
            rule("action = \"remove\"\nname = \"X Mailer\""),
            "FILE: `header_rule[0].name`: \"X Mailer\" is not a header field name: use printable ASCII without spaces or `:`",
        ),
        (
            rule("action = \"remove\"\nname = \"X-Mailer:\""),
            "FILE: `header_rule[0].name`: \"X-Mailer:\" is not a header field name",
        ),
        (
            rule("action = \"remove\"\nname = \"\""),
            "FILE: `header_rule[0].name`: \"\" is not a header field name",
        ),
        (
            rule("action = \"remove\"\nname = \"X-Mäiler\""),
            "FILE: `header_rule[0].name`: \"X-Mäiler\" is not a header field name",
        ),
        (
            rule("action = \"set\"\nname = \"X-Env\"\nvalue = \"a\\r\\nBcc: evil@x\""),
            "FILE: `header_rule[0].value`: contains the control character '\\r': a value must be one line of printable text",
        ),
        (
            rule("action = \"add\"\nname = \"X-Env\"\nvalue = \"a\\nb\""),
            "FILE: `header_rule[0].value`: contains the control character '\\n'",
        ),
        (
            rule("action = \"add\"\nname = \"X-Env\"\nvalue = \"a\\tb\""),
            "FILE: `header_rule[0].value`: contains the control character '\\t'",
        ),
        (
            rule("action = \"add\"\nname = \"X-Env\"\nvalue = \"a\\u0000b\""),
            "FILE: `header_rule[0].value`: contains the control character '\\0'",
        ),
        (
            rule(&format!(
                "action = \"add\"\nname = \"X-Long\"\nvalue = \"{}\"",
                "x".repeat(991)
            )),
            "FILE: `header_rule[0].value`: `X-Long: ` and the value take 999 octets, over the 998",
        ),
        (
            rule("action = \"remove\"\nname = \"X-Mailer\"\nvaleu = \"x\""),
            "FILE: `header_rule[0].valeu`: unknown key `valeu`, valid keys here are `action`, `name`, `value`",
        ),
        (
            format!("[transform]\nhide_ip = true\n{MINIMAL}"),
            "FILE: `transform.hide_ip`: unknown key `hide_ip`, the only valid key here is `hide_client`",
        ),
    ];
    for (text, want) in cases {
        let got = error(text, &[]);
        assert!(got.starts_with(want), "\n got: {got}\nwant: {want}");
    }
    // The longest value that fits is accepted.
    let (_f, src) = file(&rule(&format!(
        "action = \"add\"\nname = \"X-Long\"\nvalue = \"{}\"",
        "x".repeat(990)
    )));
    assert!(load(&src, &[]).is_ok());
    // The second rule is named by its index; an environment variable by its name.
    let got = error(
        &format!(
            "[[header_rule]]\naction = \"remove\"\nname = \"X-A\"\n[[header_rule]]\naction = \"remove\"\nname = \"X B\"\n{MINIMAL}"
        ),
        &[],
    );
    assert!(got.starts_with("FILE: `header_rule[1].name`"), "{got}");
    let got = error(
        MINIMAL,
        &[
            ("SMARTHOST__HEADER_RULE__0__ACTION", "drop"),
            ("SMARTHOST__HEADER_RULE__0__NAME", "X-Mailer"),
        ],
    );
    assert!(
        got.starts_with("environment variable SMARTHOST__HEADER_RULE__0__ACTION: `header_rule[0].action`: unknown value \"drop\""),
        "{got}"
    );
    let got = error(
        MINIMAL,
        &[
            ("SMARTHOST__HEADER_RULE__0__ACTION", "set"),
            ("SMARTHOST__HEADER_RULE__0__NAME", "X-Env"),
        ],
    );
    // The missing value was set by no variable: the rule's own variables are named.
    assert!(
        got.starts_with("environment variable SMARTHOST__HEADER_RULE__0__")
            && got.contains(": `header_rule[0].value`: action \"set\" needs a value"),
        "{got}"
    );
    // A rule in the file keeps the file as the origin of what it lacks.
    let got = error(
        &format!("[[header_rule]]\naction = \"set\"\nname = \"X-Env\"\n{MINIMAL}"),
        &[("SMARTHOST__HEADER_RULE__0__NAME", "X-Other")],
    );
    assert!(got.starts_with("FILE: `header_rule[0].value`"), "{got}");
}

#[test]
fn header_rules_may_not_name_the_fields_the_transform_owns() {
    for name in ["From", "sender", "DATE", "Message-Id", "dkim-signature"] {
        for action in ["remove", "set", "add"] {
            let value = if action == "remove" {
                ""
            } else {
                "value = \"x\"\n"
            };
            let got = error(
                &format!(
                    "[[header_rule]]\naction = \"{action}\"\nname = \"{name}\"\n{value}{MINIMAL}"
                ),
                &[],
            );
            assert!(
                got.starts_with("FILE: `header_rule[0].name`: ")
                    && got.contains("is written by smarthost itself")
                    && got.contains("From, Sender, Date, Message-ID, DKIM-Signature"),
                "{name} {action}: {got}"
            );
        }
    }
    // Names that merely start like one are fine.
    let (_f, src) = file(&format!(
        "[[header_rule]]\naction = \"remove\"\nname = \"From-Internal\"\n[[header_rule]]\naction = \"remove\"\nname = \"Received\"\n{MINIMAL}"
    ));
    assert_eq!(load(&src, &[]).unwrap().header_rule.len(), 2);
}

const TWO_UPSTREAMS: &str = "[[upstream]]\nname = \"ses\"\nurl = \"maildir:/tmp/ses\"\n\
    [[upstream]]\nname = \"backup\"\nurl = \"maildir:/tmp/backup\"\npriority = 10\n";

#[test]
fn routes_from_a_file_and_from_the_environment_only() {
    let (_f, src) = file(&format!(
        "{TWO_UPSTREAMS}[[route]]\nname = \"billing\"\nsenders = [\"*@billing.test\"]\nclients = [\"10.1.0.0/16\"]\nupstreams = [\"ses\"]\n\
         [[route]]\nname = \"rest\"\nupstreams = [\"ses\", \"backup\"]\n"
    ));
    let c = load(&src, &[]).unwrap();
    assert_eq!(c.route.len(), 2);
    let ip = "10.1.2.3".parse().unwrap();
    assert_eq!(
        c.route_for(Some("A@Billing.test"), ip, None)
            .map(|r| r.name.as_str()),
        Some("billing")
    );
    assert_eq!(
        c.route_for(None, ip, None).map(|r| r.name.as_str()),
        Some("rest")
    );

    let (_f, src) = file(TWO_UPSTREAMS);
    let vars = env(&[
        ("SMARTHOST__ROUTE__0__NAME", "billing"),
        ("SMARTHOST__ROUTE__0__SENDERS", "*@a.com,*@b.com"),
        ("SMARTHOST__ROUTE__0__UPSTREAMS", "ses,backup"),
        ("SMARTHOST__ROUTE__1__NAME", "office"),
        ("SMARTHOST__ROUTE__1__CLIENTS", "10.0.0.0/8, 192.0.2.7"),
        ("SMARTHOST__ROUTE__1__UPSTREAMS", "backup"),
    ]);
    let c = load(&src, &vars).unwrap();
    assert_eq!(c.route[0].name, "billing");
    assert_eq!(c.route[0].senders.len(), 2);
    assert_eq!(c.route[0].upstreams, ["ses", "backup"]);
    assert_eq!(c.route[1].clients.len(), 2);
    // Without an index, the first route is meant.
    let c = load(
        &src,
        &env(&[
            ("SMARTHOST__ROUTE__NAME", "all"),
            ("SMARTHOST__ROUTE__UPSTREAMS", "ses"),
        ]),
    )
    .unwrap();
    assert_eq!(c.route[0].name, "all");
}

#[test]
fn route_mistakes_name_the_key_and_the_fix() {
    let route = |body: &str| format!("{TWO_UPSTREAMS}{body}");
    let cases: &[(String, &str)] = &[
        (
            route("[[route]]\nupstreams = [\"ses\"]\n"),
            "`route[0].name`: missing required key `name`",
        ),
        (
            route("[[route]]\nname = \"\"\nupstreams = [\"ses\"]\n"),
            "`route[0].name`: a route needs a name",
        ),
        (
            route(
                "[[route]]\nname = \"a\"\nsenders = [\"*@x.test\"]\nupstreams = [\"ses\"]\n[[route]]\nname = \"a\"\nupstreams = [\"ses\"]\n",
            ),
            "`route[1].name`: two routes are named \"a\"",
        ),
        (
            route("[[route]]\nname = \"a\"\nupstreams = []\n"),
            "`route[0].upstreams`: route \"a\" has no upstream: list the [[upstream]] names it may use, e.g. upstreams = [\"ses\", \"backup\"]",
        ),
        (
            route("[[route]]\nname = \"a\"\n"),
            "`route[0].upstreams`: missing required key `upstreams`",
        ),
        (
            route("[[route]]\nname = \"a\"\nupstreams = [\"ses\", \"sess\"]\n"),
            "`route[0].upstreams`: no [[upstream]] is named \"sess\"; the upstreams are named \"ses\", \"backup\"",
        ),
        (
            route(
                "[[route]]\nname = \"all\"\nupstreams = [\"ses\"]\n[[route]]\nname = \"billing\"\nsenders = [\"*@b.test\"]\nupstreams = [\"backup\"]\n",
            ),
            "`route[1]`: this route can never match: routes are tried in order and the first match wins, and route[0] (\"all\") before it has no senders, clients or users, so it takes every message; move this route above route[0]",
        ),
        (
            route(
                "[[route]]\nname = \"b\"\nsenders = [\"*@B.test\", \"x@y.test\"]\nclients = [\"10.0.0.0/8\"]\nupstreams = [\"ses\"]\n[[route]]\nname = \"b2\"\nsenders = [\"*@b.test\"]\nclients = [\"10.1.0.0/16\"]\nupstreams = [\"backup\"]\n",
            ),
            "`route[1]`: this route can never match: routes are tried in order and the first match wins, and route[0] (\"b\") before it takes every message this one would",
        ),
        (
            route(
                "[[route]]\nname = \"a\"\nsenders = [\"x@y.test\"]\nclient = [\"10.0.0.0/8\"]\nupstreams = [\"ses\"]\n",
            ),
            "unknown key `client`",
        ),
    ];
    for (text, want) in cases {
        let got = error(text, &[]);
        assert!(got.contains(want), "got:  {got}\nwant: {want}");
    }
    // Routes that only look alike are fine: a narrower one first, a null-sender one
    // after `*` (which needs an address), other clients.
    for ok in [
        "[[route]]\nname = \"b2\"\nsenders = [\"*@b.test\"]\nclients = [\"10.1.0.0/16\"]\nupstreams = [\"backup\"]\n[[route]]\nname = \"b\"\nsenders = [\"*@b.test\"]\nupstreams = [\"ses\"]\n",
        "[[route]]\nname = \"any\"\nsenders = [\"*\"]\nupstreams = [\"ses\"]\n[[route]]\nname = \"bounces\"\nupstreams = [\"backup\"]\n",
        "[[route]]\nname = \"a\"\nclients = [\"10.0.0.0/8\"]\nupstreams = [\"ses\"]\n[[route]]\nname = \"b\"\nclients = [\"192.0.2.0/24\"]\nupstreams = [\"backup\"]\n",
    ] {
        let (_f, src) = file(&route(ok));
        load(&src, &[]).unwrap_or_else(|e| panic!("{ok}\n{e}"));
    }
    // The variable that made the mistake is named.
    let (_f, src) = file(TWO_UPSTREAMS);
    let got = load(
        &src,
        &env(&[
            ("SMARTHOST__ROUTE__0__NAME", "a"),
            ("SMARTHOST__ROUTE__0__UPSTREAMS", "nope"),
        ]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        got.starts_with("environment variable SMARTHOST__ROUTE__0__UPSTREAMS: `route[0].upstreams`: no [[upstream]] is named \"nope\""),
        "{got}"
    );
}

#[test]
fn auth_defaults_and_values_from_a_file_and_the_environment() {
    let (_f, src) = file(MINIMAL);
    let c = load(&src, &[]).unwrap();
    assert_eq!(c.auth.users_file, None);
    assert_eq!(c.auth.max_failures, 5);
    assert_eq!(c.auth.lockout, std::time::Duration::from_secs(900));

    let (_f, src) = file(&format!(
        "{MINIMAL}[auth]\nusers_file = \"data/users.toml\"\nmax_failures = 3\nlockout = \"1h\"\n"
    ));
    let c = load(&src, &[]).unwrap();
    assert_eq!(
        c.auth.users_file.as_deref(),
        Some(Path::new("data/users.toml"))
    );
    assert_eq!(c.auth.max_failures, 3);
    assert_eq!(c.auth.lockout, std::time::Duration::from_secs(3600));

    let vars = env(&[
        ("SMARTHOST__AUTH__USERS_FILE", "/etc/smarthost/users.toml"),
        ("SMARTHOST__AUTH__MAX_FAILURES", "10"),
        ("SMARTHOST__AUTH__LOCKOUT", "30s"),
    ]);
    let c = load(&src, &vars).unwrap();
    assert_eq!(
        c.auth.users_file.as_deref(),
        Some(Path::new("/etc/smarthost/users.toml"))
    );
    assert_eq!(c.auth.max_failures, 10);
    assert_eq!(c.auth.lockout, std::time::Duration::from_secs(30));

    let c = load(&src, &env(&[("SMARTHOST__AUTH__USERS_FILE", "")])).unwrap();
    assert_eq!(c.auth.users_file, None, "empty means none");
}

#[test]
fn auth_mistakes_name_the_key() {
    for (section, vars, want) in [
        (
            "max_failures = 0",
            &[][..],
            "`auth.max_failures`: must be at least 1",
        ),
        (
            "lockout = \"0s\"",
            &[][..],
            "`auth.lockout`: must be longer than zero",
        ),
        (
            "lockout = \"soon\"",
            &[][..],
            "`auth.lockout`: invalid duration \"soon\"",
        ),
        ("user_file = \"x\"", &[][..], "unknown key `user_file`"),
        (
            "",
            &[("SMARTHOST__AUTH__MAX_FAILURES", "0")][..],
            "environment variable SMARTHOST__AUTH__MAX_FAILURES: `auth.max_failures`",
        ),
    ] {
        let got = error(&format!("{MINIMAL}[auth]\n{section}\n"), vars);
        assert!(got.contains(want), "{got}\nwanted: {want}");
    }
}

#[test]
fn metrics_password_file_is_read_trimmed_and_set_by_the_environment() {
    let (_f, src) = file(MINIMAL);
    let c = load(&src, &[]).unwrap();
    assert_eq!(c.metrics.password_file, None);
    assert!(c.metrics.password.is_none());

    let mut pw = tempfile::NamedTempFile::new().unwrap();
    write!(pw, "p4ss word\r\n\n").unwrap();
    let (_f, src) = file(&format!(
        "{MINIMAL}[metrics]\nlisten = \"127.0.0.1:0\"\npassword_file = \"{}\"\n",
        pw.path().display()
    ));
    let c = load(&src, &[]).unwrap();
    assert_eq!(c.metrics.password.as_ref().unwrap().expose(), "p4ss word");
    assert!(
        !format!("{:?}", c.metrics).contains("p4ss"),
        "the password is never printed"
    );

    let (_f, src) = file(MINIMAL);
    let path = pw.path().display().to_string();
    let c = load(
        &src,
        &env(&[("SMARTHOST__METRICS__PASSWORD_FILE", path.as_str())]),
    )
    .unwrap();
    assert_eq!(c.metrics.password.as_ref().unwrap().expose(), "p4ss word");
    let c = load(&src, &env(&[("SMARTHOST__METRICS__PASSWORD_FILE", "")])).unwrap();
    assert!(c.metrics.password.is_none(), "empty means none");
}

#[test]
fn an_empty_metrics_password_file_names_the_key() {
    let pw = tempfile::NamedTempFile::new().unwrap();
    let got = error(
        &format!(
            "{MINIMAL}[metrics]\npassword_file = \"{}\"\n",
            pw.path().display()
        ),
        &[],
    );
    assert!(
        got.contains("`metrics.password_file`") && got.contains("is empty"),
        "{got}"
    );
    let got = error(
        &format!("{MINIMAL}[metrics]\npassword_file = \"/nonexistent/pw\"\n"),
        &[],
    );
    assert!(
        got.contains("`metrics.password_file`") && got.contains("cannot read /nonexistent/pw"),
        "{got}"
    );
}

#[test]
fn cluster_store_from_the_environment_with_its_password_from_a_file() {
    let pw = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(pw.path(), "p@ss word\n").unwrap();
    let (_f, src) = file(MINIMAL);
    let path = pw.path().display().to_string();
    let vars = env(&[
        ("SMARTHOST__CLUSTER__STORE", "redis://valkey:6379/0"),
        ("SMARTHOST__CLUSTER__STORE_PASSWORD_FILE", &path),
        ("SMARTHOST__CLUSTER__NODE", "relay-1"),
    ]);
    let config = load(&src, &vars).unwrap();
    let store = config.cluster.store.as_ref().unwrap();
    assert_eq!(store.expose(), "redis://:p%40ss%20word@valkey:6379/0");
    assert_eq!(format!("{store:?}"), "<redacted>");
    assert_eq!(config.cluster.node.as_deref(), Some("relay-1"));
    assert_eq!(config.cluster.namespace, "smarthost");
}

#[test]
fn cluster_mistakes_name_the_key() {
    let got = error(
        &format!("{MINIMAL}[cluster]\nstore = \"redis://v:6380\"\nstore_ca_file = \"/x.pem\"\n"),
        &[],
    );
    assert!(
        got.contains("`cluster.store_ca_file`") && got.contains("rediss://"),
        "{got}"
    );
    let got = error(
        &format!("{MINIMAL}[cluster]\nstore = \"valkey:6379\"\n"),
        &[],
    );
    assert!(
        got.contains("`cluster.store`") && got.contains("redis://"),
        "{got}"
    );
    let got = error(
        &format!("{MINIMAL}[cluster]\nstore_password_file = \"/x\"\n"),
        &[],
    );
    assert!(got.contains("`cluster.store_password_file`"), "{got}");
    let got = error(
        &format!("{MINIMAL}[cluster]\nstore = \"redis://:secret@v:6379\"\nnamespace = \"a b\"\n"),
        &[],
    );
    assert!(
        got.contains("`cluster.namespace`") && !got.contains("secret"),
        "{got}"
    );
}
