//! A checkpoint's `generation_config.json`: the decoding defaults its publisher chose.
//!
//! Read as the reference reads it: `do_sample` decides between greedy decoding and
//! sampling (default greedy); when sampling, unset `temperature`, `top_k` and `top_p`
//! take the reference's global defaults (1.0, 50, 1.0); `repetition_penalty` and
//! `presence_penalty` apply either way; `eos_token_id` (one id or a list) ends generation;
//! `max_new_tokens` bounds it. [`GenerationConfig::options`] turns it into
//! [`GenerateOptions`] that callers override field by field.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::sampling::{GenerateOptions, Sampling};

/// Name of the file in a checkpoint.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

/// The reference's default `top_k` when sampling without one.
const DEFAULT_TOP_K: usize = 50;

/// One id or a list of ids, as `eos_token_id` is written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum Ids {
    One(u32),
    Many(Vec<u32>),
}

/// The decoding settings of a `generation_config.json` (unknown keys ignored).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    /// Sample (true) or decode greedily (false or absent).
    pub do_sample: Option<bool>,
    /// Softmax temperature when sampling.
    pub temperature: Option<f32>,
    /// Top-k when sampling.
    pub top_k: Option<usize>,
    /// Top-p when sampling.
    pub top_p: Option<f32>,
    /// Repetition penalty (1 is off).
    pub repetition_penalty: Option<f32>,
    /// Presence penalty (0 is off).
    pub presence_penalty: Option<f32>,
    /// Token budget.
    pub max_new_tokens: Option<usize>,
    eos_token_id: Option<Ids>,
}

impl GenerationConfig {
    /// Read and check `path` against a vocabulary of `vocab` tokens; errors name the file
    /// and the setting.
    pub fn from_file(path: &Path, vocab: usize) -> Result<Self> {
        let bad = |message: String| Error::Json {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let raw: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        fn get<T: serde::de::DeserializeOwned>(
            raw: &serde_json::Value,
            key: &str,
        ) -> std::result::Result<Option<T>, String> {
            match raw.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => serde_json::from_value(v.clone())
                    .map(Some)
                    .map_err(|e| format!("{key}: {e}")),
            }
        }
        let cfg = (|| {
            Ok::<_, String>(Self {
                do_sample: get(&raw, "do_sample")?,
                temperature: get(&raw, "temperature")?,
                top_k: get(&raw, "top_k")?,
                top_p: get(&raw, "top_p")?,
                repetition_penalty: get(&raw, "repetition_penalty")?,
                presence_penalty: get(&raw, "presence_penalty")?,
                max_new_tokens: get(&raw, "max_new_tokens")?,
                eos_token_id: get(&raw, "eos_token_id")?,
            })
        })()
        .map_err(bad)?;
        cfg.options(0)
            .validate(vocab)
            .map_err(|e| bad(e.to_string()))?;
        Ok(cfg)
    }

    /// Token ids that end generation.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            None => Vec::new(),
            Some(Ids::One(i)) => vec![*i],
            Some(Ids::Many(v)) => v.clone(),
        }
    }

    /// These defaults as [`GenerateOptions`], sampling seeded with `seed`.
    pub fn options(&self, seed: u64) -> GenerateOptions {
        let base = GenerateOptions::default();
        let sampling = if self.do_sample == Some(true) {
            Sampling::Sample {
                temperature: self.temperature.unwrap_or(1.0),
                top_k: Some(self.top_k.unwrap_or(DEFAULT_TOP_K)),
                top_p: self.top_p.filter(|&p| p < 1.0),
                seed,
            }
        } else {
            Sampling::Greedy
        };
        GenerateOptions {
            max_tokens: self.max_new_tokens.unwrap_or(base.max_tokens),
            sampling,
            stop_tokens: self.eos_token_ids(),
            default_stops: true,
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(json: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(GENERATION_CONFIG_FILE);
        std::fs::write(&p, json).unwrap();
        (d, p)
    }

    #[test]
    fn released_settings_become_options() {
        // as the Qwen3-VL Instruct releases write it
        let (_d, p) = write(
            r#"{"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": true,
                "eos_token_id": [151645, 151643], "top_k": 20, "top_p": 0.8,
                "repetition_penalty": 1.0, "temperature": 0.7, "transformers_version": "4.56.0"}"#,
        );
        let o = GenerationConfig::from_file(&p, 151_936).unwrap().options(7);
        assert_eq!(
            o.sampling,
            Sampling::Sample {
                temperature: 0.7,
                top_k: Some(20),
                top_p: Some(0.8),
                seed: 7
            }
        );
        assert_eq!(o.stop_tokens, vec![151645, 151643]);
        assert_eq!(o.repetition_penalty, 1.0);
        // no do_sample: greedy, whatever the temperature says; one eos id
        let (_d, p) =
            write(r#"{"temperature": 0.3, "eos_token_id": 258, "presence_penalty": 1.5}"#);
        let o = GenerationConfig::from_file(&p, 320).unwrap().options(0);
        assert_eq!(o.sampling, Sampling::Greedy);
        assert_eq!((o.stop_tokens, o.presence_penalty), (vec![258], 1.5));
        // sampling without top_k takes the reference's 50
        let (_d, p) = write(r#"{"do_sample": true}"#);
        let o = GenerationConfig::from_file(&p, 320).unwrap().options(0);
        assert!(matches!(
            o.sampling,
            Sampling::Sample {
                top_k: Some(50),
                top_p: None,
                ..
            }
        ));
    }

    #[test]
    fn bad_settings_name_the_file_and_the_option() {
        for (json, what) in [
            (r#"{"do_sample": true, "temperature": -1}"#, "temperature"),
            (r#"{"eos_token_id": [1, 999]}"#, "stop_tokens"),
            (r#"{"repetition_penalty": 0}"#, "repetition_penalty"),
            (r#"{"top_k": "many"}"#, "top_k"),
        ] {
            let (_d, p) = write(json);
            let e = GenerationConfig::from_file(&p, 320)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(GENERATION_CONFIG_FILE) && e.contains(what),
                "{json}: {e}"
            );
        }
    }
}
