"""helpers.notify: where the check URL comes from, and pings against a real local server."""
from __future__ import annotations

import time

import pytest

from helpers import notify
from helpers.errors import UserError
from tests.ping_server import (closed_port, ping_server, silent_endpoint,
                               trickling_endpoint)

SECRET = "0f6d3c1e-9a7b-4c55-8e21-5b1f2a9d7c40"
URL = f"https://hc-ping.example/{SECRET}"


def url_file(tmp_path, content: str = URL + "\n", mode: int = 0o600):
    path = tmp_path / "notify.url"
    path.write_text(content)
    path.chmod(mode)
    return path


# --- where the URL comes from -----------------------------------------------------------


def test_without_either_variable_there_is_no_url():
    assert notify.notify_url({}) is None


def test_inline_url_is_used_without_its_trailing_slash():
    assert notify.notify_url({"CARABASE_NOTIFY_URL": URL + "/"}) == URL


def test_url_file_is_read_and_stripped(tmp_path):
    path = url_file(tmp_path)
    assert notify.notify_url({"CARABASE_NOTIFY_URL_FILE": str(path)}) == URL


def test_url_file_path_starting_with_a_tilde_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    url_file(tmp_path)
    assert notify.notify_url({"CARABASE_NOTIFY_URL_FILE": "~/notify.url"}) == URL


def test_both_variables_set_is_refused():
    with pytest.raises(UserError, match="both CARABASE_NOTIFY_URL and CARABASE_NOTIFY_URL_FILE"):
        notify.notify_url({"CARABASE_NOTIFY_URL": URL, "CARABASE_NOTIFY_URL_FILE": "/x"})


@pytest.mark.parametrize("mode", [0o640, 0o604])
def test_url_file_readable_by_others_is_refused_with_the_chmod_to_run(tmp_path, mode):
    path = url_file(tmp_path, mode=mode)
    with pytest.raises(UserError, match=f"readable by others .*chmod 600 {path}") as raised:
        notify.notify_url({"CARABASE_NOTIFY_URL_FILE": str(path)})
    assert SECRET not in raised.value.message


def test_missing_url_file_is_refused_naming_the_file(tmp_path):
    missing = tmp_path / "nowhere.url"
    with pytest.raises(UserError, match=f"cannot read CARABASE_NOTIFY_URL_FILE {missing}"):
        notify.notify_url({"CARABASE_NOTIFY_URL_FILE": str(missing)})


@pytest.mark.parametrize("content", [
    "", "hc-ping.example/" + SECRET, "ftp://hc-ping.example/" + SECRET,
    f"https://hc-ping.example/{SECRET}?x=1", f"{URL}\n{URL}", "https:///" + SECRET,
])
def test_url_that_is_not_one_http_url_is_refused_without_being_shown(tmp_path, content):
    path = url_file(tmp_path, content)
    with pytest.raises(UserError, match="is not a check URL") as raised:
        notify.notify_url({"CARABASE_NOTIFY_URL_FILE": str(path)})
    assert SECRET not in raised.value.message


def test_host_of_gives_the_host_only():
    assert notify.host_of(f"https://user:pw@hc-ping.example:8443/{SECRET}") == "hc-ping.example"


# --- pings ------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def short_retry_pause(monkeypatch):
    monkeypatch.setattr(notify, "RETRY_PAUSE", 0.05)


def test_each_signal_posts_to_its_path_with_the_body():
    with ping_server() as (base, received):
        url = f"{base}/{SECRET}"
        assert notify.ping(url, "start") is None
        assert notify.ping(url, "success", "all good\n") is None
        assert notify.ping(url, "fail", "backup dev failed: héllo\n") is None
    assert [(ping.method, ping.path, ping.body) for ping in received] == [
        ("POST", f"/{SECRET}/start", ""),
        ("POST", f"/{SECRET}", "all good\n"),
        ("POST", f"/{SECRET}/fail", "backup dev failed: héllo\n"),
    ]


def test_server_errors_are_retried_up_to_three_tries():
    with ping_server(statuses=[503, 502]) as (base, received):
        assert notify.ping(f"{base}/{SECRET}", "success", seconds=1) is None
    assert len(received) == 3


def test_three_server_errors_give_one_line_naming_the_host_only():
    with ping_server(statuses=[500, 500, 500, 500]) as (base, received):
        problem = notify.ping(f"{base}/{SECRET}", "fail", seconds=1)
    assert problem == "fail ping to 127.0.0.1 failed after 3 tries: HTTP 500"
    assert len(received) == 3


def test_a_refusal_such_as_404_is_not_retried():
    with ping_server(statuses=[404]) as (base, received):
        problem = notify.ping(f"{base}/{SECRET}", "start", seconds=1)
    assert problem == "start ping to 127.0.0.1 failed: HTTP 404"
    assert len(received) == 1


def test_nothing_listening_fails_fast_with_one_line_and_no_exception():
    started = time.monotonic()
    problem = notify.ping(f"http://127.0.0.1:{closed_port()}/{SECRET}", "start", seconds=0.2)
    assert problem == "start ping to 127.0.0.1 failed after 3 tries: Connection refused"
    assert time.monotonic() - started < 1  # 3 refusals and 2 short pauses


def test_an_endpoint_that_never_answers_costs_the_deadline_in_one_try():
    # The first try waits the whole deadline; none is left for another.
    with silent_endpoint() as base:
        started = time.monotonic()
        problem = notify.ping(f"{base}/{SECRET}", "success", seconds=0.6)
        elapsed = time.monotonic() - started
    assert problem == "success ping to 127.0.0.1 failed: timed out"
    assert 0.5 <= elapsed < 0.6 + 0.3


def test_a_monitor_slower_than_a_third_of_the_deadline_but_within_it_is_reached():
    # 0.75 s to answer, 1.5 s per ping: one try of the whole deadline reaches it (an even
    # share of 0.5 s per try would time out three times over).
    with ping_server(delays=[0.75, 0.75, 0.75]) as (base, received):
        started = time.monotonic()
        problem = notify.ping(f"{base}/{SECRET}", "success", "all good\n", seconds=1.5)
        elapsed = time.monotonic() - started
    assert problem is None
    assert [(ping.path, ping.body) for ping in received] == [(f"/{SECRET}", "all good\n")]
    assert 0.75 <= elapsed < 1.5


def test_a_retry_may_use_all_the_deadline_the_first_try_left():
    # A quick 503, then an answer after 0.9 s: the retry has about 1.45 s for it.
    with ping_server(statuses=[503], delays=[0, 0.9]) as (base, received):
        problem = notify.ping(f"{base}/{SECRET}", "start", seconds=1.5)
    assert problem is None
    assert [ping.path for ping in received] == [f"/{SECRET}/start"] * 2


def test_an_endpoint_that_trickles_its_answer_is_cut_off_at_the_deadline():
    # A byte every 0.1 s keeps any per-read timeout from firing; the answer would take
    # 25 s to arrive, its status line alone 1.7 s (a status line that arrives in time
    # says the ping was taken, whatever follows).
    with trickling_endpoint(interval=0.1, response_bytes=200) as (base, paths):
        started = time.monotonic()
        problem = notify.ping(f"{base}/{SECRET}", "start", seconds=0.9)
        elapsed = time.monotonic() - started
    assert problem == "start ping to 127.0.0.1 failed: timed out"
    assert paths == [f"/{SECRET}/start"]  # one try, cut off at the deadline
    assert 0.8 <= elapsed < 0.9 + 0.3


def test_an_answer_that_arrives_slowly_within_the_deadline_is_a_sent_ping():
    with trickling_endpoint(interval=0.002, response_bytes=20) as (base, paths):
        assert notify.ping(f"{base}/{SECRET}", "success", seconds=5) is None
    assert paths == [f"/{SECRET}"]


def test_timeout_comes_from_the_test_variable_only_when_it_is_sensible():
    assert notify.timeout({}) == notify.TIMEOUT == 10
    assert notify.timeout({notify.TIMEOUT_VARIABLE: "0.5"}) == 0.5
    assert notify.timeout({notify.TIMEOUT_VARIABLE: "soon"}) == notify.TIMEOUT
    assert notify.timeout({notify.TIMEOUT_VARIABLE: "-1"}) == notify.TIMEOUT
