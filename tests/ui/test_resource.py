"""The dashboard's pages through StubTreq: empty states, readable errors, authz, the menu app."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import treq
from buildbot.www.authz.authz import Forbidden
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web import resource

from buildbot_farm.dashboard import DashboardResource, farm_dashboard, farm_menu
from buildbot_farm.dashboard import _pages as pages

BASE = "http://farm.example/plugins/farm/ui/"


class FakeWWW:
    """Buildbot's ``master.www`` as far as authz goes: refuses the ``refused`` actions."""

    def __init__(self, refused: tuple[str, ...] = ()) -> None:
        self.refused = refused
        self.asked: list[tuple[Any, str]] = []

    def assertUserAllowed(  # noqa: N802 (Buildbot's name)
        self, request: Any, ep: Any, action: str, options: dict[str, Any]
    ) -> defer.Deferred[None]:
        """Record the question; fail with Forbidden for a refused action."""
        self.asked.append((tuple(ep), action))
        if action in self.refused:
            return defer.fail(Forbidden(b"you need to have role 'admins'"))
        return defer.succeed(None)


def bare_farm(www: FakeWWW) -> Any:
    """A farm service with no coordinator, no repository and a closed database."""
    return SimpleNamespace(
        coordinator=None,
        artifacts=SimpleNamespace(repository=None),
        records=SimpleNamespace(store=lambda: None),
        master=SimpleNamespace(www=www, reactor=Clock()),
    )


def fetch(farm: Any, method: str, path: str, **kwargs: Any) -> tuple[int, str]:
    """One request to the dashboard mounted at /plugins/farm/ui/; (status, body)."""
    root = resource.Resource()
    plugins, farm_root = resource.Resource(), resource.Resource()
    root.putChild(b"plugins", plugins)
    plugins.putChild(b"farm", farm_root)
    farm_root.putChild(b"ui", DashboardResource(farm))
    stub = StubTreq(root)
    answers: list[tuple[int, str]] = []

    def read(response: Any) -> defer.Deferred[None]:
        d: defer.Deferred[bytes] = treq.content(response)
        return d.addCallback(lambda body: answers.append((response.code, body.decode())))

    stub.request(method, BASE + path, **kwargs).addCallback(read)
    stub.flush()
    assert answers, f"no answer to {method} {path}"
    return answers[0]


def test_without_a_coordinator_the_buildlets_page_says_what_to_configure() -> None:
    """The empty buildlets page names util.FarmCoordinator and BuildletPool."""
    status, body = fetch(bare_farm(FakeWWW()), "GET", "buildlets")
    assert status == 200
    assert "util.FarmCoordinator(" in body
    assert "util.BuildletPool(" in body


def test_without_a_repository_the_artifacts_page_says_what_to_configure() -> None:
    """The empty artifacts page names util.ArtifactRepository()."""
    status, body = fetch(bare_farm(FakeWWW()), "GET", "artifacts/")
    assert status == 200
    assert "artifacts=util.ArtifactRepository()" in body


def test_a_closed_database_is_a_readable_503() -> None:
    """Records with the farm database closed answer 503 and point at the master's log."""
    status, body = fetch(bare_farm(FakeWWW()), "GET", "records")
    assert status == 503
    assert "the farm database is closed; see the master&#x27;s log" in body


def test_the_jobs_page_is_an_empty_state() -> None:
    """On-demand jobs say that there are none yet."""
    status, body = fetch(bare_farm(FakeWWW()), "GET", "jobs")
    assert status == 200
    assert "No on-demand jobs" in body


def test_the_root_redirects_to_the_buildlets_page() -> None:
    """/plugins/farm/ui/ sends the browser to the buildlets page."""
    status, _ = fetch(bare_farm(FakeWWW()), "GET", "", allow_redirects=False)
    assert status == 302


def test_reading_a_page_asks_buildbot_authz_and_may_be_refused() -> None:
    """A page is the action "get" on ("farm", PAGE); a refusal is a readable 403."""
    www = FakeWWW(refused=("get",))
    status, body = fetch(bare_farm(www), "GET", "buildlets")
    assert status == 403
    assert "you may not see this page: you need to have role &#x27;admins&#x27;" in body
    assert www.asked == [(("farm", "buildlets"), "get")]


def test_destroy_is_refused_before_anything_else_without_the_role() -> None:
    """POST buildlets/destroy asks authz for "destroy" on ("farm", "buildlets", NAME)."""
    www = FakeWWW(refused=("destroy",))
    farm = bare_farm(www)
    farm.coordinator = SimpleNamespace()
    status, body = fetch(farm, "POST", "buildlets/destroy", data={"name": "u-local-0"})
    assert status == 403
    assert "you may not destroy buildlets" in body
    assert www.asked == [(("farm", "buildlets", "u-local-0"), "destroy")]


def test_destroy_without_a_name_says_which_field_is_missing() -> None:
    """A destroy form without name= is a 400 that names the field."""
    status, body = fetch(bare_farm(FakeWWW()), "POST", "buildlets/destroy", data={})
    assert status == 400
    assert "one form field name=NAME" in body


def test_the_menu_app_answers_with_the_dashboard_iframe() -> None:
    """The WSGI app behind the menu entry returns an iframe of the buildlets page."""
    started: list[str] = []
    body = b"".join(farm_dashboard({}, lambda status, headers: started.append(status)))
    assert started == ["200 OK"]
    assert b'src="plugins/farm/ui/buildlets"' in body
    assert farm_menu()["name"] == "farm"
    assert farm_menu()["app"] is farm_dashboard


def test_countdown_and_sizes_read_like_people_write_them() -> None:
    """Expiry counts down in minutes and seconds; sizes use binary units."""
    assert pages.countdown(None, 0) == ""
    assert pages.countdown(100, 100) == "expired"
    assert pages.countdown(125, 3) == "in 2 min 2 s"
    assert pages.countdown(40, 3) == "in 37 s"
    assert pages.size(29) == "29 B"
    assert pages.size(1536) == "1.5 KiB"
    assert pages.size(3 * 1024**4) == "3072.0 GiB"


def test_a_page_refreshes_itself_only_when_asked() -> None:
    """``refresh=True`` adds a meta refresh of a few seconds; otherwise the page stays."""
    frame = pages.Frame("/plugins/farm/ui/", "buildlets")
    assert b'http-equiv="refresh" content="5"' in pages.page(frame, "Buildlets", "", refresh=True)
    assert b"http-equiv" not in pages.page(frame, "Buildlets", "")
