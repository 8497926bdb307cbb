"""Chat templates: the tokenizer's own jinja template first, FastChat's named templates as data.

    get_chat_template(tokenizer=None, name=None, system_message=None) -> ChatTemplate
    list_chat_templates() -> list[str]
"""

from fleetchat.conversation.registry import TEMPLATES, TemplateRecord
from fleetchat.conversation.styles import SeparatorStyle
from fleetchat.conversation.template import (
    JINJA_TEMPLATE_NAME,
    ChatTemplate,
    JinjaChatTemplate,
    NamedChatTemplate,
    get_chat_template,
    list_chat_templates,
    template_tokenizer,
)

__all__ = [
    "JINJA_TEMPLATE_NAME",
    "TEMPLATES",
    "ChatTemplate",
    "JinjaChatTemplate",
    "NamedChatTemplate",
    "SeparatorStyle",
    "TemplateRecord",
    "get_chat_template",
    "list_chat_templates",
    "template_tokenizer",
]
