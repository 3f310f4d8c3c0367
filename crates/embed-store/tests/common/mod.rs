//! A real 3-master Redis Cluster on loopback ports for the backend tests, plain or with
//! ACL users and TLS-only ports (certificates made here with rcgen). redis-server must be
//! installed (`scripts/test.sh` installs it); the tests fail, never skip, without it.

#![allow(dead_code)] // each test file uses its own part

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Three redis-server processes joined into a cluster; killed on drop.
pub struct Cluster {
    procs: Vec<Child>,
    /// Client ports (TLS ports for a TLS cluster).
    pub ports: Vec<u16>,
    /// PEM of the CA that signed the servers' certificate (TLS clusters).
    pub ca_pem: Option<Vec<u8>>,
    cli: Vec<String>,
    dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// How the cluster is secured.
#[derive(Default)]
pub struct Security {
    /// TLS-only ports (no plaintext port), certificates made by [`make_tls`].
    pub tls: bool,
    /// ACL file lines; the first user is the one the setup's redis-cli uses, given with
    /// its password in `admin`.
    pub acl: Vec<String>,
    /// (user, password) for redis-cli.
    pub admin: Option<(String, String)>,
}

fn free_port() -> u16 {
    // a cluster node also listens on port + 10000: keep both below 65536
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("binding a probe socket");
        let p = l.local_addr().expect("probe address").port();
        if p < 55000 && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
}

/// A CA and a server certificate for 127.0.0.1 and localhost, written into `dir` as
/// ca.pem, server.pem, server.key; returns the CA's PEM.
pub fn make_tls(dir: &std::path::Path) -> Vec<u8> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "mosaic test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    server
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = server.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    ca.pem().into_bytes()
}

impl Cluster {
    /// redis-cli against `port` with the cluster's TLS and admin credentials.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(&self.cli)
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli is installed with redis-server");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Seed URLs for clients (`rediss://` on a TLS cluster).
    pub fn urls(&self) -> Vec<String> {
        let scheme = if self.ca_pem.is_some() {
            "rediss"
        } else {
            "redis"
        };
        self.ports
            .iter()
            .map(|p| format!("{scheme}://127.0.0.1:{p}/"))
            .collect()
    }

    /// Keys on the node at `port`.
    pub fn dbsize(&self, port: u16) -> usize {
        self.cli(port, &["dbsize"]).trim().parse().unwrap()
    }

    /// Where the cluster keeps its files.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

/// Start three nodes secured as `sec` and join them into a cluster of three masters.
pub fn start_cluster(sec: &Security) -> Cluster {
    assert!(
        Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok(),
        "redis-server is not installed (apt-get install redis-server; scripts/test.sh does it)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_pem = sec.tls.then(|| make_tls(dir.path()));
    let mut cli: Vec<String> = Vec::new();
    if sec.tls {
        let ca = dir.path().join("ca.pem");
        cli.extend(["--tls".into(), "--cacert".into(), ca.display().to_string()]);
    }
    if let Some((u, p)) = &sec.admin {
        cli.extend(["--user".into(), u.clone(), "--pass".into(), p.clone()]);
        cli.push("--no-auth-warning".into());
    }
    if !sec.acl.is_empty() {
        std::fs::write(dir.path().join("users.acl"), sec.acl.join("\n") + "\n").unwrap();
    }
    let mut ports = Vec::new();
    let mut procs = Vec::new();
    for i in 0..3 {
        let port = free_port();
        let node_dir = dir.path().join(format!("n{i}"));
        std::fs::create_dir_all(&node_dir).expect("node dir");
        let mut args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "5000",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(["--dir".into(), node_dir.display().to_string()]);
        if sec.tls {
            let f = |n: &str| dir.path().join(n).display().to_string();
            args.extend([
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
                "--tls-cluster".into(),
                "yes".into(),
                "--tls-cert-file".into(),
                f("server.pem"),
                "--tls-key-file".into(),
                f("server.key"),
                "--tls-ca-cert-file".into(),
                f("ca.pem"),
                "--tls-auth-clients".into(),
                "no".into(),
            ]);
        } else {
            args.extend(["--port".into(), port.to_string()]);
        }
        if !sec.acl.is_empty() {
            args.extend([
                "--aclfile".into(),
                dir.path().join("users.acl").display().to_string(),
            ]);
        }
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        ports.push(port);
        procs.push(child);
    }
    let cluster = Cluster {
        procs,
        ports,
        ca_pem,
        cli,
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    for &p in &cluster.ports {
        while cluster.cli(p, &["ping"]).trim() != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server on {p} did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let addrs: Vec<String> = cluster
        .ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let mut args = vec!["--cluster", "create"];
    args.extend(addrs.iter().map(String::as_str));
    args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    cluster.cli(cluster.ports[0], &args);
    // Every node must be ok *and* know all three masters with their slots: a node can
    // report cluster_state:ok while gossip about a master is still in flight.
    for &p in &cluster.ports {
        loop {
            let info = cluster.cli(p, &["cluster", "info"]);
            if info.contains("cluster_state:ok") && info.contains("cluster_size:3") {
                break;
            }
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    cluster
}
