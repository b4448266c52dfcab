//! TLS-only `redis-server` nodes with certificates made for the test run by
//! `openssl`: a CA, a server certificate for `localhost` and 127.0.0.1
//! signed by it, a client certificate, and a second CA that signed nothing
//! of ours (the "wrong CA").

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Certificates in a directory of their own, removed on drop.
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    /// Makes the certificates (EC P-256 keys: quick to generate).
    pub fn make() -> Self {
        let dir = std::env::temp_dir().join(super::unique("quorumlock-tls"));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl must be installed (apt-get install -y openssl)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let subject = format!("/CN=quorumlock test {ca}");
            let mut args = vec!["req", "-x509", "-days", "2", "-subj", &subject];
            args.extend(ec);
            let (key, crt) = (format!("{ca}.key"), format!("{ca}.crt"));
            args.extend(["-keyout", &key, "-out", &crt]);
            run(&args);
        }
        std::fs::write(
            dir.join("server.ext"),
            // clientAuth too: cluster members show it to each other on the bus.
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (name, subject) in [("server", "/CN=localhost"), ("client", "/CN=quorumlock")] {
            let (key, csr, crt, ext) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
                format!("{name}.ext"),
            );
            let mut args = vec!["req", "-subj", subject, "-keyout", &key, "-out", &csr];
            args.extend(ec);
            run(&args);
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-sha256",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ]);
        }
        Self { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).unwrap()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// TLS-only nodes (no plain-text port), killed on drop.
pub struct TlsNodes {
    pub ports: Vec<u16>,
    children: Vec<Child>,
}

impl TlsNodes {
    /// `n` nodes serving `certs`' server certificate; with `client_certs`
    /// they accept only clients with a certificate from the test CA.
    pub fn start(n: usize, certs: &Certs, client_certs: bool) -> Self {
        let path = |file: &str| certs.path(file).to_string_lossy().into_owned();
        Self::start_with(n, |port| {
            let mut args: Vec<String> = vec!["--port".into(), "0".into()];
            args.extend(["--tls-port".into(), port.to_string()]);
            args.extend(["--tls-cert-file".into(), path("server.crt")]);
            args.extend(["--tls-key-file".into(), path("server.key")]);
            args.extend(["--tls-ca-cert-file".into(), path("ca.crt")]);
            let auth = if client_certs { "yes" } else { "no" };
            args.extend(["--tls-auth-clients".into(), auth.into()]);
            args
        })
    }

    /// `n` nodes started with the arguments `args` gives for a free port
    /// (a configuration file among them, say).
    pub fn start_with(n: usize, args: impl Fn(u16) -> Vec<String>) -> Self {
        let mut ports = Vec::new();
        let mut children = Vec::new();
        for _ in 0..n {
            let (port, child) = start_one(&args);
            ports.push(port);
            children.push(child);
        }
        Self { ports, children }
    }

    /// `rediss://localhost:port` for each node.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("rediss://localhost:{p}"))
            .collect()
    }
}

impl Drop for TlsNodes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_one(args: &impl Fn(u16) -> Vec<String>) -> (u16, Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let port = super::free_port();
        let mut child = Command::new("redis-server")
            .args(args(port))
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--logfile", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        // Listening is enough: the handshake is what the tests look at.
        let up = Instant::now() + Duration::from_secs(5);
        while Instant::now() < up {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (port, child);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            Instant::now() < deadline,
            "could not start a TLS redis-server"
        );
    }
}
