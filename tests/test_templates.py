"""The question wordings are the paper's (Tables B4 and B5), composed template + " " + appended prompt."""
import pytest

from addressvlm.core import templates

# Table B4 as the paper prints it: each level's ten templates run together in one cell.
PAPER_DISTRICT_CELL = (
    "Tell me the district where this image was captured. I'm curious about the district, where is this? In which "
    "urban district was this photo taken? Can you identify which district this is? What district is shown in this "
    "photograph? What major district does the photo fall under? I'm looking for the name of the district in this "
    "photo, can you help? Can you specify the district shown in this photo? Which district is depicted in the photo? "
    "What's the name of the district shown in the photo?"
)
PAPER_STREET_CELL = (
    "Identify the street in this image, please. What is the street seen in this picture called? On which boulevard "
    "or street was this taken? Give me the name of the street that appears in this photograph. Where was this, can "
    "you name the street? What's the name of the avenue or street captured in this shot? The street in this image, "
    "what is it named? What's the name of this street shown in the photo? Can you tell me which road this is? What "
    "thoroughfare is depicted here?"
)


@pytest.mark.parametrize("level,cell", [("district", PAPER_DISTRICT_CELL), ("street", PAPER_STREET_CELL)])
def test_table_b4_templates_are_the_papers_ten_per_level(level, cell):
    phrasings = templates.TEMPLATES[level]
    assert len(phrasings) == 10 and len(set(phrasings)) == 10
    assert " ".join(phrasings) == cell
    assert all(p.endswith((".", "?")) and "<image>" not in p for p in phrasings)


def test_generation_question_is_template_plus_table_b5_prompt():
    assert templates.level_question("district", "generation", 0) == (
        "Tell me the district where this image was captured. Answer the question using a single word or phrase.")


def test_judgment_question_names_street_with_on_and_district_with_in():
    assert templates.level_question("street", "judgment", 9, name="Forbes Avenue") == (
        "What thoroughfare is depicted here? Is this image taken on Forbes Avenue, Yes or No?")
    assert templates.level_question("district", "judgment", 3, name="Oakland") == (
        "Can you identify which district this is? Is this image taken in Oakland, Yes or No?")


def test_multiple_choice_question_lists_options_in_letter_order():
    options = {"B": "Craig Street", "A": "Forbes Avenue", "D": "Fifth Avenue", "C": "Murray Avenue"}
    assert templates.level_question("street", "multiple_choice", 0, options=options) == (
        "Identify the street in this image, please. Which of the following street correctly represents the location "
        "shown in the image? (A) Forbes Avenue (B) Craig Street (C) Murray Avenue (D) Fifth Avenue. "
        "Please select the correct option (A/B/C/D).")


def test_address_question_is_one_wording_and_answer_joins_street_and_district():
    assert "<image>" not in templates.ADDRESS_QUESTION
    assert templates.address_answer("Forbes Avenue", "Oakland") == "Forbes Avenue, Oakland"


@pytest.mark.parametrize("kwargs,message", [
    (dict(level="street", qtype="judgment"), "needs the name"),
    (dict(level="street", qtype="multiple_choice", options={"A": "x", "B": "y", "C": "z"}), "options A, B, C and D"),
    (dict(level="street", qtype="essay"), "unknown question type"),
])
def test_incomplete_questions_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        templates.level_question(template_index=0, **kwargs)
