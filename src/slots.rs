//! Keeping every key of one lock in one Redis Cluster slot. A lock's
//! companion keys (fencing counters, a semaphore's permits, a read-write
//! lock's writer, intent and readers) are named after its key's hash tag, so
//! they land in its slot. On a manager with cluster nodes, the keys one lock
//! touches are checked before any command is sent: a node that refused them
//! with `CROSSSLOT` would only be a missing vote, and a trio that mixes
//! clusters with single servers would grant the lock with one node fewer
//! than the user counted on.

/// `key` as the start of keys that must share its cluster slot: the key
/// itself when it carries a hash tag (`{order:42}:payment`), else the whole
/// key in braces, which makes it the tag. A key holding a `}` but no tag
/// is kept as it is: no tag can name it, and [`check`] refuses it on
/// cluster nodes where its companions are needed.
pub(crate) fn tagged(key: &str) -> String {
    if has_tag(key) || key.contains('}') {
        key.to_string()
    } else {
        format!("{{{key}}}")
    }
}

/// Redis's rule: the text between the first `{` and the next `}`, if not
/// empty, is what is hashed.
fn has_tag(key: &str) -> bool {
    key.find('{')
        .and_then(|open| key[open + 1..].find('}'))
        .is_some_and(|len| len > 0)
}

/// Whether [`tagged`] keeps companions of `key` in its slot: yes unless
/// the key holds a `}` but no hash tag.
fn taggable(key: &str) -> bool {
    has_tag(key) || !key.contains('}')
}

/// Checks that `keys`, the keys of one lock, share one cluster slot, and,
/// with `companions` (fence counters, permits, a read-write lock's keys),
/// that companions named by [`tagged`] share it too. `Ok` without looking
/// when no node is a cluster (never, without the feature `cluster`).
pub(crate) fn check<'a>(
    sharded: bool,
    keys: impl IntoIterator<Item = &'a str>,
    companions: bool,
) -> Result<(), crate::Error> {
    if !sharded {
        return Ok(());
    }
    let mut keys = keys.into_iter();
    let Some(first) = keys.next() else {
        return Ok(());
    };
    #[cfg(feature = "cluster")]
    let same = {
        use redis::cluster_routing::Slot;
        let slot = Slot::for_key(first);
        move |key: &str| Slot::for_key(key) == slot
    };
    #[cfg(not(feature = "cluster"))]
    let same = |_: &str| true;
    let fits = |key: &str| !companions || taggable(key);
    if fits(first) && keys.all(|key| same(key) && fits(key)) {
        Ok(())
    } else {
        Err(crate::Error::InvalidInput(
            "on Redis Cluster nodes every key of one lock must share a slot: give a \
             set's resources one hash tag (`{order:42}:payment`, `{order:42}:stock`), \
             and a name containing `}` a hash tag of its own",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::tagged;

    #[test]
    fn companions_start_with_the_hash_tag() {
        assert_eq!(tagged("jobs"), "{jobs}");
        assert_eq!(tagged("{order:42}:payment"), "{order:42}:payment");
        // An empty tag is no tag: the whole key is hashed.
        assert_eq!(tagged("{}x"), "{}x");
        assert_eq!(tagged("a{b"), "{a{b}");
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn companions_share_the_slot_or_are_refused() {
        use super::check;
        use redis::cluster_routing::Slot;
        for key in ["jobs", "{order:42}:payment", "a{b", "x{y}z", "{{a}}"] {
            let companion = format!("{}:writer", tagged(key));
            assert_eq!(Slot::for_key(key), Slot::for_key(&companion), "{key}");
            assert!(check(true, [key], true).is_ok(), "{key}");
        }
        for key in ["a}b", "{}x", "}{"] {
            let companion = format!("{}:writer", tagged(key));
            assert_ne!(Slot::for_key(key), Slot::for_key(&companion), "{key}");
            assert!(check(true, [key], true).is_err(), "{key}");
            // Without companions, or without cluster nodes, it is fine.
            assert!(check(true, [key], false).is_ok(), "{key}");
            assert!(check(false, [key], true).is_ok(), "{key}");
        }
        // A set: one hash tag, or refused.
        assert!(check(true, ["{o}:a", "{o}:b"], true).is_ok());
        assert!(check(true, ["a", "b"], false).is_err());
    }
}
