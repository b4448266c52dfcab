//! What a name's key holds, decoded in one place. A mutex's key holds its
//! holder's token; a semaphore's and a read-write lock's hold a record of
//! their kind (a hash: `kind`, and a semaphore's `permits`). Two readings
//! of that record exist: the scripts' status codes when they refuse a name
//! used otherwise, and `inspect.lua`'s type and value of the key.

use crate::error::InUse;

/// What the name's key should hold for the kind of lock asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Claim {
    /// Nothing, or a holder's token: the name's key is the lock's key.
    Mutex,
    /// Nothing, or the record of a semaphore of this many permits.
    Semaphore(u32),
    /// Nothing, or the record of a read-write lock.
    RwLock,
}

/// A script's status for a name in use otherwise (`-1`: a mutex or another
/// value, `-2`: another kind of lock, `-3`: a semaphore of `value`
/// permits); `None` for a status that says nothing of the name (`1`
/// admitted, `0` held).
pub(crate) fn refused_as(status: i64, value: i64) -> Option<InUse> {
    match status {
        0.. => None,
        -1 => Some(InUse::Mutex),
        -3 => Some(InUse::Semaphore(u32::try_from(value).unwrap_or(u32::MAX))),
        _ => Some(InUse::OtherKind),
    }
}

impl Claim {
    /// What the name is used as instead, from its key's type and value on
    /// one node (`inspect.lua`: a hash's value is "kind permits").
    pub(crate) fn conflict(self, kind: &str, value: &str) -> Option<InUse> {
        let mut fields = value.split(' ');
        let found = match (kind, fields.next()) {
            ("none", _) => return None,
            ("string", _) => InUse::Mutex,
            ("hash", Some("semaphore")) => {
                InUse::Semaphore(fields.next().and_then(|p| p.parse().ok()).unwrap_or(0))
            }
            ("hash", Some("rwlock")) if matches!(self, Claim::RwLock) => return None,
            _ => InUse::OtherKind,
        };
        match (self, found) {
            (Claim::Mutex, InUse::Mutex) => None,
            (Claim::Semaphore(p), InUse::Semaphore(n)) if p == n => None,
            _ => Some(found),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{refused_as, Claim};
    use crate::error::InUse;

    #[test]
    fn script_statuses_and_key_readings_agree() {
        assert_eq!(refused_as(1, 7), None);
        assert_eq!(refused_as(0, 0), None);
        assert_eq!(refused_as(-1, 0), Some(InUse::Mutex));
        assert_eq!(refused_as(-2, 0), Some(InUse::OtherKind));
        assert_eq!(refused_as(-3, 4), Some(InUse::Semaphore(4)));
        assert_eq!(Claim::Semaphore(4).conflict("hash", "semaphore 4"), None);
        assert_eq!(
            Claim::Semaphore(2).conflict("hash", "semaphore 4"),
            Some(InUse::Semaphore(4))
        );
        assert_eq!(Claim::Mutex.conflict("string", "abc"), None);
        assert_eq!(Claim::RwLock.conflict("string", "abc"), Some(InUse::Mutex));
        assert_eq!(Claim::RwLock.conflict("hash", "rwlock "), None);
        assert_eq!(
            Claim::Mutex.conflict("hash", "rwlock "),
            Some(InUse::OtherKind)
        );
    }
}
