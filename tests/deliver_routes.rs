//! Routes at delivery (issue 13): a message uses only its route's upstreams, with
//! failover among them and never to another route's; after a reload a message keeps
//! its route if it still exists, is routed again by its sender if not, and waits with
//! the reason when no route takes it. Real SMTP to in-process fake upstreams; every
//! wait has its own deadline.

pub mod fake_upstream;
pub mod support;

use std::sync::Arc;
use std::time::SystemTime;

use fake_upstream::{FakeUpstream, Mode};
use smarthost::config::Config;
use smarthost::deliver::Deliverer;
use smarthost::deliver::failover::{RcptOutcome, Report};
use smarthost::message::{Envelope, Message, QueueId};
use smarthost::proto::{Address, ReversePath};
use smarthost::transform::Transformer;
use smarthost::transform::dkim::DkimKeys;
use support::{HANG_GUARD, config};

struct Upstreams {
    billing: FakeUpstream,
    billing_backup: FakeUpstream,
    marketing: FakeUpstream,
}

impl Upstreams {
    async fn start() -> Upstreams {
        let start = || FakeUpstream::builder(Mode::Plain).ext("PIPELINING").start();
        Upstreams {
            billing: start().await,
            billing_backup: start().await,
            marketing: start().await,
        }
    }

    /// The three upstreams and `routes`.
    fn config(&self, routes: &str) -> Config {
        let upstream = |name: &str, fake: &FakeUpstream, priority: i32| {
            format!(
                "[[upstream]]\nname = \"{name}\"\nurl = \"{}\"\npriority = {priority}\ntimeout = \"5s\"\n",
                fake.plain_url()
            )
        };
        config::parsed(&format!(
            "{}{}{}{routes}",
            upstream("billing", &self.billing, 0),
            upstream("billing-backup", &self.billing_backup, 10),
            upstream("marketing", &self.marketing, 0),
        ))
    }

    fn counts(&self) -> [usize; 3] {
        [
            self.billing.messages().len(),
            self.billing_backup.messages().len(),
            self.marketing.messages().len(),
        ]
    }
}

const ROUTES: &str = "[[route]]\nname = \"billing\"\nsenders = [\"*@billing.example.com\"]\nupstreams = [\"billing\", \"billing-backup\"]\n\n[[route]]\nname = \"marketing\"\nupstreams = [\"marketing\"]\n";

fn deliverer(config: &Config) -> Deliverer {
    let transformer = Arc::new(Transformer::new(DkimKeys::load(&config.dkim).unwrap()));
    Deliverer::from_config(config, transformer).unwrap()
}

fn message(sender: &str, route: Option<&str>) -> Arc<Message> {
    Arc::new(Message {
        id: QueueId::generate(),
        envelope: Envelope {
            sender: ReversePath::Mailbox(Address::parse(sender).unwrap()),
            recipients: vec![Address::parse("user@example.net").unwrap()],
            smtputf8: false,
            eight_bit: false,
            route: route.map(str::to_owned),
        },
        content: format!("From: <{sender}>\r\nSubject: routed\r\n\r\nbody\r\n").into_bytes(),
        body: None,
        received_at: SystemTime::now(),
    })
}

async fn deliver(deliverer: &Deliverer, message: Arc<Message>) -> Report {
    support::within("a delivery", deliverer.deliver(message)).await
}

fn delivered_by(report: &Report) -> Vec<String> {
    report
        .recipients
        .iter()
        .filter_map(|(_, s)| match s {
            RcptOutcome::Delivered { upstream, .. } => Some(upstream.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_uses_only_its_routes_upstreams_and_fails_over_within_the_route() {
    let ups = Upstreams::start().await;
    let deliverer = deliverer(&ups.config(ROUTES));

    let report = deliver(&deliverer, message("app@example.com", Some("marketing"))).await;
    assert_eq!(delivered_by(&report), ["marketing"]);
    assert_eq!(ups.counts(), [0, 0, 1]);

    // The billing route's first upstream fails: the message goes to the route's backup,
    // never to marketing (priority 0, so it would come before the backup otherwise).
    ups.billing.set_healthy(false);
    let report = deliver(
        &deliverer,
        message("pay@billing.example.com", Some("billing")),
    )
    .await;
    assert_eq!(delivered_by(&report), ["billing-backup"]);
    assert_eq!(ups.counts(), [0, 1, 1]);
    assert!(
        ups.billing.connections() >= 1,
        "the route's first upstream was tried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reload_a_message_keeps_its_route_or_is_routed_again_or_waits() {
    let ups = Upstreams::start().await;
    let deliverer = deliverer(&ups.config(ROUTES));

    // "billing" is gone; "invoices" takes the billing senders now.
    let reloaded = ups.config(
        "[[route]]\nname = \"invoices\"\nsenders = [\"*@billing.example.com\"]\nupstreams = [\"billing-backup\"]\n\n[[route]]\nname = \"marketing\"\nupstreams = [\"marketing\"]\n",
    );
    let transformer = Arc::new(Transformer::new(DkimKeys::load(&reloaded.dkim).unwrap()));
    deliverer.replace(&reloaded, transformer).unwrap();

    let report = deliver(&deliverer, message("app@example.com", Some("marketing"))).await;
    assert_eq!(delivered_by(&report), ["marketing"], "kept its route");
    let report = deliver(
        &deliverer,
        message("pay@billing.example.com", Some("billing")),
    )
    .await;
    assert_eq!(
        delivered_by(&report),
        ["billing-backup"],
        "routed again by its sender"
    );

    // Only a route that depends on the client is left: a queued message cannot be
    // judged by it, so it waits, with the reason.
    let client_only = ups.config(
        "[[route]]\nname = \"office\"\nclients = [\"10.0.0.0/8\"]\nupstreams = [\"billing\"]\n",
    );
    let transformer = Arc::new(Transformer::new(DkimKeys::load(&client_only.dkim).unwrap()));
    deliverer.replace(&client_only, transformer).unwrap();
    let report = tokio::time::timeout(
        HANG_GUARD,
        deliverer.deliver(message("app@example.com", Some("marketing"))),
    )
    .await
    .expect("delivery hung");
    let (_, status) = &report.recipients[0];
    let RcptOutcome::Deferred(reason) = status else {
        panic!("deferred, not {status:?}");
    };
    let why = reason.to_string();
    assert!(
        why.contains("\"marketing\" is not configured any more") && why.contains("app@example.com"),
        "{why}"
    );
    assert_eq!(
        ups.counts(),
        [0, 1, 1],
        "nothing left through another route"
    );
}
