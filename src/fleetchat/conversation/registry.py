"""Named chat templates as data, for models whose tokenizer has no ``chat_template``.

Each :class:`TemplateRecord` mirrors one of FastChat's registered ``Conversation`` templates
(fastchat/conversation.py): same name, system template and message, roles, separators, stop
strings and stop token ids, so prompts match FastChat byte for byte. ``chatml`` is fleetchat's
generic ChatML record (FastChat only has model-specific ChatML templates such as ``qwen-7b-chat``).
Add a template by adding a record; rendering lives in :mod:`fleetchat.conversation.styles`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetchat.conversation.styles import SeparatorStyle


@dataclass(frozen=True)
class TemplateRecord:
    name: str
    roles: tuple[str, str]
    sep_style: SeparatorStyle
    sep: str = "\n"
    sep2: str | None = None
    system_template: str = "{system_message}"
    system_message: str = ""
    few_shot: tuple[tuple[int, str], ...] = ()  # (role index, text) examples rendered before the chat
    stop_str: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    description: str = ""


_HUMAN_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
_USER_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_ONE_SHOT_ANSWER = """Of course! Here are some creative ideas for a 10-year-old's birthday party:
1. Treasure Hunt: Organize a treasure hunt in your backyard or nearby park. Create clues and riddles for the kids to solve, leading them to hidden treasures and surprises.
2. Science Party: Plan a science-themed party where kids can engage in fun and interactive experiments. You can set up different stations with activities like making slime, erupting volcanoes, or creating simple chemical reactions.
3. Outdoor Movie Night: Set up a backyard movie night with a projector and a large screen or white sheet. Create a cozy seating area with blankets and pillows, and serve popcorn and snacks while the kids enjoy a favorite movie under the stars.
4. DIY Crafts Party: Arrange a craft party where kids can unleash their creativity. Provide a variety of craft supplies like beads, paints, and fabrics, and let them create their own unique masterpieces to take home as party favors.
5. Sports Olympics: Host a mini Olympics event with various sports and games. Set up different stations for activities like sack races, relay races, basketball shooting, and obstacle courses. Give out medals or certificates to the participants.
6. Cooking Party: Have a cooking-themed party where the kids can prepare their own mini pizzas, cupcakes, or cookies. Provide toppings, frosting, and decorating supplies, and let them get hands-on in the kitchen.
7. Superhero Training Camp: Create a superhero-themed party where the kids can engage in fun training activities. Set up an obstacle course, have them design their own superhero capes or masks, and organize superhero-themed games and challenges.
8. Outdoor Adventure: Plan an outdoor adventure party at a local park or nature reserve. Arrange activities like hiking, nature scavenger hunts, or a picnic with games. Encourage exploration and appreciation for the outdoors.
Remember to tailor the activities to the birthday child's interests and preferences. Have a great celebration!"""

TEMPLATES: dict[str, TemplateRecord] = {
    r.name: r
    for r in (
        TemplateRecord(
            name="raw",
            roles=("", ""),
            sep_style=SeparatorStyle.NO_COLON_SINGLE,
            sep="",
            description="no formatting: messages concatenated",
        ),
        TemplateRecord(
            name="one_shot",
            roles=("Human", "Assistant"),
            sep_style=SeparatorStyle.ADD_COLON_SINGLE,
            sep="\n### ",
            system_message=_HUMAN_SYSTEM,
            few_shot=((0, "Got any creative ideas for a 10 year old’s birthday?"), (1, _ONE_SHOT_ANSWER)),
            stop_str=("###",),
            description="FastChat's fallback: '### Human:' turns after one worked example",
        ),
        TemplateRecord(
            name="zero_shot",
            roles=("Human", "Assistant"),
            sep_style=SeparatorStyle.ADD_COLON_SINGLE,
            sep="\n### ",
            system_message=_HUMAN_SYSTEM,
            stop_str=("###",),
            description="one_shot without the example",
        ),
        TemplateRecord(
            name="vicuna_v1.1",
            roles=("USER", "ASSISTANT"),
            sep_style=SeparatorStyle.ADD_COLON_TWO,
            sep=" ",
            sep2="</s>",
            system_message=_USER_SYSTEM,
            description="Vicuna v1.1+ 'USER: ... ASSISTANT:'",
        ),
        TemplateRecord(
            name="alpaca",
            roles=("### Instruction", "### Response"),
            sep_style=SeparatorStyle.ADD_COLON_TWO,
            sep="\n\n",
            sep2="</s>",
            system_message="Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.",
            description="Stanford Alpaca instruction format",
        ),
        TemplateRecord(
            name="chatglm2",
            roles=("问", "答"),
            sep_style=SeparatorStyle.CHATGLM,
            sep="\n\n",
            description="ChatGLM2 '[Round N]' format",
        ),
        TemplateRecord(
            name="chatml",
            roles=("<|im_start|>user", "<|im_start|>assistant"),
            sep_style=SeparatorStyle.CHATML,
            sep="<|im_end|>",
            system_template="<|im_start|>system\n{system_message}",
            system_message="You are a helpful assistant.",
            stop_str=("<|im_end|>", "<|endoftext|>"),
            description="generic ChatML (<|im_start|>role ... <|im_end|>)",
        ),
        TemplateRecord(
            name="mistral",
            roles=("[INST]", "[/INST]"),
            sep_style=SeparatorStyle.LLAMA2,
            sep=" ",
            sep2="</s>",
            system_template="[INST] {system_message}\n",
            description="Mistral instruct '[INST] ... [/INST]'",
        ),
        TemplateRecord(
            name="llama-2",
            roles=("[INST]", "[/INST]"),
            sep_style=SeparatorStyle.LLAMA2,
            sep=" ",
            sep2=" </s><s>",
            system_template="[INST] <<SYS>>\n{system_message}\n<</SYS>>\n\n",
            description="Llama 2 chat with <<SYS>> block",
        ),
        TemplateRecord(
            name="llama-3",
            roles=("user", "assistant"),
            sep_style=SeparatorStyle.LLAMA3,
            sep="",
            system_template="<|start_header_id|>system<|end_header_id|>\n\n{system_message}<|eot_id|>",
            stop_str=("<|eot_id|>",),
            stop_token_ids=(128001, 128009),
            description="Llama 3 instruct headers",
        ),
        TemplateRecord(
            name="zephyr",
            roles=("<|user|>", "<|assistant|>"),
            sep_style=SeparatorStyle.CHATML,
            sep="</s>",
            system_template="<|system|>\n{system_message}",
            stop_str=("</s>",),
            stop_token_ids=(2,),
            description="Zephyr '<|user|>' format",
        ),
    )
}
