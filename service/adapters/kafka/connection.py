"""How every Kafka client of the project reaches the brokers: address, TLS and SASL.

One place turns the ``OPTOUT_KAFKA_*`` settings into the keyword arguments of aiokafka's
clients (producers, consumers, admin clients; the worker's faststream broker gets the same
through ``broker.broker_security``). A client built any other way would silently talk
PLAINTEXT to a broker that expects TLS: ``tests/unit/test_kafka_connection.py`` fails when a
construction site in ``service/`` does not pass through ``client_kwargs``.

The SDK imports this module too, so it must not import faststream.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from aiokafka import errors as kafka_errors
from aiokafka.conn import create_conn
from aiokafka.helpers import create_ssl_context

if TYPE_CHECKING:
    from service.settings import Settings

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_SSL"]
SaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]


class KafkaSecurityError(ValueError):
    """An inconsistent combination of Kafka security settings; its message is one line."""


class KafkaUnreachable(Exception):
    """Kafka could not be used; the message says why in one line (``connection_problem``)."""


@dataclass(frozen=True, slots=True)
class KafkaConnection:
    """The brokers' address and the credentials to reach them (PLAINTEXT by default)."""

    bootstrap: str
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    username: str = ""
    password: str = field(default="", repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise KafkaSecurityError(problem)

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaConnection:
        return cls(
            bootstrap=settings.kafka_bootstrap,
            security_protocol=settings.kafka_security_protocol,
            sasl_mechanism=settings.kafka_sasl_mechanism,
            username=settings.kafka_username,
            password=settings.kafka_password.get_secret_value(),
            ca_file=settings.kafka_ca_file,
            cert_file=settings.kafka_cert_file,
            key_file=settings.kafka_key_file,
        )

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol == "SASL_SSL"

    def problem(self) -> str | None:
        """What is inconsistent in these settings, in one line naming the settings; or None.

        PLAINTEXT with credentials or certificates is refused rather than ignored: whoever
        set them meant the connection to be protected.
        """
        if self.uses_sasl and not (self.username and self.password):
            return (
                "OPTOUT_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs OPTOUT_KAFKA_USERNAME and "
                "OPTOUT_KAFKA_PASSWORD"
            )
        if not self.uses_sasl and (self.username or self.password):
            return (
                "OPTOUT_KAFKA_USERNAME/OPTOUT_KAFKA_PASSWORD are set but "
                f"OPTOUT_KAFKA_SECURITY_PROTOCOL is {self.security_protocol}: set it to SASL_SSL"
            )
        if not self.uses_tls and (self.ca_file or self.cert_file or self.key_file):
            return (
                "OPTOUT_KAFKA_CA_FILE/CERT_FILE/KEY_FILE are set but "
                "OPTOUT_KAFKA_SECURITY_PROTOCOL is PLAINTEXT: set it to SSL or SASL_SSL"
            )
        if (self.cert_file is None) != (self.key_file is None):
            return "OPTOUT_KAFKA_CERT_FILE and OPTOUT_KAFKA_KEY_FILE go together (mutual TLS)"
        for name, path in (
            ("OPTOUT_KAFKA_CA_FILE", self.ca_file),
            ("OPTOUT_KAFKA_CERT_FILE", self.cert_file),
            ("OPTOUT_KAFKA_KEY_FILE", self.key_file),
        ):
            if path is not None and not path.is_file():
                return f"{name}={path} is not a readable file"
        return None

    def ssl_context(self) -> ssl.SSLContext | None:
        """A context that verifies the brokers' certificates and host names (the CA file's,
        or the system's when none is given) and presents the client certificate if set."""
        if not self.uses_tls:
            return None
        try:
            context: ssl.SSLContext = create_ssl_context(
                cafile=self.ca_file, certfile=self.cert_file, keyfile=self.key_file
            )
        except (OSError, ssl.SSLError) as exc:
            raise KafkaSecurityError(
                f"Kafka TLS files could not be loaded ({type(exc).__name__}: {exc})"
            ) from exc
        return context

    def client_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of every aiokafka client: address, TLS and SASL."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
        }
        if self.uses_tls:
            kwargs["ssl_context"] = self.ssl_context()
        if self.uses_sasl:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.username
            kwargs["sasl_plain_password"] = self.password
        return kwargs

    def where(self) -> str:
        """For log lines and errors: the address and protocol, never a credential."""
        who = f" as {self.username}" if self.uses_sasl else ""
        return f"{self.bootstrap} ({self.security_protocol}{who})"


async def connection_problem(kafka: KafkaConnection, *, timeout_seconds: float = 5.0) -> str | None:
    """Why a client cannot connect, in one line, or None when a connection succeeds.

    aiokafka logs the cause of a failed bootstrap and raises only "Unable to bootstrap": this
    opens one connection to each bootstrap address, TLS and SASL included, to say whether
    the broker is not answering, refused the certificate, or refused the credentials. The
    line names the user, never the password.
    """
    reasons = []
    for address in kafka.bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        kwargs = kafka.client_kwargs()
        del kwargs["bootstrap_servers"]
        try:
            conn = await asyncio.wait_for(
                create_conn(host.strip("[]"), int(port), **kwargs), timeout_seconds
            )
        except (kafka_errors.SaslAuthenticationFailed, kafka_errors.AuthenticationFailedError):
            return (
                f"authentication failed as {kafka.username!r} with {kafka.sasl_mechanism}:"
                " wrong user name or password"
            )
        except kafka_errors.UnsupportedSaslMechanismError:
            return f"the broker does not accept {kafka.sasl_mechanism}"
        except ssl.SSLCertVerificationError as exc:
            return f"TLS: the broker's certificate was refused ({exc.verify_message})"
        except ssl.SSLError as exc:
            reasons.append(f"TLS handshake failed ({exc.reason})")
        except TimeoutError:
            reasons.append(f"no answer within {timeout_seconds:g} s")
        except (OSError, kafka_errors.KafkaError) as exc:
            reasons.append(type(exc).__name__)
        else:
            conn.close()
            return None
    return "; ".join(dict.fromkeys(reasons)) or None


async def explained(kafka: KafkaConnection, exc: BaseException) -> BaseException:
    """``KafkaUnreachable`` saying why, when `exc` came from a connection that fails; else
    `exc` itself (the connection works: the failure was something else)."""
    if not isinstance(exc, kafka_errors.KafkaError | OSError | TimeoutError):
        return exc
    problem = await connection_problem(kafka)
    return exc if problem is None else KafkaUnreachable(problem)
