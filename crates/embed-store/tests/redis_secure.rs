//! The Redis Cluster backend on a shared network: a real 3-master cluster with TLS-only
//! ports (certificates made by the test) and ACL users, the rules docs/embed-store.md
//! tells a deployment to grant. A wrong password is `Error::Auth`; a plaintext client
//! fails fast and says why; a user restricted to one generation's keys cannot read
//! another (`Error::Denied`); `drop_generation` works with auth and TLS; reads proceed
//! while a bulk write runs; a batch that fails part-way leaves nothing of it visible.

use std::time::{Duration, Instant};

use embed_store::redis_cluster::{RedisClusterStore, RedisConfig};
use embed_store::{Error, GenerationSpec, ItemId, StorageType, VectorStore};
use mosaic_testkit::redis::{Security, start_cluster};

const NS: &str = "mosaic-test";
/// The service's user, as docs/embed-store.md ("ACL rules") grants it.
const APP_ACL: &str = "user mosaic on >mosaic-pass ~mosaic-test:* resetchannels -@all \
    +@read +@write +@connection +cluster|slots +cluster|shards +cluster|nodes -@dangerous";
/// A reader of one generation (`b`) only.
const READER_ACL: &str = "user reader-b on >reader-pass ~mosaic-test:current \
    ~mosaic-test:gen:b:* resetchannels -@all +@read +@connection +cluster|slots \
    +cluster|shards +cluster|nodes -@dangerous";
/// May read generation `c` but write only its ids 0..=99: a batch with a larger id fails
/// part-way, after the rest of it was written.
const PARTIAL_ACL: &str = "user partial on >partial-pass ~mosaic-test:current \
    %R~mosaic-test:gen:c:* %W~mosaic-test:gen:c:*:v:? %W~mosaic-test:gen:c:*:v:?? \
    resetchannels -@all +@read +@write +@connection +cluster|slots +cluster|shards \
    +cluster|nodes -@dangerous";

fn vectors(n: usize, dim: usize, salt: f32) -> Vec<f32> {
    (0..n * dim)
        .map(|i| (i as f32 * 0.37 + salt).sin() * 0.9)
        .collect()
}

fn ids(r: std::ops::Range<u64>) -> Vec<ItemId> {
    r.map(ItemId).collect()
}

#[test]
fn tls_and_acl_users_on_a_shared_cluster() {
    let cluster = start_cluster(&Security {
        tls: true,
        acl: vec![
            "user default off".into(),
            "user admin on >admin-pass ~* &* +@all".into(),
            APP_ACL.into(),
            READER_ACL.into(),
            PARTIAL_ACL.into(),
        ],
        admin: Some(("admin".into(), "admin-pass".into())),
    });
    let ca = cluster.ca_pem.clone().unwrap();
    let config = |user: &str, pass: &str| {
        RedisConfig::new(cluster.urls(), NS)
            .credentials(Some(user), pass)
            .ca_pem(ca.clone())
            .timeouts(Duration::from_secs(1), Duration::from_secs(2))
    };

    // the service's user: the whole contract over TLS with auth
    let app = RedisClusterStore::open(config("mosaic", "mosaic-pass")).unwrap();
    assert_eq!(app.masters().unwrap().len(), 3);
    for (g, salt) in [("a", 0.0), ("b", 1.0)] {
        app.create_generation(&GenerationSpec::new(g, 4, StorageType::F32))
            .unwrap();
        app.put_many(g, &ids(0..3000), &vectors(3000, 4, salt))
            .unwrap();
    }
    app.set_current("b").unwrap();
    let f = app.get_many(&ids(0..5)).unwrap();
    assert_eq!(f.generation, "b");
    assert_eq!(f.row(2).unwrap(), &vectors(3000, 4, 1.0)[8..12]);

    // a wrong password is a typed auth error, for a known and an unknown user
    for (user, pass) in [("mosaic", "wrong"), ("nobody", "x")] {
        match RedisClusterStore::open(config(user, pass)) {
            Err(Error::Auth { message, .. }) => println!("{user}: {message}"),
            other => panic!("{user}/{pass}: expected Error::Auth, got {other:?}"),
        }
    }

    // a plaintext client against the TLS-only ports fails fast and says why
    let plain: Vec<String> = cluster
        .ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}/"))
        .collect();
    let t = Instant::now();
    let e = RedisClusterStore::open(
        RedisConfig::new(plain, NS)
            .credentials(Some("mosaic"), "mosaic-pass")
            .timeouts(Duration::from_secs(1), Duration::from_secs(1)),
    )
    .unwrap_err();
    let took = t.elapsed();
    println!("plaintext against TLS: {e} after {took:?}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(
        matches!(&e, Error::Backend { message, .. } if message.contains("rediss://")),
        "{e}"
    );

    // a reader restricted to generation b reads b, and is denied a
    let reader = RedisClusterStore::open(config("reader-b", "reader-pass")).unwrap();
    assert!(
        reader
            .get_many(&ids(0..3))
            .unwrap()
            .found
            .iter()
            .all(|&x| x)
    );
    match reader.put_many("b", &ids(0..1), &vectors(1, 4, 9.0)) {
        Err(Error::Denied { message, .. }) => println!("reader-b writing: {message}"),
        other => panic!("expected Error::Denied, got {other:?}"),
    }
    app.set_current("a").unwrap();
    match reader.get_many(&ids(0..3)) {
        Err(Error::Denied { message, .. }) => println!("reader-b on a: {message}"),
        other => panic!("expected Error::Denied, got {other:?}"),
    }
    app.set_current("b").unwrap();

    // reads proceed while a bulk write runs (the pool's other connections)
    app.create_generation(&GenerationSpec::new("bulk", 64, StorageType::F32))
        .unwrap();
    let big = vectors(40_000, 64, 3.0);
    let reads_during_write = std::thread::scope(|s| {
        let writer = s.spawn(|| app.put_many("bulk", &ids(0..40_000), &big));
        let mut reads = 0;
        while !writer.is_finished() {
            app.get_many(&ids(0..16)).unwrap();
            reads += 1;
        }
        writer.join().unwrap().unwrap();
        reads
    });
    println!("{reads_during_write} batch reads completed during one bulk write");
    assert!(reads_during_write > 0);

    // a batch that fails part-way (id 500 is outside the user's keys) is not left
    // half-visible: ids 0..10 keep their old vectors, 10..20 stay absent
    app.create_generation(&GenerationSpec::new("c", 4, StorageType::F32))
        .unwrap();
    app.put_many("c", &ids(0..10), &vectors(10, 4, 5.0))
        .unwrap();
    let partial = RedisClusterStore::open(config("partial", "partial-pass")).unwrap();
    let mut batch = ids(0..20);
    batch.push(ItemId(500));
    let e = partial
        .put_many("c", &batch, &vectors(21, 4, 7.0))
        .unwrap_err();
    println!("part-way failure: {e}");
    assert!(
        matches!(&e, Error::Denied { message, .. } if message.contains("writing a batch")),
        "the failure is in the write, after the rest of the batch was sent: {e}"
    );
    app.set_current("c").unwrap();
    let f = app.get_many(&ids(0..20)).unwrap();
    assert_eq!(
        &f.vectors[..40],
        &vectors(10, 4, 5.0)[..],
        "old values restored"
    );
    assert!(f.found[..10].iter().all(|&x| x) && !f.found[10..].iter().any(|&x| x));
    app.set_current("b").unwrap();

    // drop_generation reaches every master with the same credentials and TLS
    let before: usize = cluster.ports.iter().map(|&p| cluster.dbsize(p)).sum();
    app.drop_generation("a").unwrap();
    app.drop_generation("bulk").unwrap();
    let after: usize = cluster.ports.iter().map(|&p| cluster.dbsize(p)).sum();
    assert_eq!(
        before - after,
        3000 + 1 + 40_000 + 1,
        "vectors and metadata of a and bulk"
    );
    assert_eq!(
        app.generations().unwrap(),
        vec!["b".to_string(), "c".to_string()]
    );
}

#[test]
fn a_generation_recreated_elsewhere_is_noticed() {
    let cluster = start_cluster(&Security::default());
    let urls = cluster.urls();
    let one = RedisClusterStore::open(RedisConfig::new(urls.clone(), NS)).unwrap();
    let two = RedisClusterStore::open(RedisConfig::new(urls, NS)).unwrap();
    one.create_generation(&GenerationSpec::new("g", 4, StorageType::F32))
        .unwrap();
    one.put_many("g", &ids(0..5), &vectors(5, 4, 0.0)).unwrap();
    one.create_generation(&GenerationSpec::new("h", 4, StorageType::F32))
        .unwrap();
    one.set_current("g").unwrap();
    assert_eq!(two.get_many(&ids(0..2)).unwrap().dim, 4); // two caches g's metadata
    // elsewhere: g dropped and recreated 8 wide
    one.set_current("h").unwrap();
    one.drop_generation("g").unwrap();
    one.create_generation(&GenerationSpec::new("g", 8, StorageType::F16))
        .unwrap();
    one.put_many("g", &ids(0..5), &vectors(5, 8, 2.0)).unwrap();
    one.set_current("g").unwrap();
    let f = two.get_many(&ids(0..5)).unwrap();
    assert_eq!(f.dim, 8, "stale metadata was used");
    assert!(f.found.iter().all(|&x| x));
    // writers read the metadata on every call: an 8-wide put through `two` is accepted
    two.put_many("g", &ids(9..10), &vectors(1, 8, 0.0)).unwrap();
    // and only the new generation's keys are left (5 + 1 vectors, metadata of g and h)
    let keys: usize = cluster.ports.iter().map(|&p| cluster.dbsize(p)).sum();
    assert_eq!(
        keys,
        6 + 2 + 2,
        "vectors, two metadata keys, current and the set"
    );
}
