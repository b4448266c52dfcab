//! A small TCP proxy in front of one Redis node, for network faults:
//! latency (on requests or on replies), blackholes (after which held
//! connections resume, or stay dead), connection resets, and a node clock
//! that runs fast.
//!
//! Requests are forwarded whole (one RESP command at a time), so a fast
//! clock can be emulated by scaling the TTLs the node is given: a node whose
//! clock runs at speed `s` expires a `PX t` key after `t / s` real time.
//! (`faketime` cannot do this for Debian's `redis-server`: libfaketime and
//! jemalloc deadlock at start-up, libfaketime issue #130.)

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How traffic through the proxy misbehaves.
#[derive(Debug, Clone, PartialEq)]
struct Faults {
    /// Extra delay before each request is forwarded: uniform in `min..=max`.
    latency: Option<(Duration, Duration)>,
    /// Extra delay before each chunk of replies is passed back, likewise.
    reply_latency: Option<(Duration, Duration)>,
    blackhole: Blackhole,
    /// Speed of the node's clock relative to ours.
    clock_speed: f64,
    /// Bumped to reset every open connection.
    generation: u64,
    /// Connections accepted before this one (by sequence number) stall:
    /// nothing passes either way, nothing is closed, while new connections
    /// work (a NAT or conntrack entry lost under an open connection).
    stall_below: u64,
}

impl Faults {
    /// Traffic of connection `seq` may pass.
    fn flows(&self, seq: u64) -> bool {
        self.blackhole != Blackhole::All && seq >= self.stall_below
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blackhole {
    Off,
    /// New connections are accepted and their bytes held, unanswered.
    New,
    /// Open connections stall as well.
    All,
}

/// A proxy listening on its own loopback port, forwarding to `upstream`.
pub struct Proxy {
    port: u16,
    faults: watch::Sender<Faults>,
    accept: JoinHandle<()>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (faults, rx) = watch::channel(Faults {
            latency: None,
            reply_latency: None,
            blackhole: Blackhole::Off,
            clock_speed: 1.0,
            generation: 0,
            stall_below: 0,
        });
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = accepted.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let seq = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(connection(client, upstream, rx.clone(), seq));
            }
        });
        Self {
            port,
            faults,
            accept,
            accepted,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every connection open now hangs forever without closing; new
    /// connections work.
    pub fn stall_open(&self) {
        let next = self.accepted();
        self.faults.send_modify(|f| f.stall_below = next);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Each request waits a fixed `delay` before it is forwarded.
    pub fn latency(&self, delay: Duration) {
        self.faults
            .send_modify(|f| f.latency = Some((delay, delay)));
    }

    /// Each request waits a random delay of at most `max`.
    pub fn random_latency(&self, max: Duration) {
        self.faults
            .send_modify(|f| f.latency = Some((Duration::ZERO, max)));
    }

    /// Each chunk of replies (a reply, or the few the node wrote at once)
    /// waits a random delay of at most `max` before it is passed back: the
    /// node has done the work, the client hears of it late.
    pub fn random_reply_latency(&self, max: Duration) {
        self.faults
            .send_modify(|f| f.reply_latency = Some((Duration::ZERO, max)));
    }

    /// New connections are accepted and held without an answer.
    pub fn blackhole(&self) {
        self.faults.send_modify(|f| f.blackhole = Blackhole::New);
    }

    /// Like [`blackhole`](Self::blackhole), and open connections stall too.
    pub fn hard_blackhole(&self) {
        self.faults.send_modify(|f| f.blackhole = Blackhole::All);
    }

    /// Like [`hard_blackhole`](Self::hard_blackhole), but the connections
    /// open now never recover: [`heal`](Self::heal) lets only those
    /// accepted from now on flow (a NAT or firewall that lost their state
    /// while the path was down). Nothing is closed, and what is held on a
    /// dead connection is never delivered either way.
    pub fn fatal_blackhole(&self) {
        let next = self.accepted();
        self.faults.send_modify(|f| {
            f.blackhole = Blackhole::All;
            f.stall_below = f.stall_below.max(next);
        });
    }

    /// The node's clock runs `speed` times as fast as ours.
    pub fn clock_speed(&self, speed: f64) {
        self.faults.send_modify(|f| f.clock_speed = speed);
    }

    /// Resets (RST) every connection open now.
    pub fn reset(&self) {
        self.faults.send_modify(|f| f.generation += 1);
    }

    /// Back to normal: held traffic flows again (except on connections
    /// stalled for good), no delay, true clock.
    pub fn heal(&self) {
        self.faults.send_modify(|f| {
            f.latency = None;
            f.reply_latency = None;
            f.blackhole = Blackhole::Off;
            f.clock_speed = 1.0;
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.reset();
    }
}

async fn connection(
    client: TcpStream,
    upstream: u16,
    mut faults: watch::Receiver<Faults>,
    seq: u64,
) {
    let generation = faults.borrow().generation;
    // A blackhole holds new connections: accepted, never read.
    let Ok(_) = faults
        .wait_for(|f| f.blackhole == Blackhole::Off || f.generation != generation)
        .await
    else {
        return;
    };
    if faults.borrow().generation != generation {
        let _ = client.set_zero_linger();
        return;
    }
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let mut client = client;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut reset = faults.clone();
    {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        tokio::select! {
            _ = requests(client_read, server_write, faults.clone(), seq) => {}
            _ = replies(server_read, client_write, faults, seq) => {}
            _ = reset.wait_for(|f| f.generation != generation) => {}
        }
    }
    // A zero linger turns the close into an RST, as a reset network would.
    let _ = client.set_zero_linger();
    let _ = server.set_zero_linger();
}

/// A random delay in `min..=max`.
fn draw((min, max): (Duration, Duration)) -> Duration {
    let extra = max.saturating_sub(min).as_micros() as u64;
    min + Duration::from_micros(if extra == 0 {
        0
    } else {
        rand::random_range(0..=extra)
    })
}

/// Client to server, one whole command at a time. Commands are read as
/// they come and each is forwarded at its arrival time plus its delay (never
/// before the one ahead of it), as on a network with latency: delays overlap
/// instead of queueing behind each other.
async fn requests(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut faults: watch::Receiver<Faults>,
    seq: u64,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let read = async move {
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        loop {
            while let Some((args, used)) = parse_command(&buf) {
                buf.drain(..used);
                if tx.send((tokio::time::Instant::now(), args)).is_err() {
                    return;
                }
            }
            match from.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let write = async move {
        let mut last_due = tokio::time::Instant::now();
        while let Some((arrived, args)) = rx.recv().await {
            let Ok(f) = faults.wait_for(|f| f.flows(seq)).await.map(|f| f.clone()) else {
                return;
            };
            if let Some(range) = f.latency {
                last_due = last_due.max(arrived + draw(range));
                tokio::time::sleep_until(last_due).await;
            }
            let args = scale_ttls(args, f.clock_speed);
            if to.write_all(&encode(&args)).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = read => {}
        () = write => {}
    }
}

/// Server to client, chunk by chunk as it comes, unless a hard blackhole
/// holds it; with reply latency, each chunk is passed on at its arrival
/// time plus its delay (never before the one ahead of it), as requests are.
async fn replies(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut faults: watch::Receiver<Faults>,
    seq: u64,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let read = async move {
        let mut chunk = [0u8; 4096];
        loop {
            match from.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx
                        .send((tokio::time::Instant::now(), chunk[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    let write = async move {
        let mut last_due = tokio::time::Instant::now();
        while let Some((arrived, bytes)) = rx.recv().await {
            let Ok(range) = faults
                .wait_for(|f| f.flows(seq))
                .await
                .map(|f| f.reply_latency)
            else {
                return;
            };
            if let Some(range) = range {
                last_due = last_due.max(arrived + draw(range));
                tokio::time::sleep_until(last_due).await;
            }
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    tokio::pin!(write);
    tokio::select! {
        // The server closed: what it sent is passed on first.
        () = read => write.await,
        () = &mut write => {}
    }
}

/// Parses one RESP array of bulk strings; `None` until it is complete.
pub fn parse_command(buf: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
        Some((&buf[at..end], end + 2))
    }
    fn number(bytes: &[u8]) -> Option<usize> {
        std::str::from_utf8(bytes).ok()?.parse().ok()
    }
    let (head, mut at) = line(buf, 0)?;
    let count = number(head.strip_prefix(b"*")?)?;
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        let (head, next) = line(buf, at)?;
        let len = number(head.strip_prefix(b"$")?)?;
        if buf.len() < next + len + 2 {
            return None;
        }
        args.push(buf[next..next + len].to_vec());
        at = next + len + 2;
    }
    Some((args, at))
}

pub fn encode(args: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Divides the TTL of `SET .. PX ms` and of quorumlock's extend script
/// (`EVALSHA sha 1 key token ms`) by `speed`.
pub fn scale_ttls(mut args: Vec<Vec<u8>>, speed: f64) -> Vec<Vec<u8>> {
    if speed == 1.0 || args.is_empty() {
        return args;
    }
    let name = args[0].to_ascii_uppercase();
    let ttl_at = match name.as_slice() {
        b"SET" => args
            .iter()
            .position(|a| a.eq_ignore_ascii_case(b"PX"))
            .map(|i| i + 1),
        b"EVALSHA" | b"EVAL" if args.len() == 6 && args[2] == b"1" => Some(5),
        _ => None,
    };
    if let Some(i) = ttl_at.filter(|i| *i < args.len()) {
        if let Some(ms) = std::str::from_utf8(&args[i])
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
        {
            args[i] = ((ms / speed).max(1.0) as u64).to_string().into_bytes();
        }
    }
    args
}

/// A trio of local nodes with a proxy in front of each (for tests that
/// combine process faults with network faults).
pub struct Net {
    pub cluster: super::Cluster,
    pub proxies: Vec<Proxy>,
}

impl Net {
    /// `None` under `REDLOCK_TEST_NODES` (see [`super::cluster`]).
    pub async fn start() -> Option<Self> {
        let cluster = super::cluster(3)?;
        let mut proxies = Vec::new();
        for i in 0..3 {
            proxies.push(Proxy::start(cluster.port(i)).await);
        }
        Some(Self { cluster, proxies })
    }

    /// The proxies' URLs, as clients should use them.
    pub fn urls(&self) -> Vec<String> {
        self.proxies.iter().map(Proxy::url).collect()
    }

    /// Every node thawed, every proxy healed.
    pub fn heal(&self) {
        for (i, proxy) in self.proxies.iter().enumerate() {
            self.cluster.thaw(i);
            proxy.heal();
        }
    }
}
