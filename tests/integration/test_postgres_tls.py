"""PostgreSQL over TLS: ``sslmode`` and ``sslrootcert`` in ``OPTOUT_DATABASE_URL`` reach asyncpg.

A throwaway PostgreSQL with ``ssl=on`` and a certificate made here with ``openssl``, signed
by a CA made here too, whose pg_hba.conf refuses every connection without TLS: whatever
connects (migrations, the worker's pool, the SDK) works only if it passed the DSN's
``sslmode`` on unchanged.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from service.bootstrap import run_migrations
from service.client import OptoutClient
from service.entrypoints.server import Service
from service.settings import Settings
from tests.support.contract_client import ContractClient, command
from tests.support.ports import free_port
from tests.support.throwaway import ThrowawayPostgres, throwaway_postgres

pytestmark = pytest.mark.integration

SSL_OF_THIS_CONNECTION = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
# Every connection of the service's pools (application_name "optout"): TLS or not.
SSL_OF_THE_SERVICE = (
    "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
    " WHERE a.application_name = 'optout'"
)


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_certificate: Path
    server_key: Path
    another_ca: Path


def make_certificates(directory: Path) -> Certificates:
    """A CA, a server certificate it signs for 127.0.0.1 and localhost, and an unrelated CA.

    PostgreSQL refuses a key readable by others, and runs as ``postgres`` (``runuser``) when
    the tests run as root: the key is mode 0600 and owned by ``postgres``.
    """

    def openssl(arguments: str) -> None:
        subprocess.run(
            ["openssl", *arguments.split()], check=True, capture_output=True, cwd=directory
        )

    new_key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    openssl(f"req -x509 {new_key} -keyout ca.key -out ca.crt -days 2 -subj /CN=optout-test-ca")
    openssl(f"req -new {new_key} -keyout server.key -out server.csr -subj /CN=127.0.0.1")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt"
        " -days 2 -extfile san.ext"
    )
    openssl(
        f"req -x509 {new_key} -keyout another-ca.key -out another-ca.crt -days 2"
        " -subj /CN=another-ca"
    )
    key = directory / "server.key"
    key.chmod(0o600)
    if os.geteuid() == 0:
        for path in (directory, key, directory / "server.crt"):
            shutil.chown(path, "postgres", "postgres")
    return Certificates(
        ca=directory / "ca.crt",
        server_certificate=directory / "server.crt",
        server_key=key,
        another_ca=directory / "another-ca.crt",
    )


@dataclass(frozen=True)
class TlsPostgres:
    server: ThrowawayPostgres
    certificates: Certificates

    def url(self, query: str) -> str:
        return f"{self.server.url}?{query}"


@pytest.fixture(scope="module")
def tls_postgres() -> Iterator[TlsPostgres]:
    directory = Path(tempfile.mkdtemp(prefix="optout-tls-", dir="/var/tmp"))
    try:
        certificates = make_certificates(directory)
        tls = {
            "ssl": "on",
            "ssl_cert_file": str(certificates.server_certificate),
            "ssl_key_file": str(certificates.server_key),
        }
        with throwaway_postgres(free_port(), tls) as server:
            hba = server.data / "pg_hba.conf"
            hba.write_text("hostnossl all all all reject\n" + hba.read_text())
            server.reload()
            yield TlsPostgres(server, certificates)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def over(settings: Settings, url: str) -> Settings:
    return settings.model_copy(update={"database_url": SecretStr(url)})


async def test_without_tls_the_server_refuses(
    settings: Settings, tls_postgres: TlsPostgres
) -> None:
    """The control: the DSN's sslmode is what decides, and this server takes TLS only."""
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
        await run_migrations(over(settings, tls_postgres.url("sslmode=disable")))


async def test_migrations_worker_and_sdk_over_sslmode_require(
    settings: Settings, tls_postgres: TlsPostgres
) -> None:
    own = over(settings, tls_postgres.url("sslmode=require"))
    assert "0001_core" in await run_migrations(own)
    subject = "tls-user"
    async with Service(own, with_worker=True) as service, ContractClient(own) as stack:
        outcome = await stack.apply(command(subject, [("opt_out", "marketing", "email")]))
        assert outcome["status"] == "applied"
        assert service.container is not None
        assert await service.container.pool.fetchval(SSL_OF_THIS_CONNECTION) is True
        assert {r["ssl"] for r in await service.container.pool.fetch(SSL_OF_THE_SERVICE)} == {True}
    async with await OptoutClient.connect(own, local_cache=False) as client:
        # A subject Redis has never seen is read from PostgreSQL through the SDK's pool.
        assert (await client.preferences("tls-nobody")).state.version == 0
        assert not (await client.is_allowed(subject, "marketing.newsletter", "email")).allowed
        conn = await asyncpg.connect(own.database_dsn)
        try:
            assert await conn.fetchval(SSL_OF_THIS_CONNECTION) is True
            assert {r["ssl"] for r in await conn.fetch(SSL_OF_THE_SERVICE)} == {True}
        finally:
            await conn.close()


async def test_verify_full_with_the_servers_ca(
    settings: Settings, tls_postgres: TlsPostgres
) -> None:
    ca = tls_postgres.certificates.ca
    own = over(settings, tls_postgres.url(f"sslmode=verify-full&sslrootcert={ca}"))
    await run_migrations(own)
    async with Service(own, with_worker=False) as service:
        assert service.container is not None
        assert await service.container.pool.fetchval(SSL_OF_THIS_CONNECTION) is True
    async with await OptoutClient.connect(own, local_cache=False) as client:
        assert (await client.preferences("verified")).state.version == 0


async def test_verify_full_with_another_ca_fails_with_one_clear_error(
    settings: Settings, tls_postgres: TlsPostgres
) -> None:
    wrong = tls_postgres.certificates.another_ca
    own = over(settings, tls_postgres.url(f"sslmode=verify-full&sslrootcert={wrong}"))
    # No fallback to a connection without verification, no retry: the refused certificate.
    with pytest.raises(ssl.SSLCertVerificationError):
        await run_migrations(own)
    # A service starts anyway (as during an outage) and says why it is not ready.
    admin = f"http://127.0.0.1:{own.admin_port}"
    async with Service(own, with_worker=False), httpx.AsyncClient(base_url=admin) as http:
        ready = await http.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["postgresql"].startswith("SSLCertVerificationError")
    # The SDK connects lazily: its first PostgreSQL read refuses the certificate.
    async with await OptoutClient.connect(own, local_cache=False) as sdk:
        with pytest.raises(ssl.SSLCertVerificationError):
            await sdk.is_allowed("never-cached-tls", "reminders", "sms")
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("optout")),
        "migrate",
        env={**os.environ, **own.as_environment()},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 1
    assert out == b""
    (line,) = err.decode().splitlines()
    assert line.startswith("optout migrate: PostgreSQL at ")
    assert line.endswith(
        " did not answer (SSLCertVerificationError: unable to get local issuer certificate)"
    )
