"""Where data files live, and the credentials to reach object storage, from the environment only.

A warehouse's data path is a local folder or an S3 URL (`s3://bucket/prefix/`, any
S3-compatible server). Credentials are never part of a warehouse's config: they come
from the standard AWS variables of the process that opens it, and reach DuckDB as a
temporary secret (gone with the connection) and pyarrow (Ray workers reading and writing
Parquet directly) as a filesystem object.

    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN   the key (the token is optional)
    AWS_REGION or AWS_DEFAULT_REGION                              default us-east-1
    AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL                       another S3 server, e.g. http://127.0.0.1:9000
    FACTORY_S3_URL_STYLE                                          path (default with an endpoint) or vhost
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from factory.errors import SetupError


def is_remote(path: str) -> bool:
    """Whether a data path is a URL (object storage) rather than a local folder."""
    return "://" in path


@dataclass(frozen=True)
class S3Settings:
    key_id: str
    secret: str
    region: str
    session_token: str | None = None
    endpoint: str | None = None  # host:port, no scheme
    use_ssl: bool = True
    url_style: str = "vhost"

    def __repr__(self) -> str:  # never print the secret
        return f"S3Settings(key_id={self.key_id!r}, region={self.region!r}, endpoint={self.endpoint!r})"


def s3_settings(environ: dict[str, str] | None = None) -> S3Settings | None:
    """The S3 credentials and endpoint in the environment; None when no key is set."""
    env = os.environ if environ is None else environ
    key_id, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if not key_id and not secret:
        return None
    if not key_id or not secret:
        raise SetupError("set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (one of them is empty)")
    endpoint_url = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    endpoint, use_ssl = None, True
    if endpoint_url:
        parts = urlsplit(endpoint_url if "://" in endpoint_url else "https://" + endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SetupError(
                f"AWS_ENDPOINT_URL {endpoint_url!r} is not an http(s) URL such as http://host:9000"
            )
        endpoint, use_ssl = parts.netloc, parts.scheme == "https"
    style = env.get("FACTORY_S3_URL_STYLE") or ("path" if endpoint else "vhost")
    if style not in ("path", "vhost"):
        raise SetupError(f"FACTORY_S3_URL_STYLE must be path or vhost, not {style!r}")
    return S3Settings(
        key_id=key_id,
        secret=secret,
        region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        session_token=env.get("AWS_SESSION_TOKEN") or None,
        endpoint=endpoint,
        use_ssl=use_ssl,
        url_style=style,
    )


def arrow_filesystem(path: str, settings: S3Settings | None = None) -> tuple[object, str]:
    """A pyarrow filesystem for a data path and the path as that filesystem names it."""
    import pyarrow.fs as pafs

    if not is_remote(path):
        return pafs.LocalFileSystem(), path
    scheme, _, rest = path.partition("://")
    if scheme != "s3":
        raise SetupError(f"{path}: only s3:// data paths can be read by workers (not {scheme}://)")
    settings = settings or s3_settings()
    if settings is None:
        return pafs.S3FileSystem(), rest
    return pafs.S3FileSystem(
        access_key=settings.key_id,
        secret_key=settings.secret,
        session_token=settings.session_token,
        region=settings.region,
        endpoint_override=settings.endpoint,
        scheme="https" if settings.use_ssl else "http",
        force_virtual_addressing=settings.url_style == "vhost" and settings.endpoint is None,
    ), rest


SCRATCH = "scratch"  # <data path>/scratch/<job id>-<tag>/: a job's files for and from Ray workers


def scratch_url(data_path: str, name: str) -> str:
    return data_path.rstrip("/") + f"/{SCRATCH}/{name}/"


def remove_scratch(data_path: str, job_id: str) -> None:
    """Remove a killed job's scratch folders (it committed nothing; its files are orphans)."""
    import pyarrow.fs as pafs

    try:
        filesystem, root = arrow_filesystem(scratch_url(data_path, ""))
        for entry in filesystem.get_file_info(pafs.FileSelector(root.rstrip("/"), allow_not_found=True)):
            if entry.base_name.startswith(job_id + "-"):
                filesystem.delete_dir(entry.path)
    except (OSError, SetupError):  # storage unreachable now: the orphans stay, nothing else is affected
        return
