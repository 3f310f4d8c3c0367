//! [`VectorStore`] on a Redis Cluster, for catalogues past one machine.
//!
//! Key layout under a namespace `ns` (see docs/embed-store.md, which also lists the ACL
//! rules a deployment grants):
//!
//! | key | value |
//! |---|---|
//! | `{ns}:current` | `name@epoch` of the current generation (switched by one atomic `SET`) |
//! | `{ns}:generations` | set of generation names |
//! | `{ns}:gen:{name}:meta` | JSON `{"dim": d, "storage": "f32" \| "f16" \| "int8", "epoch": e}` |
//! | `{ns}:gen:{name}:{epoch}:v:{id}` | the vector, encoded by [`crate::vector_store::encode_vector`] |
//!
//! The epoch (16 hex digits, random at creation) tells a generation from one of the same
//! name dropped and recreated elsewhere: a reader's cached metadata is checked against
//! the epoch in `current` on every batch read, writers read the metadata on every call.
//! Vector keys carry no hash tag, so they spread over every master's slots; reads and
//! writes go out as cluster pipelines (the client splits them per node) in chunks.
//!
//! Connections: [`RedisConfig`] gives the seed nodes (`redis://` or `rediss://` for
//! TLS), ACL username and password, extra root certificates, connect and response
//! timeouts, and a pool of connections, so reads proceed while a bulk write runs. Every
//! connection the backend opens, `drop_generation`'s per-master ones included, uses them.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use redis::Commands;
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConnection, cluster_pipe};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::GenerationSpec;
use crate::types::{ItemId, StorageType};
use crate::vector_store::{Fetched, VectorStore, decode_vector, encode_vector, validate_batch};

/// Keys per pipeline round trip.
const CHUNK: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    dim: usize,
    storage: StorageType,
    /// Random at creation: a recreated generation of the same name has another.
    epoch: u64,
}

/// How to reach a Redis Cluster.
#[derive(Clone)]
pub struct RedisConfig {
    /// Seed nodes: `redis://host:port` or, for TLS, `rediss://host:port` (all alike).
    pub nodes: Vec<String>,
    /// Key namespace (1-128 characters of `A-Z a-z 0-9 - _ .`).
    pub namespace: String,
    /// ACL user (Redis 6+); `None` is the `default` user.
    pub username: Option<String>,
    /// Password of the user.
    pub password: Option<String>,
    /// PEM root certificates to trust for `rediss://` (the system's roots otherwise).
    pub ca_pem: Option<Vec<u8>>,
    /// Longest wait for a connection to be established (default 2 s).
    pub connect_timeout: Duration,
    /// Longest wait for a reply (default 2 s).
    pub response_timeout: Duration,
    /// Connections in the pool (default 4): calls beyond it wait for a free one.
    pub connections: usize,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("nodes", &self.nodes)
            .field("namespace", &self.namespace)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("connections", &self.connections)
            .finish()
    }
}

impl RedisConfig {
    /// Seed `nodes` and `namespace`, no credentials, default timeouts and pool.
    pub fn new<S: Into<String>>(nodes: impl IntoIterator<Item = S>, namespace: &str) -> Self {
        Self {
            nodes: nodes.into_iter().map(Into::into).collect(),
            namespace: namespace.to_string(),
            username: None,
            password: None,
            ca_pem: None,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            connections: 4,
        }
    }

    /// Authenticate as ACL `username` (or the default user with `None`) with `password`.
    pub fn credentials(mut self, username: Option<&str>, password: &str) -> Self {
        self.username = username.map(str::to_string);
        self.password = Some(password.to_string());
        self
    }

    /// Trust the PEM root certificates `pem` for TLS.
    pub fn ca_pem(mut self, pem: Vec<u8>) -> Self {
        self.ca_pem = Some(pem);
        self
    }

    /// Connect and response timeouts.
    pub fn timeouts(mut self, connect: Duration, response: Duration) -> Self {
        self.connect_timeout = connect;
        self.response_timeout = response;
        self
    }

    /// Connections in the pool (at least 1).
    pub fn connections(mut self, n: usize) -> Self {
        self.connections = n.max(1);
        self
    }

    fn tls(&self) -> bool {
        self.nodes.iter().any(|n| n.starts_with("rediss://"))
    }

    fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: None,
            root_cert: self.ca_pem.clone(),
        }
    }
}

/// A [`VectorStore`] on a Redis Cluster.
pub struct RedisClusterStore {
    client: ClusterClient,
    pool: Vec<Mutex<Slot>>,
    next: AtomicUsize,
    /// Bumped by every failure that calls for a new connection ([`needs_new_connection`]):
    /// a pooled connection made before the last one is replaced when next taken.
    trouble: AtomicU64,
    config: RedisConfig,
    metas: Mutex<HashMap<String, Meta>>,
}

/// A pooled connection and the [`RedisClusterStore::trouble`] count it was made at.
struct Slot {
    conn: ClusterConnection,
    made: u64,
}

/// A pooled connection taken for one call.
struct Pooled<'a>(MutexGuard<'a, Slot>);

impl std::ops::Deref for Pooled<'_> {
    type Target = ClusterConnection;
    fn deref(&self) -> &ClusterConnection {
        &self.0.conn
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut ClusterConnection {
        &mut self.0.conn
    }
}

/// Whether a connection that returned `e` should be replaced: after anything but a
/// refused credential or permission. A connection to a node that died keeps failing,
/// and one whose slot map predates a failover keeps asking a node that answers
/// CLUSTERDOWN (inside a pipeline's error, where the client does not refresh it);
/// a fresh connection reads the cluster's topology again. Replacing one costs a
/// reconnect, so doing it after a server error that did not need it is harmless.
fn needs_new_connection(e: &redis::RedisError) -> bool {
    let text = e.to_string();
    e.kind() != redis::ErrorKind::AuthenticationFailed
        && ![
            "WRONGPASS",
            "NOAUTH",
            "NOPERM",
            "NoPerm",
            "AuthenticationFailed",
        ]
        .iter()
        .any(|m| text.contains(m))
}

impl std::fmt::Debug for RedisClusterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClusterStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The typed error of a failed Redis call: [`Error::Auth`] for rejected credentials,
/// [`Error::Denied`] for an ACL refusal, [`Error::Backend`] for the rest (a timeout, a
/// refused or reset connection: with a hint when TLS may be the cause).
fn redis_err<'a>(
    what: &'a str,
    config: &'a RedisConfig,
) -> impl Fn(redis::RedisError) -> Error + 'a {
    move |e| {
        let text = e.to_string();
        // the cluster client folds per-node failures into one I/O error: its text names them
        if e.kind() == redis::ErrorKind::AuthenticationFailed
            || ["WRONGPASS", "NOAUTH", "AuthenticationFailed"]
                .iter()
                .any(|m| text.contains(m))
        {
            return Error::Auth {
                backend: "redis",
                message: format!("{what}: {text}"),
            };
        }
        if text.contains("NOPERM") || text.contains("NoPerm") {
            return Error::Denied {
                backend: "redis",
                message: format!("{what}: {text}"),
            };
        }
        let connecting = what.starts_with("connecting") || what.starts_with("reconnecting");
        let hint = if connecting && !config.tls() && (e.is_io_error() || e.is_timeout()) {
            " (is the server TLS-only? use rediss:// URLs)"
        } else {
            ""
        };
        Error::Backend {
            backend: "redis",
            message: format!("{what}: {text}{hint}"),
        }
    }
}

fn check_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Generation {
            name: name.to_string(),
            message: format!("a {kind} name is 1-128 characters of A-Z a-z 0-9 - _ ."),
        })
    }
}

/// A random epoch (the std hasher's per-process random keys over time and a counter).
fn new_epoch() -> u64 {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// `name@epoch`, the value of the `current` key.
fn pointer(name: &str, epoch: u64) -> String {
    format!("{name}@{epoch:016x}")
}

impl RedisClusterStore {
    /// Connect through any of `nodes` (`redis://host:port/` URLs) with no credentials and
    /// default timeouts, using keys under `namespace`.
    pub fn connect(nodes: &[&str], namespace: &str) -> Result<Self> {
        Self::open(RedisConfig::new(nodes.iter().copied(), namespace))
    }

    /// Connect as `config` says: every pooled connection is opened (and authenticated)
    /// now, so a wrong password, an unreachable node or a TLS mismatch fails here.
    pub fn open(config: RedisConfig) -> Result<Self> {
        check_name("namespace", &config.namespace)?;
        let err = redis_err("connecting to the cluster", &config);
        let mut b = ClusterClientBuilder::new(config.nodes.clone())
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.response_timeout)
            .retries(2);
        if let Some(u) = &config.username {
            b = b.username(u);
        }
        if let Some(p) = &config.password {
            b = b.password(p);
        }
        if config.tls() {
            b = b.certs(config.certificates());
        }
        let client = b.build().map_err(&err)?;
        let pool = (0..config.connections.max(1))
            .map(|_| {
                let conn = client.get_connection().map_err(&err)?;
                Ok(Mutex::new(Slot { conn, made: 0 }))
            })
            .collect::<Result<Vec<_>>>()?;
        drop(err);
        Ok(Self {
            client,
            pool,
            next: AtomicUsize::new(0),
            trouble: AtomicU64::new(0),
            config,
            metas: Mutex::new(HashMap::new()),
        })
    }

    /// The typed error of a failed call ([`redis_err`]); a connection-level failure
    /// also marks every pooled connection for replacement.
    fn err<'a>(&'a self, what: &'a str) -> impl Fn(redis::RedisError) -> Error + 'a {
        let typed = redis_err(what, &self.config);
        move |e| {
            if needs_new_connection(&e) {
                self.trouble.fetch_add(1, Ordering::AcqRel);
            }
            typed(e)
        }
    }

    fn ns(&self) -> &str {
        &self.config.namespace
    }

    fn current_key(&self) -> String {
        format!("{}:current", self.ns())
    }

    fn generations_key(&self) -> String {
        format!("{}:generations", self.ns())
    }

    fn meta_key(&self, generation: &str) -> String {
        format!("{}:gen:{generation}:meta", self.ns())
    }

    fn vector_key(&self, generation: &str, epoch: u64, id: ItemId) -> String {
        format!("{}:gen:{generation}:{epoch:016x}:v:{}", self.ns(), id.0)
    }

    /// A free pooled connection, or the next one in turn when all are busy; replaced
    /// first when a connection failure happened since it was made.
    fn conn(&self) -> Result<Pooled<'_>> {
        let mut slot = self.take_slot();
        let trouble = self.trouble.load(Ordering::Acquire);
        if slot.made < trouble {
            slot.conn = self
                .client
                .get_connection()
                .map_err(redis_err("reconnecting to the cluster", &self.config))?;
            slot.made = trouble;
        }
        Ok(Pooled(slot))
    }

    fn take_slot(&self) -> MutexGuard<'_, Slot> {
        let n = self.pool.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for k in 0..n {
            match self.pool[(start + k) % n].try_lock() {
                Ok(g) => return g,
                // a panic mid-call leaves no half-read reply: the sync client reads
                // whole replies before returning
                Err(TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        self.pool[start % n]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The generation's metadata as stored now (writers and `set_current` read it on
    /// every call, so a generation recreated elsewhere is seen at once).
    fn fresh_meta(&self, conn: &mut ClusterConnection, generation: &str) -> Result<Meta> {
        let raw: Option<String> = conn
            .get(self.meta_key(generation))
            .map_err(self.err("reading generation metadata"))?;
        let raw = raw.ok_or_else(|| Error::Generation {
            name: generation.to_string(),
            message: "no such generation".into(),
        })?;
        let meta: Meta = serde_json::from_str(&raw).map_err(|e| Error::Corrupt {
            file: self.meta_key(generation),
            message: e.to_string(),
        })?;
        if let Ok(mut m) = self.metas.lock() {
            m.insert(generation.to_string(), meta);
        }
        Ok(meta)
    }

    /// The metadata of `generation` at `epoch`: cached when the epochs agree.
    fn meta_at(&self, conn: &mut ClusterConnection, generation: &str, epoch: u64) -> Result<Meta> {
        if let Ok(m) = self.metas.lock()
            && let Some(meta) = m.get(generation)
            && meta.epoch == epoch
        {
            return Ok(*meta);
        }
        let meta = self.fresh_meta(conn, generation)?;
        if meta.epoch != epoch {
            return Err(Error::Generation {
                name: generation.to_string(),
                message: format!(
                    "the current pointer names epoch {epoch:016x}, the generation is at {:016x} \
                     (dropped and recreated meanwhile); retry",
                    meta.epoch
                ),
            });
        }
        Ok(meta)
    }

    /// Addresses (`host:port`) of the cluster's masters, from `CLUSTER NODES`.
    pub fn masters(&self) -> Result<Vec<String>> {
        let mut conn = self.conn()?;
        let text: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut *conn)
            .map_err(self.err("CLUSTER NODES"))?;
        Ok(text
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let (addr, flags) = (f.get(1)?, f.get(2)?);
                flags
                    .split(',')
                    .any(|x| x == "master")
                    .then(|| addr.split('@').next().unwrap_or(addr).to_string())
            })
            .collect())
    }

    /// A connection to one node at `addr`, with the configuration's credentials, TLS
    /// and timeouts.
    /// Passes each batch of the vector keys of `generation` at `epoch` to `each`, master
    /// by master (SCAN of each node's own keys).
    fn scan_vectors(
        &self,
        generation: &str,
        epoch: u64,
        mut each: impl FnMut(&mut redis::Connection, &[String]) -> Result<()>,
    ) -> Result<()> {
        let pattern = format!("{}:gen:{generation}:{epoch:016x}:v:*", self.ns());
        for addr in self.masters()? {
            let mut node = self.node(&addr)?;
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(&mut node)
                    .map_err(self.err("scanning a master"))?;
                if !keys.is_empty() {
                    each(&mut node, &keys)?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(())
    }

    fn node(&self, addr: &str) -> Result<redis::Connection> {
        let c = &self.config;
        let err = self.err("connecting to a master");
        let scheme = if c.tls() { "rediss" } else { "redis" };
        let mut info =
            redis::IntoConnectionInfo::into_connection_info(format!("{scheme}://{addr}/"))
                .map_err(&err)?;
        let mut settings = info.redis_settings().clone();
        if let Some(u) = &c.username {
            settings = settings.set_username(u);
        }
        if let Some(p) = &c.password {
            settings = settings.set_password(p);
        }
        info = info.set_redis_settings(settings);
        let client = if c.tls() {
            redis::Client::build_with_tls(info, c.certificates())
        } else {
            redis::Client::open(info)
        }
        .map_err(&err)?;
        let conn = client
            .get_connection_with_timeout(c.connect_timeout)
            .map_err(&err)?;
        conn.set_read_timeout(Some(c.response_timeout))
            .and_then(|()| conn.set_write_timeout(Some(c.response_timeout)))
            .map_err(&err)?;
        Ok(conn)
    }

    /// Run `write` over `keys` chunk by chunk, after reading their values: when a chunk
    /// fails, every key of the batch gets its old value back, so a failed batch is not
    /// left half-visible. The error says whether that restore failed too.
    fn write_batch(
        &self,
        conn: &mut ClusterConnection,
        keys: &[String],
        write: impl Fn(&mut redis::cluster::ClusterPipeline, usize),
    ) -> Result<()> {
        let mut old: Vec<Option<Vec<u8>>> = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(CHUNK) {
            let mut p = cluster_pipe();
            for k in chunk {
                p.get(k);
            }
            let values: Vec<Option<Vec<u8>>> = p
                .query(conn)
                .map_err(self.err("reading the values a batch replaces"))?;
            old.extend(values);
        }
        for (c, chunk) in keys.chunks(CHUNK).enumerate() {
            let mut p = cluster_pipe();
            for i in 0..chunk.len() {
                write(&mut p, c * CHUNK + i);
            }
            if let Err(e) = p.query::<()>(conn) {
                let mut failed = self.err("writing a batch")(e);
                let done = ((c + 1) * CHUNK).min(keys.len());
                if let Err(r) = self.restore(conn, &keys[..done], &old[..done])
                    && let Error::Backend { message, .. }
                    | Error::Auth { message, .. }
                    | Error::Denied { message, .. } = &mut failed
                {
                    // every key was sent back; those the failure concerned (a node that
                    // went down, a key the user may not write) may hold either value
                    message.push_str(&format!(
                        "; restoring the batch's previous values also reported: {r}"
                    ));
                }
                return Err(failed);
            }
        }
        Ok(())
    }

    fn restore(
        &self,
        conn: &mut ClusterConnection,
        keys: &[String],
        old: &[Option<Vec<u8>>],
    ) -> Result<()> {
        for (ks, vs) in keys.chunks(CHUNK).zip(old.chunks(CHUNK)) {
            let mut p = cluster_pipe();
            for (k, v) in ks.iter().zip(vs) {
                match v {
                    Some(v) => p.set(k, v.as_slice()).ignore(),
                    None => p.del(k).ignore(),
                };
            }
            p.query::<()>(conn)
                .map_err(self.err("restoring a failed batch"))?;
        }
        Ok(())
    }
}

impl VectorStore for RedisClusterStore {
    fn create_generation(&self, spec: &GenerationSpec) -> Result<()> {
        check_name("generation", &spec.name)?;
        if let Err(message) = crate::manifest::check_generation(&spec.name, spec.dim, spec.n_attrs)
        {
            return Err(Error::Generation {
                name: spec.name.clone(),
                message,
            });
        }
        let meta = serde_json::to_string(&Meta {
            dim: spec.dim,
            storage: spec.storage,
            epoch: new_epoch(),
        })
        .map_err(|e| Error::Backend {
            backend: "redis",
            message: e.to_string(),
        })?;
        let mut conn = self.conn()?;
        // SET NX: creating an existing generation is an error, never an overwrite
        let created: bool = redis::cmd("SET")
            .arg(self.meta_key(&spec.name))
            .arg(meta)
            .arg("NX")
            .query::<Option<String>>(&mut *conn)
            .map_err(self.err("creating a generation"))?
            .is_some();
        if !created {
            return Err(Error::Generation {
                name: spec.name.clone(),
                message: "already exists".into(),
            });
        }
        let _: i64 = conn
            .sadd(self.generations_key(), &spec.name)
            .map_err(self.err("registering a generation"))?;
        Ok(())
    }

    /// All of the batch or, when a chunk fails, none of it (see `write_batch`).
    fn put_many(&self, generation: &str, ids: &[ItemId], vectors: &[f32]) -> Result<()> {
        check_name("generation", generation)?;
        let mut conn = self.conn()?;
        let meta = self.fresh_meta(&mut conn, generation)?;
        validate_batch(meta.dim, meta.storage, ids, vectors)?;
        let keys: Vec<String> = ids
            .iter()
            .map(|id| self.vector_key(generation, meta.epoch, *id))
            .collect();
        let encoded: Vec<Vec<u8>> = vectors
            .chunks_exact(meta.dim)
            .map(|v| encode_vector(meta.storage, v))
            .collect();
        self.write_batch(&mut conn, &keys, |p, i| {
            p.set(&keys[i], encoded[i].as_slice()).ignore();
        })
    }

    fn delete(&self, generation: &str, ids: &[ItemId]) -> Result<()> {
        check_name("generation", generation)?;
        let mut conn = self.conn()?;
        let meta = self.fresh_meta(&mut conn, generation)?;
        let keys: Vec<String> = ids
            .iter()
            .map(|id| self.vector_key(generation, meta.epoch, *id))
            .collect();
        self.write_batch(&mut conn, &keys, |p, i| {
            p.del(&keys[i]).ignore();
        })
    }

    fn set_current(&self, generation: &str) -> Result<()> {
        check_name("generation", generation)?;
        let mut conn = self.conn()?;
        let meta = self.fresh_meta(&mut conn, generation)?;
        let _: () = conn
            .set(self.current_key(), pointer(generation, meta.epoch))
            .map_err(self.err("switching the generation"))?;
        Ok(())
    }

    fn current(&self) -> Result<Option<String>> {
        let mut conn = self.conn()?;
        let p: Option<String> = conn
            .get(self.current_key())
            .map_err(self.err("reading the current generation"))?;
        Ok(p.map(|p| p.split_once('@').map_or(p.clone(), |(n, _)| n.to_string())))
    }

    fn generations(&self) -> Result<Vec<String>> {
        let mut conn = self.conn()?;
        let mut v: Vec<String> = conn
            .smembers(self.generations_key())
            .map_err(self.err("listing generations"))?;
        v.sort();
        Ok(v)
    }

    fn drop_generation(&self, generation: &str) -> Result<()> {
        check_name("generation", generation)?;
        if self.current()?.as_deref() == Some(generation) {
            return Err(Error::Generation {
                name: generation.to_string(),
                message: "is current; switch to another generation first".into(),
            });
        }
        let epoch = {
            let mut conn = self.conn()?;
            let meta = self.fresh_meta(&mut conn, generation)?;
            // unregister first: from here on the generation cannot be made current
            let _: () = conn
                .del(self.meta_key(generation))
                .map_err(self.err("dropping a generation"))?;
            let _: i64 = conn
                .srem(self.generations_key(), generation)
                .map_err(self.err("dropping a generation"))?;
            meta.epoch
        };
        if let Ok(mut m) = self.metas.lock() {
            m.remove(generation);
        }
        // then remove its vectors (of this epoch only: a generation recreated meanwhile
        // keeps its own) from every master
        self.scan_vectors(generation, epoch, |node, keys| {
            let mut p = redis::pipe();
            for k in keys {
                p.cmd("UNLINK").arg(k).ignore();
            }
            p.query::<()>(node).map_err(self.err("unlinking vectors"))
        })
    }

    fn ids(&self, generation: &str) -> Result<Vec<ItemId>> {
        check_name("generation", generation)?;
        let epoch = {
            let mut conn = self.conn()?;
            self.fresh_meta(&mut conn, generation)?.epoch
        };
        let prefix = format!("{}:gen:{generation}:{epoch:016x}:v:", self.ns());
        let mut out = Vec::new();
        self.scan_vectors(generation, epoch, |_, keys| {
            for k in keys {
                let id = k
                    .strip_prefix(&prefix)
                    .and_then(|tail| tail.parse::<u64>().ok())
                    .ok_or_else(|| Error::Corrupt {
                        file: k.clone(),
                        message: "a vector key without a numeric id".into(),
                    })?;
                out.push(ItemId(id));
            }
            Ok(())
        })?;
        out.sort_unstable();
        Ok(out)
    }

    fn get_many(&self, ids: &[ItemId]) -> Result<Fetched> {
        let mut conn = self.conn()?;
        let current: String = conn
            .get::<_, Option<String>>(self.current_key())
            .map_err(self.err("reading the current generation"))?
            .ok_or_else(|| Error::Generation {
                name: String::new(),
                message: "no generation is current".into(),
            })?;
        let (generation, epoch) = current
            .split_once('@')
            .and_then(|(n, e)| Some((n.to_string(), u64::from_str_radix(e, 16).ok()?)))
            .ok_or_else(|| Error::Corrupt {
                file: self.current_key(),
                message: format!("{current:?} is not name@epoch"),
            })?;
        let meta = self.meta_at(&mut conn, &generation, epoch)?;
        let mut vectors = vec![0f32; ids.len() * meta.dim];
        let mut found = vec![false; ids.len()];
        for (c, chunk) in ids.chunks(CHUNK).enumerate() {
            let mut p = cluster_pipe();
            for id in chunk {
                p.get(self.vector_key(&generation, epoch, *id));
            }
            let values: Vec<Option<Vec<u8>>> =
                p.query(&mut conn).map_err(self.err("reading vectors"))?;
            for (j, v) in values.into_iter().enumerate() {
                let i = c * CHUNK + j;
                if let Some(bytes) = v {
                    decode_vector(
                        meta.storage,
                        &bytes,
                        &mut vectors[i * meta.dim..(i + 1) * meta.dim],
                    )?;
                    found[i] = true;
                }
            }
        }
        Ok(Fetched {
            generation,
            dim: meta.dim,
            vectors,
            found,
        })
    }
}
