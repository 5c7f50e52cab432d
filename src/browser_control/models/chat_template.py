"""The chat template a model is trained, evaluated and exported with: LFM2's original one swapped for lfm2_v2.

LFM2's original template drops tool calls from assistant turns, so TRL refuses it for tool-calling training;
TRL's lfm2_v2 renders plain turns identically and keeps them. Training, evaluation and export all go through
:func:`use_tool_calling_template`, so they cannot disagree about which template a tokenizer ends up with.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def is_original_lfm2_template(template: Any) -> bool:
    """Whether ``template`` is LFM2's original chat template (surrounding whitespace ignored: a tokenizer
    saved by another transformers release may end it with or without a newline)."""
    from trl.chat_template_utils import lfm2_chat_template

    return isinstance(template, str) and template.strip() == lfm2_chat_template.strip()


def use_tool_calling_template(tokenizer: Any) -> Any:
    """Give ``tokenizer`` TRL's lfm2_v2 template when it has LFM2's original one; any other is kept."""
    from trl.chat_template_utils import lfm2_v2_chat_template

    if is_original_lfm2_template(getattr(tokenizer, "chat_template", None)):
        tokenizer.chat_template = lfm2_v2_chat_template
        log.info("chat template: LFM2's original template replaced by TRL's lfm2_v2 (tool calls kept)")
    return tokenizer
