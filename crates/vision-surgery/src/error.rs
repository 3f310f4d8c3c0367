//! The crate's error type: every failure names what is wrong and where.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while loading, validating or running a surgered model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (config, shard index) is malformed or misses a field.
    #[error("invalid JSON in {path}: {message}")]
    Json {
        /// The file involved.
        path: PathBuf,
        /// What the parser or validator reported.
        message: String,
    },
    /// The model configuration is inconsistent or unsupported.
    #[error("invalid config: {field}: {message}")]
    Config {
        /// The config field (dotted path) at fault.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The checkpoint was quantized by its publisher (FP8, AWQ, GPTQ, ...): its weights
    /// are not plain tensors this crate can run. Load the unquantized release.
    #[error(
        "the checkpoint is pre-quantized ({scheme}); quantized releases are not supported: load the unquantized (bf16) release"
    )]
    QuantizedCheckpoint {
        /// The `quant_method` and its settings, as config.json names them.
        scheme: String,
    },
    /// A safetensors file is malformed.
    #[error("invalid safetensors file {path}: {message}")]
    Safetensors {
        /// The file involved.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A tensor the decoder needs is absent from the checkpoint.
    #[error("tensor {name} is missing from the checkpoint")]
    MissingTensor {
        /// The checkpoint tensor name.
        name: String,
    },
    /// A checkpoint tensor has a shape other than the config implies.
    #[error("tensor {name} has shape {actual:?}, expected {expected:?}")]
    TensorShape {
        /// The checkpoint tensor name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape found in the file.
        actual: Vec<usize>,
    },
    /// A checkpoint tensor has a storage dtype this crate cannot read.
    #[error("tensor {name} has unsupported dtype {dtype}")]
    TensorDtype {
        /// The checkpoint tensor name.
        name: String,
        /// The dtype found in the file.
        dtype: String,
    },
    /// Downloading or locating a file through the Hugging Face hub failed.
    #[error("hugging face hub: {repo}@{revision}: {file}: {message}")]
    Hub {
        /// The model id.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// The file asked for.
        file: String,
        /// What the hub client reported.
        message: String,
    },
    /// An adapter file's metadata disagrees with its tensors or with the decoder.
    #[error(
        "adapter {field} mismatch: {expected_what} is {expected}, but {actual_what} is {actual}"
    )]
    AdapterMismatch {
        /// The adapter metadata field at fault (e.g. `hidden_size`).
        field: &'static str,
        /// Where the expected value comes from (e.g. "the decoder's hidden_size").
        expected_what: String,
        /// The expected value.
        expected: String,
        /// Where the actual value comes from (e.g. "the adapter header").
        actual_what: String,
        /// The actual value.
        actual: String,
    },
    /// An adapter file's metadata is missing a field or holds an invalid value.
    #[error("adapter metadata field {field}: {message}")]
    AdapterFormat {
        /// The metadata field at fault.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// Item embeddings handed to the model are unusable.
    #[error("item embeddings: {message}")]
    Embeddings {
        /// What is wrong (names the row and column where it applies).
        message: String,
    },
    /// A prompt does not fit the items handed with it.
    #[error("prompt: {message}")]
    Prompt {
        /// What is wrong with the prompt.
        message: String,
    },
    /// A chat template failed to compile or to render.
    #[error("chat template {template}: {message}")]
    ChatTemplate {
        /// Where the template came from (a file, or the built-in one).
        template: String,
        /// What went wrong, with the template line where known.
        message: String,
    },
    /// The tokenizer failed or lacks a token the chat template needs.
    #[error("tokenizer: {message}")]
    Tokenizer {
        /// What is wrong.
        message: String,
    },
    /// Generation or scoring options are invalid.
    #[error("invalid option {option}: {message}")]
    Options {
        /// The option at fault.
        option: &'static str,
        /// What is wrong with its value.
        message: String,
    },
    /// An image could not be decoded or has an unusable size.
    #[error("image: {message}")]
    Image {
        /// What is wrong.
        message: String,
    },
    /// A malformed record in a training-pairs file.
    #[error("training data {path}, line {line}: {message}")]
    TrainingData {
        /// The file.
        path: std::path::PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Training cannot proceed (bad example, diverged loss, checkpoint that does not fit).
    #[error("adapter training: {message}")]
    Training {
        /// What is wrong.
        message: String,
    },
    /// Input tensors handed to the decoder have inconsistent shapes.
    #[error("decoder input: {message}")]
    Input {
        /// What is inconsistent.
        message: String,
    },
    /// An output path is refused: writing it would overwrite a file the model was
    /// loaded from (symlinks followed, as in hub snapshots).
    #[error("refusing to write {output}: it is {input}, an input of the loaded model")]
    OutputIsInput {
        /// The output file that was to be written.
        output: PathBuf,
        /// The input file it resolves to.
        input: PathBuf,
    },
    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<mosaic_durability::Error> for Error {
    /// The durable write's errors: an I/O error on a path, or a path that names no
    /// file (its message names it).
    fn from(e: mosaic_durability::Error) -> Self {
        match e {
            mosaic_durability::Error::Io { path, source } => Error::Io { path, source },
            other => Error::Io {
                path: PathBuf::new(),
                source: std::io::Error::other(other.to_string()),
            },
        }
    }
}

impl Error {
    /// Wrap an I/O error with the path it happened on.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A config error for `field`.
    pub(crate) fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            message: message.into(),
        }
    }
}
