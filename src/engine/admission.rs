//! What a primitive asks each node to do, as data. A mutex, a permit, a
//! reader and a writer differ only in this: which keys the lock holds once
//! won, how a node admits the asker (`SET NX PX`, or a primitive's own
//! script), which fencing counters a yes vote reads, and what the lock
//! carries along (companion keys extended with it, channels its release
//! announces on). The engine runs one path for all of them and names none.

use std::sync::Arc;

use redis::Script;

use super::{fence_key, Keys};

/// How one attempt is admitted on every node.
pub(crate) struct Admission {
    /// What the lock holds once won: released, extended and fenced together.
    pub(crate) keys: Keys,
    pub(crate) rule: Rule,
    pub(crate) fence: Option<Fence>,
    /// Keys that must live as long as the lock, extended with it (a
    /// permit's count record).
    pub(crate) companions: Option<Keys>,
    /// Keys whose release channel the lock's release announces on too,
    /// besides its own keys' (waiters on a set of holders).
    pub(crate) also_announce: Option<Keys>,
}

/// How a node admits the asker.
pub(crate) enum Rule {
    /// `SET key token NX PX ttl` of the lock's keys (a script sets several
    /// all or none, and reads their counters with fencing).
    Set,
    /// A primitive's own script, sent by `EVALSHA` with `keys` (then the
    /// fence's counter key, if any) and the arguments `token`, TTL in ms,
    /// then `args`. It answers `{status, value}`: status `1` admitted
    /// (value: the fence counter read, `0` without fencing), `0` held, a
    /// negative status a name used otherwise (see [`crate::claim`]),
    /// reported as [`Error::NameInUse`](crate::Error::NameInUse) for `name`,
    /// the name as the caller gave it.
    Script {
        script: &'static Script,
        keys: Vec<Arc<str>>,
        args: Vec<String>,
        name: Arc<str>,
    },
}

/// The fencing counters a yes vote reads.
pub(crate) struct Fence {
    /// One per lock key with [`Rule::Set`]; one after the script's keys
    /// with [`Rule::Script`].
    pub(crate) keys: Keys,
    pub(crate) step: Step,
}

/// What the fence of a won lock is, from the counters its voters read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Above every counter read, made durable on a quorum before the lock
    /// is handed out: each holder's fence is larger than the last's.
    Next,
    /// The largest counter read, unchanged: holders that share (readers)
    /// learn the last exclusive holder's fence.
    Last,
}

impl Admission {
    /// A mutex on `keys`: `SET NX PX`, with a counter per key when
    /// `fencing`.
    pub(crate) fn set(keys: Keys, fencing: bool) -> Self {
        let fence = fencing.then(|| Fence {
            keys: keys.iter().map(|k| fence_key(k)).collect(),
            step: Step::Next,
        });
        Self {
            keys,
            rule: Rule::Set,
            fence,
            companions: None,
            also_announce: None,
        }
    }

    /// A lock on `keys`, admitted by `script` with `script_keys` and `args`.
    pub(crate) fn script(
        keys: Keys,
        (script, script_keys, args): (&'static Script, Vec<Arc<str>>, Vec<String>),
        name: &Arc<str>,
    ) -> Self {
        Self {
            keys,
            rule: Rule::Script {
                script,
                keys: script_keys,
                args,
                name: name.clone(),
            },
            fence: None,
            companions: None,
            also_announce: None,
        }
    }

    /// With fencing on `key` (`fencing` true), by `step`.
    pub(crate) fn fenced(mut self, fencing: bool, key: &str, step: Step) -> Self {
        self.fence = fencing.then(|| Fence {
            keys: Arc::from([fence_key(key)]),
            step,
        });
        self
    }

    /// With `companions` extended along with the lock.
    pub(crate) fn with_companions(mut self, companions: Keys) -> Self {
        self.companions = Some(companions);
        self
    }

    /// With the release also announced on `keys`' channels.
    pub(crate) fn announcing(mut self, keys: Keys) -> Self {
        self.also_announce = Some(keys);
        self
    }

    /// The single key of a plain `SET NX PX` without fencing: the case the
    /// engine sends one prepared command for and settles contests of.
    pub(crate) fn plain_key(&self) -> Option<&Arc<str>> {
        match (&self.rule, &self.fence, &self.keys[..]) {
            (Rule::Set, None, [key]) => Some(key),
            _ => None,
        }
    }
}
