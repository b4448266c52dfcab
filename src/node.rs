//! One Redis node: the calls a lock makes on it, over its self-healing
//! [`Link`]. Every call returns a [`Reply`] instead of an error, because a
//! node that fails is a missing vote, not a reason to stop the attempt; the
//! reply says why it failed ([`FailureKind`]), so errors a retry cannot fix
//! are told apart from passing ones.

use std::sync::Arc;
use std::time::Duration;

use redis::{Cmd, ErrorKind, FromRedisValue, RedisError, Script, ServerErrorKind, Value};

use crate::error::FailureKind;
use crate::link::{Call, Link};
use crate::quorum::Reply;

/// The Lua scripts, hashed once per manager and sent by EVALSHA (falling
/// back to loading them after a node restart forgot them). Each takes every
/// key of a lock, so one script serves a single resource and a set.
pub(crate) struct Scripts {
    acquire: Script,
    release: Script,
    extend: Script,
    acquire_fenced: Script,
    fence_commit: Script,
    inspect: Script,
}

impl Scripts {
    /// The release script's `EVALSHA` for `keys`, to send to every node.
    /// `announce`: a holder's release, announced on the keys' channels and
    /// on those of the keys given (`None`: a clean-up, announced nowhere).
    pub(crate) fn release_cmd(
        &self,
        keys: &[Arc<str>],
        token: &str,
        announce: Option<&[Arc<str>]>,
    ) -> Cmd {
        let mut cmd = evalsha(&self.release, keys, &[]);
        cmd.arg(token)
            .arg(if announce.is_some() { "1" } else { "0" });
        for also in announce.unwrap_or_default() {
            cmd.arg(&**also);
        }
        cmd
    }

    pub(crate) fn new() -> Self {
        Self {
            acquire: Script::new(include_str!("scripts/acquire.lua")),
            release: Script::new(include_str!("scripts/release.lua")),
            extend: Script::new(include_str!("scripts/extend.lua")),
            acquire_fenced: Script::new(include_str!("scripts/acquire_fenced.lua")),
            fence_commit: Script::new(include_str!("scripts/fence_commit.lua")),
            inspect: Script::new(include_str!("scripts/inspect.lua")),
        }
    }
}

/// `SET key token NX PX ttl_ms`, with `GET` (Redis 7 and later) so that a
/// refusal names its holder and a key of another type is reported.
pub(crate) fn set_nx_px_cmd(key: &str, token: &str, ttl_ms: u64, get: bool) -> Cmd {
    let mut cmd = redis::cmd("SET");
    cmd.arg(key).arg(token).arg("NX").arg("PX").arg(ttl_ms);
    if get {
        cmd.arg("GET");
    }
    cmd
}

/// A primitive's admission script's `EVALSHA`, built once for every node:
/// `keys` and then `fence_keys` as KEYS, and `token`, `ttl_ms` and `args`
/// as ARGV.
pub(crate) fn admit_cmd(
    script: &Script,
    (keys, fence_keys): (&[Arc<str>], &[Arc<str>]),
    token: &str,
    ttl_ms: u64,
    args: &[String],
) -> Cmd {
    let mut eval = evalsha(script, keys, fence_keys);
    eval.arg(token).arg(ttl_ms);
    for arg in args {
        eval.arg(arg.as_str());
    }
    eval
}

/// `EVALSHA` of `script` with `keys` and then `more` as its KEYS; the
/// caller adds ARGV. Built once, it can be sent to every node.
pub(crate) fn evalsha(script: &Script, keys: &[Arc<str>], more: &[Arc<str>]) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len() + more.len());
    for key in keys.iter().chain(more) {
        cmd.arg(&**key);
    }
    cmd
}

/// A connection to one node. Cheap to share: the link is a handle.
pub(crate) struct Node {
    link: Arc<Link>,
    /// Fence counters are read and written only on a server that keeps
    /// every write (see `Builder::require_durable_fences`).
    durable_fences: bool,
}

impl Node {
    /// The connection opens on first use (or in [`warm_up`](Self::warm_up)):
    /// a node that is down at start-up counts as unknown until it comes back.
    pub(crate) fn new(link: Link, durable_fences: bool) -> Self {
        Self {
            link: Arc::new(link),
            durable_fences,
        }
    }

    /// Why the server behind the current connection may lose fence
    /// counters, when fences need durable nodes and it may.
    pub(crate) fn fence_risk(&self) -> Option<&'static str> {
        self.durable_fences
            .then(|| self.link.durability())
            .flatten()
            .and_then(|d| d.lack())
    }

    /// A call got no reply within `waited`: watch the connection (see
    /// [`Link::suspect`]).
    pub(crate) fn timed_out(&self, waited: Duration) {
        self.link.suspect(waited);
    }

    /// How long this node takes to answer now.
    pub(crate) fn usual_latency(&self) -> Duration {
        self.link.usual_latency()
    }

    /// Its moving average of reply times alone (cheap).
    pub(crate) fn pace(&self) -> Duration {
        self.link.pace()
    }

    /// Opens the connection now, so the first lock does not pay for it; the
    /// node's failure, if it has one.
    pub(crate) async fn warm_up(&self) -> Result<(), Reply> {
        let call = self.begin().await?;
        let result = redis::cmd("PING")
            .query_async::<Value>(&mut call.mux())
            .await;
        self.end(call, result).map(drop)
    }

    /// `SET key token NX PX ttl_ms` for a single key; several keys are set
    /// all or nothing by the acquire script. If the connection dropped under
    /// a single key's SET, the script is the retry on a fresh connection: it
    /// also counts our own token as success (the first SET may have landed).
    /// `with_get` is the single key's `SET .. NX PX .. GET`, built once for
    /// every node ([`set_nx_px_cmd`]); nodes older than Redis 7 build their
    /// own without `GET`.
    pub(crate) async fn acquire(
        &self,
        scripts: &Scripts,
        keys: &[Arc<str>],
        token: &str,
        ttl_ms: u64,
        with_get: Option<&Cmd>,
    ) -> Reply {
        let mut retry = false;
        if let [key] = keys {
            match self.set_nx_px(key, token, ttl_ms, with_get).await {
                Reply::Fail(_, Some(e)) if dropped(&e) => retry = true,
                reply => return reply,
            }
        }
        // Boxed: the common single-key path keeps a small future.
        let reply = Box::pin(async {
            let mut cmd = evalsha(&scripts.acquire, keys, &[]);
            cmd.arg(token).arg(ttl_ms);
            self.repeatable(&cmd, &scripts.acquire, |n| n == 1).await
        })
        .await;
        match reply {
            Reply::Yes if retry => Reply::YesRetried,
            reply => reply,
        }
    }

    /// As `acquire`, reading the keys' fencing counters (`fence_keys`) in
    /// the same script: `Yes` comes with the largest counter's value.
    pub(crate) async fn acquire_fenced(
        &self,
        scripts: &Scripts,
        keys: &[Arc<str>],
        fence_keys: &[Arc<str>],
        token: &str,
        ttl_ms: u64,
    ) -> (Reply, Option<u64>) {
        let script = &scripts.acquire_fenced;
        let mut cmd = evalsha(script, keys, fence_keys);
        cmd.arg(token).arg(ttl_ms).arg(keys.len());
        let mut counter = None;
        let reply = self
            .repeatable_on(&cmd, script, self.durable_fences, |n| {
                counter = u64::try_from(n).ok();
                counter.is_some()
            })
            .await;
        (reply, counter)
    }

    /// Raises the fencing counters to `fence` while our keys are still there.
    pub(crate) async fn commit_fence(
        &self,
        scripts: &Scripts,
        keys: &[Arc<str>],
        fence_keys: &[Arc<str>],
        token: &str,
        fence: u64,
    ) -> Reply {
        let script = &scripts.fence_commit;
        let mut cmd = evalsha(script, keys, fence_keys);
        cmd.arg(token).arg(fence).arg(keys.len());
        self.repeatable_on(&cmd, script, self.durable_fences, |n| n == 1)
            .await
    }

    /// `SET key token NX PX ttl_ms` once more, for an attempt that leads a
    /// contest (see [`Standing::Lead`](crate::quorum::Standing)).
    pub(crate) async fn ask_again(
        &self,
        key: &str,
        token: &str,
        ttl_ms: u64,
        with_get: Option<&Cmd>,
    ) -> Reply {
        self.set_nx_px(key, token, ttl_ms, with_get).await
    }

    /// On Redis 7 and later `SET .. NX GET`, so that a key of another type
    /// is reported (`WRONGTYPE`) instead of looking held.
    async fn set_nx_px(
        &self,
        key: &str,
        token: &str,
        ttl_ms: u64,
        with_get: Option<&Cmd>,
    ) -> Reply {
        let call = match self.begin().await {
            Ok(call) => call,
            Err(reply) => return reply,
        };
        let nx_get = call.conn().nx_get;
        let result = match with_get.filter(|_| nx_get) {
            Some(cmd) => cmd.query_async::<Value>(&mut call.mux()).await,
            None => {
                set_nx_px_cmd(key, token, ttl_ms, nx_get)
                    .query_async::<Value>(&mut call.mux())
                    .await
            }
        };
        match self.end(call, result) {
            Ok(Value::Okay) if !nx_get => Reply::Yes,
            Ok(Value::Nil) if nx_get => Reply::Yes,
            Ok(Value::Nil) => Reply::No,
            // Our own token: a SET of this attempt landed already.
            Ok(Value::BulkString(held)) if nx_get && held == token.as_bytes() => Reply::Yes,
            Ok(Value::BulkString(held)) if nx_get => {
                Reply::Held(Arc::from(String::from_utf8_lossy(&held)))
            }
            Ok(Value::SimpleString(_)) if nx_get => Reply::No,
            Ok(other) => Reply::Fail(FailureKind::Other, Some(unexpected(other))),
            Err(reply) => reply,
        }
    }

    /// Compare-and-delete of our keys, announcing nothing (a clean-up):
    /// `Yes` when every one was ours and is deleted.
    pub(crate) async fn release(&self, scripts: &Scripts, keys: &[Arc<str>], token: &str) -> Reply {
        let eval = scripts.release_cmd(keys, token, None);
        self.release_prepared(scripts, &eval).await.0
    }

    /// Compare-and-delete of our keys with a command built once for every
    /// node ([`Scripts::release_cmd`]): `Yes` when every one was ours and is
    /// deleted, and whether its announcement (a holder's release) reached
    /// anyone waiting.
    pub(crate) async fn release_prepared(&self, scripts: &Scripts, eval: &Cmd) -> (Reply, bool) {
        let mut heard = false;
        let reply = self
            .repeatable(eval, &scripts.release, |n| {
                heard = n & 2 != 0;
                n & 1 == 1
            })
            .await;
        (reply, heard)
    }

    /// Compare-and-expire: `Yes` when our keys now live `ttl_ms` more;
    /// `companions` are made to live at least as long (see `extend.lua`).
    pub(crate) async fn extend(
        &self,
        scripts: &Scripts,
        keys: &[Arc<str>],
        companions: &[Arc<str>],
        token: &str,
        ttl_ms: u64,
    ) -> Reply {
        let mut cmd = evalsha(&scripts.extend, keys, companions);
        cmd.arg(token).arg(ttl_ms).arg(keys.len());
        self.repeatable(&cmd, &scripts.extend, |n| n == 1).await
    }

    /// What the node holds under `keys`, changing nothing: per key its
    /// type, value and remaining TTL in milliseconds (see `inspect.lua`).
    pub(crate) async fn inspect(
        &self,
        scripts: &Scripts,
        keys: &[Arc<str>],
    ) -> Result<Vec<(String, String, i64)>, Reply> {
        let eval = evalsha(&scripts.inspect, keys, &[]);
        let flat: Vec<Value> = self.run_script(&eval, &scripts.inspect).await.0?;
        let mut out = Vec::with_capacity(keys.len());
        for entry in flat.chunks(3) {
            let text = |v: &Value| String::from_redis_value(v.clone()).unwrap_or_default();
            let (kind, value, ttl) = match entry {
                [kind, value, ttl] => (text(kind), text(value), i64::from_redis_value(ttl.clone())),
                _ => return Err(Reply::Fail(FailureKind::Other, None)),
            };
            out.push((kind, value, ttl.unwrap_or(-2)));
        }
        Ok(out)
    }

    /// A primitive's admission on this node by `eval`, built by
    /// [`admit_cmd`]: the vote (yes for status `1`), and the script's
    /// `{status, value}` when it answered. With `fenced`, it goes only to
    /// a server that keeps every write (see [`run_script_on`](Self::run_script_on)).
    pub(crate) async fn admit(
        &self,
        script: &Script,
        eval: &Cmd,
        fenced: bool,
    ) -> (Reply, Option<(i64, i64)>) {
        let durable = self.durable_fences && fenced;
        match self
            .run_script_on::<(i64, i64)>(eval, script, durable)
            .await
        {
            (Ok((1, value)), true) => (Reply::YesRetried, Some((1, value))),
            (Ok((1, value)), false) => (Reply::Yes, Some((1, value))),
            (Ok(status), _) => (Reply::No, Some(status)),
            (Err(reply), _) => (reply, None),
        }
    }

    /// Runs a script that is safe to repeat (`eval`, built by [`evalsha`]),
    /// once more on a fresh connection if the first one dropped under it: a
    /// reset connection must not leave a key behind for a whole TTL. A node
    /// that lost its scripts (a restart) is given `script` and asked again.
    /// `yes` decides which result is a yes.
    async fn repeatable(&self, eval: &Cmd, script: &Script, yes: impl FnMut(i64) -> bool) -> Reply {
        self.repeatable_on(eval, script, false, yes).await
    }

    /// As [`repeatable`](Self::repeatable); with `durable`, only on a
    /// server that keeps every write (see [`run_script_on`](Self::run_script_on)).
    async fn repeatable_on(
        &self,
        eval: &Cmd,
        script: &Script,
        durable: bool,
        mut yes: impl FnMut(i64) -> bool,
    ) -> Reply {
        match self.run_script_on::<i64>(eval, script, durable).await {
            (Ok(n), retried) if yes(n) && retried => Reply::YesRetried,
            (Ok(n), _) if yes(n) => Reply::Yes,
            (Ok(_), _) => Reply::No,
            (Err(reply), _) => reply,
        }
    }

    /// Runs `eval` (a script safe to repeat) and reads its result as `T`:
    /// loads `script` where the node forgot it, and asks once more on a
    /// fresh connection where the first dropped under the call. Also says
    /// whether the answer came from that second try.
    pub(crate) async fn run_script<T: FromRedisValue>(
        &self,
        eval: &Cmd,
        script: &Script,
    ) -> (Result<T, Reply>, bool) {
        self.run_script_on(eval, script, false).await
    }

    /// As [`run_script`](Self::run_script); with `durable`, the script is
    /// not sent to a server that may lose acknowledged writes: the reply is
    /// then a [`FailureKind::NotDurable`] failure (checked on the very
    /// connection the script would go out on, so a node that came back
    /// with other settings is checked again).
    pub(crate) async fn run_script_on<T: FromRedisValue>(
        &self,
        eval: &Cmd,
        script: &Script,
        durable: bool,
    ) -> (Result<T, Reply>, bool) {
        let mut outcome = Err(Reply::Fail(FailureKind::Unreachable, None));
        for again in [false, true] {
            let call = match self.begin().await {
                Ok(call) => call,
                Err(reply) => return (Err(reply), again),
            };
            if durable && call.conn().durable.lack().is_some() {
                return (Err(Reply::Fail(FailureKind::NotDurable, None)), again);
            }
            let mut mux = call.mux();
            let mut result = eval.query_async::<T>(&mut mux).await;
            if matches!(&result, Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript))
            {
                result = match script.prepare_invoke().load_async(&mut mux).await {
                    Ok(_) => eval.query_async::<T>(&mut mux).await,
                    Err(e) => Err(e),
                };
            }
            outcome = self.end(call, result);
            match &outcome {
                Err(Reply::Fail(_, Some(e))) if dropped(e) => continue,
                _ => return (outcome, again),
            }
        }
        (outcome, true)
    }

    /// A connection for one call, or the reason there is none.
    async fn begin(&self) -> Result<Call, Reply> {
        let call = self.link.call().await.map_err(fail)?;
        match call.conn().same_as {
            Some(other) => Err(Reply::Fail(FailureKind::SameServer(other), None)),
            None => Ok(call),
        }
    }

    /// Reads a call's outcome; a connection that broke under it is replaced.
    fn end<T: FromRedisValue>(
        &self,
        call: Call,
        result: Result<T, RedisError>,
    ) -> Result<T, Reply> {
        match result {
            Ok(value) => {
                call.answered(&self.link);
                Ok(value)
            }
            Err(e) => {
                if dropped(&e) || e.is_io_error() {
                    self.link.broken(&call);
                } else {
                    call.answered(&self.link);
                }
                Err(fail(e))
            }
        }
    }
}

fn fail(e: RedisError) -> Reply {
    let kind = classify(&e);
    if !kind.is_silent() {
        tracing::debug!(error = %e, %kind, "quorumlock node refused a call");
    } else {
        tracing::trace!(error = %e, "quorumlock node call failed");
    }
    Reply::Fail(kind, Some(e))
}

/// The connection broke under the call.
fn dropped(e: &RedisError) -> bool {
    e.is_connection_dropped() || e.is_unrecoverable_error()
}

/// Why a call failed, as far as the lock is concerned.
pub(crate) fn classify(e: &RedisError) -> FailureKind {
    match e.kind() {
        ErrorKind::AuthenticationFailed => return FailureKind::Auth,
        ErrorKind::Server(ServerErrorKind::NoPerm) => return FailureKind::Permission,
        ErrorKind::Server(ServerErrorKind::ReadOnly) => return FailureKind::ReadOnly,
        ErrorKind::Server(ServerErrorKind::CrossSlot) => return FailureKind::CrossSlot,
        _ => {}
    }
    match e.code() {
        Some("NOAUTH" | "WRONGPASS") => return FailureKind::Auth,
        Some("WRONGTYPE") => return FailureKind::WrongType,
        Some("ERR") if e.detail().is_some_and(|d| d.contains("unknown command")) => {
            return FailureKind::Command
        }
        _ => {}
    }
    if crate::transport::is_tls_failure(e) {
        return FailureKind::Tls;
    }
    let unreachable = e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error();
    if unreachable {
        FailureKind::Unreachable
    } else {
        FailureKind::Other
    }
}

fn unexpected(value: Value) -> RedisError {
    RedisError::from((
        ErrorKind::UnexpectedReturnType,
        "unexpected reply to SET NX PX",
        format!("{value:?}"),
    ))
}
