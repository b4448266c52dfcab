//! Waking waiters when a lock is released, instead of making them poll.
//!
//! The release script publishes on `quorumlock:released:<key>` whenever it
//! deletes a key. An `acquire` that found the resource held subscribes to
//! the channel of each of its keys on every node (one pub/sub connection per
//! node, opened on first use) and retries as soon as any node reports a
//! release of any of them. The retry policy's jittered delay stays as the
//! fallback: a lost message, a node without pub/sub (or an ACL user without
//! channel permissions), or a lock that simply expires only cost that delay.
//!
//! Each node's listener heals like a command connection: it reconnects with
//! a jittered [`Backoff`], and while it has subscriptions it pings the node
//! each health period, so a connection that went silent is replaced.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use redis::aio::PubSubSink;
use tokio::sync::{mpsc, Notify};

use crate::backoff::Backoff;
use crate::link::lock;

/// Channel prefix the release script publishes on (see `release.lua`).
pub(crate) const CHANNEL_PREFIX: &str = "quorumlock:released:";

/// What a node's listener is asked to do.
enum Request {
    /// Subscribe, then say so on the sender (if any).
    Subscribe(Vec<String>, Option<mpsc::Sender<()>>),
    Unsubscribe(Vec<String>),
}

/// One waiting `acquire`: woken when any of its channels announces.
struct Waiter {
    id: u64,
    notify: Arc<Notify>,
}

/// Waiters per channel, shared by every listener of one manager. Only
/// contended acquires touch it; the uncontended path never does.
#[derive(Default)]
struct Waiters {
    /// In the order they will be woken: the longest waiting first.
    by_channel: HashMap<String, VecDeque<Waiter>>,
    /// When each channel last woke someone: one release is announced by
    /// every node, and should wake one waiter, not one per node.
    last_wake: HashMap<String, std::time::Instant>,
    next_id: u64,
}

/// Announcements of one channel closer together than this are one release.
const SAME_RELEASE: Duration = Duration::from_millis(1);

/// How long after this manager released a lock to waiters its own next
/// `acquire` of it holds back: time for a woken waiter (here or in another
/// process) to hear the release and win the lock, instead of the releasing
/// task barging in again before the announcement even arrived.
pub(crate) const COURTESY: Duration = Duration::from_millis(2);

/// Locks this manager released while others waited: key → end of the
/// courtesy.
#[derive(Default)]
struct Courtesy {
    until: HashMap<Arc<str>, tokio::time::Instant>,
}

pub(crate) struct Wakeups {
    /// Per node, the clients to subscribe with, tried in turn (none: the
    /// node announces nothing to us).
    clients: Vec<Vec<redis::Client>>,
    connect_timeout: Duration,
    /// Longest wait for a pub/sub reply, and the period of health pings.
    health: Duration,
    waiters: Mutex<Waiters>,
    /// One request queue per node's listener, created on first use.
    listeners: Mutex<Vec<mpsc::UnboundedSender<Request>>>,
    courtesy: Mutex<Courtesy>,
    /// `courtesy` is not empty: the uncontended path skips its lock.
    courteous: AtomicBool,
    /// Some waiter is registered (kept in step with `waiters`).
    watched: AtomicBool,
}

impl Wakeups {
    pub(crate) fn new(
        clients: Vec<Vec<redis::Client>>,
        connect_timeout: Duration,
        health: Duration,
    ) -> Self {
        Self {
            clients,
            connect_timeout,
            health,
            waiters: Mutex::default(),
            listeners: Mutex::default(),
            courtesy: Mutex::default(),
            courteous: AtomicBool::new(false),
            watched: AtomicBool::new(false),
        }
    }

    /// This manager released `keys` and a node said someone listened for it.
    pub(crate) fn released_to_waiters(&self, keys: &[Arc<str>]) {
        let now = tokio::time::Instant::now();
        let mut c = lock(&self.courtesy);
        c.until.retain(|_, until| *until > now);
        for key in keys {
            c.until.insert(key.clone(), now + COURTESY);
        }
        self.courteous.store(true, Ordering::Release);
    }

    /// When this manager's courtesy on any of `keys` ends, if it has not.
    pub(crate) fn courtesy(&self, keys: &[Arc<str>]) -> Option<tokio::time::Instant> {
        if !self.courteous.load(Ordering::Acquire) {
            return None;
        }
        let now = tokio::time::Instant::now();
        let mut c = lock(&self.courtesy);
        c.until.retain(|_, until| *until > now);
        if c.until.is_empty() {
            self.courteous.store(false, Ordering::Release);
            return None;
        }
        keys.iter().filter_map(|k| c.until.get(k).copied()).max()
    }

    /// Starts listening for releases of `keys`, waiting (at most `limit`)
    /// until at least one node confirmed the subscription, so the caller's
    /// next attempt starts after it. The returned handle says when a release
    /// was seen, and stops listening when dropped, also if this future is
    /// dropped while it waits for the confirmation.
    pub(crate) async fn watch(self: &Arc<Self>, keys: &[Arc<str>], limit: Duration) -> Watch {
        let channels: Vec<String> = keys
            .iter()
            .map(|k| format!("{CHANNEL_PREFIX}{k}"))
            .collect();
        let notify = Arc::new(Notify::new());
        let (id, new) = {
            let mut w = lock(&self.waiters);
            w.next_id += 1;
            let id = w.next_id;
            let mut new = Vec::new();
            for channel in &channels {
                let queue = w.by_channel.entry(channel.clone()).or_default();
                if queue.is_empty() {
                    new.push(channel.clone());
                }
                queue.push_back(Waiter {
                    id,
                    notify: notify.clone(),
                });
            }
            self.watched.store(true, Ordering::Release);
            (id, new)
        };
        // From here on, dropping `watch` undoes the registration.
        let watch = Watch {
            wakeups: self.clone(),
            id,
            channels,
            notify,
        };
        if !new.is_empty() {
            let (tx, mut confirmed) = mpsc::channel(self.clients.len().max(1));
            self.send(|| Request::Subscribe(new.clone(), Some(tx.clone())));
            drop(tx);
            let _ = tokio::time::timeout(limit, confirmed.recv()).await;
        }
        watch
    }

    fn send(self: &Arc<Self>, request: impl Fn() -> Request) {
        let mut listeners = lock(&self.listeners);
        if listeners.is_empty() {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            for (node, clients) in self.clients.iter().enumerate() {
                if clients.is_empty() {
                    continue;
                }
                let (tx, rx) = mpsc::unbounded_channel();
                let limits = (self.connect_timeout, self.health);
                runtime.spawn(listen(
                    Arc::downgrade(self),
                    node,
                    clients.clone(),
                    limits,
                    rx,
                ));
                listeners.push(tx);
            }
        }
        for tx in listeners.iter() {
            let _ = tx.send(request());
        }
    }

    /// Wakes one waiter of this manager per release, the longest waiting
    /// first: waking all of them would have them race (and split the
    /// votes) for a lock only one can get. The others keep their own
    /// fallback timers.
    fn wake(&self, channel: &str) {
        let mut w = lock(&self.waiters);
        if !w.by_channel.contains_key(channel) {
            return;
        }
        let now = std::time::Instant::now();
        match w.last_wake.get_mut(channel) {
            Some(last) if now.duration_since(*last) < SAME_RELEASE => return,
            Some(last) => *last = now,
            None => {
                w.last_wake.insert(channel.to_string(), now);
            }
        }
        let Some(queue) = w.by_channel.get_mut(channel) else {
            return;
        };
        // The woken waiter goes to the back: if it fails again, the next
        // release is another's turn.
        if let Some(waiter) = queue.pop_front() {
            waiter.notify.notify_one();
            queue.push_back(waiter);
        }
    }

    /// This manager released `keys` on a quorum: its own waiters are woken
    /// at once, without waiting for the announcement to come back from the
    /// nodes (that one is then taken as the same release).
    pub(crate) fn released_here(&self, keys: &[Arc<str>]) {
        if !self.watched.load(Ordering::Acquire) {
            return;
        }
        for key in keys {
            self.wake(&format!("{CHANNEL_PREFIX}{key}"));
        }
    }

    /// Someone waits for a release.
    fn is_watching(&self) -> bool {
        !lock(&self.waiters).by_channel.is_empty()
    }

    fn channels(&self) -> Vec<String> {
        lock(&self.waiters).by_channel.keys().cloned().collect()
    }
}

/// Interest in the releases of a lock's keys.
pub(crate) struct Watch {
    wakeups: Arc<Wakeups>,
    id: u64,
    channels: Vec<String>,
    notify: Arc<Notify>,
}

impl Watch {
    /// Fires on the next release seen after it was created.
    pub(crate) fn notify(&self) -> Arc<Notify> {
        self.notify.clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut unused = Vec::new();
        {
            let mut w = lock(&self.wakeups.waiters);
            for channel in &self.channels {
                let Some(queue) = w.by_channel.get_mut(channel) else {
                    continue;
                };
                queue.retain(|waiter| waiter.id != self.id);
                if queue.is_empty() {
                    w.by_channel.remove(channel);
                    w.last_wake.remove(channel);
                    unused.push(channel.clone());
                }
            }
            self.wakeups
                .watched
                .store(!w.by_channel.is_empty(), Ordering::Release);
        }
        if !unused.is_empty() {
            self.wakeups.send(|| Request::Unsubscribe(unused.clone()));
        }
    }
}

/// One node's listener: keeps a pub/sub connection while anyone waits,
/// applies subscribe requests, wakes waiters, and pings while subscribed.
/// Ends when the manager is gone.
async fn listen(
    wakeups: Weak<Wakeups>,
    node: usize,
    clients: Vec<redis::Client>,
    (connect_timeout, health): (Duration, Duration),
    mut requests: mpsc::UnboundedReceiver<Request>,
) {
    let mut backoff = Backoff::default();
    // Set after a failure: how long to wait before connecting again. The
    // wait grows with each failure in a row, so a node refusing
    // connections, logins or SUBSCRIBE sees a few tries a second at most.
    let mut retry_in: Option<Duration> = None;
    let mut pending: Option<Request> = None;
    // A cluster node's members are tried in turn: the next after a failure.
    let mut turn = 0;
    loop {
        let Some(watching) = wakeups.upgrade().map(|w| w.is_watching()) else {
            return;
        };
        if !watching && pending.is_none() {
            // Nobody waits: no connection until someone does.
            match requests.recv().await {
                Some(request) => pending = Some(request),
                None => return,
            }
            continue;
        }
        if let Some(wait) = retry_in.take() {
            tokio::time::sleep(wait).await;
        }
        let Some(client) = clients.get(turn % clients.len().max(1)) else {
            return;
        };
        let connected = tokio::time::timeout(connect_timeout, client.get_async_pubsub()).await;
        let Ok(Ok(pubsub)) = connected else {
            retry_in = Some(backoff.fail());
            turn += 1;
            continue;
        };
        let (mut sink, mut messages) = pubsub.split();
        // Everything wanted now, which covers any request that was queued.
        let wanted = wakeups.upgrade().map(|w| w.channels()).unwrap_or_default();
        let confirm = match pending.take() {
            Some(Request::Subscribe(_, confirm)) => confirm,
            _ => None,
        };
        if !wanted.is_empty() {
            match tokio::time::timeout(health, sink.subscribe(wanted)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(node, error = %e, "quorumlock wake-ups: SUBSCRIBE refused; waiters fall back to their retry delay");
                    retry_in = Some(backoff.fail());
                    pending = confirm.map(|c| Request::Subscribe(Vec::new(), Some(c)));
                    continue;
                }
                Err(_) => {
                    retry_in = Some(backoff.fail());
                    continue;
                }
            }
        }
        if let Some(confirm) = confirm {
            let _ = confirm.try_send(());
        }
        backoff.reset();
        let mut ping = tokio::time::interval(health);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                request = requests.recv() => match request {
                    None => return,
                    Some(request) => match tokio::time::timeout(health, apply(&mut sink, request)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) | Err(_) => {
                            retry_in = Some(backoff.fail());
                            break;
                        }
                    },
                },
                message = messages.next() => match message {
                    None => break,
                    Some(message) => match wakeups.upgrade() {
                        Some(w) => w.wake(message.get_channel_name()),
                        None => return,
                    },
                },
                _ = ping.tick() => {
                    if !wakeups.upgrade().is_some_and(|w| w.is_watching()) {
                        continue;
                    }
                    let answered = tokio::time::timeout(health, sink.ping::<redis::Value>()).await;
                    if !matches!(answered, Ok(Ok(_))) {
                        tracing::debug!(node, "quorumlock wake-ups: pub/sub connection stopped answering; reconnecting");
                        retry_in = Some(backoff.fail());
                        break;
                    }
                }
            }
        }
    }
}

async fn apply(sink: &mut PubSubSink, request: Request) -> redis::RedisResult<()> {
    match request {
        Request::Subscribe(channels, confirm) => {
            if !channels.is_empty() {
                sink.subscribe(channels).await?;
            }
            if let Some(confirm) = confirm {
                let _ = confirm.try_send(());
            }
            Ok(())
        }
        Request::Unsubscribe(channels) => sink.unsubscribe(channels).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watch_dropped_while_subscribing_leaves_nothing_registered() {
        // No node answers on this port: the subscribe never confirms.
        let client = redis::Client::open("redis://127.0.0.1:1").unwrap();
        let wakeups = Arc::new(Wakeups::new(
            vec![vec![client]],
            Duration::from_millis(50),
            Duration::from_millis(500),
        ));
        let keys: Vec<Arc<str>> = vec![Arc::from("a"), Arc::from("b")];
        let watching = wakeups.watch(&keys, Duration::from_secs(5));
        let cancelled = tokio::time::timeout(Duration::from_millis(20), watching).await;
        assert!(
            cancelled.is_err(),
            "the subscription cannot have been confirmed"
        );
        assert!(!wakeups.is_watching());
    }
}
