"""Golden chat-template renders from the reference (transformers' apply_chat_template).

Renders every case of crates/vision-surgery/tests/fixtures/chat_templates/cases.json with
each template (the crate's built-in template and the fixture templates) through
PreTrainedTokenizerFast.apply_chat_template(tokenize=False), and writes renders.json.
Needs: transformers==5.23.0 (no torch). Run from the repository root:
    /path/to/venv/bin/python scripts/make_chat_template_fixtures.py
"""
import json
import pathlib

import transformers
from transformers import PreTrainedTokenizerFast

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "crates/vision-surgery/tests/fixtures/chat_templates"
TEMPLATES = {
    "builtin": ROOT / "crates/vision-surgery/src/qwen3_vl_chat_template.jinja",
    "thinking": FIX / "thinking.jinja",
    "default_system": FIX / "default_system.jinja",
}
MARKER = "<item>"


def to_messages(turns, n_items):
    """Mosaic's Prompt -> messages rule (vision_surgery::prompt): user turns become a list
    of parts split at <item> (an image part per marker, empty text dropped); when no turn
    has a marker, the items go first in the last user turn; system and assistant turns
    are strings, an assistant's reasoning goes in reasoning_content."""
    markers = sum(t["text"].count(MARKER) for t in turns if t["role"] == "user")
    last_user = max(i for i, t in enumerate(turns) if t["role"] == "user")
    out = []
    for i, t in enumerate(turns):
        if t["role"] != "user":
            m = {"role": t["role"], "content": t["text"]}
            if "reasoning" in t:
                m["reasoning_content"] = t["reasoning"]
            out.append(m)
            continue
        parts = []
        if markers == 0 and i == last_user:
            parts += [{"type": "image"}] * n_items
        for j, seg in enumerate(t["text"].split(MARKER)):
            if j > 0:
                parts.append({"type": "image"})
            if seg:
                parts.append({"type": "text", "text": seg})
        out.append({"role": "user", "content": parts})
    return out


def main():
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(ROOT / "crates/vision-surgery/tests/fixtures/tiny-s0/model/tokenizer.json")
    )
    cases = json.loads((FIX / "cases.json").read_text())
    renders = []
    for name, path in TEMPLATES.items():
        template = path.read_text()
        for case in cases:
            messages = to_messages(case["turns"], case["items"])
            text = tok.apply_chat_template(
                messages,
                chat_template=template,
                tokenize=False,
                add_generation_prompt=case["add_generation_prompt"],
                **case.get("vars", {}),
            )
            renders.append({"template": name, "case": case["name"], "messages": messages, "render": text})
    out = {"transformers": transformers.__version__, "renders": renders}
    (FIX / "renders.json").write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    print(f"{len(renders)} renders -> {FIX / 'renders.json'}")


if __name__ == "__main__":
    main()
