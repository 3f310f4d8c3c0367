//! A real Redis Cluster on loopback ports for the tests of the Redis backend and of the
//! service over it: three masters, each with 0 or more replicas, plain or with ACL users
//! and TLS-only ports (certificates made here with rcgen); a node can be killed and
//! started again (failover tests). redis-server must be installed (`scripts/test.sh`
//! installs it); the tests fail, never skip, without it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// redis-server processes joined into a cluster; killed on drop.
pub struct Cluster {
    /// The running process of each node (`None` while killed).
    procs: Vec<Option<Child>>,
    /// Each node's command line (to start it again).
    args: Vec<Vec<String>>,
    /// Client ports (TLS ports for a TLS cluster), the masters' first.
    pub ports: Vec<u16>,
    /// PEM of the CA that signed the servers' certificate (TLS clusters).
    pub ca_pem: Option<Vec<u8>>,
    cli: Vec<String>,
    dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().flatten() {
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

    /// Kills the node at `port` (SIGKILL).
    pub fn kill(&mut self, port: u16) {
        let k = self.index(port);
        if let Some(mut p) = self.procs[k].take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// Starts the node at `port` again, with its files (it rejoins the cluster: a master
    /// replaced meanwhile comes back as a replica).
    pub fn restart(&mut self, port: u16) {
        let k = self.index(port);
        assert!(self.procs[k].is_none(), "node {port} is running");
        self.procs[k] = Some(spawn(&self.args[k]));
        self.wait_ping(port, Instant::now() + Duration::from_secs(20));
    }

    /// Ports of the masters that are up now, as the node at `via` sees them.
    pub fn masters(&self, via: u16) -> Vec<u16> {
        self.cli(via, &["cluster", "nodes"])
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail") && l.contains("connected"))
            .filter_map(|l| {
                let addr = l.split_whitespace().nth(1)?;
                addr.split(['@', ':']).nth(1)?.parse().ok()
            })
            .collect()
    }

    /// Waits until the node at `via` reports the cluster ok with `masters` masters.
    pub fn wait_ok(&self, via: u16, masters: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let info = self.cli(via, &["cluster", "info"]);
            let size = format!("cluster_size:{masters}");
            if info.contains("cluster_state:ok") && info.lines().any(|l| l.trim() == size) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not become ok: {info}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn index(&self, port: u16) -> usize {
        self.ports
            .iter()
            .position(|&p| p == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    fn wait_ping(&self, port: u16, deadline: Instant) {
        while self.cli(port, &["ping"]).trim() != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn spawn(args: &[String]) -> Child {
    Command::new("redis-server")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting redis-server")
}

/// Start three nodes secured as `sec` and join them into a cluster of three masters.
pub fn start_cluster(sec: &Security) -> Cluster {
    start_cluster_with(sec, 0, 5000)
}

/// Three masters with `replicas` replicas each, secured as `sec`; a node unreachable
/// for `node_timeout_ms` is failed over.
pub fn start_cluster_with(sec: &Security, replicas: usize, node_timeout_ms: u64) -> Cluster {
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
    let mut all_args = Vec::new();
    for i in 0..3 * (1 + replicas) {
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
            &node_timeout_ms.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            // a replica's first sync starts at once (not after the default 5 s wait for
            // more replicas), so that it can take over from the start
            "--repl-diskless-sync-delay",
            "0",
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
        procs.push(Some(spawn(&args)));
        all_args.push(args);
        ports.push(port);
    }
    let cluster = Cluster {
        procs,
        args: all_args,
        ports,
        ca_pem,
        cli,
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    for &p in &cluster.ports {
        cluster.wait_ping(p, deadline);
    }
    let addrs: Vec<String> = cluster
        .ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let mut args = vec!["--cluster", "create"];
    args.extend(addrs.iter().map(String::as_str));
    let replicas = replicas.to_string();
    args.extend(["--cluster-replicas", &replicas, "--cluster-yes"]);
    cluster.cli(cluster.ports[0], &args);
    // Every node must be ok *and* know all three masters with their slots: a node can
    // report cluster_state:ok while gossip about a master is still in flight.
    for &p in &cluster.ports {
        cluster.wait_ok(p, 3, deadline.saturating_duration_since(Instant::now()));
    }
    // a replica that never synced cannot be failed over to: wait for every link
    for &p in &cluster.ports {
        loop {
            let info = cluster.cli(p, &["info", "replication"]);
            if info.contains("role:master") || info.contains("master_link_status:up") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica {p} did not sync: {info}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    cluster
}
