"""Every Kafka client is built from the one connection helper; its settings fit together."""

from __future__ import annotations

import ast
import ssl
from pathlib import Path
from typing import Any

import pytest
from faststream.kafka.security import parse_security
from pydantic import SecretStr
from typer.testing import CliRunner

from service.adapters.kafka.broker import broker_security
from service.adapters.kafka.connection import KafkaConnection, KafkaSecurityError
from service.entrypoints.cli import app
from service.settings import Settings
from tests.support.secure_kafka import make_certificates

SERVICE = Path(__file__).resolve().parents[2] / "service"
CLIENT_CLASSES = {"AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaAdminClient", "KafkaBroker"}


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    make_certificates(directory)
    return directory


def test_plaintext_passes_the_address_alone() -> None:
    kwargs = KafkaConnection("k:9092").client_kwargs()
    assert kwargs == {"bootstrap_servers": "k:9092", "security_protocol": "PLAINTEXT"}


def test_sasl_ssl_verifies_the_broker_and_sends_the_credentials(certificates: Path) -> None:
    kafka = KafkaConnection(
        "k:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        username="worker",
        password="s3cret",
        ca_file=certificates / "ca.crt",
    )
    kwargs = kafka.client_kwargs()
    context = kwargs.pop("ssl_context")
    assert kwargs == {
        "bootstrap_servers": "k:9093",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "worker",
        "sasl_plain_password": "s3cret",
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert "s3cret" not in repr(kafka)


def test_mutual_tls_loads_the_client_certificate(certificates: Path) -> None:
    kafka = KafkaConnection(
        "k:9093",
        security_protocol="SSL",
        ca_file=certificates / "ca.crt",
        cert_file=certificates / "broker.crt",
        key_file=certificates / "broker.key",
    )
    assert isinstance(kafka.client_kwargs()["ssl_context"], ssl.SSLContext)
    with pytest.raises(KafkaSecurityError, match="could not be loaded"):
        KafkaConnection(
            "k:9093",
            security_protocol="SSL",
            cert_file=certificates / "ca.crt",  # a certificate without its key
            key_file=certificates / "ca.crt",
        ).client_kwargs()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
def test_the_worker_broker_gets_the_same_arguments(certificates: Path, mechanism: Any) -> None:
    """faststream turns ``broker_security`` back into exactly ``client_kwargs``."""
    kafka = KafkaConnection(
        "k:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism=mechanism,
        username="worker",
        password="pw",
        ca_file=certificates / "ca.crt",
    )
    from_faststream = parse_security(broker_security(kafka))
    ours = kafka.client_kwargs()
    assert set(from_faststream) == set(ours) - {"bootstrap_servers"}
    for name, value in ours.items():
        if name not in ("bootstrap_servers", "ssl_context"):
            assert from_faststream[name] == value
    tls_only = KafkaConnection("k:9093", security_protocol="SSL", ca_file=certificates / "ca.crt")
    assert parse_security(broker_security(tls_only))["security_protocol"] == "SSL"
    assert broker_security(KafkaConnection("k:9092")) is None


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        (
            {"security_protocol": "SASL_SSL"},
            "needs OPTOUT_KAFKA_USERNAME and OPTOUT_KAFKA_PASSWORD",
        ),
        ({"security_protocol": "SASL_SSL", "username": "w"}, "needs OPTOUT_KAFKA_USERNAME"),
        ({"username": "w", "password": "p"}, "set it to SASL_SSL"),
        ({"security_protocol": "SSL", "username": "w", "password": "p"}, "set it to SASL_SSL"),
        ({"ca_file": Path("/etc/hostname")}, "set it to SSL or SASL_SSL"),
        (
            {"security_protocol": "SSL", "cert_file": Path("/etc/hostname")},
            "go together",
        ),
        ({"security_protocol": "SSL", "ca_file": Path("/no/such.pem")}, "not a readable file"),
    ],
)
def test_an_inconsistent_combination_is_refused_in_one_line(
    fields: dict[str, Any], says: str
) -> None:
    with pytest.raises(KafkaSecurityError) as refused:
        KafkaConnection("k:9092", **fields)
    assert says in str(refused.value)
    assert "\n" not in str(refused.value)


def test_the_command_line_refuses_them_at_start_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The runner's captured output closes after the call: logging must not be bound to it.
    monkeypatch.setattr("service.entrypoints.cli.configure_logging", lambda *_: None)
    result = CliRunner().invoke(
        app,
        ["lag"],
        env={"OPTOUT_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "OPTOUT_KAFKA_USERNAME": "worker"},
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "optout: OPTOUT_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs OPTOUT_KAFKA_USERNAME and "
        "OPTOUT_KAFKA_PASSWORD"
    ]


def test_settings_reach_the_connection(certificates: Path) -> None:
    settings = Settings(
        kafka_bootstrap="k:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_username="worker",
        kafka_password=SecretStr("pw"),
        kafka_ca_file=certificates / "ca.crt",
    )
    kafka = KafkaConnection.from_settings(settings)
    assert (kafka.bootstrap, kafka.username, kafka.password) == ("k:9093", "worker", "pw")
    assert kafka.sasl_mechanism == "SCRAM-SHA-512"
    assert kafka.ca_file == certificates / "ca.crt"


# ------------------------------------------------------------- every client uses the helper


def unprotected_clients(source: str) -> list[int]:
    """Lines that build a Kafka client without the helper's arguments: an aiokafka client
    needs ``**<connection>.client_kwargs()``, the faststream broker
    ``security=broker_security(...)``; neither may name ``bootstrap_servers`` itself."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
        if name not in CLIENT_CLASSES:
            continue
        spread = [k.value for k in node.keywords if k.arg is None]
        named = {k.arg: k.value for k in node.keywords if k.arg is not None}
        if name == "KafkaBroker":
            security = named.get("security")
            ok = (
                isinstance(security, ast.Call)
                and getattr(security.func, "id", None) == "broker_security"
            )
        else:
            ok = "bootstrap_servers" not in named and any(
                isinstance(v, ast.Call) and getattr(v.func, "attr", None) == "client_kwargs"
                for v in spread
            )
        if not ok:
            found.append(node.lineno)
    return found


def test_the_checker_finds_a_client_built_without_the_helper() -> None:
    """Positive control for the test below."""
    bad = (
        "AIOKafkaConsumer(bootstrap_servers=b)\n"
        "aiokafka.AIOKafkaProducer(**other())\n"
        "AIOKafkaAdminClient(**kafka.client_kwargs(), bootstrap_servers=b)\n"
        "KafkaBroker(b, logger=None)\n"
    )
    assert unprotected_clients(bad) == [1, 2, 3, 4]
    good = (
        "AIOKafkaConsumer(**self._kafka.client_kwargs(), group_id=None)\n"
        "KafkaBroker(k.bootstrap, security=broker_security(k))\n"
    )
    assert unprotected_clients(good) == []


def test_every_kafka_client_of_the_service_passes_through_the_helper() -> None:
    constructions = 0
    offenders = []
    for path in sorted(SERVICE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        constructions += sum(source.count(f"{name}(") for name in CLIENT_CLASSES)
        offenders += [
            f"{path.relative_to(SERVICE.parent)}:{n}" for n in unprotected_clients(source)
        ]
    assert not offenders, f"Kafka clients built without KafkaConnection: {offenders}"
    assert constructions >= 10  # the walk found the service's clients
