//! `smarthost route`: which `[[route]]` mail from a sender and client takes, the
//! upstreams it may use in the order delivery tries them, and the DKIM key its From
//! domain gets. The route is chosen by [`decide`], the same first-match rule the relay
//! applies at MAIL FROM.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::config::{Config, RouteConfig, UpstreamConfig};
use crate::proto::{Address, ReversePath};
use crate::transform::dkim::{DkimError, DkimKeys};

/// What the relay does with mail from one sender, client and user.
#[derive(Debug)]
pub enum Decision<'a> {
    /// No `[[route]]` is configured: the message may use every upstream.
    Unrouted,
    /// This route (its place in the list, and the route).
    Route(usize, &'a RouteConfig),
    /// Routes are configured and none matches: refused at MAIL FROM with `550 5.7.1`.
    Refused,
}

/// Two decisions are the same when they pick the same place in the list.
impl PartialEq for Decision<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Decision::Route(a, _), Decision::Route(b, _)) => a == b,
            (Decision::Unrouted, Decision::Unrouted) | (Decision::Refused, Decision::Refused) => {
                true
            }
            _ => false,
        }
    }
}

impl Decision<'_> {
    /// The route's name, if one was chosen.
    pub fn route_name(&self) -> Option<&str> {
        match self {
            Decision::Route(_, route) => Some(&route.name),
            Decision::Unrouted | Decision::Refused => None,
        }
    }
}

/// `--from` as a reverse path, with or without angle brackets: empty or `<>` is the
/// null sender.
pub fn parse_sender(from: &str) -> Result<ReversePath, String> {
    let from = from.trim();
    if from.is_empty() || from == "<>" {
        return Ok(ReversePath::Null);
    }
    let bare = from
        .strip_prefix('<')
        .and_then(|f| f.strip_suffix('>'))
        .unwrap_or(from);
    Address::parse(bare)
        .map(ReversePath::Mailbox)
        .map_err(|e| format!("--from {from:?} is not a mail address: {e}"))
}

/// The route mail from `sender`, sent by `client` as `user`, takes.
pub fn decide<'a>(
    config: &'a Config,
    sender: &ReversePath,
    client: IpAddr,
    user: Option<&str>,
) -> Decision<'a> {
    if config.route.is_empty() {
        return Decision::Unrouted;
    }
    let address = sender.mailbox().map(ToString::to_string);
    match config.route_for(address.as_deref(), client, user) {
        Some(route) => {
            let index = config
                .route
                .iter()
                .position(|r| std::ptr::eq(r, route))
                .expect("the route is one of the list");
            Decision::Route(index, route)
        }
        None => Decision::Refused,
    }
}

/// The upstreams `decision` allows, in the order delivery considers them: ascending
/// `priority`; within one priority the relay draws the order for every message, weighted
/// by `weight` (`deliver::failover::order`), shown here heaviest first, then as listed.
pub fn upstream_order<'a>(config: &'a Config, decision: &Decision) -> Vec<&'a UpstreamConfig> {
    let mut allowed: Vec<&UpstreamConfig> = match decision {
        Decision::Unrouted => config.upstream.iter().collect(),
        Decision::Route(_, route) => config
            .upstream
            .iter()
            .filter(|u| route.upstreams.contains(&u.display_name()))
            .collect(),
        Decision::Refused => Vec::new(),
    };
    allowed.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
    allowed
}

/// The keys of `config` whose files exist, for a report: nothing is generated here.
/// A key that cannot be used is the same error the relay would stop at.
pub fn existing_keys(config: &Config) -> Result<DkimKeys, DkimError> {
    let present: Vec<_> = config
        .dkim
        .iter()
        .filter(|k| k.key_file.exists())
        .cloned()
        .collect();
    DkimKeys::load(&present)
}

/// The report `smarthost route` prints, and whether the relay would take the mail.
pub struct RouteReport {
    /// Human-readable lines.
    pub text: String,
    /// `false` when the relay refuses this sender (no route matches).
    pub accepted: bool,
}

/// Explain what happens to mail from `sender`, sent by `client` as `user`.
pub fn report(
    config: &Config,
    keys: &DkimKeys,
    sender: &ReversePath,
    client: IpAddr,
    user: Option<&str>,
) -> RouteReport {
    let mut text = String::new();
    let who = user.map_or("no user".to_owned(), |u| format!("user {u}"));
    let _ = writeln!(text, "sender {sender} from {client} ({who})");
    let decision = decide(config, sender, client, user);
    match &decision {
        Decision::Unrouted => {
            let _ = writeln!(text, "route: no [[route]] configured: every upstream");
        }
        Decision::Route(i, route) => {
            let _ = writeln!(text, "route: {} (route[{i}])", route.name);
        }
        Decision::Refused => {
            let _ = writeln!(
                text,
                "no route matches: the relay refuses this sender with 550 5.7.1 at MAIL FROM; add a [[route]] for it"
            );
            return RouteReport {
                text,
                accepted: false,
            };
        }
    }
    write_upstreams(&mut text, &upstream_order(config, &decision), keys, config);
    let domain = sender.mailbox().map(|addr| addr.domain());
    match domain {
        Some(domain) => {
            let _ = writeln!(text, "dkim: {}", dkim_line(config, keys, domain));
        }
        None => {
            let _ = writeln!(
                text,
                "dkim: the null sender has no domain; the message's From domain decides (run with --from set to the From address)"
            );
        }
    }
    RouteReport {
        text,
        accepted: true,
    }
}

fn write_upstreams(text: &mut String, order: &[&UpstreamConfig], keys: &DkimKeys, config: &Config) {
    let _ = writeln!(
        text,
        "upstreams, in the order delivery tries them (lowest priority first; within one priority the order is drawn for each message, weighted by weight):"
    );
    for (n, up) in order.iter().enumerate() {
        let peers: u32 = order
            .iter()
            .filter(|o| o.priority == up.priority)
            .map(|o| o.weight)
            .sum();
        let share = if peers > up.weight {
            format!(
                ", tried first by {}% of messages at this priority",
                u64::from(up.weight) * 100 / u64::from(peers)
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            text,
            "  {}. {} ({}) priority {}, weight {}{share}",
            n + 1,
            up.display_name(),
            up.url,
            up.priority,
            up.weight
        );
        if let Some(account) = &up.sender {
            let domain = account.rsplit_once('@').map_or("", |(_, d)| d);
            let _ = writeln!(
                text,
                "     sends as {account} (its `sender`): From rewritten, dkim: {}",
                dkim_line(config, keys, domain)
            );
        }
    }
}

/// The key mail From `domain` is signed with, or why it is not signed.
fn dkim_line(config: &Config, keys: &DkimKeys, domain: &str) -> String {
    let ascii = idna::domain_to_ascii(domain).unwrap_or_else(|_| domain.to_ascii_lowercase());
    let covers = |d: &str| {
        let d = d.to_ascii_lowercase();
        ascii == d || ascii.ends_with(&format!(".{d}"))
    };
    let loaded = keys.for_domain(&ascii);
    let missing = config
        .dkim
        .iter()
        .filter(|k| !k.key_file.exists() && covers(&k.domain))
        .max_by_key(|k| k.domain.len());
    if let Some(k) = missing
        && loaded.is_none_or(|l| k.domain.len() >= l.domain.len())
    {
        return format!(
            "domain {}, selector {}, {}: its key file {} does not exist yet (with generate = true the relay creates it at start; otherwise it refuses to start)",
            k.domain,
            k.selector,
            k.algorithm,
            k.key_file.display()
        );
    }
    match loaded {
        Some(key) => format!(
            "domain {}, selector {}, {} (From domain {ascii})",
            key.domain, key.selector, key.algorithm
        ),
        None => format!("no DKIM key for {ascii}: unsigned"),
    }
}

#[cfg(test)]
mod tests;
