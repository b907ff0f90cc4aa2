"""The question wordings of stage 2: the paper's Table B4 templates, its Table B5 appended prompts, and our
one ``address`` question.

A question is a Table B4 template (it names the level: district or street), a space, and the Table B5 prompt of
its type (generation, judgment, multiple choice). Appendix B writes the bracketed parts of Table B5 as
"[On STREET/IN DISTRICT]" and "[STREET/DISTRICT]"; the first is filled with the name ("on Forbes Avenue",
"in Oakland"), the second with the level's word ("street", "district"). The paper's "On"/"IN" capitals are a
table artefact: the sentence reads "Is this image taken on Forbes Avenue, Yes or No?".

The ``address`` question (street and district together, scored as A_sd) is not in the paper, which does not say
how A_sd was asked. Ours is a single wording whose answer is "STREET, DISTRICT"; docs/data.md documents it.
"""
from __future__ import annotations

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

# Table B5: the prompt appended per question type.
GENERATION_PROMPT = "Answer the question using a single word or phrase."
_JUDGMENT_PREPOSITION = {"street": "on", "district": "in"}

# Ours: the street-and-district question behind A_sd, and the separator of its answer.
ADDRESS_QUESTION = (
    "What is the address where this image was taken? "
    "Answer with the street name and the district name, separated by a comma."
)
ADDRESS_SEPARATOR = ", "


def judgment_prompt(level: str, name: str) -> str:
    """Table B5 judgment prompt: "Is this image taken on STREET, Yes or No?" / "... in DISTRICT ..."."""
    return f"Is this image taken {_JUDGMENT_PREPOSITION[level]} {name}, Yes or No?"


def multiple_choice_prompt(level: str, options: dict[str, str]) -> str:
    """Table B5 multiple-choice prompt with options A-D in letter order."""
    listed = " ".join(f"({letter}) {options[letter]}" for letter in OPTION_LETTERS)
    return (
        f"Which of the following {level} correctly represents the location shown in the image? {listed}. "
        "Please select the correct option (A/B/C/D)."
    )


def level_question(level: str, qtype: str, template_index: int, *, name: str = "",
                   options: dict[str, str] | None = None) -> str:
    """Table B4 template ``template_index`` of ``level`` + " " + the Table B5 prompt of ``qtype``.

    ``name`` is the street/district asked about in a judgment; ``options`` the four choices of a multiple choice.
    """
    template = TEMPLATES[level][template_index]
    if qtype == "generation":
        prompt = GENERATION_PROMPT
    elif qtype == "judgment":
        if not name:
            raise ValueError("a judgment question needs the name it asks about")
        prompt = judgment_prompt(level, name)
    elif qtype == "multiple_choice":
        if options is None or sorted(options) != list(OPTION_LETTERS):
            raise ValueError("a multiple-choice question needs options A, B, C and D")
        prompt = multiple_choice_prompt(level, options)
    else:
        raise ValueError(f"unknown question type {qtype!r}; expected one of {QTYPES}")
    return f"{template} {prompt}"


def address_answer(street: str, district: str) -> str:
    return f"{street}{ADDRESS_SEPARATOR}{district}"
