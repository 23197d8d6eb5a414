"""The deterministic agent turn: facts, people and MCP asks from a message."""

from engine.turn import understand


def test_facts_people_and_mcp() -> None:
    seen = understand("The launch codename is Bluebird. Is the sky green? Email Jordan the notes, "
                      "then delete the draft. Priya and Omar agreed.")
    assert seen.facts == [("The launch codename", "The launch codename is Bluebird")]
    assert seen.people == ["Jordan", "Priya", "Omar"]
    assert ("mcp", "email", "Jordan") in seen.mcp and ("mcp", "delete", "draft") in seen.mcp


def test_quality_bug_swaps_subject_and_object() -> None:
    seen = understand("The launch codename is Bluebird.", swap_facts=True)
    assert seen.facts == [("Bluebird", "Bluebird is The launch codename")]


def test_plain_message_has_no_memory_effects() -> None:
    seen = understand("thanks, that helps")
    assert (seen.facts, seen.people, seen.mcp) == ([], [], [])
    assert seen.reply() == "Understood."
