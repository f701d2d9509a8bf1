"""The catalog is configuration a deployment can replace, so its loader must refuse surprises."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.adapters.catalog_file import load_catalog
from service.domain.catalog import (
    DEFAULT_CATALOG,
    Catalog,
    CatalogError,
    TopicSpec,
    UnknownTopic,
    parse_catalog,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "catalog.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_file_equals_default_catalog() -> None:
    assert load_catalog(EXAMPLE) == DEFAULT_CATALOG


def test_default_catalog_contents() -> None:
    assert DEFAULT_CATALOG.channels == {"email", "sms", "push", "in_app", "voice", "whatsapp"}
    assert set(DEFAULT_CATALOG.topics) == {
        "marketing",
        "marketing.newsletter",
        "marketing.promotions",
        "product",
        "product.updates",
        "product.tips",
        "reminders",
        "data.analytics",
        "data.personalization",
        "data.sale",
        "security",
        "security.alerts",
        "transactional",
        "transactional.receipts",
    }
    assert "data" not in DEFAULT_CATALOG.topics
    assert all(spec.default_allowed for spec in DEFAULT_CATALOG.topics.values())
    mandatory = {n for n, s in DEFAULT_CATALOG.topics.items() if s.mandatory}
    assert mandatory == {"security", "security.alerts", "transactional", "transactional.receipts"}
    data_use = {n for n, s in DEFAULT_CATALOG.topics.items() if s.data_use}
    assert data_use == {"data.analytics", "data.personalization", "data.sale"}


def test_lineage_lists_topic_then_ancestors() -> None:
    assert DEFAULT_CATALOG.lineage("marketing.newsletter") == ("marketing.newsletter", "marketing")
    assert DEFAULT_CATALOG.lineage("reminders") == ("reminders",)
    assert DEFAULT_CATALOG.lineage("a.b.c") == ("a.b.c", "a.b", "a")


def test_lookups() -> None:
    assert DEFAULT_CATALOG.has_channel("email")
    assert not DEFAULT_CATALOG.has_channel("*")
    assert "*" not in DEFAULT_CATALOG.topics
    assert DEFAULT_CATALOG.is_mandatory("security.alerts")
    assert not DEFAULT_CATALOG.is_mandatory("*")
    assert not DEFAULT_CATALOG.is_mandatory("marketing")
    assert DEFAULT_CATALOG.is_data_use("data.sale")
    assert DEFAULT_CATALOG.channels_for("data.sale") == ("*",)
    assert "email" in DEFAULT_CATALOG.channels_for("marketing")
    assert DEFAULT_CATALOG.spec("reminders") == TopicSpec(
        "reminders", True, False, False, "Reminders"
    )
    with pytest.raises(UnknownTopic):
        DEFAULT_CATALOG.spec("nope")
    with pytest.raises(UnknownTopic):
        DEFAULT_CATALOG.spec("nope")


def test_children_inherit_flags_and_default(tmp_path: Path) -> None:
    catalog = load_catalog(
        write(
            tmp_path,
            """
channels = ["email"]
[topics."ops"]
mandatory = true
[topics."ops.pager"]
[topics."promo"]
default = "deny"
[topics."promo.flash"]
[topics."promo.flash.now"]
default = "allow"
""",
        )
    )
    assert catalog.spec("ops.pager").mandatory
    assert catalog.is_mandatory("ops.pager")
    assert not catalog.spec("promo").default_allowed
    assert not catalog.spec("promo.flash").default_allowed
    assert catalog.spec("promo.flash.now").default_allowed


def test_catalog_mapping_is_read_only() -> None:
    with pytest.raises(TypeError):
        DEFAULT_CATALOG.topics["x"] = TopicSpec("x")  # type: ignore[index]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('channels = []\n[topics."a"]\n', "channels"),
        ('[topics."a"]\n', "channels"),
        ('channels = ["email"]\n[topics."a"]\ndefault = "maybe"\n', "default"),
        ('channels = ["email"]\n[topics."a.b"]\n', "parent"),
        ('channels = ["email"]\n[topics."a"]\nmandatory = "yes"\n', "mandatory"),
        ('channels = ["email"]\n[topics."a"]\nmandtory = true\n', "unknown keys"),
        ('channels = ["email"]\n', "topics"),
        ('channels = ["email", "email"]\n[topics."a"]\n', "duplicates"),
        ('channels = ["*"]\n[topics."a"]\n', "channel"),
        ('channels = ["email"]\n[topics."*"]\n', "topic name"),
        (
            'channels = ["email"]\n[topics."a"]\nmandatory = true\n'
            '[topics."a.b"]\nmandatory = false\n',
            "contradicts",
        ),
        ('channels = ["email"]\n[topics."a"]\nmandatory = true\ndefault = "deny"\n', "mandatory"),
        ("channels = [\n", "TOML"),
        ('channels = ["email"]\nextra = 1\n[topics."a"]\n', "top-level"),
    ],
)
def test_bad_files_raise_catalog_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        load_catalog(write(tmp_path, text))


def test_missing_file_raises_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "absent.toml")


def test_data_use_topics_need_no_parent(tmp_path: Path) -> None:
    catalog = load_catalog(
        write(tmp_path, 'channels = ["email"]\n[topics."data.x"]\ndata_use = true\n')
    )
    assert catalog == Catalog(frozenset({"email"}), {"data.x": TopicSpec("data.x", data_use=True)})


def test_titles_name_topics_and_channels_for_people() -> None:
    assert DEFAULT_CATALOG.topic_label("marketing.newsletter") == "Newsletter"
    assert DEFAULT_CATALOG.topic_label("*") == "everything"
    assert DEFAULT_CATALOG.channel_label("sms") == "Text messages (SMS)"
    assert DEFAULT_CATALOG.channel_label("*") == "every channel"
    untitled = parse_catalog({"channels": ["email"], "topics": {"news": {}}})
    assert untitled.topic_label("news") == "news"
    assert untitled.channel_label("email") == "email"


def test_channel_titles_must_name_catalog_channels() -> None:
    with pytest.raises(CatalogError, match="channel_titles"):
        parse_catalog(
            {"channels": ["email"], "channel_titles": {"fax": "Fax"}, "topics": {"news": {}}}
        )
