//! Chat templates render byte-identically to the reference's `apply_chat_template`
//! (goldens from scripts/make_chat_template_fixtures.py, transformers 5.23.0), and a
//! checkpoint's own template is the one its prompts use.

mod common;

use std::path::{Path, PathBuf};

use common::fixture_model;
use vision_surgery::chat_template::{ChatTemplate, TemplateOrigin};
use vision_surgery::prompt::PromptTokenizer;
use vision_surgery::{LoadOptions, Prompt, Role, SurgeredModel, Turn};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_templates")
}

fn read(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn template(name: &str) -> ChatTemplate {
    if name == "builtin" {
        return ChatTemplate::builtin();
    }
    let p = fixtures().join(format!("{name}.jinja"));
    ChatTemplate::new(
        &std::fs::read_to_string(&p).unwrap(),
        TemplateOrigin::File(p),
    )
    .unwrap()
}

/// A fixture case as a Prompt.
fn prompt(case: &serde_json::Value) -> Prompt {
    let turns = case["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let role = match t["role"].as_str().unwrap() {
                "system" => Role::System,
                "user" => Role::User,
                _ => Role::Assistant,
            };
            let mut turn = Turn::new(role, t["text"].as_str().unwrap());
            turn.reasoning = t["reasoning"].as_str().map(str::to_string);
            turn
        })
        .collect();
    let mut p = Prompt {
        turns,
        add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap(),
        vars: Default::default(),
    };
    if let Some(vars) = case["vars"].as_object() {
        for (k, v) in vars {
            p = p.var(k.clone(), v.clone());
        }
    }
    p
}

fn tokenizer() -> PromptTokenizer {
    let dir = fixture_model("tiny-s0");
    let cfg = vision_surgery::config::Qwen3VlConfig::from_file(&dir.join("config.json")).unwrap();
    PromptTokenizer::from_file(&dir.join("tokenizer.json"), &cfg.tokens).unwrap()
}

#[test]
fn renders_match_the_reference_byte_for_byte() {
    let cases = read(&fixtures().join("cases.json"));
    let golden = read(&fixtures().join("renders.json"));
    let renders = golden["renders"].as_array().unwrap();
    assert_eq!(renders.len(), 27);
    let base = tokenizer();
    for r in renders {
        let (name, case_name) = (r["template"].as_str().unwrap(), r["case"].as_str().unwrap());
        let case = cases
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["case"] == r["case"] || c["name"] == r["case"])
            .unwrap();
        let p = prompt(case);
        let n = case["items"].as_u64().unwrap() as usize;
        // the same messages as the reference was given
        assert_eq!(p.messages(n).unwrap(), r["messages"], "{name}/{case_name}");
        let tok = base.clone().with_template(template(name));
        let ours = tok.render_runs(&p, &vec![1; n]).unwrap();
        assert_eq!(ours, r["render"].as_str().unwrap(), "{name}/{case_name}");
        // K soft tokens per item: each placeholder repeated K times, nothing else moves
        let k3 = tok.render_runs(&p, &vec![3; n]).unwrap();
        let pad = "<|image_pad|>";
        assert_eq!(k3, ours.replace(pad, &pad.repeat(3)), "{name}/{case_name}");
    }
}

#[test]
fn a_checkpoint_prompts_with_its_own_template() {
    let dir = tempfile::tempdir().unwrap();
    common::copy_dir(&fixture_model("tiny-s0"), dir.path());
    let load =
        || SurgeredModel::load(dir.path().to_str().unwrap(), &LoadOptions::default()).unwrap();
    let p = Prompt::user("<item> hi");
    let builtin = load().tokenizer().unwrap().render(&p, 1, 2).unwrap();
    assert_eq!(
        builtin,
        "<|im_start|>user\n<|vision_start|><|image_pad|><|image_pad|><|vision_end|> hi<|im_end|>\n<|im_start|>assistant\n"
    );
    // a Thinking checkpoint: its chat_template.jinja opens the answer with <think>
    std::fs::copy(
        fixtures().join("thinking.jinja"),
        dir.path().join("chat_template.jinja"),
    )
    .unwrap();
    let m = load();
    let tok = m.tokenizer().unwrap();
    assert!(
        matches!(tok.template().origin(), TemplateOrigin::File(f) if f.ends_with("chat_template.jinja"))
    );
    let thinking = tok.render(&p, 1, 2).unwrap();
    assert_eq!(thinking, format!("{builtin}<think>\n"));
    // ids come from the rendered template
    let ids = tok.encode_prompt(&p, 1, 2).unwrap();
    assert_eq!(
        tok.inner().decode(&ids, false).unwrap().replace(' ', ""),
        thinking.replace(' ', "")
    );
    // a template that renders the wrong number of placeholders is an error, not a shifted prompt
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "{{ messages[0].role }}",
    )
    .unwrap();
    let e = load().tokenizer().unwrap().render(&p, 1, 2).unwrap_err();
    assert!(
        e.to_string()
            .contains("rendered 0 <|image_pad|> placeholders for 1 items"),
        "{e}"
    );
}
