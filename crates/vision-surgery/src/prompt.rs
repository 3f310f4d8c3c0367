//! Prompts: the Qwen3-VL chat template, item placeholders, and the tokenizer.
//!
//! A user message may reference items with the marker [`ITEM_MARKER`] (`<item>`); the
//! i-th marker becomes `<|vision_start|>` + K x `<|image_pad|>` + `<|vision_end|>` for
//! item i, and the adapter's soft tokens later replace the `<|image_pad|>` rows. A
//! message with no marker gets every item in front of its text, as the reference chat
//! template places images before text. The rendered prompt is
//! `<|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n` (with an optional system
//! turn first; Qwen3-VL has no default system prompt).

use std::path::Path;

use tokenizers::Tokenizer;

use crate::config::SpecialTokens;
use crate::error::{Error, Result};

/// Marks where an item goes in a user message.
pub const ITEM_MARKER: &str = "<item>";

/// Special tokens the chat template needs.
pub const TEMPLATE_TOKENS: [&str; 6] = [
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|endoftext|>",
];

/// A single-turn chat prompt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prompt {
    /// Optional system message.
    pub system: Option<String>,
    /// The user message; `<item>` marks where each item goes.
    pub user: String,
}

impl Prompt {
    /// A user message without a system turn.
    pub fn user(text: impl Into<String>) -> Self {
        Self {
            system: None,
            user: text.into(),
        }
    }

    /// The same prompt with a system message.
    pub fn with_system(mut self, text: impl Into<String>) -> Self {
        self.system = Some(text.into());
        self
    }
}

impl From<&str> for Prompt {
    fn from(s: &str) -> Self {
        Prompt::user(s)
    }
}

/// The tokenizer with the ids the template relies on, checked against the model config.
#[derive(Clone)]
pub struct PromptTokenizer {
    tok: Tokenizer,
    im_end: u32,
    endoftext: u32,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer")
            .field("vocab", &self.tok.get_vocab_size(true))
            .finish()
    }
}

fn tok_err(message: impl Into<String>) -> Error {
    Error::Tokenizer {
        message: message.into(),
    }
}

impl PromptTokenizer {
    /// Load `tokenizer.json` and check its special tokens agree with `tokens`.
    pub fn from_file(path: &Path, tokens: &SpecialTokens) -> Result<Self> {
        let tok =
            Tokenizer::from_file(path).map_err(|e| tok_err(format!("{}: {e}", path.display())))?;
        Self::new(tok, tokens)
    }

    /// Wrap a tokenizer, checking its special tokens agree with `tokens`.
    pub fn new(tok: Tokenizer, tokens: &SpecialTokens) -> Result<Self> {
        let id = |s: &str| {
            tok.token_to_id(s).ok_or_else(|| {
                tok_err(format!(
                    "the tokenizer has no special token {s}, which the Qwen3-VL chat template needs"
                ))
            })
        };
        for s in TEMPLATE_TOKENS {
            id(s)?;
        }
        for (name, s, want) in [
            ("image_token_id", "<|image_pad|>", tokens.image_token_id),
            (
                "vision_start_token_id",
                "<|vision_start|>",
                tokens.vision_start_token_id,
            ),
            (
                "vision_end_token_id",
                "<|vision_end|>",
                tokens.vision_end_token_id,
            ),
        ] {
            let got = id(s)?;
            if got != want {
                return Err(tok_err(format!(
                    "{s} is id {got} in the tokenizer but config.json says {name} = {want}"
                )));
            }
        }
        Ok(Self {
            im_end: id("<|im_end|>")?,
            endoftext: id("<|endoftext|>")?,
            tok,
        })
    }

    /// The wrapped tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.tok
    }

    /// Token ids that end an assistant turn by default (`<|im_end|>`, `<|endoftext|>`).
    pub fn default_stop_tokens(&self) -> [u32; 2] {
        [self.im_end, self.endoftext]
    }

    /// Render the chat template for `prompt` with `n_items` items of `k` soft tokens each.
    pub fn render(&self, prompt: &Prompt, n_items: usize, k: usize) -> Result<String> {
        self.render_runs(prompt, &vec![k; n_items])
    }

    /// Render the chat template for `prompt` with one item per entry of `runs`, item i
    /// taking `runs[i]` placeholder tokens (images of different sizes).
    pub fn render_runs(&self, prompt: &Prompt, runs: &[usize]) -> Result<String> {
        let n_items = runs.len();
        check_text(
            "system message",
            prompt.system.as_deref().unwrap_or(""),
            &self.tok,
        )?;
        check_text("user message", &prompt.user, &self.tok)?;
        let mut next_run = runs.iter();
        let mut item = |out: &mut String| {
            let k = next_run.next().copied().unwrap_or(0);
            out.push_str("<|vision_start|>");
            for _ in 0..k {
                out.push_str("<|image_pad|>");
            }
            out.push_str("<|vision_end|>");
        };
        let mut s = String::new();
        if let Some(sys) = &prompt.system {
            s.push_str("<|im_start|>system\n");
            s.push_str(sys);
            s.push_str("<|im_end|>\n");
        }
        s.push_str("<|im_start|>user\n");
        let markers = prompt.user.matches(ITEM_MARKER).count();
        if markers == 0 {
            for _ in 0..n_items {
                item(&mut s);
            }
            s.push_str(&prompt.user);
        } else {
            if n_items != markers {
                return Err(Error::Prompt {
                    message: format!(
                        "the user message has {markers} {ITEM_MARKER} placeholders but {n_items} items were given"
                    ),
                });
            }
            let mut parts = prompt.user.split(ITEM_MARKER);
            if let Some(first) = parts.next() {
                s.push_str(first);
            }
            for part in parts {
                item(&mut s);
                s.push_str(part);
            }
        }
        s.push_str("<|im_end|>\n<|im_start|>assistant\n");
        Ok(s)
    }

    /// Token ids of the rendered prompt.
    pub fn encode_prompt(&self, prompt: &Prompt, n_items: usize, k: usize) -> Result<Vec<u32>> {
        let text = self.render(prompt, n_items, k)?;
        self.encode_raw(&text)
    }

    /// Token ids of the prompt rendered by [`PromptTokenizer::render_runs`].
    pub fn encode_prompt_runs(&self, prompt: &Prompt, runs: &[usize]) -> Result<Vec<u32>> {
        let text = self.render_runs(prompt, runs)?;
        self.encode_raw(&text)
    }

    /// Token ids of plain text (special-token markers in it are rejected).
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        check_text("text", text, &self.tok)?;
        self.encode_raw(text)
    }

    fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tok
            .encode(text, false)
            .map_err(|e| tok_err(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decode ids to text, dropping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tok
            .decode(ids, true)
            .map_err(|e| tok_err(e.to_string()))
    }
}

/// Reject `<|...|>` markers in caller text: known ones are reserved for the template,
/// unknown ones are an error rather than silently tokenized as plain text.
fn check_text(what: &str, text: &str, tok: &Tokenizer) -> Result<()> {
    let mut rest = text;
    while let Some(start) = rest.find("<|") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("|>") else { break };
        let name = &rest[start..start + 2 + end + 2];
        let inner = &after[..end];
        if !inner.is_empty() && !inner.contains(char::is_whitespace) {
            return Err(Error::Prompt {
                message: if tok.token_to_id(name).is_some() {
                    format!(
                        "{what} contains the special token {name}, which is reserved for the chat template (reference items with {ITEM_MARKER})"
                    )
                } else {
                    format!("{what} contains the unknown special token {name}")
                },
            });
        }
        rest = &rest[start + 2..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_tokenizer() -> PromptTokenizer {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-s0/model");
        let cfg = crate::config::Qwen3VlConfig::from_file(&dir.join("config.json")).unwrap();
        PromptTokenizer::from_file(&dir.join("tokenizer.json"), &cfg.tokens).unwrap()
    }

    #[test]
    fn items_expand_to_k_placeholders_in_marker_order() {
        let t = fixture_tokenizer();
        let p = Prompt::user("a <item> b <item>").with_system("sys");
        let text = t.render(&p, 2, 3).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\na <|vision_start|><|image_pad|><|image_pad|><|image_pad|><|vision_end|> b <|vision_start|><|image_pad|><|image_pad|><|image_pad|><|vision_end|><|im_end|>\n<|im_start|>assistant\n"
        );
        let ids = t.encode_prompt(&p, 2, 3).unwrap();
        assert_eq!(ids.iter().filter(|&&i| i == 268).count(), 6);
        assert_eq!(ids[0], 257);
        // no markers: items go first
        let text = t.render(&Prompt::user("hi"), 1, 1).unwrap();
        assert!(
            text.starts_with("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi")
        );
    }

    #[test]
    fn bad_prompts_are_typed_errors() {
        let t = fixture_tokenizer();
        let e = t
            .render(&Prompt::user("<item>"), 2, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 <item> placeholders but 2 items"), "{e}");
        let e = t
            .render(&Prompt::user("x <|image_pad|>"), 0, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("reserved"), "{e}");
        let e = t
            .render(&Prompt::user("x <|made_up|>"), 0, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown special token <|made_up|>"), "{e}");
        // plain text with pipes is fine
        t.render(&Prompt::user("a <| b |> c"), 0, 1).unwrap();
    }
}
