"""A deterministic agent turn: no LLM, just enough understanding to fill every memory store."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Understanding", "understand", "PEOPLE"]

# People the agent recognises. Traffic and evals draw their names from this list.
PEOPLE = (
    "Alice Amara Ben Carlos Chen Dana Elena Farah Grace Hiro Ibrahim Isla Jordan Kai Lena Luca "
    "Marcus Maya Nadia Noah Omar Priya Quinn Rosa Sam Sofia Tariq Uma Victor Wen Yara Zoe"
).split()
_PEOPLE = set(PEOPLE)

_SENTENCE = re.compile(r"[^.!?\n]+[.!?]?")
# "X is Y." — a statement of fact. Questions and sentences starting with "is" are not facts.
_FACT = re.compile(r"^\s*(?P<subject>[A-Za-z][\w'\- ]{0,80}?)\s+is\s+(?P<object>[^?]{1,200}?)\s*[.!]?\s*$")
_MCP = (
    ("email", re.compile(r"\bemail\s+(?P<target>[A-Z][a-z]+|[\w.+-]+@[\w.-]+)?", re.I)),
    ("delete", re.compile(r"\bdelete\s+(?:the\s+)?(?P<target>[\w-]+)?", re.I)),
)
_WORD = re.compile(r"\b[A-Z][a-z]+\b")
_NOT_A_SUBJECT = {"it", "this", "that", "there", "what", "who", "where", "why", "how", "which"}


@dataclass
class Understanding:
    """What a turn took from the user's message."""

    facts: list[tuple[str, str]] = field(default_factory=list)
    people: list[str] = field(default_factory=list)
    mcp: list[tuple[str, str, str]] = field(default_factory=list)  # (tool, action, target)

    def reply(self) -> str:
        """The assistant's answer, built from what was understood."""
        parts = []
        if self.facts:
            parts.append("Noted: " + "; ".join(text for _, text in self.facts) + ".")
        if self.people:
            parts.append("I'll remember " + ", ".join(self.people) + ".")
        for tool, action, target in self.mcp:
            parts.append(f"Done: {tool}.{action}({target}).")
        return " ".join(parts) or "Understood."


def understand(message: str, swap_facts: bool = False) -> Understanding:
    """Extract facts ("X is Y"), people and MCP requests from a message.

    `swap_facts` is the quality bug of the eval-broken build: subject and object change places.
    """
    out = Understanding()
    for sentence in _SENTENCE.findall(message):
        sentence = sentence.strip()
        if not sentence or sentence.endswith("?"):
            continue
        fact = _FACT.match(sentence)
        if fact and fact["subject"].split()[0].lower() not in _NOT_A_SUBJECT:
            subject, obj = fact["subject"].strip(), fact["object"].strip().rstrip(".!")
            if swap_facts:
                subject, obj = obj, subject
            out.facts.append((subject, f"{subject} is {obj}"))
    for word in _WORD.findall(message):
        if word in _PEOPLE and word not in out.people:
            out.people.append(word)
    for tool, pattern in _MCP:
        match = pattern.search(message)
        if match:
            target = (match["target"] or "").strip() or "unspecified"
            out.mcp.append(("mcp", tool, target))
    return out
