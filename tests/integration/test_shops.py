"""Shop records in Redis and the app lifecycle jobs (after install, uninstall, scopes)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import redis
from cryptography.fernet import Fernet

from crm.errors import ShopUnavailable, ValidationError
from plugin import shops
from plugin.clock import DevClock, FixedClock
from plugin.crypto import TokenCipher
from plugin.settings import Settings
from plugin.shops import Grant, Status
from plugin.tokens import fresh_access_token
from tests.fixtures.devstore import Devstore, devstore  # noqa: F401 (fixture)
from worker import deliveries
from worker.app_events import (
    Context,
    handle_after_install,
    handle_delivery,
    schedule_after_install,
)
from worker.queues import BULK, get_queue

SHOP = "alpha.myshopify.com"
SECRET = "kizuna-test-client-secret-0123456789abcdef"


def grant(clock: FixedClock | DevClock, n: int = 1) -> Grant:
    return Grant.from_response(
        {
            "access_token": f"shpat_{n:032x}",
            "scope": "read_customers,write_customers",
            "expires_in": 3600,
            "refresh_token": f"shprt_{n:032x}",
            "refresh_token_expires_in": 90 * 86400,
        },
        clock.now(),
    )


@pytest.mark.parametrize(
    "value",
    ["evil.com", "x.myshopify.com.evil.com", "foo.myshopify.com/../", "a.myshopify.com\n", "", 7],
)
def test_bad_shop_domains_are_refused(value: object) -> None:
    """Anything but name.myshopify.com (a trailing newline included) must be refused."""
    with pytest.raises(ValidationError):
        shops.normalize_shop(value)


def test_shop_domain_is_normalised() -> None:
    """Upper-case names are stored lower-case; the handle is job-id safe."""
    assert shops.normalize_shop("My-Shop.myshopify.com") == "my-shop.myshopify.com"
    assert shops.shop_handle("my-shop.myshopify.com") == "my-shop"


def test_scope_coverage_counts_implied_reads() -> None:
    """write_x covers read_x; a missing scope is named."""
    assert shops.missing_scopes(["read_customers", "write_customers"], ["write_customers"]) == ()
    assert shops.missing_scopes(["read_orders"], ["write_customers"]) == ("read_orders",)


def test_install_stores_tokens_encrypted_and_reinstall_starts_clean(
    conn: redis.Redis, settings: Settings, clock: FixedClock
) -> None:
    """Tokens are stored encrypted (no clear text anywhere in Redis); installing again keeps
    the generation; after an uninstall the tokens are gone and a reinstall draws a new
    generation and drops the old facts."""
    cipher = TokenCipher.from_settings(settings)
    record, fresh = shops.install(conn, cipher, SHOP, grant(clock), clock.now())
    assert fresh and record.status is Status.INSTALLED
    raw = repr(conn.hgetall(shops.shop_key(SHOP)))
    assert "shpat_" not in raw and "shprt_" not in raw
    assert shops.decrypt_access_token(cipher, record) == grant(clock).access_token
    assert "shpat_" not in repr(record)
    shops.set_facts(conn, SHOP, shops.ShopFacts("Alpha", "Asia/Tokyo", "JPY", "Basic"))

    again, fresh_again = shops.install(conn, cipher, SHOP, grant(clock, 2), clock.now())
    assert not fresh_again and again.generation == record.generation and again.facts

    assert shops.mark_uninstalled(conn, SHOP, clock.now())
    gone = shops.load(conn, SHOP)
    assert gone is not None and gone.status is Status.UNINSTALLED
    assert gone.encrypted_access_token is None and gone.encrypted_refresh_token is None
    with pytest.raises(ShopUnavailable):
        shops.require_active(conn, SHOP)

    back, fresh_back = shops.install(conn, cipher, SHOP, grant(clock, 3), clock.now())
    assert fresh_back and back.generation != record.generation and back.facts is None


def test_rotation_re_encrypts_every_token(
    conn: redis.Redis, test_env: dict[str, str], clock: FixedClock
) -> None:
    """After a new key is put first and rotate_secrets runs, the new key alone opens every
    stored token."""
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    old = TokenCipher([old_key])
    shops.install(conn, old, SHOP, grant(clock), clock.now())
    both = TokenCipher([new_key, old_key])
    assert shops.rotate_secrets(conn, both) == 2
    record = shops.load(conn, SHOP)
    assert record is not None
    assert shops.decrypt_access_token(TokenCipher([new_key]), record) == grant(clock).access_token


def test_after_install_is_idempotent(
    conn: redis.Redis,
    test_env: dict[str, str],
    devstore: Devstore,  # noqa: F811
) -> None:
    """The after-install job reads the shop facts, enables facts.birth_date and enqueues the
    backfill once; scheduling or running it twice changes nothing more."""
    devstore.create_shop(SHOP, name="Alpha")
    devstore.install(SHOP, "http://127.0.0.1:9/app", "kizuna-test-client-id", SECRET)
    settings = Settings.from_env(
        test_env
        | devstore.env()
        | {"SHOPIFY_API_KEY": "kizuna-test-client-id", "SHOPIFY_API_SECRET": SECRET}
    )
    clock = DevClock(conn)
    token_body = devstore.session.post(
        devstore.token_url(SHOP),
        json={
            "client_id": "kizuna-test-client-id",
            "client_secret": SECRET,
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": devstore.id_token(SHOP),
            "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
            "expiring": "1",
        },
        timeout=10,
    ).json()
    cipher = TokenCipher.from_settings(settings)
    record, _ = shops.install(
        conn, cipher, SHOP, Grant.from_response(token_body, clock.now()), clock.now()
    )
    assert schedule_after_install(conn, SHOP, record.generation)
    assert not schedule_after_install(conn, SHOP, record.generation)
    ctx = Context(conn=conn, settings=settings, clock=clock)
    assert handle_after_install(ctx, SHOP, record.generation) == "done"
    assert handle_after_install(ctx, SHOP, record.generation) == "done"
    assert handle_after_install(ctx, SHOP, "an-older-generation") == "stale"
    done = shops.load(conn, SHOP)
    assert done is not None and done.after_install_done
    assert done.facts is not None and done.facts.name == "Alpha"
    backfills = get_queue(conn, BULK).jobs
    assert [(j.func_name, j.args) for j in backfills] == [("worker.backfill.start", [SHOP])]


def _deliver(conn: redis.Redis, topic: str, body: object, webhook_id: str) -> None:
    deliveries.store(
        conn,
        deliveries.Delivery(
            shop=SHOP,
            webhook_id=webhook_id,
            topic=topic,
            body=json.dumps(body).encode(),
            headers={"X-Shopify-Topic": topic},
        ),
    )


def test_uninstall_deletes_tokens_cancels_jobs_and_stops_admin_calls(
    conn: redis.Redis, settings: Settings, clock: FixedClock
) -> None:
    """app/uninstalled: the tokens are deleted, queued jobs of the shop are cancelled (other
    shops' are not), and no token is handed out any more; running it twice is harmless."""
    cipher = TokenCipher.from_settings(settings)
    record, _ = shops.install(conn, cipher, SHOP, grant(clock), clock.now())
    schedule_after_install(conn, SHOP, record.generation)
    from worker.queues import enqueue

    other = enqueue(conn, "worker.backfill.start", "beta.myshopify.com")
    _deliver(conn, "app/uninstalled", {"id": 1, "myshopify_domain": SHOP}, "w-1")
    ctx = Context(conn=conn, settings=settings, clock=clock)
    assert handle_delivery(ctx, SHOP, "app/uninstalled", "w-1") == "uninstalled"
    assert handle_delivery(ctx, SHOP, "app/uninstalled", "w-1") == "uninstalled"
    gone = shops.load(conn, SHOP)
    assert gone is not None and gone.status is Status.UNINSTALLED
    assert b"access_token" not in conn.hkeys(shops.shop_key(SHOP))
    assert [j.id for j in get_queue(conn).jobs] == [other.id]
    with pytest.raises(ShopUnavailable):
        fresh_access_token(conn, settings, SHOP, clock)
    assert deliveries.load(conn, SHOP, "w-1") is None


def test_late_uninstall_for_an_earlier_install_is_ignored(
    conn: redis.Redis, settings: Settings, clock: FixedClock
) -> None:
    """An app/uninstalled triggered before the current install must not uninstall it."""
    cipher = TokenCipher.from_settings(settings)
    shops.install(conn, cipher, SHOP, grant(clock), clock.now())
    deliveries.store(
        conn,
        deliveries.Delivery(
            shop=SHOP,
            webhook_id="w-late",
            topic="app/uninstalled",
            body=b"{}",
            headers={"X-Shopify-Triggered-At": (clock.now() - timedelta(hours=1)).isoformat()},
        ),
    )
    ctx = Context(conn=conn, settings=settings, clock=clock)
    assert handle_delivery(ctx, SHOP, "app/uninstalled", "w-late") == "stale"
    assert shops.require_active(conn, SHOP).status is Status.INSTALLED


def test_scopes_update_re_reads_scopes_and_refuses_malformed(
    conn: redis.Redis, settings: Settings, clock: FixedClock
) -> None:
    """app/scopes_update stores the current scopes; a payload without a list of scopes goes
    to the dead letters and changes nothing."""
    cipher = TokenCipher.from_settings(settings)
    shops.install(conn, cipher, SHOP, grant(clock), clock.now())
    ctx = Context(conn=conn, settings=settings, clock=clock)
    _deliver(conn, "app/scopes_update", {"current": "read_orders"}, "w-bad")
    assert handle_delivery(ctx, SHOP, "app/scopes_update", "w-bad") == "dead-letter"
    assert shops.require_active(conn, SHOP).scopes == ("read_customers", "write_customers")
    _deliver(
        conn,
        "app/scopes_update",
        {"previous": ["read_customers"], "current": ["read_customers", "read_orders"]},
        "w-ok",
    )
    assert handle_delivery(ctx, SHOP, "app/scopes_update", "w-ok") == "scopes"
    assert shops.require_active(conn, SHOP).scopes == ("read_customers", "read_orders")


def test_uninstall_cancels_the_scheduled_steps_of_that_shop_only(
    conn: redis.Redis, settings: Settings, clock: FixedClock
) -> None:
    """app/uninstalled: no step of the shop may fire afterwards, and a reinstall starts clean;
    another shop's schedule must not be touched."""
    from worker.enrolment_store import SHOPS_DUE, due_key, enrolment_key, member

    cipher = TokenCipher.from_settings(settings)
    shops.install(conn, cipher, SHOP, grant(clock), clock.now())
    other = "beta.myshopify.com"
    for shop in (SHOP, other):
        conn.zadd(due_key(shop), {member(7, "winback"): 1.0, member(8, "winback"): 2.0})
        conn.zadd(SHOPS_DUE, {shop: 1.0})
        conn.hset(enrolment_key(shop, "winback", 7), "7", "x")
    _deliver(conn, "app/uninstalled", {"id": 1, "myshopify_domain": SHOP}, "w-2")
    ctx = Context(conn=conn, settings=settings, clock=clock)
    assert handle_delivery(ctx, SHOP, "app/uninstalled", "w-2") == "uninstalled"
    assert conn.zcard(due_key(SHOP)) == 0 and conn.zscore(SHOPS_DUE, SHOP) is None
    assert not list(conn.scan_iter(f"kizuna:{SHOP}:enr:*"))
    assert conn.zcard(due_key(other)) == 2 and conn.zscore(SHOPS_DUE, other) == 1.0
    assert conn.exists(enrolment_key(other, "winback", 7))


def test_ending_a_reauth_pause_is_answered_once(
    conn: redis.Redis, settings: Settings, clock: FixedClock
) -> None:
    """A grant stored for a shop waiting for re-auth answers the pause's id, once: a second
    grant (another page load) answers none, nor does a grant for a shop that was not paused.
    Marking an uninstalled shop needs-reauth changes nothing."""
    cipher = TokenCipher.from_settings(settings)
    assert shops.install_grant(conn, cipher, SHOP, grant(clock), clock.now()).resumed is None
    shops.mark_needs_reauth(conn, SHOP, "refused", clock.now())
    paused = shops.load(conn, SHOP)
    assert paused is not None and paused.reauth_id and paused.status is Status.NEEDS_REAUTH
    shops.mark_needs_reauth(conn, SHOP, "again", clock.now())  # already paused: same pause
    assert shops.load(conn, SHOP).reauth_id == paused.reauth_id  # type: ignore[union-attr]
    first = shops.install_grant(conn, cipher, SHOP, grant(clock, 2), clock.now())
    assert first.resumed == paused.reauth_id and not first.fresh
    assert first.record.reauth_id is None and first.record.status is Status.INSTALLED
    second = shops.install_grant(conn, cipher, SHOP, grant(clock, 3), clock.now())
    assert second.resumed is None
    shops.mark_uninstalled(conn, SHOP, clock.now())
    shops.mark_needs_reauth(conn, SHOP, "late", clock.now())
    gone = shops.load(conn, SHOP)
    assert gone is not None and gone.status is Status.UNINSTALLED and gone.reauth_id is None
