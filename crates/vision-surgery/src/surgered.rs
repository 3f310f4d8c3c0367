//! The surgered model: a Qwen3-VL checkpoint loaded without its vision tower, a
//! tokenizer, and an embedding adapter; `generate`, `score` and `save_surgered`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};

use mosaic_durability::replace_file;

use crate::adapter::{EmbeddingAdapter, RawView};
use crate::chat_template::ChatTemplate;
use crate::checkpoint::{
    ADAPTER_FILE, CONFIG_FILE, Checkpoint, CheckpointFiles, ModelSource, WEIGHTS_FILE,
    WEIGHTS_INDEX_FILE,
};
use crate::config::Qwen3VlConfig;
use crate::decoder::is_visual_tensor;
use crate::error::{Error, Result};
use crate::generation_config::{GENERATION_CONFIG_FILE, GenerationConfig};
use crate::hub::ProgressFn;
use crate::model::{LogitsScope, SequenceInput, TextModel};
use crate::prompt::{Prompt, PromptTokenizer};
use crate::quant::{QuantizedLayers, WeightFormat};
use crate::sampling::{GenerateOptions, Sampler};
use crate::weights::{Weights, read_header};

/// How to load a checkpoint.
#[derive(Clone)]
pub struct LoadOptions {
    /// Compute dtype of the decoder (f32, bf16 or f16); `None` takes the checkpoint's
    /// (`text_config.dtype`, bf16 for the releases) where the device runs it, else f32.
    pub dtype: Option<DType>,
    /// Device the weights go to.
    pub device: Device,
    /// An adapter file to attach (overrides one shipped in the checkpoint).
    pub adapter: Option<PathBuf>,
    /// Called as hub downloads progress.
    pub progress: Option<ProgressFn>,
    /// How the decoder's projections and output head hold their weights (quantized
    /// at load time; see [`crate::quant`]).
    pub weights: WeightFormat,
}

impl fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadOptions")
            .field("dtype", &self.dtype)
            .field("device", &self.device)
            .field("adapter", &self.adapter)
            .field("progress", &self.progress.is_some())
            .field("weights", &self.weights)
            .finish()
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: None,
            device: Device::Cpu,
            adapter: None,
            progress: None,
            weights: WeightFormat::Dense,
        }
    }
}

impl LoadOptions {
    /// Set the compute dtype.
    pub fn dtype(mut self, dtype: DType) -> Self {
        self.dtype = Some(dtype);
        self
    }
    /// Set the device.
    pub fn device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }
    /// Attach the adapter at `path`.
    pub fn adapter(mut self, path: impl Into<PathBuf>) -> Self {
        self.adapter = Some(path.into());
        self
    }
    /// Report hub download progress to `f`.
    pub fn progress(mut self, f: ProgressFn) -> Self {
        self.progress = Some(f);
        self
    }
    /// Hold the decoder's projections and head in `format`.
    pub fn weights(mut self, format: WeightFormat) -> Self {
        self.weights = format;
        self
    }
}

/// What loading in surgery mode kept and what it left unread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SurgeryReport {
    /// Decoder tensors read.
    pub loaded_tensors: usize,
    /// Their parameters.
    pub loaded_parameters: u64,
    /// Their bytes on disk.
    pub loaded_bytes: u64,
    /// Vision-tower tensors skipped (never read).
    pub skipped_tensors: usize,
    /// Parameters of the skipped tensors whose size is known from a readable header.
    pub skipped_parameters: u64,
    /// Bytes of the skipped tensors whose size is known from a readable header.
    pub skipped_bytes: u64,
    /// Skipped tensors listed by the shard index whose shard is absent or unreadable,
    /// so their size is unknown.
    pub skipped_unsized: Vec<String>,
    /// Shards never downloaded nor opened because they hold only vision-tower tensors.
    pub skipped_shards: Vec<PathBuf>,
    /// Their bytes, where known (the hub's listing, or the files on disk).
    pub skipped_shard_bytes: u64,
    /// The hub commit the checkpoint was loaded from (`None` for a local directory).
    pub commit: Option<String>,
    /// Non-vision tensors present but not used by the decoder.
    pub unused_tensors: Vec<String>,
    /// Vision-tower tensors whose bytes were read: always empty (checked by the tests).
    pub vision_tensors_read: Vec<String>,
    /// The format the decoder's projections were asked in.
    pub weight_format: WeightFormat,
    /// How they are held (a projection whose width does not fit the format's block
    /// stays dense).
    pub projections: QuantizedLayers,
}

fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", U[i])
    }
}

impl fmt::Display for SurgeryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "removed vision tower: {} tensors, {} parameters, {} ({} bytes)",
            self.skipped_tensors,
            self.skipped_parameters,
            human_bytes(self.skipped_bytes),
            self.skipped_bytes
        )?;
        if !self.skipped_unsized.is_empty() {
            writeln!(
                f,
                "  of which {} tensors sit in absent or unreadable shards (size unknown)",
                self.skipped_unsized.len()
            )?;
        }
        for s in &self.skipped_shards {
            writeln!(f, "  shard never downloaded nor opened: {}", s.display())?;
        }
        if self.skipped_shard_bytes > 0 {
            writeln!(
                f,
                "  bytes never downloaded nor read: {} ({} bytes)",
                human_bytes(self.skipped_shard_bytes),
                self.skipped_shard_bytes
            )?;
        }
        if let Some(c) = &self.commit {
            writeln!(f, "hub commit: {c}")?;
        }
        writeln!(
            f,
            "kept text decoder: {} tensors, {} parameters, {} ({} bytes)",
            self.loaded_tensors,
            self.loaded_parameters,
            human_bytes(self.loaded_bytes),
            self.loaded_bytes
        )?;
        if !self.unused_tensors.is_empty() {
            writeln!(
                f,
                "  {} other tensors present but unused",
                self.unused_tensors.len()
            )?;
        }
        if self.weight_format != WeightFormat::Dense {
            let p = &self.projections;
            writeln!(
                f,
                "projections in {}: {} quantized, {} left dense, {} held",
                self.weight_format,
                p.quantized,
                p.dense,
                human_bytes(p.bytes as u64)
            )?;
        }
        write!(
            f,
            "vision-tower tensors read: {}",
            self.vision_tensors_read.len()
        )
    }
}

pub use crate::model::ContinuationScore;

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was produced (not included in the output).
    Stop(u32),
    /// `max_tokens` were produced.
    MaxTokens,
}

/// The result of [`SurgeredModel::generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Decoded text (special tokens dropped).
    pub text: String,
    /// Generated ids, stop token excluded.
    pub tokens: Vec<u32>,
    /// Why it stopped.
    pub finish: FinishReason,
    /// Length of the prompt in tokens (placeholders included).
    pub prompt_tokens: usize,
}

/// Options of [`SurgeredModel::save_surgered`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveOptions {
    /// Largest shard; more data is split into `model-0000i-of-0000n.safetensors`.
    pub max_shard_bytes: u64,
}

impl Default for SaveOptions {
    fn default() -> Self {
        Self {
            max_shard_bytes: 4 << 30,
        }
    }
}

/// What [`SurgeredModel::save_surgered`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedCheckpoint {
    /// Output directory.
    pub dir: PathBuf,
    /// Weight files written.
    pub shards: Vec<PathBuf>,
    /// Tensors written.
    pub tensors: usize,
    /// Bytes of tensor data written.
    pub bytes: u64,
}

/// Qwen3-VL without its vision tower, fed by an [`EmbeddingAdapter`].
pub struct SurgeredModel {
    files: CheckpointFiles,
    config: Qwen3VlConfig,
    weights: Weights,
    model: TextModel,
    tokenizer: Option<PromptTokenizer>,
    generation: GenerationConfig,
    adapter: Option<EmbeddingAdapter>,
    /// An adapter file given in [`LoadOptions::adapter`] (an input beside `files`).
    adapter_file: Option<PathBuf>,
    report: SurgeryReport,
}

impl fmt::Debug for SurgeredModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SurgeredModel")
            .field("source", &self.files.source)
            .field("adapter", &self.adapter.as_ref().map(|a| a.spec()))
            .finish()
    }
}

impl SurgeredModel {
    /// Load from a directory path or a hub id (`org/name[@revision]`).
    pub fn load(spec: &str, opts: &LoadOptions) -> Result<Self> {
        Self::load_source(&ModelSource::parse(spec), opts)
    }

    /// Load `source` in surgery mode: no `model.visual.*` tensor is read, and shards
    /// holding only vision tensors are never opened.
    pub fn load_source(source: &ModelSource, opts: &LoadOptions) -> Result<Self> {
        if let Some(d) = opts.dtype {
            check_dtype(d, &opts.device)?;
        }
        let checkpoint = Checkpoint::open(source, opts.progress.clone())?;
        // judged before any weight is fetched: unsupported models cost one small file
        let config = Qwen3VlConfig::from_file(&checkpoint.config_file()?)?;
        let dtype = match opts.dtype {
            Some(d) => d,
            None => default_dtype(&config, &opts.device),
        };
        let files = checkpoint.fetch_files(|n| !is_visual_tensor(n))?;
        let weights = Weights::open(&files.shards)?;
        let model = TextModel::with_format(&config, &weights, dtype, &opts.device, opts.weights)?;
        let mut report = build_report(&weights, &files);
        report.weight_format = opts.weights;
        report.projections = model.decoder().quantized_layers();
        weights.release_pages();
        let tokenizer = load_tokenizer(&files, &config)?;
        let generation = match files
            .side_files
            .iter()
            .find(|p| p.file_name().is_some_and(|n| n == GENERATION_CONFIG_FILE))
        {
            Some(p) => GenerationConfig::from_file(p, config.text.vocab_size)?,
            None => GenerationConfig::default(),
        };
        let adapter_path = opts.adapter.clone().or_else(|| files.adapter.clone());
        let mut me = Self {
            files,
            config,
            weights,
            model,
            tokenizer,
            generation,
            adapter: None,
            adapter_file: opts.adapter.clone(),
            report,
        };
        if let Some(p) = adapter_path {
            me.attach_adapter(EmbeddingAdapter::load(&p, dtype, &opts.device)?)?;
        }
        Ok(me)
    }

    /// The decoder's compute dtype.
    pub fn dtype(&self) -> DType {
        self.model.decoder().dtype()
    }

    /// What the surgery removed and kept.
    pub fn surgery_report(&self) -> &SurgeryReport {
        &self.report
    }

    /// The parsed config.
    pub fn config(&self) -> &Qwen3VlConfig {
        &self.config
    }

    /// The language model.
    pub fn text_model(&self) -> &TextModel {
        &self.model
    }

    /// The tokenizer, when the checkpoint has one.
    pub fn tokenizer(&self) -> Option<&PromptTokenizer> {
        self.tokenizer.as_ref()
    }

    /// The checkpoint's `generation_config.json` (empty when it has none).
    pub fn generation_config(&self) -> &GenerationConfig {
        &self.generation
    }

    /// The checkpoint's decoding defaults as options to override: its sampling settings,
    /// penalties, eos ids and token budget (greedy when it sets none).
    pub fn generate_options(&self) -> GenerateOptions {
        self.generation.options(0)
    }

    /// The attached adapter.
    pub fn adapter(&self) -> Option<&EmbeddingAdapter> {
        self.adapter.as_ref()
    }

    /// Names of every tensor whose bytes were read so far.
    pub fn tensors_read(&self) -> Vec<String> {
        self.weights.read_log()
    }

    /// Attach an adapter after checking it fits the decoder.
    pub fn attach_adapter(&mut self, adapter: EmbeddingAdapter) -> Result<()> {
        adapter.validate_for(self.config.text.hidden_size, self.config.deepstack_levels)?;
        self.adapter = Some(adapter);
        Ok(())
    }

    fn tokenizer_or_err(&self) -> Result<&PromptTokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| Error::Tokenizer {
            message: "the checkpoint has no tokenizer.json".into(),
        })
    }

    /// Token ids of `prompt` and the visual input built from `items` (N, in_dim).
    pub fn prepare(&self, prompt: &Prompt, items: Option<&Tensor>) -> Result<SequenceInput> {
        let tok = self.tokenizer_or_err()?;
        let n = match items {
            Some(t) => t.dims().first().copied().unwrap_or(0),
            None => 0,
        };
        if n == 0 {
            return Ok(SequenceInput {
                ids: tok.encode_prompt(prompt, 0, 0)?,
                visual: None,
            });
        }
        let adapter = self.adapter.as_ref().ok_or_else(|| Error::Embeddings {
            message: format!("{n} items were given but no adapter is attached"),
        })?;
        let items = items.ok_or_else(|| Error::Embeddings {
            message: "missing items".into(),
        })?;
        let visual = adapter.visual_input(items)?;
        Ok(SequenceInput {
            ids: tok.encode_prompt(prompt, n, adapter.spec().tokens_per_item)?,
            visual: Some(visual),
        })
    }

    /// Generate the assistant's answer to `prompt` about `items` (N, in_dim), calling
    /// `on_text` with each new piece of decoded text as it is produced.
    pub fn generate(
        &self,
        prompt: &Prompt,
        items: Option<&Tensor>,
        opts: &GenerateOptions,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        let vocab = self.config.text.vocab_size;
        opts.validate(vocab)?;
        let tok = self.tokenizer_or_err()?;
        let seq = self.prepare(prompt, items)?;
        let prompt_tokens = seq.ids.len();
        let seq_ids = seq.ids.clone();
        let mut stops: BTreeSet<u32> = opts.stop_tokens.iter().copied().collect();
        if opts.default_stops {
            stops.extend(tok.default_stop_tokens());
        }
        let mut cache = self.model.new_cache(prompt_tokens + opts.max_tokens);
        let pre = self
            .model
            .prefill_cached(&[seq], &mut cache, LogitsScope::Last)?;
        let mut logits = pre.logits;
        let mut sampler = Sampler::new(opts.sampling);
        let mut tokens = Vec::new();
        // streaming decodes a short window, not every token so far: `window` is where
        // the last emitted piece's tokens start, `settled` where the unemitted ones start
        let (mut window, mut settled) = (0usize, 0usize);
        let mut finish = FinishReason::MaxTokens;
        let penalized = opts.repetition_penalty != 1.0 || opts.presence_penalty != 0.0;
        let mut context = if penalized { seq_ids } else { Vec::new() };
        for _ in 0..opts.max_tokens {
            let mut row: Vec<f32> = logits.i(0)?.to_vec1()?;
            if penalized {
                opts.penalize(&mut row, &context, &tokens);
            }
            let next = sampler.next(&row);
            if penalized {
                context.push(next);
            }
            if stops.contains(&next) {
                finish = FinishReason::Stop(next);
                break;
            }
            tokens.push(next);
            let before = tok.decode(&tokens[window..settled])?;
            let now = tok.decode(&tokens[window..])?;
            // hold back an incomplete UTF-8 sequence until its last byte arrives
            if !now.ends_with('\u{FFFD}')
                && now.len() > before.len()
                && now.is_char_boundary(before.len())
            {
                on_text(&now[before.len()..]);
                window = settled;
                settled = tokens.len();
            }
            if tokens.len() == opts.max_tokens {
                break;
            }
            logits =
                self.model
                    .extend(&[vec![next]], &pre.deltas, &mut cache, LogitsScope::Last)?;
        }
        // whatever is still held back (a trailing incomplete sequence) goes out last
        let before = tok.decode(&tokens[window..settled])?;
        let now = tok.decode(&tokens[window..])?;
        if now.len() > before.len() && now.is_char_boundary(before.len()) {
            on_text(&now[before.len()..]);
        }
        let text = tok.decode(&tokens)?;
        Ok(Generation {
            text,
            tokens,
            finish,
            prompt_tokens,
        })
    }

    /// Log-probabilities of each continuation given `prompt` and `items`. The prompt is
    /// run once; the continuations run as one batch on copies of its cache.
    pub fn score(
        &self,
        prompt: &Prompt,
        items: Option<&Tensor>,
        continuations: &[&str],
    ) -> Result<Vec<ContinuationScore>> {
        let tok = self.tokenizer_or_err()?;
        let conts = continuations
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let ids = tok.encode_text(c)?;
                if ids.is_empty() {
                    return Err(Error::Prompt {
                        message: format!("continuation {i} is empty"),
                    });
                }
                Ok(ids)
            })
            .collect::<Result<Vec<_>>>()?;
        let seq = self.prepare(prompt, items)?;
        self.score_ids(seq, &conts)
    }

    /// [`SurgeredModel::score`] on token ids.
    pub fn score_ids(
        &self,
        seq: SequenceInput,
        continuations: &[Vec<u32>],
    ) -> Result<Vec<ContinuationScore>> {
        self.model.score(seq, continuations)
    }

    /// The tokenizer and side files that a save copies.
    fn copied_files(&self) -> Vec<PathBuf> {
        let mut copies = self.files.side_files.clone();
        copies.extend(self.files.tokenizer.clone());
        copies
    }

    /// [`Error::OutputIsInput`] when a file that saving into `dir` would write is, or
    /// resolves to (symlinks followed), a file this model was loaded from.
    fn refuse_inputs_in(&self, dir: &Path) -> Result<()> {
        let mut given = self.files.all();
        given.extend(self.adapter_file.clone());
        let inputs: Vec<(PathBuf, PathBuf)> = given
            .into_iter()
            .filter_map(|p| std::fs::canonicalize(&p).ok().map(|real| (real, p)))
            .collect();
        let copied: Vec<PathBuf> = self.copied_files();
        let is_output = |name: &str| {
            [CONFIG_FILE, WEIGHTS_FILE, WEIGHTS_INDEX_FILE, ADAPTER_FILE].contains(&name)
                || copied
                    .iter()
                    .any(|c| c.file_name().is_some_and(|n| n == name))
                || (name.starts_with("model-") && name.ends_with(".safetensors"))
        };
        let clash = |output: PathBuf, input: &Path| Error::OutputIsInput {
            output,
            input: input.to_path_buf(),
        };
        let dir_real = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
        // an input that sits in `dir` under a name the save writes
        for (real, input) in &inputs {
            if let Some(name) = real.file_name().and_then(|n| n.to_str())
                && real.parent() == Some(dir_real.as_path())
                && is_output(name)
            {
                return Err(clash(dir.join(name), input));
            }
        }
        // a name the save writes that is a link to an input (a hub snapshot's layout)
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| Error::io(dir, e))?.path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_output)
                && let Ok(real) = std::fs::canonicalize(&path)
                && let Some((_, input)) = inputs.iter().find(|(r, _)| *r == real)
            {
                return Err(clash(path, input));
            }
        }
        Ok(())
    }

    /// Write a text-only checkpoint to `dir`: the decoder tensors as stored (sharded past
    /// `opts.max_shard_bytes`), config.json without `vision_config` (with a record of the
    /// surgery), the tokenizer and side files, and the attached adapter. Every file is
    /// written through a temp file and a rename. An output that resolves (symlinks
    /// followed) to a file the model was loaded from is refused with
    /// [`Error::OutputIsInput`] before anything is written.
    pub fn save_surgered(&self, dir: &Path, opts: &SaveOptions) -> Result<SavedCheckpoint> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        self.refuse_inputs_in(dir)?;
        // every decoder tensor under its portable name; fused experts split per expert
        let mut items: Vec<(String, SaveItem)> = Vec::new();
        for (name, entry) in self.weights.entries() {
            if is_visual_tensor(name) {
                continue;
            }
            if crate::portable::is_fused_experts(name) {
                let (entry, data) = self.weights.raw(name)?;
                for (n, t) in crate::portable::split_experts(&self.config, name, entry, data)? {
                    items.push((n, SaveItem::Owned(t)));
                }
            } else {
                items.push((
                    crate::portable::portable_name(name),
                    SaveItem::Raw(name.clone(), entry.bytes()),
                ));
            }
        }
        items.sort_by(|a, b| a.0.cmp(&b.0));
        // pack tensors into shards in name order
        let mut shards: Vec<Vec<&(String, SaveItem)>> = vec![Vec::new()];
        let mut shard_bytes = 0u64;
        for item in &items {
            let bytes = item.1.bytes();
            if shard_bytes > 0 && shard_bytes + bytes > opts.max_shard_bytes {
                shards.push(Vec::new());
                shard_bytes = 0;
            }
            shard_bytes += bytes;
            if let Some(last) = shards.last_mut() {
                last.push(item);
            }
        }
        let count = shards.len();
        let mut written = Vec::new();
        let mut weight_map = BTreeMap::new();
        let mut total = 0u64;
        for (i, shard) in shards.iter().enumerate() {
            let file = if count == 1 {
                WEIGHTS_FILE.to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", i + 1, count)
            };
            let mut views = Vec::with_capacity(shard.len());
            for (out_name, item) in shard.iter() {
                let view = match item {
                    SaveItem::Raw(name, _) => {
                        let (entry, data) = self.weights.raw(name)?;
                        RawView {
                            dtype: entry.dtype,
                            shape: entry.shape.clone(),
                            data: data.into(),
                        }
                    }
                    SaveItem::Owned(t) => {
                        let (dtype, bytes) = crate::adapter::tensor_bytes(t)?;
                        RawView {
                            dtype,
                            shape: t.dims().to_vec(),
                            data: bytes.into(),
                        }
                    }
                };
                total += view.data.len() as u64;
                views.push((out_name.clone(), view));
                weight_map.insert(out_name.clone(), file.clone());
            }
            let path = dir.join(&file);
            let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
            replace_file(&path, |tmp| {
                safetensors::serialize_to_file(views, Some(meta), tmp).map_err(|e| {
                    Error::Safetensors {
                        path: path.clone(),
                        message: e.to_string(),
                    }
                })
            })?;
            written.push(path);
        }
        if count > 1 {
            let index = serde_json::json!({
                "metadata": {"total_size": total},
                "weight_map": weight_map,
            });
            write_json(&dir.join(WEIGHTS_INDEX_FILE), &index)?;
        } else {
            let stale = dir.join(WEIGHTS_INDEX_FILE);
            if stale.exists() {
                std::fs::remove_file(&stale).map_err(|e| Error::io(&stale, e))?;
            }
        }
        let source = match (&self.files.source, &self.files.commit) {
            (ModelSource::Hub { repo, revision }, Some(commit)) => Some(serde_json::json!({
                "repo": repo, "revision": revision, "commit": commit,
            })),
            _ => None,
        };
        let cfg = self.config.surgered_json(
            self.report.skipped_parameters,
            self.report.skipped_bytes,
            source,
        );
        write_json(&dir.join(CONFIG_FILE), &cfg)?;
        for src in self.copied_files() {
            if let Some(name) = src.file_name() {
                let dst = dir.join(name);
                replace_file(&dst, |tmp| {
                    std::fs::copy(&src, tmp)
                        .map(drop)
                        .map_err(|e| Error::io(&src, e))
                })?;
            }
        }
        if let Some(a) = &self.adapter {
            replace_file(&dir.join(ADAPTER_FILE), |tmp| a.save(tmp))?;
        }
        Ok(SavedCheckpoint {
            dir: dir.to_path_buf(),
            shards: written,
            tensors: items.len(),
            bytes: total,
        })
    }
}

/// One tensor a save writes: stored bytes as read (name in the loaded checkpoint, byte
/// count), or a tensor made for the portable layout (a split expert).
enum SaveItem {
    Raw(String, u64),
    Owned(Tensor),
}

impl SaveItem {
    fn bytes(&self) -> u64 {
        match self {
            SaveItem::Raw(_, b) => *b,
            SaveItem::Owned(t) => (t.elem_count() * t.dtype().size_in_bytes()) as u64,
        }
    }
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    replace_file(path, |tmp| {
        std::fs::write(tmp, text + "\n").map_err(|e| Error::io(tmp, e))
    })
}

fn build_report(weights: &Weights, files: &CheckpointFiles) -> SurgeryReport {
    let read: BTreeSet<String> = weights.read_log().into_iter().collect();
    let mut r = SurgeryReport {
        skipped_shard_bytes: files.skipped_shard_bytes,
        commit: files.commit.clone(),
        ..SurgeryReport::default()
    };
    for (name, e) in weights.entries() {
        if is_visual_tensor(name) {
            r.skipped_tensors += 1;
            r.skipped_parameters += e.numel();
            r.skipped_bytes += e.bytes();
            if read.contains(name) {
                r.vision_tensors_read.push(name.clone());
            }
        } else if read.contains(name) {
            r.loaded_tensors += 1;
            r.loaded_parameters += e.numel();
            r.loaded_bytes += e.bytes();
        } else {
            r.unused_tensors.push(name.clone());
        }
    }
    // tensors in shards never opened: size them from the shard header when it is readable
    let mut by_shard: BTreeMap<&PathBuf, Vec<&String>> = BTreeMap::new();
    for (n, p) in &files.unopened {
        by_shard.entry(p).or_default().push(n);
    }
    for (shard, names) in by_shard {
        r.skipped_shards.push(shard.clone());
        let header = read_header(shard).ok();
        for n in names {
            if is_visual_tensor(n) {
                r.skipped_tensors += 1;
            } else {
                r.unused_tensors.push(n.clone());
                continue;
            }
            match header.as_ref().and_then(|h| h.get(n.as_str())) {
                Some(e) => {
                    r.skipped_parameters += e.numel();
                    r.skipped_bytes += e.bytes();
                }
                None => r.skipped_unsized.push(n.clone()),
            }
        }
    }
    r
}

/// Whether `device` runs `dtype` matmuls (CPU: every float type; CUDA: bf16 needs
/// compute capability 8.0, found by trying one).
fn device_runs(dtype: DType, device: &Device) -> bool {
    if device.is_cpu() {
        return true;
    }
    let probe = || -> candle_core::Result<f32> {
        let a = Tensor::ones((2, 2), dtype, device)?;
        a.matmul(&a)?.to_dtype(DType::F32)?.sum_all()?.to_scalar()
    };
    probe().is_ok_and(|v| v == 8.0)
}

/// [`Error::Options`] unless `dtype` is a compute dtype `device` runs.
fn check_dtype(dtype: DType, device: &Device) -> Result<()> {
    if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
        return Err(Error::Options {
            option: "dtype",
            message: format!("{dtype:?} is not supported (use f32, bf16 or f16)"),
        });
    }
    if !device_runs(dtype, device) {
        return Err(Error::Options {
            option: "dtype",
            message: format!("{dtype:?} does not run on {device:?}"),
        });
    }
    Ok(())
}

/// The checkpoint's dtype where `device` runs it, else f32.
fn default_dtype(config: &Qwen3VlConfig, device: &Device) -> DType {
    match config.dtype() {
        Some(d) if d != DType::F32 && device_runs(d, device) => d,
        _ => DType::F32,
    }
}

/// The checkpoint's tokenizer with its own chat template (the built-in one when it ships
/// none); `None` without a tokenizer.json.
pub(crate) fn load_tokenizer(
    files: &CheckpointFiles,
    config: &Qwen3VlConfig,
) -> Result<Option<PromptTokenizer>> {
    let Some(p) = &files.tokenizer else {
        return Ok(None);
    };
    let tok = PromptTokenizer::from_file(p, &config.tokens)?;
    Ok(Some(match ChatTemplate::from_files(&files.side_files)? {
        Some(t) => tok.with_template(t),
        None => tok,
    }))
}

/// Load (N, in_dim) item embeddings from a `.npy` file (f32 or f64, 1-D = one item).
pub fn load_npy_items(path: &Path, device: &Device) -> Result<Tensor> {
    use ndarray::{Array1, Array2};
    use ndarray_npy::ReadNpyExt;
    // read once, then try the accepted layouts on the bytes
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let cur = || std::io::Cursor::new(&bytes[..]);
    let arr: Array2<f32> = if let Ok(a) = Array2::<f32>::read_npy(cur()) {
        a
    } else if let Ok(a) = Array2::<f64>::read_npy(cur()) {
        a.mapv(|v| v as f32)
    } else if let Ok(a) = Array1::<f32>::read_npy(cur()) {
        a.insert_axis(ndarray::Axis(0))
    } else if let Ok(a) = Array1::<f64>::read_npy(cur()) {
        a.mapv(|v| v as f32).insert_axis(ndarray::Axis(0))
    } else {
        let why = Array2::<f32>::read_npy(cur())
            .err()
            .map_or_else(String::new, |e| e.to_string());
        return Err(Error::Embeddings {
            message: format!(
                "{}: expected a 1-D or 2-D array of f32 or f64 ({why})",
                path.display()
            ),
        });
    };
    let (n, d) = arr.dim();
    let data: Vec<f32> = arr.iter().copied().collect();
    Ok(Tensor::from_vec(data, (n, d), device)?)
}

/// Save (N, in_dim) item embeddings as a little-endian f32 `.npy` file.
pub fn save_npy_items(path: &Path, items: &Tensor) -> Result<()> {
    use ndarray_npy::WriteNpyExt;
    let (n, d) = items.dims2()?;
    let v: Vec<f32> = items.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let arr = ndarray::Array2::from_shape_vec((n, d), v).map_err(|e| Error::Embeddings {
        message: e.to_string(),
    })?;
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    arr.write_npy(std::io::BufWriter::new(file))
        .map_err(|e| Error::Embeddings {
            message: format!("{}: {e}", path.display()),
        })
}
