//! Prompts: conversations with item placeholders, rendered by the checkpoint's chat
//! template, and the tokenizer.
//!
//! A [`Prompt`] is a list of [`Turn`]s. A user turn may reference items with the marker
//! [`ITEM_MARKER`] (`<item>`); items are taken in marker order across the conversation.
//! When no turn has a marker, every item goes first in the last user turn, as the
//! reference places images before text. The prompt becomes the reference's `messages`
//! ([`Prompt::messages`]): user turns a list of parts split at the markers (an
//! `{"type": "image"}` part per item), other turns strings, an assistant's reasoning in
//! `reasoning_content`. The [`ChatTemplate`] renders them with one `<|image_pad|>` per
//! item, which is then repeated once per soft token of the item, as the reference
//! processor expands an image's placeholder.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Value as Json, json};
use tokenizers::Tokenizer;

use crate::chat_template::ChatTemplate;
use crate::config::SpecialTokens;
use crate::error::{Error, Result};

/// Marks where an item goes in a user message.
pub const ITEM_MARKER: &str = "<item>";

/// The placeholder token of one image in a rendered template.
const IMAGE_PAD: &str = "<|image_pad|>";

/// Special tokens the chat template needs.
pub const TEMPLATE_TOKENS: [&str; 6] = [
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|endoftext|>",
];

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Instructions ahead of the conversation.
    System,
    /// The user; the only role whose text may reference items.
    User,
    /// The model's earlier answers.
    Assistant,
}

impl Role {
    /// The role's name in the reference's messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// Who speaks.
    pub role: Role,
    /// What is said; in user turns `<item>` marks where an item goes.
    pub text: String,
    /// An assistant turn's reasoning (`reasoning_content`, for Thinking templates).
    pub reasoning: Option<String>,
}

impl Turn {
    /// A turn of `role` saying `text`.
    pub fn new(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            text: text.into(),
            reasoning: None,
        }
    }
}

/// A conversation to render: its turns, whether to open the assistant's answer, and
/// extra variables for the template (e.g. `add_vision_id`, `enable_thinking`).
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// The turns, in order.
    pub turns: Vec<Turn>,
    /// Whether the render ends with the opening of the assistant's answer (default true).
    pub add_generation_prompt: bool,
    /// Extra template context variables.
    pub vars: BTreeMap<String, Json>,
}

impl Prompt {
    /// A single user turn.
    pub fn user(text: impl Into<String>) -> Self {
        Self {
            turns: vec![Turn::new(Role::User, text)],
            add_generation_prompt: true,
            vars: BTreeMap::new(),
        }
    }

    /// The same prompt with `text` as its system turn (replacing one already there).
    pub fn with_system(mut self, text: impl Into<String>) -> Self {
        match self.turns.first_mut() {
            Some(t) if t.role == Role::System => t.text = text.into(),
            _ => self.turns.insert(0, Turn::new(Role::System, text)),
        }
        self
    }

    /// The same prompt followed by an assistant turn.
    pub fn then_assistant(mut self, text: impl Into<String>) -> Self {
        self.turns.push(Turn::new(Role::Assistant, text));
        self
    }

    /// The same prompt followed by an assistant turn with its reasoning.
    pub fn then_assistant_reasoning(
        mut self,
        text: impl Into<String>,
        reasoning: impl Into<String>,
    ) -> Self {
        let mut t = Turn::new(Role::Assistant, text);
        t.reasoning = Some(reasoning.into());
        self.turns.push(t);
        self
    }

    /// The same prompt followed by a user turn.
    pub fn then_user(mut self, text: impl Into<String>) -> Self {
        self.turns.push(Turn::new(Role::User, text));
        self
    }

    /// The same prompt without the generation prompt (to render a finished conversation).
    pub fn without_generation_prompt(mut self) -> Self {
        self.add_generation_prompt = false;
        self
    }

    /// The same prompt with template variable `name` set to `value`.
    pub fn var(mut self, name: impl Into<String>, value: impl Into<Json>) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// Item markers in the user turns.
    pub fn markers(&self) -> usize {
        self.turns
            .iter()
            .filter(|t| t.role == Role::User)
            .map(|t| t.text.matches(ITEM_MARKER).count())
            .sum()
    }

    /// The reference's `messages` for this prompt with `n_items` items (see the module
    /// docs); errors when the markers and the items disagree.
    pub fn messages(&self, n_items: usize) -> Result<Json> {
        let prompt_err = |message: String| Error::Prompt { message };
        let last_user = self
            .turns
            .iter()
            .rposition(|t| t.role == Role::User)
            .ok_or_else(|| prompt_err("a prompt needs a user turn".into()))?;
        if let Some(t) = self
            .turns
            .iter()
            .find(|t| t.role != Role::User && t.text.contains(ITEM_MARKER))
        {
            return Err(prompt_err(format!(
                "only user turns may reference items, but a {} turn has {ITEM_MARKER}",
                t.role.as_str()
            )));
        }
        let markers = self.markers();
        if markers > 0 && markers != n_items {
            return Err(prompt_err(format!(
                "the user turns have {markers} {ITEM_MARKER} placeholders but {n_items} items were given"
            )));
        }
        let mut out = Vec::with_capacity(self.turns.len());
        for (i, t) in self.turns.iter().enumerate() {
            if t.role != Role::User {
                let mut m = json!({"role": t.role.as_str(), "content": t.text});
                if let (Some(r), Json::Object(o)) = (&t.reasoning, &mut m) {
                    o.insert("reasoning_content".into(), r.as_str().into());
                }
                out.push(m);
                continue;
            }
            let mut parts = Vec::new();
            if markers == 0 && i == last_user {
                parts.extend((0..n_items).map(|_| json!({"type": "image"})));
            }
            for (j, seg) in t.text.split(ITEM_MARKER).enumerate() {
                if j > 0 {
                    parts.push(json!({"type": "image"}));
                }
                if !seg.is_empty() {
                    parts.push(json!({"type": "text", "text": seg}));
                }
            }
            out.push(json!({"role": "user", "content": parts}));
        }
        Ok(Json::Array(out))
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
    template: Arc<ChatTemplate>,
    im_end: u32,
    endoftext: u32,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer")
            .field("vocab", &self.tok.get_vocab_size(true))
            .field("template", self.template.origin())
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

    /// Wrap a tokenizer, checking its special tokens agree with `tokens`; prompts render
    /// with [`ChatTemplate::builtin`] until [`PromptTokenizer::with_template`].
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
            template: Arc::new(ChatTemplate::builtin()),
            tok,
        })
    }

    /// The same tokenizer rendering prompts with `template` (the checkpoint's own).
    pub fn with_template(mut self, template: ChatTemplate) -> Self {
        self.template = Arc::new(template);
        self
    }

    /// The chat template prompts are rendered with.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
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
        for t in &prompt.turns {
            let what = format!("{} turn", t.role.as_str());
            check_text(&what, &t.text, &self.tok)?;
            check_text(&what, t.reasoning.as_deref().unwrap_or(""), &self.tok)?;
        }
        let messages = prompt.messages(runs.len())?;
        let rendered =
            self.template
                .render(&messages, prompt.add_generation_prompt, &prompt.vars)?;
        let pads = rendered.matches(IMAGE_PAD).count();
        if pads != runs.len() {
            return Err(Error::ChatTemplate {
                template: self.template.origin().to_string(),
                message: format!(
                    "rendered {pads} {IMAGE_PAD} placeholders for {} items",
                    runs.len()
                ),
            });
        }
        let extra: usize = runs.iter().map(|k| k.saturating_sub(1)).sum();
        let mut out = String::with_capacity(rendered.len() + extra * IMAGE_PAD.len());
        let mut pieces = rendered.split(IMAGE_PAD);
        out.push_str(pieces.next().unwrap_or(""));
        for (piece, &k) in pieces.zip(runs) {
            for _ in 0..k {
                out.push_str(IMAGE_PAD);
            }
            out.push_str(piece);
        }
        Ok(out)
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
            .render(&Prompt::user("x").then_assistant("see <item>"), 1, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("only user turns"), "{e}");
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
