"""Every setting is documented in the README's settings table, with its real default."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import SecretStr

from service.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def test_every_setting_has_a_row_with_its_default() -> None:
    for name, field in Settings.model_fields.items():
        variable = f"OPTOUT_{name.upper()}"
        row = re.search(rf"^\|[^\n]*`{variable}`[^\n]*$", README, re.MULTILINE)
        assert row is not None, f"{variable} is not in the README's settings table"
        default = field.default
        if isinstance(default, SecretStr) or default is None or default == "":
            continue
        if isinstance(default, bool):
            shown = str(default).lower()
        elif isinstance(default, float) and default.is_integer():
            shown = str(int(default))
        else:
            shown = str(default)
        assert shown in row.group(0), f"{variable}: README does not show the default {shown}"
