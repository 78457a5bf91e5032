"""LookupBatches: lookups waiting at the same time share one fetch."""

from __future__ import annotations

from twisted.internet import defer
from twisted.python import failure

from buildbot_farm.records.lookups import LookupBatches


class FetchRecorder:
    """A fetch whose answers the test gives by hand; it records the keys of each call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.answers: list[defer.Deferred[dict[str, int]]] = []

    async def fetch(self, keys: list[str]) -> dict[str, int]:
        """Record ``keys`` as one call and wait for the answer the test fires on this call's
        Deferred."""
        self.calls.append(keys)
        answer: defer.Deferred[dict[str, int]] = defer.Deferred()
        self.answers.append(answer)
        return await answer

def results(lookups: list[defer.Deferred[int | None]]) -> list[object]:
    """What each lookup fired with so far (``...`` for one still waiting)."""
    seen: list[object] = []

    def keep(value: object, box: list[object]) -> None:
        box[0] = value

    for lookup in lookups:
        box: list[object] = [...]
        lookup.addBoth(keep, box)
        seen.append(box[0])
    return seen

def test_a_lone_lookup_is_fetched_at_once() -> None:
    """With no fetch running, a lookup starts its fetch immediately and gets its value."""
    recorder = FetchRecorder()
    batches = LookupBatches(recorder.fetch)
    lookup = batches.get("a")
    assert recorder.calls == [["a"]]
    recorder.answers[0].callback({"a": 1})
    assert results([lookup]) == [1]

def test_lookups_waiting_together_share_one_fetch() -> None:
    """Lookups made while the fetches are busy are answered by one fetch of all their keys."""
    recorder = FetchRecorder()
    batches = LookupBatches(recorder.fetch)
    first = batches.get("a")
    waiting = [batches.get("b"), batches.get("c"), batches.get("b")]
    assert recorder.calls == [["a"]]
    recorder.answers[0].callback({"a": 1})
    assert recorder.calls == [["a"], ["b", "c"]]
    recorder.answers[1].callback({"b": 2})
    assert results([first, *waiting]) == [1, 2, None, 2]

def test_batches_are_at_most_batch_size_keys() -> None:
    """Waiting keys beyond ``batch_size`` go to the next fetch."""
    recorder = FetchRecorder()
    batches = LookupBatches(recorder.fetch, batch_size=2)
    lookups = [batches.get(key) for key in "abcd"]
    recorder.answers[0].callback({})
    recorder.answers[1].callback({"b": 2, "c": 3})
    recorder.answers[2].callback({"d": 4})
    assert recorder.calls == [["a"], ["b", "c"], ["d"]]
    assert results(lookups) == [None, 2, 3, 4]

def test_a_failed_fetch_fails_its_batch_only() -> None:
    """Every lookup of a failed fetch fails with its error; the next batch is still fetched."""
    recorder = FetchRecorder()
    batches = LookupBatches(recorder.fetch)
    doomed = [batches.get("a")]
    later = batches.get("b")
    recorder.answers[0].errback(RuntimeError("database gone"))
    failures = results(doomed)
    assert [type(f) for f in failures] == [failure.Failure]
    assert [f.value.args for f in failures if isinstance(f, failure.Failure)] == [
        ("database gone",)
    ]
    recorder.answers[1].callback({"b": 2})
    assert results([later]) == [2]

def test_one_fetch_runs_at_a_time() -> None:
    """However many lookups arrive, one fetch runs; the next starts when it ends."""
    recorder = FetchRecorder()
    batches = LookupBatches(recorder.fetch)
    for key in "abcdefg":
        batches.get(key)
    assert recorder.calls == [["a"]]
    recorder.answers[0].callback({})
    assert recorder.calls == [["a"], list("bcdefg")]
