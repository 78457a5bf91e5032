"""The repository's HTTP and bad-input tests again, against the repository on its own port
(streaming uploads) instead of mounted in a plain twisted.web site.

Left out: ``test_mkcol_propfind_and_delete``, which checks hrefs under the mounted path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_twisted

from tests.artifacts.conftest import StartRepository
from tests.artifacts.test_bad_input import (  # noqa: F401
    test_a_full_disk_is_507_with_nothing_partial,
    test_absolute_url_paths_stay_in_the_repository,
    test_an_upload_cut_off_leaves_nothing_and_the_retry_works,
    test_digest_headers_are_verified,
    test_oversize_uploads_are_413_with_nothing_left,
    test_path_escapes_are_refused,
    test_symlinks_in_storage_are_not_followed,
    test_wrong_expired_revoked_and_foreign_tokens,
)
from tests.artifacts.test_http import (  # noqa: F401
    test_bearer_works_and_existing_files_stay,
    test_listings_in_json_and_html,
    test_overwrite_when_configured,
    test_put_then_get_with_etag_length_and_range,
)
from tests.artifacts.test_streaming import serve_on_own_port


@pytest_twisted.async_yield_fixture
async def start_repository(tmp_path: Path) -> AsyncIterator[StartRepository]:
    """The same repositories as conftest's, each served on a port of its own."""
    async for start in serve_on_own_port(tmp_path):
        yield start
