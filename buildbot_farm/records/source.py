"""Source URLs down to the exact commit, from a repository URL and a revision.

Pure: no buildbot, no twisted. Forges are recognised by host name (``github.com``, hosts
containing ``gitlab``, ``gitea``, ``forgejo`` or ``codeberg``, ``bitbucket.org``) or named
explicitly through ``styles``; any other repository gets pip's VCS form ``git+URL@COMMIT``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

STYLES = ("github", "gitlab", "gitea", "bitbucket", "git")
_SCP_LIKE = re.compile(r"^(?:[\w.-]+@)?(?P<host>[\w.-]+):(?P<path>(?!//)[^\s]+)$")
_COMMIT_PATHS = {
    "github": "/commit/",
    "gitea": "/commit/",
    "gitlab": "/-/commit/",
    "bitbucket": "/commits/",
}


@dataclass(frozen=True)
class Source:
    """Where a build's source came from: repository, exact commit, branch, codebase."""

    repository: str
    commit: str
    branch: str | None = None
    codebase: str = ""

    def as_json(self) -> dict[str, str | None]:
        """The JSON form stored in a record."""
        return {
            "repository": self.repository,
            "commit": self.commit,
            "branch": self.branch,
            "codebase": self.codebase,
        }


def forge_style(host: str, styles: Mapping[str, str] | None = None) -> str:
    """The forge style of ``host``: one of :data:`STYLES` (``git`` when unknown)."""
    host = host.lower()
    if styles and host in styles:
        return styles[host]
    if host in ("github.com", "www.github.com"):
        return "github"
    if "gitlab" in host:
        return "gitlab"
    if any(word in host for word in ("gitea", "forgejo", "codeberg")):
        return "gitea"
    if host == "bitbucket.org":
        return "bitbucket"
    return "git"


def web_base(repository: str) -> tuple[str, str] | None:
    """``(host, https://host/owner/repo)`` for a repository URL, or None for local/plain ones.

    Accepts ``https://``, ``http://``, ``ssh://``, ``git://`` URLs and scp-like
    ``git@host:owner/repo.git``; credentials, ports of ssh/git URLs and ``.git`` are dropped.
    """
    scp = _SCP_LIKE.match(repository)
    if scp and "/" not in scp["host"]:
        host, path = scp["host"], scp["path"]
        scheme = "https"
    else:
        parts = urlsplit(repository)
        if parts.scheme not in ("http", "https", "ssh", "git") or not parts.hostname:
            return None
        host, path = parts.hostname, parts.path
        scheme = "http" if parts.scheme == "http" else "https"
        if parts.scheme in ("http", "https") and parts.port:
            host = f"{host}:{parts.port}"
    path = path.strip("/")
    if path.endswith(".git"):
        path = path[: -len(".git")]
    if not path:
        return None
    return host, f"{scheme}://{host}/{path}"


def commit_url(
    repository: str, commit: str, styles: Mapping[str, str] | None = None
) -> str:
    """The URL of ``commit`` in ``repository``.

    A forge's web page of the commit (``https://github.com/o/r/commit/SHA``,
    ``https://gitlab.example/o/r/-/commit/SHA`` ...), else ``git+REPOSITORY@SHA``.
    """
    base = web_base(repository)
    if base is not None:
        host, url = base
        style = forge_style(host.split(":")[0], styles)
        if style in _COMMIT_PATHS:
            return f"{url}{_COMMIT_PATHS[style]}{commit}"
    prefix = "" if repository.startswith("git+") else "git+"
    return f"{prefix}{repository}@{commit}"


def choose_source(sourcestamps: Sequence[Mapping[str, object]]) -> Source | None:
    """The source of a build: its first source stamp that has a repository and a revision."""
    for stamp in sourcestamps:
        repository, revision = stamp.get("repository"), stamp.get("revision")
        if isinstance(repository, str) and repository and isinstance(revision, str) and revision:
            branch = stamp.get("branch")
            codebase = stamp.get("codebase")
            return Source(
                repository=repository,
                commit=revision,
                branch=branch if isinstance(branch, str) else None,
                codebase=codebase if isinstance(codebase, str) else "",
            )
    return None


_HEX = r"[0-9a-fA-F]{7,64}"
# Commit pages of the forges, by what precedes the commit: (repository, commit) groups.
_COMMIT_PAGES = (
    re.compile(rf"^(?P<repository>https?://[^?#]+?)/-/commits?/(?P<commit>{_HEX})/?(?:[?#].*)?$"),
    re.compile(rf"^(?P<repository>https?://[^?#]+?)/commits?/(?P<commit>{_HEX})/?(?:[?#].*)?$"),
    re.compile(rf"^(?P<repository>https?://[^?#]+?)/commit/?\?(?:.*&)?id=(?P<commit>{_HEX})(?:[&#].*)?$"),
    re.compile(rf"^git\+(?P<repository>.+)@(?P<commit>{_HEX})$"),
)
_GITWEB = re.compile(r"^(?P<base>https?://[^?#]+)\?(?P<query>[^#]*)")


def source_of_url(url: str) -> Source | None:
    """The repository and commit a commit URL names, or None when it names no commit.

    Knows GitHub's and Gitea's ``/commit/SHA``, GitLab's ``/-/commit/SHA``, Bitbucket's
    ``/commits/SHA``, cgit's ``/commit/?id=SHA``, gitweb's ``?p=REPO;a=commit;h=SHA``
    and pip's ``git+URL@SHA``; the commit is answered in lower case.
    """
    for pattern in _COMMIT_PAGES:
        found = pattern.match(url)
        if found:
            return Source(repository=found["repository"], commit=found["commit"].lower())
    gitweb = _GITWEB.match(url)
    if gitweb:
        fields = dict(
            part.split("=", 1) for part in re.split(r"[;&]", gitweb["query"]) if "=" in part
        )
        commit = fields.get("h", "")
        if fields.get("a") == "commit" and re.fullmatch(_HEX, commit) and fields.get("p"):
            return Source(repository=f"{gitweb['base']}?p={fields['p']}", commit=commit.lower())
    return None
