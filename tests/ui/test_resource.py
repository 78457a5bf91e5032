"""The dashboard's pages through StubTreq: empty states, readable errors, authz, CSRF, menu."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import treq
from buildbot.www.authz.authz import Forbidden
from markupsafe import Markup
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web import resource
from twisted.web.resource import IResource

from buildbot_farm import db
from buildbot_farm.dashboard import DashboardResource, farm_dashboard, farm_menu
from buildbot_farm.dashboard import _pages as pages
from buildbot_farm.dashboard._forms import FormRefused, FormTokens
from tests.harness.stub_http import stub_request

BASE = "http://farm.example/plugins/farm/ui/"
SECRET = b"dashboard-test-form-secret"


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


class BrokenJobs:
    """A job table whose database is down: every query fails like the real one does."""

    async def recent(self, limit: int) -> list[Any]:
        """Fail with the farm database's error."""
        raise db.DatabaseUnavailable("could not connect to server: Connection refused")


def bare_farm(www: FakeWWW) -> Any:
    """A farm service with no coordinator, no repository, no on-demand and a closed database."""
    return SimpleNamespace(
        coordinator=None,
        artifacts=SimpleNamespace(repository=None),
        records=SimpleNamespace(store=lambda: None),
        on_demand=SimpleNamespace(jobs=None),
        master=SimpleNamespace(www=www, reactor=Clock()),
    )


def fetch(farm: Any, method: str, path: str, **kwargs: Any) -> tuple[int, str]:
    """One request to the dashboard mounted at /plugins/farm/ui/; (status, body)."""
    root = resource.Resource()
    plugins, farm_root = resource.Resource(), resource.Resource()
    root.putChild(b"plugins", IResource(plugins))
    plugins.putChild(b"farm", IResource(farm_root))
    farm_root.putChild(b"ui", IResource(DashboardResource(farm, FormTokens(SECRET))))
    stub = StubTreq(root)
    answers: list[tuple[int, str]] = []

    def read(response: Any) -> defer.Deferred[None]:
        d: defer.Deferred[bytes] = treq.content(response)
        return d.addCallback(lambda body: answers.append((response.code, body.decode())))

    stub_request(stub, method, BASE + path, **kwargs).addCallback(read)
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
    assert "the farm database is closed; see the master&#39;s log" in body


def test_without_on_demand_the_jobs_page_says_what_to_configure() -> None:
    """With on-demand builds off, the jobs page shows the master.cfg lines that turn them on."""
    status, body = fetch(bare_farm(FakeWWW()), "GET", "jobs")
    assert status == 200
    assert "on_demand=util.OnDemandBuilds()" in body
    assert "schedulers.OnDemandScheduler(" in body
    assert "http-equiv" not in body


def test_a_database_failure_on_the_jobs_page_is_a_readable_503() -> None:
    """A farm database that does not answer gives a 503 saying so, which reloads itself."""
    farm = bare_farm(FakeWWW())
    farm.on_demand = SimpleNamespace(jobs=BrokenJobs())
    status, body = fetch(farm, "GET", "jobs")
    assert status == 503
    assert "the farm database failed: could not connect to server" in body
    assert 'http-equiv="refresh"' in body


def test_the_root_redirects_to_the_buildlets_page() -> None:
    """/plugins/farm/ui/ sends the browser to the buildlets page."""
    status, _ = fetch(bare_farm(FakeWWW()), "GET", "", allow_redirects=False)
    assert status == 302


def test_reading_a_page_asks_buildbot_authz_and_may_be_refused() -> None:
    """A page is the action "get" on ("farm", PAGE); a refusal is a readable 403."""
    www = FakeWWW(refused=("get",))
    status, body = fetch(bare_farm(www), "GET", "buildlets")
    assert status == 403
    assert "you may not see this page: you need to have role &#39;admins&#39;" in body
    assert www.asked == [(("farm", "buildlets"), "get")]


def valid_token(user: str = "anonymous") -> str:
    """A destroy-form token the dashboard under test accepts from ``user`` now."""
    return FormTokens(SECRET).issue(user, "buildlets/destroy", Clock().seconds())


def test_destroy_is_refused_before_anything_else_without_the_role() -> None:
    """POST buildlets/destroy asks authz for "destroy" on ("farm", "buildlets", NAME)."""
    www = FakeWWW(refused=("destroy",))
    farm = bare_farm(www)
    farm.coordinator = SimpleNamespace()
    status, body = fetch(farm, "POST", "buildlets/destroy",
                         data={"name": "u-local-0", "form_token": valid_token()})
    assert status == 403
    assert "you may not destroy buildlets" in body
    assert www.asked == [(("farm", "buildlets", "u-local-0"), "destroy")]


def test_destroy_without_a_form_token_is_refused_before_authz() -> None:
    """A destroy POST without the page's form token is a readable 403; authz is not asked."""
    www = FakeWWW()
    farm = bare_farm(www)
    farm.coordinator = SimpleNamespace()
    status, body = fetch(farm, "POST", "buildlets/destroy", data={"name": "u-local-0"})
    assert status == 403
    assert "refused to destroy u-local-0: this form came without its form_token" in body
    assert www.asked == []


def test_destroy_with_a_wrong_form_token_is_refused() -> None:
    """A token of another user, or a forged one, is a 403 that says to reload the page."""
    farm = bare_farm(FakeWWW())
    farm.coordinator = SimpleNamespace()
    for token in (valid_token("admin"), "4102444800." + "0" * 64, "garbage"):
        status, body = fetch(farm, "POST", "buildlets/destroy",
                             data={"name": "u-local-0", "form_token": token})
        assert status == 403, token
        assert "is not valid for anonymous" in body
        assert "reload the page and try again" in body


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
    assert pages.countdown(6 * 3600 - 6, 0) == "in 5 h 59 min"
    assert pages.size(29) == "29 B"
    assert pages.size(1536) == "1.5 KiB"
    assert pages.size(3 * 1024**4) == "3072.0 GiB"


def test_a_page_refreshes_itself_only_when_asked() -> None:
    """``refresh=N`` adds a meta refresh of N seconds; otherwise the page stays."""
    frame = pages.Frame("/plugins/farm/ui/", "buildlets")
    assert b'http-equiv="refresh" content="5"' in pages.page(
        frame, "Buildlets", Markup(), refresh=5
    )
    assert b"http-equiv" not in pages.page(frame, "Buildlets", Markup())


def test_values_are_escaped_by_the_templates() -> None:
    """Text from builds and forms is escaped wherever a page shows it, attributes included;
    only rendered fragments pass unescaped."""
    frame = pages.Frame('/ui/"><script>', "<tab>")
    html = pages.page(frame, "<b>title</b>", pages.message("error", "<img src=x onerror=1>"))
    for raw in (b"<script>", b"<b>", b"<img"):
        assert raw not in html
    assert b'href="/ui/&#34;&gt;&lt;script&gt;buildlets"' in html
    assert b"&lt;img src=x onerror=1&gt;" in html
    assert b'<p class="error" role="alert">' in html


def test_form_tokens_are_bound_to_user_action_and_time() -> None:
    """A token works for its user and action until it expires; a new secret refuses it."""
    tokens = FormTokens(SECRET)
    token = tokens.issue("alice", "buildlets/destroy", 1000)
    tokens.check("alice", "buildlets/destroy", token, 1000 + 3600)
    refusals = [
        ("bob", "buildlets/destroy", token, 1000, "not valid for bob"),
        ("alice", "records/delete", token, 1000, "not valid for alice"),
        ("alice", "buildlets/destroy", token, 1000 + 9 * 3600, "has expired"),
        ("alice", "buildlets/destroy", "", 1000, "came without its form_token"),
    ]
    for user, action, presented, now, reason in refusals:
        with pytest.raises(FormRefused, match=reason):
            tokens.check(user, action, presented, now)
    with pytest.raises(FormRefused, match="before the master restarted"):
        FormTokens(b"another-secret").check("alice", "buildlets/destroy", token, 1000)
