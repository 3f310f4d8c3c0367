//! A checkpoint's own chat template, rendered with minijinja the way the reference's
//! `apply_chat_template` renders it with Jinja2: `trim_blocks` and `lstrip_blocks` on,
//! loop controls, Python string and dict methods (`startswith`, `split`, `strip`,
//! `items`, ...), `raise_exception`, and the tokenizer's special tokens (`bos_token`,
//! `eos_token`, ...) in the context. Renders are byte-identical to the reference's on the
//! golden fixtures (tests/chat_template.rs).
//!
//! The template comes from `chat_template.jinja`, else `chat_template.json`, else
//! `tokenizer_config.json` (its `chat_template`, or the entry named `default` of a list);
//! a checkpoint with none gets [`ChatTemplate::builtin`], Mosaic's rendering of the
//! Qwen3-VL Instruct template.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{Environment, ErrorKind, Value};
use serde_json::Value as Json;

use crate::error::{Error, Result};

/// A raw Jinja chat template file.
pub const CHAT_TEMPLATE_JINJA: &str = "chat_template.jinja";
/// A chat template in JSON (`{"chat_template": "..."}`).
pub const CHAT_TEMPLATE_JSON: &str = "chat_template.json";
/// The tokenizer's config, which may carry a `chat_template` and the special tokens.
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";

/// The built-in template's source.
const BUILTIN: &str = include_str!("qwen3_vl_chat_template.jinja");
/// Special tokens the reference puts in the template's context when the tokenizer has them.
const SPECIAL_TOKENS: [&str; 4] = ["bos_token", "eos_token", "pad_token", "unk_token"];

/// Where a template came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateOrigin {
    /// A checkpoint file.
    File(PathBuf),
    /// [`ChatTemplate::builtin`].
    Builtin,
}

impl std::fmt::Display for TemplateOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TemplateOrigin::File(p) => write!(f, "{}", p.display()),
            TemplateOrigin::Builtin => f.write_str("the built-in Qwen3-VL template"),
        }
    }
}

/// A compiled chat template and the special tokens its context carries.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    origin: TemplateOrigin,
    special: BTreeMap<String, String>,
}

fn template_err(origin: &TemplateOrigin, e: impl std::fmt::Display) -> Error {
    Error::ChatTemplate {
        template: origin.to_string(),
        message: e.to_string(),
    }
}

fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// A `chat_template` value: a string, or a list of `{name, template}` (take `default`).
fn template_field(path: &Path, v: &Json) -> Result<Option<String>> {
    let bad = |message: String| Error::Json {
        path: path.to_path_buf(),
        message,
    };
    match v.get("chat_template") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Array(list)) => {
            let default = list
                .iter()
                .find(|e| e.get("name").and_then(Json::as_str) == Some("default"));
            match default
                .and_then(|e| e.get("template"))
                .and_then(Json::as_str)
            {
                Some(s) => Ok(Some(s.to_string())),
                None => Err(bad(
                    "chat_template is a list without a template named \"default\"".into(),
                )),
            }
        }
        Some(other) => Err(bad(format!(
            "chat_template must be a string or a list, found {other}"
        ))),
    }
}

/// Special tokens of a `tokenizer_config.json`: strings, or `{"content": ...}` objects.
fn special_tokens(v: &Json) -> BTreeMap<String, String> {
    SPECIAL_TOKENS
        .iter()
        .filter_map(|&name| {
            let t = v.get(name)?;
            let s = t
                .as_str()
                .or_else(|| t.get("content").and_then(Json::as_str))?;
            Some((name.to_string(), s.to_string()))
        })
        .collect()
}

impl ChatTemplate {
    /// Compile `source`; `origin` names it in errors.
    pub fn new(source: &str, origin: TemplateOrigin) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| template_err(&origin, e))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned("chat_template", source.to_string())
            .map_err(|e| template_err(&origin, format!("{e:#}")))?;
        Ok(Self {
            env,
            origin,
            special: BTreeMap::new(),
        })
    }

    /// Mosaic's rendering of the Qwen3-VL Instruct template, for checkpoints without one.
    pub fn builtin() -> Self {
        // the built-in source is a constant that the tests compile and render
        match Self::new(BUILTIN, TemplateOrigin::Builtin) {
            Ok(t) => t,
            Err(e) => unreachable!("the built-in chat template does not compile: {e}"),
        }
    }

    /// The checkpoint's template among `files` (a checkpoint's side files, matched by
    /// name): `chat_template.jinja`, else `chat_template.json`, else the one in
    /// `tokenizer_config.json`; `None` when it has none. Special tokens come from
    /// `tokenizer_config.json` whichever file holds the template.
    pub fn from_files(files: &[PathBuf]) -> Result<Option<Self>> {
        let find = |name: &str| {
            files
                .iter()
                .find(|p| p.file_name().is_some_and(|n| n == name))
        };
        let tokenizer_config = find(TOKENIZER_CONFIG).map(|p| Ok::<_, Error>((p, read_json(p)?)));
        let tokenizer_config = tokenizer_config.transpose()?;
        let special = tokenizer_config
            .as_ref()
            .map(|(_, v)| special_tokens(v))
            .unwrap_or_default();
        let source = if let Some(p) = find(CHAT_TEMPLATE_JINJA) {
            let s = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            Some((s, p))
        } else if let Some(p) = find(CHAT_TEMPLATE_JSON) {
            let s = template_field(p, &read_json(p)?)?.ok_or_else(|| Error::Json {
                path: p.clone(),
                message: "no \"chat_template\"".into(),
            })?;
            Some((s, p))
        } else if let Some((p, v)) = &tokenizer_config {
            template_field(p, v)?.map(|s| (s, *p))
        } else {
            None
        };
        let Some((source, path)) = source else {
            return Ok(None);
        };
        let mut t = Self::new(&source, TemplateOrigin::File(path.clone()))?;
        t.special = special;
        Ok(Some(t))
    }

    /// Where the template came from.
    pub fn origin(&self) -> &TemplateOrigin {
        &self.origin
    }

    /// Render `messages` (the reference's list of `{role, content, ...}`) with
    /// `add_generation_prompt` and extra context variables `vars` (e.g. `add_vision_id`).
    pub fn render(
        &self,
        messages: &Json,
        add_generation_prompt: bool,
        vars: &BTreeMap<String, Json>,
    ) -> Result<String> {
        let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
        for (k, v) in &self.special {
            ctx.insert(k.clone(), Value::from(v.as_str()));
        }
        for (k, v) in vars {
            ctx.insert(k.clone(), Value::from(Serde(v)));
        }
        ctx.insert("messages".into(), Value::from(Serde(messages)));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        let tmpl = self
            .env
            .get_template("chat_template")
            .map_err(|e| template_err(&self.origin, e))?;
        tmpl.render(Value::from(Serde(&ctx)))
            .map_err(|e| template_err(&self.origin, format!("{e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn template_sources_follow_the_reference_priority() {
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n);
        std::fs::write(
            p(TOKENIZER_CONFIG),
            json!({"chat_template": [{"name": "tool_use", "template": "T"},
                                      {"name": "default", "template": "{{ eos_token }}C"}],
                   "eos_token": {"content": "<|im_end|>", "lstrip": false}})
            .to_string(),
        )
        .unwrap();
        let render = |files: &[PathBuf]| {
            ChatTemplate::from_files(files)
                .unwrap()
                .unwrap()
                .render(&json!([]), false, &BTreeMap::new())
                .unwrap()
        };
        let mut files = vec![p(TOKENIZER_CONFIG)];
        assert_eq!(render(&files), "<|im_end|>C");
        std::fs::write(p(CHAT_TEMPLATE_JSON), r#"{"chat_template": "J"}"#).unwrap();
        files.push(p(CHAT_TEMPLATE_JSON));
        assert_eq!(render(&files), "J");
        std::fs::write(p(CHAT_TEMPLATE_JINJA), "{{ eos_token }}R").unwrap();
        files.push(p(CHAT_TEMPLATE_JINJA));
        assert_eq!(render(&files), "<|im_end|>R");
        assert!(ChatTemplate::from_files(&[]).unwrap().is_none());
    }

    #[test]
    fn template_errors_name_the_file() {
        let bad = ChatTemplate::new("{% for x in %}", TemplateOrigin::File("t.jinja".into()))
            .unwrap_err();
        assert!(matches!(&bad, Error::ChatTemplate { template, .. } if template == "t.jinja"));
        let t = ChatTemplate::new(
            "{{ raise_exception('no tools here') }}",
            TemplateOrigin::Builtin,
        )
        .unwrap();
        let e = t.render(&json!([]), true, &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("no tools here"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join(CHAT_TEMPLATE_JSON);
        std::fs::write(&f, r#"{"chat_template": 3}"#).unwrap();
        let e = ChatTemplate::from_files(&[f]).unwrap_err();
        assert!(e.to_string().contains("string or a list"), "{e}");
    }
}
