"""No block of six or more lines is written twice in the package: one piece of code serves
wherever the logic is the same. (The workplace's `duplicates` tool also finds blocks alike in
shape only; this guard keeps at least the exact copies out.)"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "snews_tasks"
RUN = 6


def code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines that carry code: no blanks, comments, imports or
    lone brackets, white space folded."""
    kept = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = " ".join(line.split())
        if (not text or text.startswith(("#", "import ", "from ")) or
                set(text) <= set("()[]{},:")):
            continue
        kept.append((number, text))
    return kept


def test_no_six_line_block_appears_twice() -> None:
    seen: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = code_lines(path)
        for i in range(len(lines) - RUN + 1):
            block = tuple(text for _, text in lines[i:i + RUN])
            seen[block].append(f"{path.relative_to(PACKAGE)}:{lines[i][0]}")
    repeated = {block: places for block, places in seen.items() if len(places) > 1}
    assert not repeated, "\n\n".join(
        " and ".join(places) + "\n" + "\n".join(block) for block, places in repeated.items())
