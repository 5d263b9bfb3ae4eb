"""Slack message formatting for the ``slack`` destination: escaping what templates print,
Block Kit templates, and fitting a message into Slack's documented size limits.

Every value a template prints is escaped for Slack (``&``, ``<``, ``>``;
https://api.slack.com/reference/surfaces/formatting#escaping), so text from a customer cannot
mention ``<!channel>`` or forge links; ``|safe`` prints a trusted value as is. In
``plain_text`` objects nothing is escaped. A block whose text renders empty is left out.

Limits (https://api.slack.com/reference/block-kit/blocks): text 40,000 characters, 50 blocks,
section text 3,000, section fields 10 of 2,000, header 150, context 10 elements. Longer text is
cut at a safe place (never inside ``<...>`` or an ``&...;`` entity) and ends with "…"; extra
blocks are replaced by a note saying how many were left out.
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

from gateway.destination import TemplateTree, environment

# Slack's limits (https://api.slack.com/reference/block-kit/blocks,
# https://api.slack.com/methods/chat.postMessage#truncating).
MAX_TEXT = 40_000
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3_000
MAX_FIELDS = 10
MAX_FIELD_TEXT = 2_000
MAX_HEADER_TEXT = 150
MAX_CONTEXT_ELEMENTS = 10
MAX_MARKDOWN_TEXT = 12_000
ELLIPSIS = "…"


def slack_escape(value: Any) -> Any:
    """Escape what a template prints for Slack mrkdwn; `Markup` (``|safe``) passes as is."""
    if value is None:
        return ""
    if isinstance(value, Markup):
        return str(value)
    text = value if isinstance(value, str) else str(value)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _plain(value: Any) -> Any:
    return "" if value is None else value


# Overlays of the kit's sandbox: same sandbox, Slack's output rules.
MRKDWN_ENV = environment(finalize=slack_escape)
PLAIN_ENV = environment(finalize=_plain)


def block_templates(blocks: list[Any]) -> TemplateTree:
    """Block Kit blocks from YAML whose string leaves are templates: mrkdwn-escaped, except
    inside ``plain_text`` objects; ``type`` values are kept as they are."""
    return TemplateTree(
        blocks,
        "blocks",
        MRKDWN_ENV,
        env_for=lambda node: PLAIN_ENV if node.get("type") == "plain_text" else None,
        keep=frozenset({"type"}),
    )


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, ending in "…", never inside ``<...>`` (a link
    or mention) or an ``&...;`` entity, which Slack would show broken."""
    if len(text) <= limit:
        return text
    cut = text[: max(0, limit - len(ELLIPSIS))]
    open_at = cut.rfind("<")
    if open_at > cut.rfind(">"):
        cut = cut[:open_at]
    amp = cut.rfind("&")
    if amp != -1 and ";" not in cut[amp:] and len(cut) - amp <= 10:
        cut = cut[:amp]
    return cut + ELLIPSIS


def _text_obj(obj: Any, limit: int) -> Any:
    """A text object with its text clipped, or None when it is missing or empty."""
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        return obj
    if not obj["text"].strip():
        return None
    return {**obj, "text": clip(obj["text"], limit)}


def fit_block(block: dict[str, Any]) -> dict[str, Any] | None:
    """One block within its limits, or None when it rendered empty (left out)."""
    kind = block.get("type")
    if kind == "section":
        out = dict(block)
        text = _text_obj(block.get("text"), MAX_SECTION_TEXT)
        if text is None:
            out.pop("text", None)
        else:
            out["text"] = text
        if isinstance(block.get("fields"), list):
            fields = [f for f in (_text_obj(f, MAX_FIELD_TEXT) for f in block["fields"]) if f]
            if fields:
                out["fields"] = fields[:MAX_FIELDS]
            else:
                out.pop("fields")
        if "text" not in out and "fields" not in out:
            return None
        return out
    if kind == "header":
        text = _text_obj(block.get("text"), MAX_HEADER_TEXT)
        return None if text is None else {**block, "text": text}
    if kind == "context" and isinstance(block.get("elements"), list):
        elements = [
            e
            for e in (
                _text_obj(e, MAX_SECTION_TEXT) if e.get("type") != "image" else e
                for e in block["elements"]
                if isinstance(e, dict)
            )
            if e
        ]
        return {**block, "elements": elements[:MAX_CONTEXT_ELEMENTS]} if elements else None
    if kind == "markdown" and isinstance(block.get("text"), str):
        if not block["text"].strip():
            return None
        return {**block, "text": clip(block["text"], MAX_MARKDOWN_TEXT)}
    return block


def fit_blocks(blocks: list[Any]) -> list[Any]:
    """Blocks that Slack accepts by size: empty ones dropped, texts clipped, at most 50."""
    fitted = [b for b in (fit_block(b) if isinstance(b, dict) else b for b in blocks) if b]
    if len(fitted) > MAX_BLOCKS:
        left_out = len(fitted) - (MAX_BLOCKS - 1)
        note = {
            "type": "context",
            "elements": [
                {"type": "mrkdwn", "text": f"{ELLIPSIS} {left_out} more blocks not shown"}
            ],
        }
        fitted = [*fitted[: MAX_BLOCKS - 1], note]
    return fitted
