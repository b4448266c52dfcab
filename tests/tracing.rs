//! quorumlock reports each attempt, extension and loss through `tracing`.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use quorumlock::Redlock;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Collects event messages (a subscriber without extra dependencies).
#[derive(Clone, Default)]
struct Messages(Arc<Mutex<Vec<String>>>);

struct Message<'a>(&'a mut String);

impl Visit for Message<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            *self.0 = format!("{value:?}");
        }
    }
}

impl Subscriber for Messages {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut text = String::new();
        event.record(&mut Message(&mut text));
        self.0.lock().unwrap().push(text);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[tokio::test]
async fn attempts_extensions_and_losses_are_traced() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let messages = Messages::default();
    let _default = tracing::subscriber::set_default(messages.clone());
    let redlock = Redlock::builder()
        .nodes(urls.iter().map(String::as_str))
        .build()
        .await
        .unwrap();
    let resource = support::unique("traced");
    let mut lock = redlock
        .try_acquire(&resource, Duration::from_millis(300))
        .await
        .unwrap();
    lock.extend(Duration::from_millis(300)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(lock
        .extend(Duration::from_millis(300))
        .await
        .unwrap_err()
        .is_lost());
    let seen = messages.0.lock().unwrap().clone();
    for expected in [
        "quorumlock acquire attempt",
        "quorumlock extended",
        "quorumlock lock lost",
    ] {
        assert!(
            seen.iter().any(|m| m == expected),
            "no {expected:?} event in {seen:?}"
        );
    }
}
