"""A throwaway Kafka broker with a SASL_SSL listener, SCRAM credentials and ACLs.

The same jars and KRaft single node as ``throwaway.ThrowawayKafka``; in addition:

- certificates made with ``openssl`` in the broker's directory: a CA and a broker certificate
  for 127.0.0.1 and localhost, which clients verify (host name included);
- the only client listener is SASL_SSL, with SCRAM-SHA-512 and SCRAM-SHA-256 credentials
  written by the storage tool's ``format --add-scram`` before the first start;
- ``StandardAuthorizer`` with no ACL meaning no access; ``admin`` is a super user, and so is
  the anonymous principal of the PLAINTEXT controller listener, which only the broker part
  of this same process uses (loopback, test only);
- ACLs added with Kafka's own ``AclCommand`` (org.apache.kafka.tools, in the same jars).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.throwaway import ThrowawayKafka, _kafka_libs

SCRAM_LOGIN = "org.apache.kafka.common.security.scram.ScramLoginModule"


def make_certificates(directory: Path) -> None:
    """ca.crt, and broker.pem (key and certificate) for 127.0.0.1 and localhost."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=optout test CA", "-keyout", "ca.key", "-out", "ca.crt",
    )  # fmt: skip
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", "broker.key", "-out", "broker.csr",
    )  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "x509", "-req", "-in", "broker.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "broker.crt",
    )  # fmt: skip
    (directory / "broker.pem").write_text(
        (directory / "broker.key").read_text() + (directory / "broker.crt").read_text()
    )


@dataclass(frozen=True)
class Grant:
    """One ``AclCommand --add``: every operation on every named resource."""

    principal: str
    operations: Sequence[str]
    topics: Sequence[str] = ()
    groups: Sequence[str] = ()
    cluster: bool = False

    def arguments(self) -> list[str]:
        args = ["--add", "--allow-principal", f"User:{self.principal}"]
        for operation in self.operations:
            args += ["--operation", operation]
        for topic in self.topics:
            args += ["--topic", topic]
        for group in self.groups:
            args += ["--group", group]
        if self.cluster:
            args.append("--cluster")
        return args


@dataclass
class SecureKafka(ThrowawayKafka):
    passwords: dict[str, str] = field(default_factory=dict)

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.crt"

    def listener_properties(self) -> list[str]:
        admin = self.passwords["admin"]
        return [
            f"listeners=SASL_SSL://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=SASL_SSL://127.0.0.1:{self.port}",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
            "inter.broker.listener.name=SASL_SSL",
            "sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256",
            "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
            f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={SCRAM_LOGIN} required "
            f'username="admin" password="{admin}";',
            f"listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={SCRAM_LOGIN} required;",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={self.directory / 'broker.pem'}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.ca_file}",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users=User:admin;User:ANONYMOUS",
            "allow.everyone.if.no.acl.found=false",
        ]

    def format_arguments(self) -> list[str]:
        args = []
        for name, password in self.passwords.items():
            for mechanism in ("SCRAM-SHA-512", "SCRAM-SHA-256"):
                args += ["--add-scram", f"{mechanism}=[name={name},password={password}]"]
        return args

    def settings_for(self, user: str, password: str | None = None) -> dict[str, object]:
        """``Settings`` fields that connect as `user` (with its password unless given)."""
        from pydantic import SecretStr

        return {
            "kafka_bootstrap": self.bootstrap,
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_username": user,
            "kafka_password": SecretStr(password if password is not None else self.passwords[user]),
            "kafka_ca_file": self.ca_file,
        }

    def grant(self, grants: Sequence[Grant]) -> None:
        """Add the ACLs, each ``AclCommand`` in a JVM of its own, all at once."""
        config = self.directory / "admin.properties"
        config.write_text(
            "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n"
            f'sasl.jaas.config={SCRAM_LOGIN} required username="admin" '
            f'password="{self.passwords["admin"]}";\n'
            f"ssl.truststore.type=PEM\nssl.truststore.location={self.ca_file}\n"
        )
        running = [
            subprocess.Popen(
                [
                    "java",
                    "-Xms64m",
                    "-Xmx256m",
                    f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}",
                    "-cp",
                    f"{_kafka_libs()}/*",
                    "org.apache.kafka.tools.AclCommand",
                    "--bootstrap-server",
                    self.bootstrap,
                    "--command-config",
                    str(config),
                    *g.arguments(),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for g in grants
        ]
        for grant, process in zip(grants, running, strict=True):
            out, _ = process.communicate(timeout=180)
            if process.returncode != 0:
                raise RuntimeError(f"AclCommand {grant} failed: {out.decode()[-2000:]}")


@contextmanager
def secure_kafka(port: int, controller_port: int, users: Sequence[str]) -> Iterator[SecureKafka]:
    """A SASL_SSL broker with a SCRAM credential (random password) for `admin` and `users`."""
    directory = Path(tempfile.mkdtemp(prefix="optout-kafka-sasl-"))
    passwords = {name: secrets.token_urlsafe(18) for name in ("admin", *users)}
    instance = SecureKafka(
        port=port, controller_port=controller_port, directory=directory, passwords=passwords
    )
    try:
        make_certificates(directory)
        instance.format()
        instance.start()
        yield instance
    finally:
        instance.stop()
        if not os.environ.get("OPTOUT_KEEP_KAFKA"):
            shutil.rmtree(directory, ignore_errors=True)
