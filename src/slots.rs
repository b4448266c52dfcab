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

/// Whether `keys` (a lock's keys, then their companions) all hash to one
/// cluster slot. `Ok` without looking when no node is a cluster.
pub(crate) fn check<'a>(
    sharded: bool,
    keys: impl IntoIterator<Item = &'a str>,
) -> Result<(), crate::Error> {
    if !sharded {
        return Ok(());
    }
    #[cfg(feature = "cluster")]
    {
        use redis::cluster_routing::Slot;
        let mut keys = keys.into_iter();
        if let Some(first) = keys.next() {
            let slot = Slot::for_key(first);
            if keys.any(|k| Slot::for_key(k) != slot) {
                return Err(crate::Error::InvalidInput(
                    "on Redis Cluster nodes every key of one lock must share a slot: give a \
                     set's resources one hash tag (`{order:42}:payment`, `{order:42}:stock`), \
                     and a name containing `}` a hash tag of its own",
                ));
            }
        }
    }
    #[cfg(not(feature = "cluster"))]
    drop(keys.into_iter());
    Ok(())
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
        use redis::cluster_routing::Slot;
        for key in ["jobs", "{order:42}:payment", "a{b", "x{y}z", "{{a}}"] {
            let companion = format!("{}:writer", tagged(key));
            assert_eq!(Slot::for_key(key), Slot::for_key(&companion), "{key}");
            assert!(super::check(true, [key, companion.as_str()]).is_ok());
        }
        for key in ["a}b", "{}x", "}{"] {
            let companion = format!("{}:writer", tagged(key));
            assert!(
                super::check(true, [key, companion.as_str()]).is_err(),
                "{key}"
            );
            assert!(super::check(false, [key, companion.as_str()]).is_ok());
        }
    }
}
