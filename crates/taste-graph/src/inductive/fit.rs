//! Fitting the aggregator: regression of the trained items' final embeddings on their
//! content and a random subset of their users (neighbour dropout), hand-written
//! gradients summed over fixed chunks in parallel (deterministic whatever the thread
//! count), validation-based epoch choice, and the fold ratio.

use super::*;

/// Fisher–Yates shuffle.
fn shuffle(v: &mut [u32], rng: &mut StdRng) {
    for k in (1..v.len()).rev() {
        let r = rng.random_range(0..=k);
        v.swap(k, r);
    }
}

/// Draws the neighbour input of training examples.
struct Sampler<'a> {
    graph: &'a BipartiteGraph,
    users: &'a [f32],
    dim: usize,
}

impl Sampler<'_> {
    /// With probability `dropout` no neighbours (returns 0, `mean` zeroed); otherwise
    /// the mean of a uniformly random subset of item `i`'s users, of a size uniform in
    /// `1..=n`, written to `mean`; returns the subset size. `i` must have users.
    fn draw(
        &self,
        i: u32,
        dropout: f32,
        rng: &mut StdRng,
        pool: &mut Vec<u32>,
        mean: &mut [f32],
    ) -> usize {
        let d = self.dim;
        mean.fill(0.0);
        let nbrs = self.graph.users_of(ItemId(i));
        if nbrs.is_empty() || rng.random::<f32>() < dropout {
            return 0;
        }
        let k = rng.random_range(1..=nbrs.len());
        pool.clear();
        pool.extend_from_slice(nbrs);
        for j in 0..k {
            let r = rng.random_range(j..pool.len());
            pool.swap(j, r);
            let u = pool[j] as usize;
            mean.iter_mut()
                .zip(&self.users[u * d..(u + 1) * d])
                .for_each(|(m, x)| *m += x);
        }
        let inv = 1.0 / k as f32;
        mean.iter_mut().for_each(|x| *x *= inv);
        k
    }
}

impl ContentAggregator {
    /// The loss `Σ ‖h − t‖² / (B d)` of a batch of `B` examples and its gradient with
    /// respect to [`ContentAggregator::params`] (same layout), without changing the
    /// network.
    pub fn loss_and_grad(&self, batch: &[Example<'_>]) -> Result<(f64, Vec<f32>)> {
        if batch.is_empty() {
            return Err(Error::Shape {
                message: "empty batch".into(),
            });
        }
        for ex in batch {
            self.check_content(ex.content)?;
            if let Some(n) = &ex.neighbours {
                self.check_neighbours(n)?;
            }
            if ex.target.len() != self.dim {
                return Err(Error::Shape {
                    message: format!(
                        "target has {} values, the aggregator expects {}",
                        ex.target.len(),
                        self.dim
                    ),
                });
            }
            if let Some(k) = ex.target.iter().position(|x| !x.is_finite()) {
                return Err(non_finite(format!("target value {k} is {}", ex.target[k])));
            }
        }
        Ok(self.loss_and_grad_unchecked(batch))
    }

    /// [`ContentAggregator::loss_and_grad`] on validated examples: chunks of [`CHUNK`]
    /// examples in parallel, summed in order.
    fn loss_and_grad_unchecked(&self, batch: &[Example<'_>]) -> (f64, Vec<f32>) {
        let scale = 1.0 / (batch.len() * self.dim) as f32;
        let parts: Vec<(f64, Vec<f32>)> = batch
            .par_chunks(CHUNK)
            .map(|chunk| {
                let mut g = vec![0f32; self.params.len()];
                let loss = self.accumulate(chunk, scale, &mut g);
                (loss, g)
            })
            .collect();
        let mut parts = parts.into_iter();
        let (mut loss, mut grad) = parts.next().unwrap_or_default();
        for (l, g) in parts {
            loss += l;
            grad.iter_mut().zip(&g).for_each(|(a, b)| *a += b);
        }
        (loss, grad)
    }

    /// Adds the gradient of `scale · Σ ‖h − t‖²` over `chunk` into `g`; returns that loss.
    fn accumulate(&self, chunk: &[Example<'_>], scale: f32, g: &mut [f32]) -> f64 {
        let (nin, hid, d) = (self.input_dim(), self.hidden, self.dim);
        let (ob1, ow2, ob2) = (self.off_b1(), self.off_w2(), self.off_b2());
        let w2 = &self.params[ow2..ob2];
        let mut z = vec![0f32; nin];
        let mut a = vec![0f32; hid];
        let mut h = vec![0f32; d];
        let mut dh = vec![0f32; d];
        let mut da = vec![0f32; hid];
        let mut loss = 0.0f64;
        for ex in chunk {
            self.input(ex.content, ex.neighbours.map(|n| (n.mean, n.count)), &mut z);
            self.forward(&z, &mut a, &mut h);
            for o in 0..d {
                let r = h[o] - ex.target[o];
                loss += (scale * r * r) as f64;
                dh[o] = 2.0 * scale * r;
            }
            // Output layer: dW2 = dh ⊗ relu(a), db2 = dh, d relu(a) = W2ᵀ dh.
            da.fill(0.0);
            for o in 0..d {
                let go = dh[o];
                g[ob2 + o] += go;
                let gw = &mut g[ow2 + o * hid..ow2 + (o + 1) * hid];
                let w = &w2[o * hid..(o + 1) * hid];
                for j in 0..hid {
                    if a[j] > 0.0 {
                        gw[j] += go * a[j];
                        da[j] += go * w[j];
                    }
                }
            }
            // Hidden layer: dW1 = da ⊗ z, db1 = da (da is zero where relu was off).
            for j in 0..hid {
                let gj = da[j];
                if gj != 0.0 {
                    g[ob1 + j] += gj;
                    g[j * nin..(j + 1) * nin]
                        .iter_mut()
                        .zip(&z)
                        .for_each(|(gw, x)| *gw += gj * x);
                }
            }
        }
        loss
    }

    /// Fits a network on the trained items of `model` (over `graph`): the target of item
    /// `i` is its final LightGCN embedding, its content is row `i` of `content`
    /// (`n_items × content_dim`), its neighbours are its users in `graph` (their final
    /// embeddings), seen through neighbour dropout. Items without interactions are left
    /// out. Also fits the fold ratio `ρ`.
    pub fn fit(
        model: &LightGcn,
        graph: &BipartiteGraph,
        content: &[f32],
        content_dim: usize,
        config: &AggregatorConfig,
    ) -> Result<(Self, FitReport)> {
        let start = Instant::now();
        config.validate()?;
        let (nu, ni, d) = (model.n_users(), model.n_items(), model.dim());
        if graph.n_users() != nu || graph.n_items() != ni {
            return Err(Error::Graph {
                message: format!(
                    "the graph has {} users and {} items, the model {nu} and {ni}",
                    graph.n_users(),
                    graph.n_items()
                ),
            });
        }
        if content_dim == 0 || content.len() != ni * content_dim {
            return Err(Error::Shape {
                message: format!(
                    "content has {} values, expected {ni} items x {content_dim}",
                    content.len()
                ),
            });
        }
        if let Some(k) = content.iter().position(|x| !x.is_finite()) {
            return Err(non_finite(format!(
                "content of item {} feature {} is {}",
                k / content_dim,
                k % content_dim,
                content[k]
            )));
        }
        let mut items: Vec<u32> = (0..ni as u32)
            .filter(|&i| !graph.users_of(ItemId(i)).is_empty())
            .collect();
        if items.is_empty() {
            return Err(Error::Graph {
                message: "no trained item has an interaction to learn from".into(),
            });
        }
        let (emb, partial) = model.propagate_with_partial()?;
        let (users, targets) = (emb.users(), emb.items());
        let partial = &partial[nu * d..];
        let c = content_dim;
        let mut agg = ContentAggregator::new(c, d, config)?;
        let mut rng = StdRng::seed_from_u64(config.seed ^ 0x1ADC_7E5A_6E00_0002);

        // Validation split (for choosing the epoch): a random `validation` share of
        // the items, if that leaves items on both sides.
        shuffle(&mut items, &mut rng);
        let n_val = (items.len() as f64 * config.validation as f64).floor() as usize;
        let n_val = if n_val == items.len() { 0 } else { n_val };
        let val_items = items.split_off(items.len() - n_val);
        items.sort_unstable();

        // Content standardisation and output bias from the training items.
        let n = items.len() as f64;
        let (mut mu, mut sq) = (vec![0f64; c], vec![0f64; c]);
        let mut tmean = vec![0f64; d];
        for &i in &items {
            let i = i as usize;
            for k in 0..c {
                let x = content[i * c + k] as f64;
                mu[k] += x;
                sq[k] += x * x;
            }
            for (t, &x) in tmean.iter_mut().zip(&targets[i * d..(i + 1) * d]) {
                *t += x as f64;
            }
        }
        for k in 0..c {
            let m = mu[k] / n;
            let var = (sq[k] / n - m * m).max(0.0);
            agg.mean[k] = m as f32;
            agg.scale[k] = if var > 1e-12 {
                (1.0 / var.sqrt()) as f32
            } else {
                1.0
            };
        }
        let ob2 = agg.off_b2();
        for (b, t) in agg.params[ob2..].iter_mut().zip(&tmean) {
            *b = (t / n) as f32;
        }
        let mut baseline = 0.0;
        for &i in &items {
            let t = &targets[i as usize * d..(i as usize + 1) * d];
            for (x, m) in t.iter().zip(&tmean) {
                let r = *x as f64 - m / n;
                baseline += r * r;
            }
        }
        let baseline_loss = baseline / (n * d as f64);

        // Fold ratio: least squares of the partial sums P_i on the final embeddings t_i.
        let (mut pt, mut tt, mut pp) = (0f64, 0f64, 0f64);
        for &i in items.iter().chain(&val_items) {
            let r = i as usize * d..(i as usize + 1) * d;
            for (&p, &t) in partial[r.clone()].iter().zip(&targets[r]) {
                pt += p as f64 * t as f64;
                tt += t as f64 * t as f64;
                pp += p as f64 * p as f64;
            }
        }
        let rho = if tt > 0.0 {
            pt / tt
        } else {
            model.layers() as f64
        };
        let fold_residual = if pp > 0.0 {
            ((pp - 2.0 * rho * pt + rho * rho * tt) / pp).max(0.0)
        } else {
            0.0
        };
        agg.fold_ratio = Some(rho as f32);

        let sampler = Sampler {
            graph,
            users,
            dim: d,
        };
        // Fixed validation examples: each item once without neighbours and once with a
        // random subset of them.
        let mut pool: Vec<u32> = Vec::new();
        let mut val_means = vec![0f32; n_val * d];
        let mut val_counts = vec![0usize; n_val];
        for (v, &i) in val_items.iter().enumerate() {
            val_counts[v] = sampler.draw(
                i,
                0.0,
                &mut rng,
                &mut pool,
                &mut val_means[v * d..(v + 1) * d],
            );
        }
        let val_examples: Vec<Example<'_>> = val_items
            .iter()
            .enumerate()
            .flat_map(|(v, &i)| {
                let base = Example {
                    content: row(content, i, c),
                    neighbours: None,
                    target: row(targets, i, d),
                };
                let with = Example {
                    neighbours: Some(Neighbours {
                        mean: &val_means[v * d..(v + 1) * d],
                        count: val_counts[v],
                    }),
                    ..base
                };
                [base, with]
            })
            .collect();

        // Training; the parameters of the epoch with the least validation loss are kept.
        let mut adam = AdamState::new(config.adam, agg.params.len())?;
        let mut order = items.clone();
        let bs = config.batch_size.min(items.len());
        let mut means = vec![0f32; bs * d];
        let mut counts = vec![0usize; bs];
        let mut epoch_loss = Vec::with_capacity(config.epochs);
        let mut validation_loss = Vec::new();
        let mut best: Option<(f64, usize, Vec<f32>)> = None;
        for epoch in 0..config.epochs {
            shuffle(&mut order, &mut rng);
            let (mut total, mut batches) = (0.0, 0usize);
            for batch in order.chunks(bs) {
                for (b, &i) in batch.iter().enumerate() {
                    counts[b] = sampler.draw(
                        i,
                        config.neighbour_dropout,
                        &mut rng,
                        &mut pool,
                        &mut means[b * d..(b + 1) * d],
                    );
                }
                let examples: Vec<Example<'_>> = batch
                    .iter()
                    .enumerate()
                    .map(|(b, &i)| Example {
                        content: row(content, i, c),
                        neighbours: (counts[b] > 0).then(|| Neighbours {
                            mean: &means[b * d..(b + 1) * d],
                            count: counts[b],
                        }),
                        target: row(targets, i, d),
                    })
                    .collect();
                let (loss, grad) = agg.loss_and_grad_unchecked(&examples);
                adam.step(&mut agg.params, &grad)?;
                total += loss;
                batches += 1;
            }
            epoch_loss.push(total / batches.max(1) as f64);
            if !val_examples.is_empty() {
                let loss = agg.loss_and_grad_unchecked(&val_examples).0;
                validation_loss.push(loss);
                if best.as_ref().is_none_or(|b| loss < b.0) {
                    best = Some((loss, epoch + 1, agg.params.clone()));
                }
            }
        }
        let best_epoch = match best {
            Some((_, epoch, params)) => {
                agg.params = params;
                epoch
            }
            None => config.epochs,
        };
        if let Some(k) = agg.params.iter().position(|x| !x.is_finite()) {
            return Err(non_finite(format!(
                "training diverged: parameter {k} is {} (lower the learning rate)",
                agg.params[k]
            )));
        }
        let report = FitReport {
            items: items.len(),
            validation_items: n_val,
            epoch_loss,
            validation_loss,
            best_epoch,
            baseline_loss,
            fold_ratio: rho as f32,
            fold_residual,
            seconds: start.elapsed().as_secs_f64(),
        };
        Ok((agg, report))
    }
}
