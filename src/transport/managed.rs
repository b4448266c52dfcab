//! A node given as the service's own `ConnectionManager`: its TLS, login,
//! timeouts and reconnect policy apply, and we open no command connection
//! of our own. "Opening" it is a clone of the handle plus one `INFO`; when
//! our link gives up on a silent connection, the next clone is the same
//! manager, which reconnects by its own rules (its response timeout is what
//! notices a connection that went silent).

use redis::aio::ConnectionManager;
use redis::RedisError;

use super::{identify, ServerInfo, Wire};

pub(super) async fn open(manager: &ConnectionManager) -> Result<(Wire, ServerInfo), RedisError> {
    let mut manager = manager.clone();
    let info = identify(&mut manager).await?;
    Ok((Wire::Managed(manager), info))
}
