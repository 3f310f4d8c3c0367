//! [`VectorStore`] on a Redis Cluster, for catalogues past one machine.
//!
//! Key layout under a namespace `ns` (see docs/embed-store.md):
//!
//! | key | value |
//! |---|---|
//! | `{ns}:current` | name of the current generation (one key: switched by a single atomic `SET`) |
//! | `{ns}:generations` | set of generation names |
//! | `{ns}:gen:{name}:meta` | JSON `{"dim": d, "storage": "f32" \| "f16" \| "int8"}` |
//! | `{ns}:gen:{name}:v:{id}` | the vector, encoded by [`crate::vector_store::encode_vector`] |
//!
//! Vector keys carry no hash tag, so they spread over every master's slots; reads and
//! writes go out as cluster pipelines (the client splits them per node) in chunks.
//! A generation is written completely before `set_current` points readers at it, and a
//! batch read resolves the pointer once, so a reader never mixes generations.

use std::collections::HashMap;
use std::sync::Mutex;

use redis::Commands;
use redis::cluster::{ClusterClient, ClusterConnection, cluster_pipe};
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
}

/// A [`VectorStore`] on a Redis Cluster.
pub struct RedisClusterStore {
    conn: Mutex<ClusterConnection>,
    ns: String,
    metas: Mutex<HashMap<String, Meta>>,
}

impl std::fmt::Debug for RedisClusterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClusterStore")
            .field("namespace", &self.ns)
            .finish_non_exhaustive()
    }
}

fn redis_err(what: &str) -> impl Fn(redis::RedisError) -> Error + '_ {
    move |e| Error::Backend {
        backend: "redis",
        message: format!("{what}: {e}"),
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

impl RedisClusterStore {
    /// Connect to the cluster through any of `nodes` (`redis://host:port/` URLs) and use
    /// keys under `namespace`.
    pub fn connect(nodes: &[&str], namespace: &str) -> Result<Self> {
        check_name("namespace", namespace)?;
        let client = ClusterClient::new(nodes.to_vec()).map_err(redis_err("cluster client"))?;
        let conn = client
            .get_connection()
            .map_err(redis_err("connecting to the cluster"))?;
        Ok(Self {
            conn: Mutex::new(conn),
            ns: namespace.to_string(),
            metas: Mutex::new(HashMap::new()),
        })
    }

    fn current_key(&self) -> String {
        format!("{}:current", self.ns)
    }

    fn generations_key(&self) -> String {
        format!("{}:generations", self.ns)
    }

    fn meta_key(&self, generation: &str) -> String {
        format!("{}:gen:{generation}:meta", self.ns)
    }

    fn vector_key(&self, generation: &str, id: ItemId) -> String {
        format!("{}:gen:{generation}:v:{}", self.ns, id.0)
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, ClusterConnection>> {
        self.conn.lock().map_err(|_| Error::Backend {
            backend: "redis",
            message: "the connection mutex is poisoned".into(),
        })
    }

    fn meta(&self, conn: &mut ClusterConnection, generation: &str) -> Result<Meta> {
        if let Ok(m) = self.metas.lock()
            && let Some(meta) = m.get(generation)
        {
            return Ok(*meta);
        }
        let raw: Option<String> = conn
            .get(self.meta_key(generation))
            .map_err(redis_err("reading generation metadata"))?;
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

    /// Addresses (`host:port`) of the cluster's masters, from `CLUSTER NODES`.
    pub fn masters(&self) -> Result<Vec<String>> {
        let mut conn = self.conn()?;
        let text: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut *conn)
            .map_err(redis_err("CLUSTER NODES"))?;
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
}

impl VectorStore for RedisClusterStore {
    fn create_generation(&self, spec: &GenerationSpec) -> Result<()> {
        check_name("generation", &spec.name)?;
        if spec.dim == 0 {
            return Err(Error::Generation {
                name: spec.name.clone(),
                message: "dim must be at least 1".into(),
            });
        }
        let meta = serde_json::to_string(&Meta {
            dim: spec.dim,
            storage: spec.storage,
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
            .map_err(redis_err("creating a generation"))?
            .is_some();
        if !created {
            return Err(Error::Generation {
                name: spec.name.clone(),
                message: "already exists".into(),
            });
        }
        let _: i64 = conn
            .sadd(self.generations_key(), &spec.name)
            .map_err(redis_err("registering a generation"))?;
        Ok(())
    }

    fn put_many(&self, generation: &str, ids: &[ItemId], vectors: &[f32]) -> Result<()> {
        check_name("generation", generation)?;
        let mut conn = self.conn()?;
        let meta = self.meta(&mut conn, generation)?;
        validate_batch(meta.dim, meta.storage, ids, vectors)?;
        for (chunk_ids, chunk) in ids.chunks(CHUNK).zip(vectors.chunks(CHUNK * meta.dim)) {
            let mut p = cluster_pipe();
            for (id, v) in chunk_ids.iter().zip(chunk.chunks_exact(meta.dim)) {
                p.set(
                    self.vector_key(generation, *id),
                    encode_vector(meta.storage, v),
                )
                .ignore();
            }
            p.query::<()>(&mut conn)
                .map_err(redis_err("writing vectors"))?;
        }
        Ok(())
    }

    fn delete(&self, generation: &str, ids: &[ItemId]) -> Result<()> {
        check_name("generation", generation)?;
        let mut conn = self.conn()?;
        self.meta(&mut conn, generation)?;
        for chunk in ids.chunks(CHUNK) {
            let mut p = cluster_pipe();
            for id in chunk {
                p.del(self.vector_key(generation, *id)).ignore();
            }
            p.query::<()>(&mut conn)
                .map_err(redis_err("deleting vectors"))?;
        }
        Ok(())
    }

    fn set_current(&self, generation: &str) -> Result<()> {
        check_name("generation", generation)?;
        let mut conn = self.conn()?;
        self.meta(&mut conn, generation)?;
        let _: () = conn
            .set(self.current_key(), generation)
            .map_err(redis_err("switching the generation"))?;
        Ok(())
    }

    fn current(&self) -> Result<Option<String>> {
        let mut conn = self.conn()?;
        conn.get(self.current_key())
            .map_err(redis_err("reading the current generation"))
    }

    fn generations(&self) -> Result<Vec<String>> {
        let mut conn = self.conn()?;
        let mut v: Vec<String> = conn
            .smembers(self.generations_key())
            .map_err(redis_err("listing generations"))?;
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
        {
            let mut conn = self.conn()?;
            self.meta(&mut conn, generation)?;
            // unregister first: from here on the generation cannot be made current
            let _: () = conn
                .del(self.meta_key(generation))
                .map_err(redis_err("dropping a generation"))?;
            let _: i64 = conn
                .srem(self.generations_key(), generation)
                .map_err(redis_err("dropping a generation"))?;
        }
        if let Ok(mut m) = self.metas.lock() {
            m.remove(generation);
        }
        // then remove its vectors from every master: SCAN each node's own keys
        let pattern = format!("{}:gen:{generation}:v:*", self.ns);
        for addr in self.masters()? {
            let client = redis::Client::open(format!("redis://{addr}/"))
                .map_err(redis_err("connecting to a master"))?;
            let mut node = client
                .get_connection()
                .map_err(redis_err("connecting to a master"))?;
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(&mut node)
                    .map_err(redis_err("scanning a master"))?;
                if !keys.is_empty() {
                    let mut p = redis::pipe();
                    for k in &keys {
                        p.cmd("UNLINK").arg(k).ignore();
                    }
                    p.query::<()>(&mut node)
                        .map_err(redis_err("unlinking vectors"))?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(())
    }

    fn get_many(&self, ids: &[ItemId]) -> Result<Fetched> {
        let mut conn = self.conn()?;
        let generation: String = conn
            .get::<_, Option<String>>(self.current_key())
            .map_err(redis_err("reading the current generation"))?
            .ok_or_else(|| Error::Generation {
                name: String::new(),
                message: "no generation is current".into(),
            })?;
        let meta = self.meta(&mut conn, &generation)?;
        let mut vectors = vec![0f32; ids.len() * meta.dim];
        let mut found = vec![false; ids.len()];
        for (c, chunk) in ids.chunks(CHUNK).enumerate() {
            let mut p = cluster_pipe();
            for id in chunk {
                p.get(self.vector_key(&generation, *id));
            }
            let values: Vec<Option<Vec<u8>>> =
                p.query(&mut conn).map_err(redis_err("reading vectors"))?;
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
