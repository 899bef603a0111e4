//! Which upstreams a message may use: those of its `[[route]]` (chosen at MAIL FROM and
//! kept in the spool with it), or every upstream when no route is configured.
//!
//! After a reload, a message keeps its route if the route still exists. If it does not
//! (or the message was queued before routes were configured), it is routed again by its
//! sender, among the routes that do not depend on the client or the user: those were
//! known only while the client was connected. A message that then matches no route waits
//! (deferred, with the reason) rather than leave through an upstream of another app.

use std::net::{IpAddr, Ipv4Addr};

use crate::config::{Config, RouteConfig};
use crate::message::Envelope;

/// The routes in force.
#[derive(Debug, Default)]
pub(super) struct Routes {
    routes: Vec<RouteConfig>,
}

/// Where a message may go.
#[derive(Debug)]
pub(super) enum Allowed<'a> {
    /// No routes configured: every upstream.
    Everywhere,
    /// The upstreams of this route; `rerouted_from` names the route the message had
    /// when it was routed again (`None`: it kept its route).
    Route {
        route: &'a RouteConfig,
        rerouted_from: Option<String>,
    },
    /// Nowhere now, and why.
    Nowhere(String),
}

impl Routes {
    pub(super) fn from_config(config: &Config) -> Routes {
        Routes {
            routes: config.route.clone(),
        }
    }

    /// Where `envelope`'s message may go.
    pub(super) fn for_message(&self, envelope: &Envelope) -> Allowed<'_> {
        if self.routes.is_empty() {
            return Allowed::Everywhere;
        }
        if let Some(name) = &envelope.route
            && let Some(route) = self.routes.iter().find(|r| &r.name == name)
        {
            return Allowed::Route {
                route,
                rerouted_from: None,
            };
        }
        let sender = envelope.sender.mailbox().map(ToString::to_string);
        // Any address: routes with client conditions are left out before matching.
        let anywhere = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let previous = envelope.route.clone().unwrap_or_else(|| "none".into());
        match self.routes.iter().find(|r| {
            r.clients.is_empty()
                && r.users.is_empty()
                && r.matches(sender.as_deref(), anywhere, None)
        }) {
            Some(route) => Allowed::Route {
                route,
                rerouted_from: Some(previous),
            },
            None => Allowed::Nowhere(format!(
                "its route {previous:?} is not configured any more and no route without client or user conditions matches its sender {}; add one (or restore the route) and reload, or delete the message",
                sender.as_deref().unwrap_or("<>")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Address, ReversePath};

    fn config(routes: &str) -> Config {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            format!(
                "[[upstream]]\nname = \"a\"\nurl = \"maildir:/tmp/a\"\n[[upstream]]\nname = \"b\"\nurl = \"maildir:/tmp/b\"\n{routes}"
            ),
        )
        .unwrap();
        crate::config::load(&crate::config::ConfigSource::File(file.path().into()), &[]).unwrap()
    }

    fn envelope(sender: &str, route: Option<&str>) -> Envelope {
        Envelope {
            sender: if sender.is_empty() {
                ReversePath::Null
            } else {
                ReversePath::Mailbox(Address::parse(sender).unwrap())
            },
            recipients: vec![Address::parse("user@example.net").unwrap()],
            smtputf8: false,
            eight_bit: false,
            route: route.map(str::to_owned),
        }
    }

    const TWO: &str = "[[route]]\nname = \"billing\"\nsenders = [\"*@billing.example.com\"]\nupstreams = [\"a\"]\n[[route]]\nname = \"office\"\nclients = [\"10.0.0.0/8\"]\nupstreams = [\"b\"]\n";

    #[test]
    fn without_routes_every_upstream() {
        let routes = Routes::from_config(&config(""));
        assert!(matches!(
            routes.for_message(&envelope("a@x.test", None)),
            Allowed::Everywhere
        ));
    }

    #[test]
    fn a_message_keeps_its_route_while_it_exists() {
        let routes = Routes::from_config(&config(TWO));
        let Allowed::Route {
            route,
            rerouted_from,
        } = routes.for_message(&envelope("a@x.test", Some("office")))
        else {
            panic!("a route");
        };
        assert_eq!((route.name.as_str(), rerouted_from), ("office", None));
    }

    #[test]
    fn a_message_whose_route_is_gone_is_routed_again_by_its_sender_only() {
        let routes = Routes::from_config(&config(TWO));
        let Allowed::Route {
            route,
            rerouted_from,
        } = routes.for_message(&envelope("Invoices@Billing.example.com", Some("old")))
        else {
            panic!("a route");
        };
        assert_eq!(route.name, "billing");
        assert_eq!(rerouted_from.as_deref(), Some("old"));
        // "office" depends on the client, which is not known any more.
        let Allowed::Nowhere(why) = routes.for_message(&envelope("a@x.test", None)) else {
            panic!("nowhere");
        };
        assert!(
            why.contains("\"none\"") && why.contains("a@x.test"),
            "{why}"
        );
    }
}
