//! The item side of the live model: trained items folding their users in
//! ([`LiveConfig::item_updates`]), items added live with a provisional or content-based
//! embedding ([`LiveModel::add_item_with_content`]), and the content aggregator.

use super::*;

impl LiveModel {
    /// Folds user `u` (event weight `w`) into trained item `i`: `S_i += w g_u`, and for
    /// a positive event `D_i += w` (its count was already raised). A user added live has
    /// no trained layers: `g_u ≈ K e_u / √C_u`, as for items added live.
    pub(super) fn update_trained_item(&mut self, i: usize, u: usize, w: f32, positive: bool) {
        let d = self.dim;
        if u < self.n_trained_users {
            for c in 0..d {
                self.item_sum[i * d + c] += w * self.user_fold[u * d + c];
            }
        } else {
            let g = w * self.layers as f32 / (self.user_count[u].max(1) as f32).sqrt();
            for c in 0..d {
                self.item_sum[i * d + c] += g * self.user_final[u * d + c];
            }
        }
        if positive {
            self.item_mass[i] += w as f64;
        }
        self.refresh_item(i);
    }

    /// Trained item `i`'s final embedding from its ego and its users' fold vectors:
    /// `e_i = (E0_i + √C_i · S_i / D_i) / (K + 1)`, LightGCN's propagation exactly for
    /// an item with no new events.
    pub(super) fn refresh_item(&mut self, i: usize) {
        let d = self.dim;
        let scale = fold_scale(self.item_mass[i], self.item_count[i]);
        let inv = 1.0 / (self.layers + 1) as f64;
        let (ego, sum) = (
            &self.item_ego[i * d..(i + 1) * d],
            &self.item_sum[i * d..(i + 1) * d],
        );
        let out = &mut self.item_final[i * d..(i + 1) * d];
        for c in 0..d {
            out[c] = ((ego[c] as f64 + scale * sum[c] as f64) * inv) as f32;
        }
    }

    /// Adds user `u`'s current embedding (weight `w`) to a live-added item.
    pub(super) fn update_new_item(&mut self, i: usize, u: usize, w: f64) {
        let d = self.dim;
        let j = i - self.n_trained_items;
        let eu = &self.user_final[u * d..(u + 1) * d];
        let sum = &mut self.new_item_sum[j * d..(j + 1) * d];
        sum.iter_mut()
            .zip(eu)
            .for_each(|(s, e)| *s += (w * *e as f64) as f32);
        self.new_item_mass[j] += w;
        // The event is counted in `item_count` after this call.
        if self.embed_content_item(i, self.item_count[i] + 1) {
            return;
        }
        let sum = &self.new_item_sum[j * d..(j + 1) * d];
        let mass = self.new_item_mass[j];
        let count = self.item_count[i] as f64 + 1.0;
        let fold_scale = self.layers as f64 / count.sqrt();
        let finals = self.item_final[i * d..(i + 1) * d].iter_mut();
        let folds = self.item_fold[i * d..(i + 1) * d].iter_mut();
        for ((s, e), f) in sum.iter().zip(finals).zip(folds) {
            *e = (*s as f64 / mass) as f32;
            *f = (*e as f64 * fold_scale) as f32;
        }
    }

    /// Embeds live item `i` from its content and its users so far (`count` positive
    /// events), if it has content and an aggregator is set; false otherwise.
    fn embed_content_item(&mut self, i: usize, count: u32) -> bool {
        let d = self.dim;
        let j = i - self.n_trained_items;
        let (Some(agg), Some(content)) = (&self.aggregator, &self.new_item_content[j]) else {
            return false;
        };
        let mass = self.new_item_mass[j];
        let mean: Option<Vec<f32>> = (mass > 0.0 && count > 0).then(|| {
            self.new_item_sum[j * d..(j + 1) * d]
                .iter()
                .map(|s| (*s as f64 / mass) as f32)
                .collect()
        });
        let e = &mut self.item_final[i * d..(i + 1) * d];
        agg.embed_into(content, mean.as_deref().map(|m| (m, count as usize)), e);
        let rho = agg.fold_ratio().unwrap_or(self.layers as f32);
        let scale = rho / (count.max(1) as f32).sqrt();
        for (f, e) in self.item_fold[i * d..(i + 1) * d].iter_mut().zip(e.iter()) {
            *f = scale * e;
        }
        true
    }

    /// Sets the content aggregator used for items added live with content, and
    /// re-embeds those already added. Its embedding width must be this model's, and its
    /// content width that of any content already given.
    pub fn set_aggregator(&mut self, aggregator: ContentAggregator) -> Result<()> {
        if aggregator.dim() != self.dim {
            return Err(Error::Shape {
                message: format!(
                    "the aggregator embeds into width {}, the model's width is {}",
                    aggregator.dim(),
                    self.dim
                ),
            });
        }
        if let Some(c) = self.new_item_content.iter().flatten().next()
            && c.len() != aggregator.content_dim()
        {
            return Err(Error::Shape {
                message: format!(
                    "live items have content of width {}, the aggregator reads {}",
                    c.len(),
                    aggregator.content_dim()
                ),
            });
        }
        self.aggregator = Some(Arc::new(aggregator));
        for i in self.n_trained_items..self.n_items() {
            self.embed_content_item(i, self.item_count[i]);
        }
        Ok(())
    }

    /// The content aggregator, if one is set.
    pub fn aggregator(&self) -> Option<&ContentAggregator> {
        self.aggregator.as_deref()
    }

    /// Number of items the model was trained on (ids below it keep their trained
    /// embeddings; ids from it up were added live).
    pub fn n_trained_items(&self) -> usize {
        self.n_trained_items
    }

    /// The content of a live-added item, if it was given.
    pub fn item_content(&self, item: ItemId) -> Option<&[f32]> {
        self.shared_item_content(item).map(|c| &**c)
    }

    /// Adds the next item (id [`LiveModel::n_items`]) with its content features and
    /// gives it the aggregator's content-only embedding at once, so it can be retrieved
    /// before anyone has seen it. Needs [`LiveModel::set_aggregator`] first.
    pub fn add_item_with_content(&mut self, content: &[f32]) -> Result<ItemId> {
        let i = self.n_items();
        let id = u32::try_from(i).map_err(|_| Error::Graph {
            message: format!("item id {i} does not fit in 32 bits"),
        })?;
        self.push_item(Some(content.into()))?;
        Ok(ItemId(id))
    }

    /// Gives (or replaces) the content of an item added live — e.g. one that arrived
    /// through [`LiveModel::observe`] before its features — and re-embeds it from the
    /// content and its users so far. Trained items keep their trained embedding: an
    /// error. Needs [`LiveModel::set_aggregator`] first.
    pub fn set_item_content(&mut self, item: ItemId, content: &[f32]) -> Result<()> {
        let i = item.index();
        if i < self.n_trained_items || i >= self.n_items() {
            return Err(Error::Graph {
                message: format!(
                    "item {i} is not an item added live (ids {}..{})",
                    self.n_trained_items,
                    self.n_items()
                ),
            });
        }
        self.check_content(content)?;
        self.new_item_content[i - self.n_trained_items] = Some(content.into());
        self.embed_content_item(i, self.item_count[i]);
        Ok(())
    }

    /// The content aggregator as shared, for a model rebuilt by a refit.
    pub(crate) fn shared_aggregator(&self) -> Option<Arc<ContentAggregator>> {
        self.aggregator.clone()
    }

    /// Shares `aggregator` (one taken from a model of the same width) without
    /// re-embedding: for a model that has no live items yet.
    pub(crate) fn share_aggregator(&mut self, aggregator: Option<Arc<ContentAggregator>>) {
        self.aggregator = aggregator;
    }

    /// A live-added item's content as shared (clone the pointer, not the features).
    pub(crate) fn shared_item_content(&self, item: ItemId) -> Option<&Arc<[f32]>> {
        let j = item.index().checked_sub(self.n_trained_items)?;
        self.new_item_content.get(j)?.as_ref()
    }

    /// Appends the next item as a live item, with `content` if it has some (which
    /// needs the aggregator), sharing it.
    pub(crate) fn push_item(&mut self, content: Option<Arc<[f32]>>) -> Result<()> {
        if let Some(c) = &content {
            self.check_content(c)?;
        }
        let i = self.n_items();
        self.add_item();
        if let Some(c) = content {
            self.new_item_content[i - self.n_trained_items] = Some(c);
            self.embed_content_item(i, 0);
        }
        Ok(())
    }

    fn check_content(&self, content: &[f32]) -> Result<()> {
        match &self.aggregator {
            Some(agg) => agg.check_content(content),
            None => Err(Error::Config {
                message: "no content aggregator is set (LiveModel::set_aggregator)".into(),
            }),
        }
    }

    /// Appends live items until the model has `n`, each with the content `content_of`
    /// gives it.
    pub(crate) fn add_items_up_to(
        &mut self,
        n: usize,
        content_of: impl Fn(ItemId) -> Option<Arc<[f32]>>,
    ) -> Result<()> {
        while self.n_items() < n {
            let id = ItemId(self.n_items() as u32);
            self.push_item(content_of(id))?;
        }
        Ok(())
    }
}
