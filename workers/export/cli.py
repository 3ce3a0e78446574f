"""``fleet export bundle|verify|keygen|request`` and ``fleet vex export|verify``.

``bundle`` and ``vex export`` build a bundle from PostgreSQL and write it beside the
manifest; ``verify`` checks the manifest's DSSE signature with a public key and then
every listed file's sha256 and size, and exits 1 naming the first mismatch. The
composition root mounts ``vex_export``/``vex_verify`` under ``fleet vex``
(``docs/exports.md``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from workers import signing
from workers.clients import clients
from workers.errors import ExitCode
from workers.export import service
from workers.export.bundles import BundleError
from workers.shell import fail, out, run_async, settings

app = typer.Typer(
    help="Signed export bundles: build, verify, request from the export worker.",
    no_args_is_help=True,
)

ManifestOpt = Annotated[
    Path, typer.Option("--manifest", help="Manifest file; the bundle is written beside it.")
]
KeyOpt = Annotated[
    str | None,
    typer.Option("--key", help="ed25519 PEM key file; default FLEET_EXPORT_KEY_FILE."),
]


def _options(
    profile: str, fmt: str, tenant: str | None, since: str | None
) -> service.ExportOptions:
    raw = {"format": fmt}
    if tenant:
        raw["tenant"] = tenant
    if since:
        raw["since"] = since
    try:
        return service.parse_options(profile, raw)
    except BundleError as exc:
        raise fail(str(exc), ExitCode.USAGE) from None


def _write(options: service.ExportOptions, manifest: Path, key_file: str | None) -> None:
    cfg = settings()
    try:
        key = service.load_key(key_file or cfg.export_key_file)
    except signing.SigningError as exc:
        raise fail(str(exc), ExitCode.USAGE) from None

    async def go() -> service.Bundle:
        async with (
            clients(cfg, need=("postgres",), pool_size=1) as opened,
            opened.pool.acquire() as conn,
        ):
            return await service.build(conn, options)

    bundle = run_async(go)
    try:
        written = service.write_local(manifest, bundle, key)
    except OSError as exc:
        raise fail(f"{manifest}: cannot write the bundle: {exc.strerror or exc}") from None
    out.print(
        f"wrote {len(bundle.files)} file(s), {bundle.size} bytes, and {manifest} "
        f"(signed by key {signing.key_id(key.public_key())[:16]}…, "
        f"envelope {written[-1] if written else ''})",
        highlight=False,
        soft_wrap=True,
    )


def _public_key(key_file: str | None) -> Ed25519PublicKey:
    path = key_file or settings().export_key_file
    if not path:
        raise fail("no key: pass --key PUBLIC_KEY_FILE or set FLEET_EXPORT_KEY_FILE", 2)
    try:
        return signing.parse_public_key(signing.read_key_file(Path(path)), path)
    except signing.SigningError as exc:
        raise fail(str(exc), ExitCode.USAGE) from None


def _verify(manifest: Path, key_file: str | None) -> None:
    public = _public_key(key_file)
    if not manifest.is_file():
        raise fail(f"{manifest}: no such manifest", ExitCode.USAGE)
    try:
        checked, keyid = service.verify_local(manifest, public)
    except signing.VerificationError as exc:
        raise fail(f"{manifest}: verification failed ({exc.reason}): {exc}") from None
    except OSError as exc:
        raise fail(f"{manifest}: cannot read: {exc.strerror or exc}") from None
    out.print(
        f"{manifest}: signature ok (key {keyid[:16]}…), {checked} file(s) match their sha256",
        highlight=False,
        soft_wrap=True,
    )


@app.command("bundle")
def bundle(
    profile: Annotated[str, typer.Option("--profile", help="vex, scan-metrics or snapshots.")],
    manifest: ManifestOpt,
    fmt: Annotated[str, typer.Option("--format", help="vex profile: openvex or json.")] = "json",
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="scan-metrics: one tenant (UUID).")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="ISO 8601 time with offset: newer rows only.")
    ] = None,
    key: KeyOpt = None,
) -> None:
    """Build one profile's bundle and its signed manifest on local disk."""
    _write(_options(profile, fmt, tenant, since), manifest, key)


@app.command("verify")
def verify(manifest: ManifestOpt, key: KeyOpt = None) -> None:
    """Check the manifest's DSSE signature, then every file's sha256 and size."""
    _verify(manifest, key)


@app.command("keygen")
def keygen(
    path: Annotated[Path, typer.Argument(help="Private key file to create (PEM, mode 0600).")],
) -> None:
    """Make an ed25519 signing key; its public half is written to PATH.pub."""
    if path.exists():
        raise fail(f"{path}: exists; refusing to overwrite a key", ExitCode.USAGE)
    key = signing.generate_key()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_bytes(signing.private_pem(key))
        public = path.with_name(path.name + ".pub")
        public.write_bytes(signing.public_pem(key.public_key()))
    except OSError as exc:
        raise fail(f"{path}: cannot write: {exc.strerror or exc}") from None
    out.print(
        f"wrote {path} and {public} (key id {signing.key_id(key.public_key())})", highlight=False
    )


def vex_export(
    manifest: ManifestOpt,
    fmt: Annotated[str, typer.Option("--format", help="openvex or json.")] = "json",
    since: Annotated[
        str | None, typer.Option("--since", help="ISO 8601 time with offset: newer results only.")
    ] = None,
    key: KeyOpt = None,
) -> None:
    """Export the VEX consensus (deterministic files) with a signed manifest."""
    _write(_options("vex", fmt, None, since), manifest, key)


def vex_verify(manifest: ManifestOpt, key: KeyOpt = None) -> None:
    """Verify a VEX export: the manifest's signature and every file's sha256."""
    _verify(manifest, key)
