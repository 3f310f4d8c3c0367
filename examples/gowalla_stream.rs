//! Real-time updates measured: hide the last 20% of the training interactions of a
//! random 20% of users, train LightGCN on the rest, then stream the hidden interactions
//! through `LiveModel::observe` (no retraining). Prints test Recall@20 / NDCG@20 of the
//! stale model, after streaming, and after a full retrain with them — over all users,
//! over the affected users and over the others — and how much of the gap streaming
//! recovered. `--retrain-seeds` adds retrains with other seeds, to size the noise.
//! `--warm-epochs` adds a background refit: the stream goes through a `Refresher`,
//! whose refits carry the stale trainer onto the grown graph (`Training::regraph`, state
//! kept), train a few more epochs and install the new live model — the periodic job that
//! re-optimises the items and the users who streamed nothing; beside it, as a control,
//! the stale trainer continued as long on the graph without the streamed interactions
//! (what the extra epochs give by themselves). `--during-refit N` holds the last N
//! streamed events back until the first refit has run and catches the refit up with them
//! (`Refit::catch_up`) before installing it, timing both. `--state-dir DIR` (with `--warm-epochs`)
//! saves the refresher's state there before the refits and after the last
//! (`Refresher::save`), loads it back as a restarted service would
//! (`Refresher::load`), checks the restored live model is the served one bit for bit,
//! and prints the times.
//!
//! ```text
//! cargo run --release --example gowalla_stream -- --data ../shared/datasets/gowalla --epochs 20
//! ```
//! `--device cuda` (with `--features cuda`) trains both models on the GPU
//! (`DeviceTrainer`); streaming and evaluation run on the CPU either way.
//!
//! Every evaluation excludes the full training set (streamed items included), so the
//! three rows rank the same candidates.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use mosaic::device::Selection;
use mosaic::taste_graph::dataset::read_lightgcn;
use mosaic::taste_graph::model::RateSwitch;
use mosaic::taste_graph::{
    BipartiteGraph, Dataset, DeviceSpec, Interaction, InteractionKind, ItemId, LightGcnConfig,
    LiveConfig, LiveModel, Refresher, Training, UserId, evaluate,
};
use mosaic_testkit::catalogue::Rng;

#[derive(Parser)]
#[command(about = "Stale vs streamed (observe) vs retrained LightGCN")]
struct Args {
    /// Directory with train.txt and test.txt.
    #[arg(long, default_value = "../shared/datasets/gowalla")]
    data: PathBuf,
    /// Training epochs of each of the two trainings.
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// Fraction of users whose tail is hidden.
    #[arg(long, default_value_t = 0.2)]
    users: f64,
    /// Fraction of each such user's training interactions hidden (the last ones).
    #[arg(long, default_value_t = 0.2)]
    tail: f64,
    /// Embedding width.
    #[arg(long, default_value_t = 64)]
    dim: usize,
    /// Seed of the user draw, initialisation and sampling.
    #[arg(long, default_value_t = 2020)]
    seed: u64,
    /// Where to train: cpu (hand-written kernels), cuda[:N], or auto.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Also stream with BPR refits of the user's ego (`LiveConfig::refit`): this many
    /// steps per positive event (0: fold-in only).
    #[arg(long, default_value_t = 10)]
    refit_steps: usize,
    /// The refit learning rates to compare, one streamed model each.
    #[arg(long, value_delimiter = ',', default_value = "1,3,10")]
    refit_lrs: Vec<f32>,
    /// Negative candidates per refit step (`LiveConfig::refit_negatives`; 1: uniform,
    /// more: the highest-scored of that many), one streamed model per value and rate.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    refit_negatives: Vec<usize>,
    /// Training batch size of both models (the reference's 2048 by default).
    #[arg(long, default_value_t = 2048)]
    batch: usize,
    /// Adam learning rate of both trainings (the reference's 1e-3 by default).
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// Also stream every configuration with item-side updates
    /// (`LiveConfig::item_updates`), labelled `..._items`.
    #[arg(long)]
    item_updates: bool,
    /// Also retrain with these seeds (same split, other initialisation and sampling),
    /// to show how far two retrains differ: the noise around the gap's target.
    #[arg(long, value_delimiter = ',')]
    retrain_seeds: Vec<u64>,
    /// Background refit: carry the stale trainer onto the full training graph (its
    /// embeddings, Adam state and rate kept) and report after each of these epoch counts;
    /// a control continues the stale trainer as long on the graph it was trained on.
    #[arg(long, value_delimiter = ',')]
    warm_epochs: Vec<usize>,
    /// Learning rate of the background refit (default: the rate the stale training
    /// ended with).
    #[arg(long)]
    warm_lr: Option<f32>,
    /// Learning-rate (and batch) schedule of both trainings, as `gowalla --schedule`:
    /// `EPOCH:LR[:BATCH],...` (e.g. to train the stale model to convergence).
    #[arg(long, value_delimiter = ',')]
    schedule: Vec<RateSwitch>,
    /// With `--warm-epochs`: this many of the streamed events (the last ones) arrive
    /// while the first refit runs; they are caught up (`Refit::catch_up`) before its
    /// install, and the copy and replay are timed.
    #[arg(long, default_value_t = 0)]
    during_refit: usize,
    /// Save and reload the refresher's state in this directory (with `--warm-epochs`).
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

/// Saves `refresher`'s state to `dir` (the capture a service does under its lock, then
/// the write, timed apart), loads it back, and checks the restored live model equals
/// `live`.
fn save_and_restore(
    label: &str,
    refresher: &Refresher,
    live: &LiveModel,
    dir: &std::path::Path,
    through_seq: u64,
    device: &Selection,
) -> anyhow::Result<()> {
    let t = Instant::now();
    let state = refresher.state(live, through_seq)?;
    let capture_ms = t.elapsed().as_secs_f64() * 1e3;
    let before = dir_files(dir)?;
    let t = Instant::now();
    state.write(dir)?;
    let write_s = t.elapsed().as_secs_f64();
    // What this save wrote: the files it added and the refresher file it replaced.
    let after = dir_files(dir)?;
    let written: u64 = after
        .iter()
        .filter(|(name, _)| {
            name == "refresher.safetensors" || !before.iter().any(|(b, _)| b == name)
        })
        .map(|(_, len)| len)
        .sum();
    let dir_bytes: u64 = after.iter().map(|(_, len)| len).sum();
    let t = Instant::now();
    let restored = Refresher::load(dir, device, *live.config(), live.aggregator().cloned())?
        .context("the state just saved is not there")?;
    let load_s = t.elapsed().as_secs_f64();
    let same = restored.live.users() == live.users()
        && restored.live.items() == live.items()
        && restored.refresher.pending().eq(refresher.pending())
        && (0..live.n_users() as u32).all(|u| {
            let u = UserId(u);
            restored.live.hidden(u) == live.hidden(u) && restored.live.recent(u).eq(live.recent(u))
        });
    anyhow::ensure!(
        same,
        "{label}: the restored live model differs from the served one"
    );
    println!(
        "state={label} pending={} recorded_events={} written_bytes={written} dir_bytes={dir_bytes} capture_ms={capture_ms:.1} write_s={write_s:.2} load_s={load_s:.2} restored_equal=true",
        refresher.pending_len(),
        state.recorded_events()
    );
    Ok(())
}

/// Names and sizes of the files in `dir` (none when it does not exist yet).
fn dir_files(dir: &std::path::Path) -> anyhow::Result<Vec<(String, u64)>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        files.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.metadata()?.len(),
        ));
    }
    Ok(files)
}

fn train(
    graph: &BipartiteGraph,
    config: &LightGcnConfig,
    epochs: usize,
    schedule: &[RateSwitch],
    label: &str,
    device: &Selection,
) -> anyhow::Result<Training> {
    let start = Instant::now();
    let mut fit = Training::new(graph, config, device)?;
    for e in 1..=epochs {
        fit.apply_due(schedule)?;
        let s = fit.train_epoch(|_, _| {})?;
        eprintln!(
            "  {label} epoch {e}: loss {:.5} ({:.2} s)",
            s.loss, s.seconds
        );
    }
    println!(
        "{label}_train_s={:.1} device=\"{}\"",
        start.elapsed().as_secs_f64(),
        device.reason()
    );
    Ok(fit)
}

/// Every event of `stream` through `observe` as a click; the mean microseconds per event.
fn stream_into(live: &mut LiveModel, stream: &[(UserId, ItemId)]) -> anyhow::Result<f64> {
    let t = Instant::now();
    for &(u, i) in stream {
        live.observe(u, i, InteractionKind::Click, 1)?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e6 / stream.len().max(1) as f64)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let device = args.device.select()?;
    let train_lines = read_lightgcn(&args.data.join("train.txt")).context("train.txt")?;
    let data = Dataset::load_lightgcn(&args.data).context("loading the dataset")?;
    let (nu, ni) = (data.n_users(), data.n_items());
    let mut rng = Rng::new(args.seed);
    let mut kept = Vec::new();
    let mut stream = Vec::new();
    let mut affected = vec![false; nu];
    for (u, items) in &train_lines.lines {
        let hide = (rng.unit() as f64) < args.users && items.len() >= 5;
        let cut = if hide {
            items.len() - ((items.len() as f64 * args.tail).round() as usize).max(1)
        } else {
            items.len()
        };
        affected[*u as usize] = hide;
        kept.extend(items[..cut].iter().map(|&i| (UserId(*u), ItemId(i))));
        stream.extend(items[cut..].iter().map(|&i| (UserId(*u), ItemId(i))));
    }
    let kept = BipartiteGraph::from_edges(nu, ni, kept)?;
    let full = &data.train;
    // The test set of the affected users, and of the others.
    let test_of = |want: bool| {
        BipartiteGraph::from_edges(
            nu,
            ni,
            (0..nu as u32)
                .filter(|&u| affected[u as usize] == want)
                .flat_map(|u| {
                    data.test
                        .items_of(UserId(u))
                        .iter()
                        .map(move |&i| (UserId(u), ItemId(i)))
                })
                .collect::<Vec<_>>(),
        )
    };
    let test_affected = test_of(true)?;
    let test_unaffected = test_of(false)?;
    println!(
        "users={nu} items={ni} kept={} streamed={} affected_users={}",
        kept.n_edges(),
        stream.len(),
        affected.iter().filter(|a| **a).count()
    );
    let config = LightGcnConfig::new()
        .dim(args.dim)
        .layers(3)
        .batch_size(args.batch)
        .lr(args.lr)
        .seed(args.seed);
    let report = |label: &str, users: &[f32], items: &[f32]| -> anyhow::Result<(f64, f64)> {
        let all = evaluate(users, items, args.dim, full, &data.test, &[20])?[0];
        let aff = evaluate(users, items, args.dim, full, &test_affected, &[20])?[0];
        let rest = evaluate(users, items, args.dim, full, &test_unaffected, &[20])?[0];
        println!(
            "model={label} recall@20={:.4} ndcg@20={:.4} affected_recall@20={:.4} affected_ndcg@20={:.4} unaffected_recall@20={:.4} unaffected_ndcg@20={:.4}",
            all.recall, all.ndcg, aff.recall, aff.ndcg, rest.recall, rest.ndcg
        );
        Ok((all.recall, aff.recall))
    };
    let mut stale_fit = train(
        &kept,
        &config,
        args.epochs,
        &args.schedule,
        "stale",
        &device,
    )?;
    let stale = stale_fit.model()?;
    let base_live = LiveModel::new(stale, &kept, LiveConfig::new(), 0)?;
    let mut live = base_live.clone();
    let (s_all, s_aff) = report("stale", live.users(), live.items())?;
    let per = stream_into(&mut live, &stream)?;
    println!("streamed={} observe_mean_us={per:.2}", stream.len());
    let (m_all, m_aff) = report("streamed", live.users(), live.items())?;
    let mut refits = Vec::new();
    let mut configs = Vec::new();
    if args.item_updates {
        configs.push((
            "streamed_items".to_string(),
            LiveConfig::new().item_updates(true),
        ));
    }
    let combos = args
        .refit_negatives
        .iter()
        .flat_map(|&n| args.refit_lrs.iter().map(move |&lr| (n, lr)));
    for (negatives, lr) in combos.filter(|_| args.refit_steps > 0) {
        let config = LiveConfig::new()
            .refit(args.refit_steps, lr)
            .refit_negatives(negatives);
        let label = if negatives == 1 {
            format!("streamed_refit_steps{}_lr{lr}", args.refit_steps)
        } else {
            format!(
                "streamed_refit_steps{}_lr{lr}_neg{negatives}",
                args.refit_steps
            )
        };
        if args.item_updates {
            configs.push((format!("{label}_items"), config.item_updates(true)));
        }
        configs.push((label, config));
    }
    for (label, config) in configs {
        let mut live = LiveModel::new(stale, &kept, config, 0)?;
        let per = stream_into(&mut live, &stream)?;
        println!("model={label} observe_mean_us={per:.2}");
        let (a, f) = report(&label, live.users(), live.items())?;
        refits.push((label, a, f));
    }
    let mut warm_epochs = args.warm_epochs.clone();
    warm_epochs.sort_unstable();
    warm_epochs.dedup();
    if warm_epochs.last().is_some_and(|&e| e > 0) {
        // The control: the stale trainer continued without the streamed interactions.
        let mut control = stale_fit.regraph(&kept)?;
        if let Some(lr) = args.warm_lr {
            control.set_lr(lr)?;
        }
        let mut seconds = 0.0;
        for e in 1..=warm_epochs[warm_epochs.len() - 1] {
            seconds += control.train_epoch(|_, _| {})?.seconds;
            if warm_epochs.contains(&e) {
                let label = format!("control_epochs{e}");
                println!("model={label} refit_s={seconds:.1}");
                let e = control.model()?.propagate()?;
                let (a, f) = report(&label, e.users(), e.items())?;
                refits.push((label, a, f));
            }
        }
        drop(control);
        // The background refit as a service runs it: the stream goes through a
        // `Refresher`, whose refits (the steps between the listed epochs, each one
        // installed) continue the stale trainer on the grown graph.
        let mut refresher = Refresher::new(stale_fit.regraph(&kept)?, kept.clone())?;
        let mut live = base_live.clone();
        let click = |&(user, item): &(UserId, ItemId)| Interaction {
            user,
            item,
            kind: InteractionKind::Click,
            weight: 1.0,
            timestamp: 1,
        };
        // The last `--during-refit` events arrive while the first refit runs.
        let during = args.during_refit.min(stream.len());
        let (before, mut later) = stream.split_at(stream.len() - during);
        for p in before {
            refresher.observe(&mut live, click(p))?;
        }
        if let Some(dir) = &args.state_dir {
            // Without a journal, an event's seq is its position in the stream.
            save_and_restore(
                "streamed",
                &refresher,
                &live,
                dir,
                before.len() as u64,
                &device,
            )?;
        }
        let (mut done, mut seconds) = (0, 0.0);
        for &e in warm_epochs.iter().filter(|&&e| e > 0) {
            let t = Instant::now();
            let mut job = refresher.plan(&live, e - done)?;
            let plan_ms = t.elapsed().as_secs_f64() * 1e3;
            if let Some(lr) = args.warm_lr {
                job = job.lr(lr);
            }
            let mut refit = job.run(|_| {})?;
            seconds += refit.seconds();
            if !later.is_empty() {
                for p in later {
                    refresher.observe(&mut live, click(p))?;
                }
                let t = Instant::now();
                let copy = refresher.catch_up(&refit, &live)?;
                let copy_ms = t.elapsed().as_secs_f64() * 1e3;
                let t = Instant::now();
                refit = refit.catch_up(copy)?;
                let replay_ms = t.elapsed().as_secs_f64() * 1e3;
                println!(
                    "during_refit={} catch_up_copy_ms={copy_ms:.2} catch_up_replay_ms={replay_ms:.2}",
                    later.len()
                );
                later = &[];
            }
            let t = Instant::now();
            let (installed, replaced) = refresher.install(refit, &mut live)?;
            let install_ms = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            drop(replaced);
            let drop_ms = t.elapsed().as_secs_f64() * 1e3;
            done = e;
            let label = format!("warm_refit_epochs{e}");
            println!(
                "model={label} refit_s={seconds:.1} plan_ms={plan_ms:.2} install_ms={install_ms:.2} install_replayed={} drop_replaced_ms={drop_ms:.2} graph_edges={}",
                installed.replayed, installed.edges
            );
            let (a, f) = report(&label, live.users(), live.items())?;
            refits.push((label, a, f));
        }
        if let Some(dir) = &args.state_dir {
            save_and_restore(
                "refitted",
                &refresher,
                &live,
                dir,
                stream.len() as u64,
                &device,
            )?;
            // A later save of the same model rewrites the refresher file only: 1000 more
            // clicks (repeats of the stream's first pairs).
            let more = stream.len().min(1000);
            for p in &stream[..more] {
                let again = Interaction {
                    timestamp: 2,
                    ..click(p)
                };
                refresher.observe(&mut live, again)?;
            }
            save_and_restore(
                "incremental",
                &refresher,
                &live,
                dir,
                (stream.len() + more) as u64,
                &device,
            )?;
        }
    }
    let retrained = train(
        full,
        &config,
        args.epochs,
        &args.schedule,
        "retrained",
        &device,
    )?
    .into_model()?;
    let e = retrained.propagate()?;
    let (r_all, r_aff) = report("retrained", e.users(), e.items())?;
    for &seed in &args.retrain_seeds {
        let label = format!("retrained_seed{seed}");
        let other = train(
            full,
            &config.clone().seed(seed),
            args.epochs,
            &args.schedule,
            &label,
            &device,
        )?
        .into_model()?;
        let e = other.propagate()?;
        let (a, f) = report(&label, e.users(), e.items())?;
        println!(
            "model={label} minus_retrained_all={:+.4} minus_retrained_affected={:+.4}",
            a - r_all,
            f - r_aff
        );
    }
    let rec = |s: f64, m: f64, r: f64| {
        if r != s {
            100.0 * (m - s) / (r - s)
        } else {
            f64::NAN
        }
    };
    println!(
        "gap_recovered_all={:.0}% gap_recovered_affected={:.0}%",
        rec(s_all, m_all, r_all),
        rec(s_aff, m_aff, r_aff)
    );
    for (label, a, f) in refits {
        println!(
            "model={label} gap_recovered_all={:.0}% gap_recovered_affected={:.0}%",
            rec(s_all, a, r_all),
            rec(s_aff, f, r_aff)
        );
    }
    Ok(())
}
