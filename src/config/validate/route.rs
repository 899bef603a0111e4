//! Every `[[route]]`: a unique name, upstreams that exist, and a place in the list
//! where it can match (routes are tried in order, the first match wins).

use std::collections::HashSet;

use super::Invalid;
use crate::config::{RouteConfig, UpstreamConfig};

/// Check the routes against each other and against the `[[upstream]]` names.
pub(in crate::config) fn routes(
    routes: &[RouteConfig],
    upstreams: &[UpstreamConfig],
) -> Result<(), Invalid> {
    let known: Vec<String> = upstreams.iter().map(UpstreamConfig::display_name).collect();
    let mut names = HashSet::new();
    for (i, route) in routes.iter().enumerate() {
        let key = |k: &str| format!("route[{i}].{k}");
        name(&route.name).map_err(|why| (key("name"), why))?;
        if !names.insert(route.name.as_str()) {
            return Err((
                key("name"),
                format!(
                    "two routes are named {:?}; give each a distinct name (logs, metrics and the spool name a route by it)",
                    route.name
                ),
            ));
        }
        route_upstreams(route, &known).map_err(|why| (key("upstreams"), why))?;
        if let Some((j, earlier)) = routes[..i]
            .iter()
            .enumerate()
            .find(|(_, earlier)| shadows(earlier, route))
        {
            return Err((format!("route[{i}]"), unreachable(j, earlier)));
        }
    }
    Ok(())
}

/// A name for logs and metric labels: printable, no spaces.
fn name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a route needs a name, e.g. name = \"billing\"".into());
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{name:?} contains a space or a control character; use letters, digits, `-`, `_` or `.`"
        ));
    }
    Ok(())
}

/// At least one upstream, each the name of an `[[upstream]]`.
fn route_upstreams(route: &RouteConfig, known: &[String]) -> Result<(), String> {
    let valid = || {
        known
            .iter()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if route.upstreams.is_empty() {
        return Err(format!(
            "route {:?} has no upstream: list the [[upstream]] names it may use, e.g. upstreams = [{}]",
            route.name,
            valid()
        ));
    }
    match route.upstreams.iter().find(|u| !known.contains(u)) {
        Some(unknown) => Err(format!(
            "no [[upstream]] is named {unknown:?}; the upstreams are named {} (an upstream without `name` goes by its URL's host:port, or \"maildir\"); fix the name or give the upstream that name",
            valid()
        )),
        None => Ok(()),
    }
}

/// Whether `earlier` takes every message `later` would: each of its conditions is
/// absent (any) or covers `later`'s. A cheap, sound check: sender patterns count as
/// covered only when the earlier route has the same pattern (any case) or `*`.
fn shadows(earlier: &RouteConfig, later: &RouteConfig) -> bool {
    let senders = earlier.senders.is_empty()
        || (!later.senders.is_empty()
            && later.senders.iter().all(|l| {
                earlier
                    .senders
                    .iter()
                    .any(|e| e.as_str() == "*" || e.as_str().eq_ignore_ascii_case(l.as_str()))
            }));
    let clients = earlier.clients.is_empty()
        || (!later.clients.is_empty()
            && later
                .clients
                .iter()
                .all(|l| earlier.clients.iter().any(|e| e.contains(l))));
    let users = earlier.users.is_empty()
        || (!later.users.is_empty() && later.users.iter().all(|l| earlier.users.contains(l)));
    senders && clients && users
}

/// The error for a route that route `j`, before it, shadows.
fn unreachable(j: usize, earlier: &RouteConfig) -> String {
    let catch_all =
        earlier.senders.is_empty() && earlier.clients.is_empty() && earlier.users.is_empty();
    let why = if catch_all {
        format!(
            "route[{j}] ({:?}) before it has no senders, clients or users, so it takes every message",
            earlier.name
        )
    } else {
        format!(
            "route[{j}] ({:?}) before it takes every message this one would (its senders, clients and users cover this route's)",
            earlier.name
        )
    };
    format!(
        "this route can never match: routes are tried in order and the first match wins, and {why}; move this route above route[{j}], narrow route[{j}], or remove this one"
    )
}
