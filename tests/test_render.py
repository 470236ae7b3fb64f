"""Templates: HTML escapes what it is given, Markdown keeps it; a missing value is an error."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest

from lungseg.core.render import render

LABEL = "<script>alert(1)</script> & co"


def _page(**changes) -> dict:
    table = {"header": ["model", "mDice"], "rows": [[LABEL, "0.9000"]]}
    page = {
        "title": f"models on {LABEL}",
        "evaluated_on": "the test split (3 images)",
        "results": table,
        "verdict": f"{LABEL} has the highest mean Dice (0.9000).",
        "tests": {"header": ["model A", "model B"], "rows": []},
        "caption": f"worst image of {LABEL}: a.png",
        "settings": [(LABEL, "preprocessing seed")],
        "versions": {"lungseg": "0.1.0"},
        "images": {"curves": "AAAA", "samples": "BBBB"},
    }
    return {**page, **changes}


def test_html_report_escapes_user_text() -> None:
    page = render("report.html.j2", **_page())
    assert "<script" not in page
    assert "<h2>Results on the test split (3 images)</h2>" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page
    assert "<td>&lt;script&gt;alert(1)&lt;/script&gt; &amp; co</td><td>0.9000</td>" in page
    assert '<img alt="training curves" src="data:image/png;base64,AAAA">' in page


def test_markdown_report_keeps_text_as_given() -> None:
    md = render("report.md.j2", **_page())
    assert f"| {LABEL} | 0.9000 |" in md.splitlines()
    assert "| model A | model B |" not in md  # no pairs, no table of tests
    assert md.endswith("- lungseg: 0.1.0\n") and not md.endswith("\n\n")


def test_a_missing_value_is_an_error() -> None:
    page = _page()
    del page["caption"]
    with pytest.raises(jinja2.UndefinedError, match="caption"):
        render("report.md.j2", **page)


def test_templates_from_a_folder_with_filters(tmp_path: Path) -> None:
    (tmp_path / "card.md.j2").write_text("{{ value | twice }}\n{% if True %}\nok\n{% endif %}\n")
    text = render("card.md.j2", tmp_path, filters={"twice": lambda v: v * 2}, value="<a>")
    assert text == "<a><a>\nok\n"
