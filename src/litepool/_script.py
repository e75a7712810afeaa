"""Splitting an SQL script into statements, the way SQLite's tokenizer sees them.

:meth:`Connection.executescript` runs a script statement by statement instead of with
:meth:`sqlite3.Cursor.executescript`, which commits a pending transaction first. Finding
where each statement ends means knowing which ``;`` are inside string literals, quoted
names, comments and ``CREATE TRIGGER ... BEGIN ... END`` bodies. Asking
:func:`sqlite3.complete_statement` at every ``;`` does that, but each call reads the
statement from its start, so a long statement with many ``;`` in its literals took
seconds. This module runs the same state machine as ``sqlite3_complete()`` (SQLite's
``complete.c``) once over the script, in time linear in its length.
"""

from __future__ import annotations

import re
from typing import Final

# Tokens of sqlite3_complete(): a semicolon, white space (comments included), a word
# (keyword or unquoted name: SQLite's IdChar is [A-Za-z0-9_$] and every non-ASCII
# character) and anything else, quoted strings and names included. An unterminated
# comment or quote runs to the end of the script, which then ends incomplete.
_TOKENS: Final = re.compile(
    r"""
      (?P<semi>;)
    | (?P<ws>[ \t\n\f\r]+|/\*.*?(?:\*/|\Z)|--[^\n]*)
    | (?P<word>[A-Za-z0-9_$\u0080-\U0010ffff]+)
    | (?P<other>'[^']*'?|"[^"]*"?|`[^`]*`?|\[[^\]]*\]?|.)
    """,
    re.VERBOSE | re.DOTALL,
)

_SEMI, _WS, _OTHER, _EXPLAIN, _CREATE, _TEMP, _TRIGGER, _END = range(8)

_KEYWORDS: Final = {
    "explain": _EXPLAIN,
    "create": _CREATE,
    "temp": _TEMP,
    "temporary": _TEMP,
    "trigger": _TRIGGER,
    "end": _END,
}

# complete.c's transition table: _TRANSITIONS[state][token]. State 1 means "a statement
# has just ended"; states 5-7 are inside a trigger body, where ';' does not end it.
_TRANSITIONS: Final = (
    # SEMI WS OTHER EXPLAIN CREATE TEMP TRIGGER END
    (1, 0, 2, 3, 4, 2, 2, 2),  # 0 invalid
    (1, 1, 2, 3, 4, 2, 2, 2),  # 1 start
    (1, 2, 2, 2, 2, 2, 2, 2),  # 2 normal
    (1, 3, 3, 2, 4, 2, 2, 2),  # 3 explain
    (1, 4, 2, 2, 2, 4, 5, 2),  # 4 create
    (6, 5, 5, 5, 5, 5, 5, 5),  # 5 trigger
    (6, 6, 5, 5, 5, 5, 5, 7),  # 6 semi (in a trigger)
    (1, 7, 5, 5, 5, 5, 5, 5),  # 7 end (of a trigger)
)


def split_script(script: str) -> list[str]:
    """The statements of ``script``, each ending with its ``;`` (the last may have none).

    Pieces with nothing but white space and semicolons are left out; a statement left
    incomplete at the end of the script is returned as it is, so that running it raises
    SQLite's own error.
    """
    statements: list[str] = []
    transitions = _TRANSITIONS
    keywords = _KEYWORDS
    state = 0
    start = 0
    for match in _TOKENS.finditer(script):
        kind = match.lastgroup
        if kind == "semi":
            state = transitions[state][_SEMI]
            if state == 1:
                end = match.end()
                statement = script[start:end]
                if statement.strip(" \t\r\n;"):
                    statements.append(statement)
                start = end
        elif kind == "ws":
            state = transitions[state][_WS]
        elif kind == "word":
            token = keywords.get(match.group().lower(), _OTHER) if state != 2 else _OTHER
            state = transitions[state][token]
        else:
            state = transitions[state][_OTHER]
    tail = script[start:]
    if tail.strip():
        statements.append(tail)
    return statements
