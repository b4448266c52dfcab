//! A standalone Redis server, reached over connections we open ourselves
//! (plain TCP, TLS or a Unix socket, as the `redis::Client` says).

use std::time::Duration;

use redis::{AsyncConnectionConfig, ConnectionAddr, RedisError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{identify, ServerInfo, TlsPort, Wire};

pub(super) async fn open(
    client: &redis::Client,
    config: &AsyncConnectionConfig,
    connect_timeout: Duration,
) -> Result<(Wire, ServerInfo), RedisError> {
    let opened = async {
        let mut mux = client
            .get_multiplexed_async_connection_with_config(config)
            .await?;
        let info = identify(&mut mux).await?;
        Ok::<_, RedisError>((Wire::Mux(mux), info))
    }
    .await;
    match (opened, client.get_connection_info().addr()) {
        // Plain text reset before any reply: a TLS-only port does just
        // that, and so does a node dying at that moment. Asking in TLS
        // tells them apart, so the error can say what to fix.
        (Err(e), ConnectionAddr::Tcp(host, port))
            if e.is_connection_dropped() || e.is_io_error() =>
        {
            match tokio::time::timeout(connect_timeout, speaks_tls(host, *port)).await {
                Ok(true) => Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    TlsPort,
                ))),
                _ => Err(e),
            }
        }
        (opened, _) => opened,
    }
}

/// A TLS `ClientHello` (TLS 1.2, one cipher suite, no extensions): any TLS
/// server answers it with a TLS record, if only an alert; a Redis port
/// waits for the end of a command line.
const CLIENT_HELLO: [u8; 52] = [
    0x16, 0x03, 0x01, 0x00, 0x2f, // handshake record, 47 bytes
    0x01, 0x00, 0x00, 0x2b, // ClientHello, 43 bytes
    0x03, 0x03, // TLS 1.2
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // random
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,    //
    0x00, // no session id
    0x00, 0x02, 0xc0, 0x2b, // one cipher suite
    0x01, 0x00, // no compression
    0x00, 0x00, // no extensions
];

/// The server at `host:port` answers a TLS hello with a TLS record
/// (handshake `0x16` or alert `0x15`).
async fn speaks_tls(host: &str, port: u16) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect((host, port)).await else {
        return false;
    };
    if stream.write_all(&CLIENT_HELLO).await.is_err() {
        return false;
    }
    let mut first = [0u8; 1];
    matches!(stream.read(&mut first).await, Ok(1) if matches!(first[0], 0x15 | 0x16))
}

/// The server's address, spelled one way (`host:port`, lower case).
pub(super) fn address(client: &redis::Client) -> String {
    client
        .get_connection_info()
        .addr()
        .to_string()
        .to_ascii_lowercase()
}
