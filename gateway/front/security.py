"""What the front enforces beyond routing, rendered from the config: SIP over TLS (tls.cfg,
the tls module), inbound digest per trunk, the scanner User-Agents it drops. Pure text but
for reading the private key when it has a passphrase.

Inbound digest passwords never enter a rendered file: the script reads each one from the
front's environment (`$env(NAME)`, `front_environment`), which the node sets when it starts
Kamailio; an operator who runs the front sets the same variables.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization

from gateway.config import Config, TlsSettings, Trunk

# User-Agents of SIP scanners (sipvicious's svmap/svwar/svcrack send friendly-scanner);
# a request carrying one is dropped without an answer. Kamailio's =~ ignores case.
SCANNER_USER_AGENTS = (
    "friendly-scanner|friendly-request|sipvicious|sipcli|sip-scan|sipsak|sundayddr|iWar|"
    "SIVuS|VaxSIPUserAgent|VaxIPUserAgent|pplsip|siparmyknife"
)


def auth_env_name(trunk: Trunk) -> str:
    """The front's environment variable holding `trunk`'s inbound digest password."""
    return "SIPEDGE_AUTH_" + trunk.id.upper().replace("-", "_")


def front_environment(config: Config) -> dict[str, str]:
    """The variables the front's script reads the inbound digest passwords from."""
    return {
        auth_env_name(t): t.inbound_auth.password.get_secret_value()
        for t in config.trunks
        if t.inbound_auth is not None
    }


def tls_module(config: Config, tls_cfg: Path) -> str:
    """The tls module's lines (after the other modules), reading `tls_cfg`, when sip.tls is
    set."""
    if config.sip.tls is None:
        return ""
    return "\n".join([
        'loadmodule "tls.so"',
        f'modparam("tls", "config", "{tls_cfg}")',
        # A handshake that fails is logged by the module itself (ERROR, with OpenSSL's reason).
        'modparam("tls", "tls_log", 1)',
    ])  # fmt: skip


def tls_config(config: Config, decrypted_key_path: Path) -> str | None:
    """tls.cfg: the front's certificate for carriers that connect (a client certificate is
    asked for only when a trunk requires one, and must then chain to ca_file), and the
    carriers' certificates checked against ca_file when the front connects. A key with a
    passphrase is read from `decrypted_key_path` (`decrypted_key` writes it there)."""
    tls = config.sip.tls
    if tls is None:
        return None
    method = "TLSv1.2+"  # tls.min_version: 1.2 and 1.3, never older
    key = decrypted_key_path if tls.private_key_password is not None else tls.private_key
    ask_client = any(t.tls_client_certificate for t in config.trunks)
    return "\n".join([
        "# rendered by sipedge from sip.tls",
        "[server:default]",
        f"method = {method}",
        f"certificate = {tls.certificate}",
        f"private_key = {key}",
        f"ca_list = {tls.ca_file}",
        f"verify_certificate = {'yes' if ask_client else 'no'}",
        "require_certificate = no",  # the script refuses a trunk's calls without one
        "",
        "[client:default]",
        f"method = {method}",
        f"ca_list = {tls.ca_file}",
        "verify_certificate = yes",
        "require_certificate = yes",
        "",
    ])  # fmt: skip


def decrypted_key(tls: TlsSettings) -> str | None:
    """The private key without its passphrase (PEM), None when it has none. Kamailio would
    ask for the passphrase on its terminal; the front gets the key in its run directory."""
    if tls.private_key_password is None:
        return None
    with open(tls.private_key, "rb") as f:
        key = serialization.load_pem_private_key(
            f.read(), password=tls.private_key_password.get_secret_value().encode()
        )
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def trunk_security(config: Config) -> list[str]:
    """route[TRUNK_SECURITY]'s body: for trunk $var(trunk), whether its calls need a verified
    client certificate ($var(cert)) and digest ($var(auth): user, realm, password)."""
    out: list[str] = []
    for trunk in config.trunks:
        auth = trunk.inbound_auth
        if auth is None and not trunk.tls_client_certificate:
            continue
        out.append(f'\tif ($var(trunk) == "{trunk.id}") {{')
        if trunk.tls_client_certificate:
            # $tls_peer_verified: the certificate the caller presented chains to ca_file.
            out += [
                "\t\t$var(cert) = 1;",
                '\t\tif ($pr == "tls" && $tls_peer_verified == 1) {',
                "\t\t\t$var(cert_ok) = 1;",
                "\t\t}",
            ]
        if auth is not None:
            out += [
                "\t\t$var(auth) = 1;",
                f'\t\t$var(auth_user) = "{auth.username}";',
                f'\t\t$var(auth_realm) = "{auth.realm}";',
                f"\t\t$var(auth_password) = $env({auth_env_name(trunk)});",
            ]
        out.append("\t}")
    return out
