"""Sign-in back-off: a few failed sign-ins, then a wait that doubles up to a minute, per
address and per user name, answered 429 with a sentence; memory bounded."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from gateway.daemon import Gateway
from gateway.web.throttle import FIRST, FREE, LONGEST, Throttle, address_key
from tests.gateway.harness import running
from tests.gateway.web.test_app import PASSWORD, Browser, console, csrf_of, web_config


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=100, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.sampled_from(["fail", "good", "later"]), st.integers(0, 3)), max_size=60
    )
)
def test_the_wait_is_nothing_for_the_first_failures_then_doubles_up_to_a_minute(
    events: list[tuple[str, int]],
) -> None:
    """Whatever the sequence of failures, successes and pauses, a key waits only once it has
    FREE failures, then FIRST·2^(n-FREE) seconds, never more than LONGEST; a good password
    clears it."""
    clock = Clock()
    throttle = Throttle(clock=clock)
    failures = {key: 0 for key in range(4)}
    for event, key in events:
        keys = [f"user:{key}"]
        if event == "later":
            clock.now += throttle.wait(keys)
            continue
        if throttle.wait(keys):
            continue  # refused: not an attempt
        throttle.attempt(keys)
        failures[key] += 1
        if event == "good":
            throttle.succeeded(keys)
            failures[key] = 0
        wait = throttle.wait(keys)
        if failures[key] < FREE:
            assert wait == 0
        else:
            assert wait == min(LONGEST, FIRST * 2 ** (failures[key] - FREE))
        assert wait <= LONGEST


@settings(max_examples=20, deadline=None)
@given(addresses=st.lists(st.ip_addresses(v=4).map(str), min_size=1, max_size=300))
def test_memory_is_bounded_whatever_the_addresses(addresses: list[str]) -> None:
    """An attacker cycling through addresses cannot grow the table past its capacity."""
    throttle = Throttle(capacity=50)
    for address in addresses:
        throttle.attempt([f"address:{address}"])
    assert len(throttle) <= 50


@asynccontextmanager
async def from_address(gateway: Gateway, address: str) -> AsyncIterator[Browser]:
    """A browser whose connections come from ``address`` (any 127.x.y.z is this machine)."""
    jar = aiohttp.CookieJar(unsafe=True)
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(cookie_jar=jar, connector=connector) as session:
        yield Browser(gateway, session)


def test_after_five_failures_sign_in_waits_is_answered_429_and_logged(tmp_path: Path) -> None:
    """The sixth try after five wrong passwords is refused 429 (even with the right password,
    which is not looked at), with Retry-After and a sentence; once the wait is over, the right
    password signs in."""
    clock = Clock()

    async def main() -> None:
        async with console(web_config(tmp_path)) as (gateway, browser):
            assert gateway.console is not None
            gateway.console.throttle.clock = clock
            for _ in range(FREE):
                assert await browser.sign_in(password="wrong password") == 401
            _, html, _ = await browser.get("/login")
            status, page, response = await browser.post(
                "/login", {"user": "alice", "password": PASSWORD, "csrf": csrf_of(html)}
            )
            assert status == 429 and response.headers["Retry-After"] == "1"
            assert "Too many failed sign-ins from this address or for this user" in page
            assert "try again in 1 s." in page
            clock.now += 1
            assert await browser.sign_in() == 303

    with capture_logs() as events:
        asyncio.run(main())
    (throttled,) = [e for e in events if e["event"] == "web.login_throttled"]
    assert throttled["user"] == "alice" and throttled["address"] == "127.0.0.1"
    assert throttled["wait"] == 1


def test_one_user_guessed_from_many_addresses_and_many_users_from_one_are_both_throttled(
    tmp_path: Path,
) -> None:
    """Five addresses failing for alice throttle alice from a sixth address, not another
    name there; one address failing for five names is throttled for a sixth name."""

    async def main() -> list[int]:
        statuses = []
        async with running(web_config(tmp_path)) as gateway:
            for index in range(FREE):
                async with from_address(gateway, f"127.0.0.{index + 2}") as browser:
                    assert await browser.sign_in(password="guess") == 401
            async with from_address(gateway, "127.0.0.20") as browser:
                statuses.append(await browser.sign_in(password="guess"))  # alice: throttled
                statuses.append(await browser.sign_in("bob", "guess"))  # another name: tried
            async with from_address(gateway, "127.0.0.30") as browser:
                for index in range(FREE):
                    assert await browser.sign_in(f"user{index}", "guess") == 401
                statuses.append(await browser.sign_in("carol", "guess"))  # the address
        return statuses

    assert asyncio.run(main()) == [429, 401, 429]


def test_a_burst_of_simultaneous_guesses_gets_no_more_tries_than_one_after_the_other(
    tmp_path: Path,
) -> None:
    """Twenty guesses sent at once: five are checked, the others answered 429 (each attempt
    counts before its password check, which runs off the event loop)."""

    async def main() -> list[int]:
        async with console(web_config(tmp_path)) as (_, browser):
            _, html, _ = await browser.get("/login")
            token = csrf_of(html)

            async def guess(index: int) -> int:
                form = {"user": "alice", "password": f"guess {index}", "csrf": token}
                status, _, _ = await browser.post("/login", form)
                return int(status)

            return list(await asyncio.gather(*(guess(i) for i in range(20))))

    statuses = asyncio.run(main())
    assert sorted(statuses) == [401] * FREE + [429] * (20 - FREE)


@given(st.ip_addresses(v=6), st.integers(0, 2**64 - 1))
def test_an_ipv6_host_counts_as_its_64_whichever_of_its_addresses_it_uses(
    address: ipaddress.IPv6Address, low: int
) -> None:
    """Every address of one /64 has the same key (a host holds them all); an IPv4 address
    and its IPv4-mapped IPv6 form have the same key too."""
    other = ipaddress.IPv6Address((int(address) >> 64 << 64) | low)
    if address.ipv4_mapped is None and other.ipv4_mapped is None:
        assert address_key(str(address)) == address_key(str(other))
    assert address_key("::ffff:192.0.2.1") == address_key("192.0.2.1") == "address:192.0.2.1"
    assert address_key("fe80::1%eth0") == address_key("fe80::2") == "address:fe80::/64"
    assert address_key(None) == "address:None"
