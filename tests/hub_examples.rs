//! The examples' `--model ORG/NAME` goes through the hub client: run the built `surgery`
//! and `chat` examples against a stand-in hub (HF_ENDPOINT, set for the child process
//! only) and check what they asked for and printed.

#[path = "../crates/vision-surgery/tests/common/fake_hub.rs"]
mod fake_hub;

use std::path::{Path, PathBuf};
use std::process::Command;

use fake_hub::{DECODER_SHARDS, FakeHub, VISION_SHARDS, released_layout};

const COMMIT: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";

fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        bin.exists(),
        "{} is missing: `cargo test` builds it",
        bin.display()
    );
    bin
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/vision-surgery/tests/fixtures")
}

fn run(name: &str, hub: &FakeHub, home: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(example(name))
        .args(args)
        .env("HF_ENDPOINT", hub.endpoint())
        .env("HF_HOME", home)
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn examples_load_hub_ids_through_the_hub_client() {
    let served = tempfile::tempdir().unwrap();
    released_layout(&fixtures().join("tiny-s0/model"), served.path());
    // a surgered checkpoint ships its adapter: give the served one the committed adapter
    std::fs::copy(
        fixtures().join("adapter-torch/adapter.safetensors"),
        served.path().join("adapter.safetensors"),
    )
    .unwrap();
    let hub = FakeHub::start();
    hub.add("acme/tiny-vl", "main", COMMIT, served.path().to_path_buf());
    let home = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();

    let surgery = |revision: &str| {
        let out = out.path().to_str().unwrap();
        let args = [
            "--model",
            "acme/tiny-vl",
            "--revision",
            revision,
            "--out",
            out,
        ];
        run("surgery", &hub, home.path(), &args)
    };
    let (ok, text) = surgery("main");
    assert!(ok, "{text}");
    assert!(text.contains(&format!("hub commit: {COMMIT}")), "{text}");
    assert!(text.contains("bytes never downloaded"), "{text}");
    let log = hub.take_log();
    let asked: Vec<String> = log.iter().filter_map(|r| r.file.clone()).collect();
    assert!(
        VISION_SHARDS.iter().all(|v| !asked.iter().any(|a| a == v)),
        "{log:?}"
    );
    assert!(
        DECODER_SHARDS.iter().all(|d| asked.iter().any(|a| a == d)),
        "{log:?}"
    );
    let saved = std::fs::read_to_string(out.path().join("config.json")).unwrap();
    assert!(saved.contains(COMMIT), "{saved}");

    // chat from the cache just filled (the listing only), with the checkpoint's adapter
    let (ok, text) = run(
        "chat",
        &hub,
        home.path(),
        &[
            "--model",
            &format!("acme/tiny-vl@{COMMIT}"),
            "--items",
            fixtures().join("adapter-torch/items.npy").to_str().unwrap(),
            "--max-tokens",
            "4",
        ],
    );
    assert!(ok, "{text}");
    assert!(text.contains("4 generated"), "{text}");
    assert!(hub.take_log().iter().all(|r| !r.is_download()));

    // a revision the hub does not have is the hub's 404, reported
    let (ok, text) = surgery("v9");
    assert!(!ok && text.contains("404"), "{text}");
}
