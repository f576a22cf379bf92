"""Who may see what: the audience rules as plain functions over data.

Rules (DESIGN.md principle 7, applied at every exit):
- the owner sees all of their own items;
- a viewer the owner hides from sees nothing of the owner;
- `public`: anyone signed in; `followers`: viewers who follow the owner;
  `close_friends`: viewers on the owner's close-friends list.
A hidden item is answered exactly like a missing one (404), never 403.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Audience = Literal["public", "followers", "close_friends"]
AUDIENCES: tuple[Audience, ...] = ("public", "followers", "close_friends")
AUDIENCE_CODES: dict[str, str] = {"public": "p", "followers": "f", "close_friends": "c"}
CODE_AUDIENCES: dict[str, Audience] = {"p": "public", "f": "followers", "c": "close_friends"}


@dataclass(frozen=True)
class Relation:
    """How a viewer stands towards one owner."""

    is_owner: bool = False
    follows: bool = False
    close_friend: bool = False
    hidden: bool = False

    def can_see(self, audience: str) -> bool:
        """Shorthand for `can_see(self, audience)`."""
        return can_see(self, audience)


def can_see(relation: Relation, audience: str) -> bool:
    """True when a viewer in `relation` to the owner may see an item of `audience`."""
    if relation.is_owner:
        return True
    if relation.hidden:
        return False
    if audience == "public":
        return True
    if audience == "followers":
        return relation.follows
    if audience == "close_friends":
        return relation.close_friend
    return False
