"""The question wordings of stage 2: the paper's Table B4 templates, its Table B5 appended prompts, and our
one ``address`` question.

A question is a Table B4 template (it names the level: district or street), a space, and the Table B5 prompt of
its type (generation, judgment, multiple choice). Appendix B writes the bracketed parts of Table B5 as
"[On STREET/IN DISTRICT]" and "[STREET/DISTRICT]"; the first is filled with the name ("on Forbes Avenue",
"in Oakland"), the second with the level's word ("street", "district"). The paper's "On"/"IN" capitals are a
table artefact: the sentence reads "Is this image taken on Forbes Avenue, Yes or No?".

The ``address`` question (street and district together, scored as A_sd) is not in the paper, which does not say
how A_sd was asked. Ours is a single wording whose answer is "STREET, DISTRICT"; docs/data.md documents it.

A city may call its levels otherwise (Tokyo: "chome" and "street", the paper's Table 8). The level *keys* stay
"district" and "street" everywhere (records, metric names); only the words a question says change. A Table B4
phrasing then names the level by its word alone: the qualified forms ("urban district", "major district",
"boulevard or street", "avenue or street") and the synonyms "road" and "thoroughfare" become the word, since an
"urban chome" or a "boulevard or chome" reads wrong. With the keys as words the text is Table B4's, unchanged.
"""
from __future__ import annotations

import re

from addressvlm.core.records import DEFAULT_LEVEL_NAMES

LEVELS = ("district", "street")
QTYPES = ("generation", "judgment", "multiple_choice")
OPTION_LETTERS = ("A", "B", "C", "D")

# Table B4: ten phrasings per level, verbatim.
DISTRICT_TEMPLATES = (
    "Tell me the district where this image was captured.",
    "I'm curious about the district, where is this?",
    "In which urban district was this photo taken?",
    "Can you identify which district this is?",
    "What district is shown in this photograph?",
    "What major district does the photo fall under?",
    "I'm looking for the name of the district in this photo, can you help?",
    "Can you specify the district shown in this photo?",
    "Which district is depicted in the photo?",
    "What's the name of the district shown in the photo?",
)
STREET_TEMPLATES = (
    "Identify the street in this image, please.",
    "What is the street seen in this picture called?",
    "On which boulevard or street was this taken?",
    "Give me the name of the street that appears in this photograph.",
    "Where was this, can you name the street?",
    "What's the name of the avenue or street captured in this shot?",
    "The street in this image, what is it named?",
    "What's the name of this street shown in the photo?",
    "Can you tell me which road this is?",
    "What thoroughfare is depicted here?",
)
TEMPLATES = {"district": DISTRICT_TEMPLATES, "street": STREET_TEMPLATES}
# What a level's own word replaces in its Table B4 phrasings when the city names the level otherwise.
_LEVEL_PHRASES = {
    "district": re.compile(r"\b(?:urban district|major district|district)\b"),
    "street": re.compile(r"\b(?:boulevard or street|avenue or street|street|road|thoroughfare)\b"),
}

# Table B5: the prompt appended per question type.
GENERATION_PROMPT = "Answer the question using a single word or phrase."
_JUDGMENT_PREPOSITION = {"street": "on", "district": "in"}

# Ours: the street-and-district question behind A_sd, and the separator of its answer.
ADDRESS_SEPARATOR = ", "


def address_question(level_names: dict[str, str] = DEFAULT_LEVEL_NAMES) -> str:
    """The address question, naming the levels by the city's words."""
    return ("What is the address where this image was taken? Answer with the "
            f"{level_names['street']} name and the {level_names['district']} name, separated by a comma.")


ADDRESS_QUESTION = address_question()


def parse_level_names(text: str) -> dict[str, str]:
    """ "chome,street" -> {"district": "chome", "street": "street"}: the words for the district and street levels,
    lower-case letters, spaces and hyphens (they are said inside sentences)."""
    words = [w.strip() for w in text.split(",")]
    if len(words) != 2 or not all(re.fullmatch(r"[a-z][a-z -]*", w) for w in words):
        raise ValueError(f"level names {text!r} should be two lower-case words for the district and the street "
                         "level, comma-separated, like 'chome,street'")
    if words[0] == words[1]:
        raise ValueError(f"level names {text!r}: the two levels need different words")
    return dict(zip(LEVELS, words))


def level_template(level: str, template_index: int, word: str | None = None) -> str:
    """Table B4 phrasing ``template_index`` of ``level``, naming the level ``word`` (default: the level's key)."""
    template = TEMPLATES[level][template_index]
    return template if word in (None, level) else _LEVEL_PHRASES[level].sub(word, template)


def judgment_prompt(level: str, name: str) -> str:
    """Table B5 judgment prompt: "Is this image taken on STREET, Yes or No?" / "... in DISTRICT ..."."""
    return f"Is this image taken {_JUDGMENT_PREPOSITION[level]} {name}, Yes or No?"


def multiple_choice_prompt(word: str, options: dict[str, str]) -> str:
    """Table B5 multiple-choice prompt naming the level ``word``, with options A-D in letter order."""
    listed = " ".join(f"({letter}) {options[letter]}" for letter in OPTION_LETTERS)
    return (
        f"Which of the following {word} correctly represents the location shown in the image? {listed}. "
        "Please select the correct option (A/B/C/D)."
    )


def level_question(level: str, qtype: str, template_index: int, *, name: str = "",
                   options: dict[str, str] | None = None, word: str | None = None) -> str:
    """Table B4 template ``template_index`` of ``level`` + " " + the Table B5 prompt of ``qtype``.

    ``name`` is the street/district asked about in a judgment; ``options`` the four choices of a multiple choice;
    ``word`` what the city calls the level (default: the level's key, the paper's wording).
    """
    template = level_template(level, template_index, word)
    if qtype == "generation":
        prompt = GENERATION_PROMPT
    elif qtype == "judgment":
        if not name:
            raise ValueError("a judgment question needs the name it asks about")
        prompt = judgment_prompt(level, name)
    elif qtype == "multiple_choice":
        if options is None or sorted(options) != list(OPTION_LETTERS):
            raise ValueError("a multiple-choice question needs options A, B, C and D")
        prompt = multiple_choice_prompt(word or level, options)
    else:
        raise ValueError(f"unknown question type {qtype!r}; expected one of {QTYPES}")
    return f"{template} {prompt}"


def address_answer(street: str, district: str) -> str:
    return f"{street}{ADDRESS_SEPARATOR}{district}"
