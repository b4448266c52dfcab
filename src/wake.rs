//! Waking waiters when a lock is released, instead of making them poll.
//!
//! The release script publishes on `quorumlock:released:<key>` whenever it
//! deletes a key. An `acquire` that found the resource held subscribes to
//! that channel on every node (one pub/sub connection per node, opened on
//! first use) and retries as soon as any node reports a release. The retry
//! policy's jittered delay stays as the fallback: a lost message, a node
//! without pub/sub, or a lock that simply expires only cost that delay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use redis::aio::PubSubSink;
use tokio::sync::{mpsc, Notify};

/// Channel prefix the release script publishes on (see `release.lua`).
pub(crate) const CHANNEL_PREFIX: &str = "quorumlock:released:";

/// What a node's listener is asked to do.
enum Request {
    /// Subscribe, then say so on the sender (if any).
    Subscribe(String, Option<mpsc::Sender<()>>),
    Unsubscribe(String),
}

/// Waiters per channel, shared by every listener of one manager. Only
/// contended acquires touch it; the uncontended path never does.
#[derive(Default)]
struct Waiters {
    by_channel: HashMap<String, (usize, Arc<Notify>)>,
    /// When each channel last woke someone: one release is announced by
    /// every node, and should wake one waiter, not one per node.
    last_wake: HashMap<String, std::time::Instant>,
}

/// Announcements of one channel closer together than this are one release.
const SAME_RELEASE: Duration = Duration::from_millis(1);

pub(crate) struct Wakeups {
    clients: Vec<redis::Client>,
    connect_timeout: Duration,
    waiters: Mutex<Waiters>,
    /// One request queue per node's listener, created on first use.
    listeners: Mutex<Vec<mpsc::UnboundedSender<Request>>>,
}

impl Wakeups {
    pub(crate) fn new(clients: Vec<redis::Client>, connect_timeout: Duration) -> Self {
        Self {
            clients,
            connect_timeout,
            waiters: Mutex::default(),
            listeners: Mutex::default(),
        }
    }

    /// Starts listening for releases of `key`, waiting (at most `limit`)
    /// until at least one node confirmed the subscription, so the caller's
    /// next attempt starts after it. The returned handle says when a release
    /// was seen, and stops listening when dropped.
    pub(crate) async fn watch(self: &Arc<Self>, key: &str, limit: Duration) -> Watch {
        let channel = format!("{CHANNEL_PREFIX}{key}");
        let (notify, first) = {
            let mut w = lock(&self.waiters);
            let entry = w
                .by_channel
                .entry(channel.clone())
                .or_insert_with(|| (0, Arc::new(Notify::new())));
            entry.0 += 1;
            (entry.1.clone(), entry.0 == 1)
        };
        if first {
            let (tx, mut confirmed) = mpsc::channel(self.clients.len());
            self.send(|| Request::Subscribe(channel.clone(), Some(tx.clone())));
            drop(tx);
            let _ = tokio::time::timeout(limit, confirmed.recv()).await;
        }
        Watch {
            wakeups: self.clone(),
            channel,
            notify,
        }
    }

    fn send(self: &Arc<Self>, request: impl Fn() -> Request) {
        let mut listeners = lock(&self.listeners);
        if listeners.is_empty() {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            for client in &self.clients {
                let (tx, rx) = mpsc::unbounded_channel();
                runtime.spawn(listen(
                    Arc::downgrade(self),
                    client.clone(),
                    self.connect_timeout,
                    rx,
                ));
                listeners.push(tx);
            }
        }
        for tx in listeners.iter() {
            let _ = tx.send(request());
        }
    }

    /// Wakes one waiter of this manager per message, the longest waiting
    /// first: waking all of them would have them race (and split the
    /// votes) for a lock only one can get. The others keep their own
    /// fallback timers.
    fn wake(&self, channel: &str) {
        let mut w = lock(&self.waiters);
        let Some((_, notify)) = w.by_channel.get(channel) else {
            return;
        };
        let notify = notify.clone();
        let now = std::time::Instant::now();
        match w.last_wake.get_mut(channel) {
            Some(last) if now.duration_since(*last) < SAME_RELEASE => return,
            Some(last) => *last = now,
            None => {
                w.last_wake.insert(channel.to_string(), now);
            }
        }
        notify.notify_one();
    }

    fn channels(&self) -> Vec<String> {
        lock(&self.waiters).by_channel.keys().cloned().collect()
    }
}

/// Interest in one key's releases.
pub(crate) struct Watch {
    wakeups: Arc<Wakeups>,
    channel: String,
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
        let last = {
            let mut w = lock(&self.wakeups.waiters);
            match w.by_channel.get_mut(&self.channel) {
                Some(entry) if entry.0 > 1 => {
                    entry.0 -= 1;
                    false
                }
                _ => {
                    w.by_channel.remove(&self.channel);
                    w.last_wake.remove(&self.channel);
                    true
                }
            }
        };
        if last {
            let channel = self.channel.clone();
            self.wakeups.send(|| Request::Unsubscribe(channel.clone()));
        }
    }
}

/// A poisoned mutex here only guards plain maps; keep using them.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One node's listener: keeps a pub/sub connection (reconnecting with a
/// pause after failures), applies subscribe requests, and wakes waiters.
/// Ends when the manager is gone.
async fn listen(
    wakeups: Weak<Wakeups>,
    client: redis::Client,
    connect_timeout: Duration,
    mut requests: mpsc::UnboundedReceiver<Request>,
) {
    loop {
        let connected = tokio::time::timeout(connect_timeout, client.get_async_pubsub()).await;
        let Ok(Ok(pubsub)) = connected else {
            // Requests queued meanwhile are covered by the resubscribe below.
            tokio::time::sleep(connect_timeout).await;
            if wakeups.strong_count() == 0 {
                return;
            }
            continue;
        };
        let (mut sink, mut messages) = pubsub.split();
        let Some(current) = wakeups.upgrade().map(|w| w.channels()) else {
            return;
        };
        if !current.is_empty() && sink.subscribe(current).await.is_err() {
            continue;
        }
        loop {
            tokio::select! {
                request = requests.recv() => match request {
                    None => return,
                    Some(request) => {
                        if apply(&mut sink, request).await.is_err() {
                            break;
                        }
                    }
                },
                message = messages.next() => match message {
                    None => break,
                    Some(message) => match wakeups.upgrade() {
                        Some(w) => w.wake(message.get_channel_name()),
                        None => return,
                    },
                },
            }
        }
    }
}

async fn apply(sink: &mut PubSubSink, request: Request) -> redis::RedisResult<()> {
    match request {
        Request::Subscribe(channel, confirm) => {
            sink.subscribe(channel).await?;
            if let Some(confirm) = confirm {
                let _ = confirm.try_send(());
            }
            Ok(())
        }
        Request::Unsubscribe(channel) => sink.unsubscribe(channel).await,
    }
}
