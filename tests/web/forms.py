"""The forms of a page as a browser sees them: where each posts, what it sends, the label
of its button. Read with the standard library's parser, apart from the code under test."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    buttons: list[str] = field(default_factory=list)


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[Form] = []
        self._form: Form | None = None
        self._button: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {name: value or "" for name, value in attrs}
        if tag == "form":
            self._form = Form(attr.get("action", ""), attr.get("method", "get").lower())
            self.forms.append(self._form)
        elif self._form is not None and tag == "input" and "name" in attr:
            if attr.get("type") not in ("checkbox", "radio") or "checked" in attr:
                self._form.fields[attr["name"]] = attr.get("value", "")
        elif self._form is not None and tag == "button":
            self._button = []

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self._button.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "button" and self._form is not None and self._button is not None:
            self._form.buttons.append(" ".join("".join(self._button).split()))
            self._button = None
        elif tag == "form":
            self._form = None


def forms(html: str) -> list[Form]:
    parser = _Forms()
    parser.feed(html)
    return parser.forms


def form_with_button(html: str, label: str, action_part: str = "") -> Form:
    """The one form on the page whose button reads ``label`` (and whose action contains
    ``action_part``)."""
    found = [f for f in forms(html) if label in f.buttons and action_part in f.action]
    assert len(found) == 1, f"{len(found)} forms with a {label!r} button: {forms(html)}"
    return found[0]
