"""Demo data: a Japanese health-food and cosmetics brand with two years of customers and orders.

``seed(store, shop, customers=300, now=…, seed=1)`` fills a shop with products that have
consumption days (a 30-day supplement, a 60-day one, skin care, a gift set), customers with
kanji names, romaji e-mail addresses and kana readings, prefectures, birthdays
(``facts.birth_date``), marketing consent, and orders on each customer's own rhythm: repeat
buyers, dormant ones, one-time buyers, subscribers who never bought, guest checkouts, a few
cancellations and refunds, fulfilments one to four days after each order.

Everything is decided by ``random.Random(seed)`` and ``now``: the same arguments give the same
shop (ids aside, which come from the shop's counter). Records are built in the shape
:class:`devstore.state.Store` writes and stored with pipelines, so no webhook fires and a large
shop (``seed(store, shop, customers=20_000, now=…)``, about three orders per customer) takes
seconds; :func:`seed_large` names that use.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import orjson

from .state import ID_BASE, PREFIX, Store, normalize_tags

HISTORY_DAYS = 730
CHUNK = 2_000  # records per pipeline round trip
HSET_FIELDS = 50  # records per HSET command

# (family kanji, kana, romaji)
FAMILY_NAMES = [
    ("佐藤", "サトウ", "sato"),
    ("鈴木", "スズキ", "suzuki"),
    ("高橋", "タカハシ", "takahashi"),
    ("田中", "タナカ", "tanaka"),
    ("伊藤", "イトウ", "ito"),
    ("渡辺", "ワタナベ", "watanabe"),
    ("山本", "ヤマモト", "yamamoto"),
    ("中村", "ナカムラ", "nakamura"),
    ("小林", "コバヤシ", "kobayashi"),
    ("加藤", "カトウ", "kato"),
    ("吉田", "ヨシダ", "yoshida"),
    ("山田", "ヤマダ", "yamada"),
    ("佐々木", "ササキ", "sasaki"),
    ("山口", "ヤマグチ", "yamaguchi"),
    ("松本", "マツモト", "matsumoto"),
    ("井上", "イノウエ", "inoue"),
    ("木村", "キムラ", "kimura"),
    ("林", "ハヤシ", "hayashi"),
    ("斎藤", "サイトウ", "saito"),
    ("清水", "シミズ", "shimizu"),
    ("山崎", "ヤマザキ", "yamazaki"),
    ("森", "モリ", "mori"),
    ("池田", "イケダ", "ikeda"),
    ("橋本", "ハシモト", "hashimoto"),
    ("阿部", "アベ", "abe"),
    ("石川", "イシカワ", "ishikawa"),
    ("前田", "マエダ", "maeda"),
    ("藤田", "フジタ", "fujita"),
    ("岡田", "オカダ", "okada"),
    ("後藤", "ゴトウ", "goto"),
]
GIVEN_NAMES = [
    ("花子", "ハナコ", "hanako"),
    ("陽子", "ヨウコ", "yoko"),
    ("恵子", "ケイコ", "keiko"),
    ("美穂", "ミホ", "miho"),
    ("由美", "ユミ", "yumi"),
    ("真由美", "マユミ", "mayumi"),
    ("さくら", "サクラ", "sakura"),
    ("陽菜", "ヒナ", "hina"),
    ("結衣", "ユイ", "yui"),
    ("美咲", "ミサキ", "misaki"),
    ("愛", "アイ", "ai"),
    ("久美子", "クミコ", "kumiko"),
    ("直美", "ナオミ", "naomi"),
    ("智子", "トモコ", "tomoko"),
    ("裕子", "ユウコ", "yuko"),
    ("彩", "アヤ", "aya"),
    ("芽衣", "メイ", "mei"),
    ("千尋", "チヒロ", "chihiro"),
    ("翔太", "ショウタ", "shota"),
    ("大輔", "ダイスケ", "daisuke"),
    ("健一", "ケンイチ", "kenichi"),
    ("誠", "マコト", "makoto"),
    ("拓也", "タクヤ", "takuya"),
    ("浩二", "コウジ", "koji"),
    ("蓮", "レン", "ren"),
    ("悠真", "ユウマ", "yuma"),
    ("隆", "タカシ", "takashi"),
    ("修", "オサム", "osamu"),
]
MAIL_DOMAINS = ["example.jp", "example.com", "example.ne.jp", "example.co.jp"]

# (prefecture, ISO 3166-2 code, a city, zip prefix, weight ≈ population share)
PREFECTURES = [
    ("北海道", "JP-01", "札幌市中央区", "060", 4),
    ("宮城県", "JP-04", "仙台市青葉区", "980", 2),
    ("埼玉県", "JP-11", "さいたま市浦和区", "330", 6),
    ("千葉県", "JP-12", "千葉市中央区", "260", 5),
    ("東京都", "JP-13", "渋谷区", "150", 11),
    ("神奈川県", "JP-14", "横浜市西区", "220", 7),
    ("新潟県", "JP-15", "新潟市中央区", "950", 2),
    ("静岡県", "JP-22", "静岡市葵区", "420", 3),
    ("愛知県", "JP-23", "名古屋市中区", "460", 6),
    ("京都府", "JP-26", "京都市中京区", "604", 2),
    ("大阪府", "JP-27", "大阪市北区", "530", 7),
    ("兵庫県", "JP-28", "神戸市中央区", "650", 4),
    ("広島県", "JP-34", "広島市中区", "730", 2),
    ("福岡県", "JP-40", "福岡市中央区", "810", 4),
    ("熊本県", "JP-43", "熊本市中央区", "860", 1),
    ("沖縄県", "JP-47", "那覇市", "900", 1),
]
_PREF_CUM = [sum(p[4] for p in PREFECTURES[: i + 1]) for i in range(len(PREFECTURES))]
STREETS = ["神南1-2-3", "本町2-5-8", "栄3-4-1", "中央1-8-22", "大手町1-1-1", "天神2-11-3"]


@dataclass(frozen=True)
class Product:
    title: str
    handle: str
    sku: str
    price: int
    consumption_days: int | None
    grams: int
    product_type: str


PRODUCTS = [
    Product("国産青汁 30包", "aojiru-30", "AOJIRU-30", 3_980, 30, 300, "サプリメント"),
    Product(
        "黒酢にんにくカプセル 60日分", "kurozu-60", "KUROZU-60", 6_480, 60, 120, "サプリメント"
    ),
    Product("米ぬか化粧水 150ml", "komenuka-lotion", "KOMENUKA-150", 4_400, 45, 200, "スキンケア"),
    Product("椿オイル美容液 30ml", "tsubaki-serum", "TSUBAKI-30", 5_500, 60, 90, "スキンケア"),
    Product("季節のギフトセット", "gift-set", "GIFT-SET", 8_800, None, 900, "ギフト"),
]
SHIPPING = 550  # yen, waived from ¥5,000
CARRIERS = [("ヤマト運輸", "yamato"), ("佐川急便", "sagawa"), ("日本郵便", "japanpost")]

# share of customers per kind of buyer (the rest are repeat buyers)
ONE_TIME, DORMANT, GIFT, NEVER_BOUGHT = 0.30, 0.15, 0.07, 0.06
GUEST_SHARE = 0.04  # orders without a customer record, per customer order
CANCEL_SHARE, REFUND_SHARE = 0.02, 0.015


@dataclass
class SeedSummary:
    """What a seed wrote (for the CLI, tests and benchmarks)."""

    shop: str
    products: int = 0
    customers: int = 0
    orders: int = 0
    guest_orders: int = 0
    fulfillments: int = 0
    cancelled: int = 0
    refunded: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


@dataclass
class _Buyer:
    kind: str
    created: datetime
    data: dict[str, Any]
    orders: list[_OrderDraft] = field(default_factory=list)


@dataclass
class _OrderDraft:
    at: datetime
    lines: list[tuple[int, int]]  # (product index, quantity)
    buyer: _Buyer | None
    email: str | None
    cancel: bool = False
    refund: bool = False


def seed(
    store: Store, shop: str, *, customers: int = 300, now: datetime, seed: int = 1
) -> SeedSummary:
    """Fill ``shop`` (which must exist) with the demo brand's products, customers and orders.

    Writes quietly (no webhooks) whatever ``store.webhooks`` says: seeding is not an event the
    app should hear about; it reads the history with a bulk export, as on a real install.
    """
    return _seed_shop(store, shop, customers, now, seed)


def _seed_shop(
    store: Store, shop: str, customers: int, now: datetime, seed: int, orders: int | None = None
) -> SeedSummary:
    if store.get_shop(shop) is None:
        raise ValueError(f"shop: no shop {shop!r}; create it first")
    if customers < 0:
        raise ValueError("customers: must be zero or more")
    quiet = Store(store.conn, store.clock, webhooks=False)
    rng = random.Random(seed)
    start = now - timedelta(days=HISTORY_DAYS)
    products = _products(quiet, shop, start - timedelta(days=60))
    buyers = [_buyer(rng, i, start, now) for i in range(customers)]
    drafts: list[_OrderDraft] = []
    for buyer in buyers:
        buyer.orders = _orders_for(rng, buyer, start, now)
        drafts.extend(buyer.orders)
    if orders is not None:
        drafts.extend(_top_up(rng, buyers, len(drafts), orders, now))
    guests = int(len(drafts) * GUEST_SHARE)
    for n in range(guests):
        at = start + timedelta(seconds=rng.uniform(0, (now - start).total_seconds()))
        email = f"guest{seed}-{n}@{rng.choice(MAIL_DOMAINS)}"
        drafts.append(_OrderDraft(at, [(rng.choice([0, 2, 4]), 1)], None, email))
    for d in drafts:
        age = (now - d.at).days
        d.cancel = age > 3 and rng.random() < CANCEL_SHARE
        d.refund = not d.cancel and age > 10 and rng.random() < REFUND_SHARE
    summary = SeedSummary(shop=shop, products=len(products))
    for b in buyers:
        summary.by_kind[b.kind] = summary.by_kind.get(b.kind, 0) + 1
    _write(quiet, shop, buyers, drafts, products, now, summary)
    return summary


def seed_large(
    store: Store,
    shop: str,
    *,
    customers: int = 20_000,
    orders: int | None = None,
    now: datetime,
    seed: int = 1,
) -> SeedSummary:
    """A large shop for backfill tests and benchmarks (about 2.7 orders per customer).

    ``orders`` asks for at least that many orders in all (guest orders included): repeat buyers
    get extra orders of another product until the count is reached.
    """
    if orders is not None and orders < 0:
        raise ValueError("orders: must be zero or more")
    return _seed_shop(store, shop, customers, now, seed, orders)


# -- planning (pure) ----------------------------------------------------------------------------


def _buyer(rng: random.Random, n: int, start: datetime, now: datetime) -> _Buyer:
    fam_k, fam_kana, fam_r = rng.choice(FAMILY_NAMES)
    giv_k, giv_kana, giv_r = rng.choice(GIVEN_NAMES)
    pref, code, city, zip3, _ = rng.choices(PREFECTURES, cum_weights=_PREF_CUM)[0]
    roll = rng.random()
    if roll < ONE_TIME:
        kind = "one_time"
    elif roll < ONE_TIME + DORMANT:
        kind = "dormant"
    elif roll < ONE_TIME + DORMANT + GIFT:
        kind = "gift"
    elif roll < ONE_TIME + DORMANT + GIFT + NEVER_BOUGHT:
        kind = "never_bought"
    else:
        kind = "repeat"
    span = (now - start).total_seconds()
    created = start + timedelta(seconds=rng.uniform(0, span * 0.97))
    consent_roll = rng.random()
    if kind == "never_bought" or consent_roll < 0.62:
        state = "subscribed"
    elif consent_roll < 0.85:
        state = "not_subscribed"
    elif consent_roll < 0.95:
        state = "unsubscribed"
    else:
        state = "pending"
    local = rng.choice(
        [f"{giv_r}.{fam_r}", f"{fam_r}.{giv_r}", f"{giv_r}{fam_r[:1]}", f"{fam_r}_{giv_r}"]
    )
    email = f"{local}{n}@{rng.choice(MAIL_DOMAINS)}"
    phone = f"+8190{rng.randrange(10_000_000, 99_999_999)}" if rng.random() < 0.5 else None
    tags = ["newsletter"] if kind == "never_bought" else []
    data: dict[str, Any] = {
        "first_name": giv_k,
        "last_name": fam_k,
        "email": email,
        "phone": phone,
        "note": f"フリガナ: {fam_kana} {giv_kana}",
        "tags": tags,
        "state": "enabled" if rng.random() < 0.4 else "disabled",
        "address": {
            "first_name": giv_k,
            "last_name": fam_k,
            "company": None,
            "address1": rng.choice(STREETS),
            "address2": None,
            "city": city,
            "province": pref,
            "province_code": code.split("-")[1],
            "country": "Japan",
            "country_code": "JP",
            "zip": f"{zip3}-{rng.randrange(0, 10_000):04d}",
            "phone": phone,
        },
        "consent": state,
    }
    if rng.random() < 0.7:
        age = rng.randint(20, 75)
        born = date(now.year - age, 1, 1) + timedelta(days=rng.randrange(0, 365))
        data["birth_date"] = born.isoformat()
    return _Buyer(kind, created, data)


def _orders_for(rng: random.Random, b: _Buyer, start: datetime, now: datetime) -> list[_OrderDraft]:
    """The buyer's orders: first one within a month of sign-up, then their own rhythm."""
    if b.kind == "never_bought":
        return []
    email = b.data["email"]
    first = b.created + timedelta(hours=rng.uniform(0, 24 * 30))
    if first >= now:
        first = now - timedelta(hours=rng.uniform(1, 48))
    main = rng.choices([0, 1, 2, 3], weights=[4, 2, 3, 2])[0]
    if b.kind == "gift":
        out = [_OrderDraft(first, [(4, 1)], b, email)]
        at = first
        while True:
            at += timedelta(days=rng.uniform(150, 380))  # the next season's gift
            if at >= now:
                return out
            out.append(_OrderDraft(at, [(4, rng.choice([1, 1, 2]))], b, email))
    qty = 1 if rng.random() < 0.8 else 2
    out = [_OrderDraft(first, _basket(rng, main, qty), b, email)]
    if b.kind == "one_time":
        return out
    days = PRODUCTS[main].consumption_days or 45
    factor = rng.uniform(0.85, 1.45)  # this customer's own pace
    stop = now
    if b.kind == "dormant":
        stop = min(now - timedelta(days=rng.uniform(200, 400)), first + timedelta(days=400))
    keep = rng.uniform(0.8, 0.95)  # chance of coming back for another cycle
    at = first
    while rng.random() < keep:
        at += timedelta(days=days * qty * factor * rng.uniform(0.9, 1.15))
        if at >= stop:
            break
        if rng.random() < 0.04:  # a skipped cycle
            continue
        out.append(_OrderDraft(at, _basket(rng, main, qty), b, email))
    return out


def _top_up(
    rng: random.Random, buyers: list[_Buyer], have: int, target: int, now: datetime
) -> list[_OrderDraft]:
    """Orders that bring ``have`` customer orders to ``target`` orders in all, guest orders
    (GUEST_SHARE on top of customer orders) included: each a repeat buyer's occasional purchase
    of another product between their first order and ``now``."""
    repeat = [b for b in buyers if b.kind == "repeat" and b.orders]
    extra: list[_OrderDraft] = []
    while repeat and have + len(extra) + int((have + len(extra)) * GUEST_SHARE) < target:
        b = rng.choice(repeat)
        first = b.orders[0].at
        span = max(120.0, (now - first).total_seconds())
        at = min(first + timedelta(seconds=rng.uniform(60, span)), now - timedelta(minutes=1))
        draft = _OrderDraft(at, [(rng.randrange(4), 1)], b, b.data["email"])
        b.orders.append(draft)
        extra.append(draft)
    return extra


def _basket(rng: random.Random, main: int, qty: int) -> list[tuple[int, int]]:
    lines = [(main, qty)]
    if rng.random() < 0.15:
        other = rng.choice([i for i in range(4) if i != main])
        lines.append((other, 1))
    return lines


# -- writing --------------------------------------------------------------------------------


def _products(store: Store, shop: str, at: datetime) -> list[dict[str, Any]]:
    """The catalogue, created once per shop (a second seed reuses it)."""
    existing = {p["handle"]: p for p in store.all(shop, "products")}
    out = []
    for p in PRODUCTS:
        rec = existing.get(p.handle)
        if rec is None:
            metafields = []
            if p.consumption_days:
                metafields.append(
                    {
                        "namespace": "kizuna",
                        "key": "consumption_days",
                        "type": "number_integer",
                        "value": str(p.consumption_days),
                    }
                )
            rec = store.create_product(
                shop,
                {
                    "title": p.title,
                    "handle": p.handle,
                    "vendor": "絆ヘルス&ビューティー",
                    "product_type": p.product_type,
                    "created_at": iso(at),
                    "metafields": metafields,
                    "variants": [{"sku": p.sku, "price": str(p.price), "grams": p.grams}],
                },
            )
        variant = store.get(shop, "variants", rec["variants"][0])
        assert variant is not None
        out.append({"product": rec, "variant": variant})
    return out


def iso(at: datetime) -> str:
    """``state.iso`` for the UTC datetimes the seed works with, without strftime's cost."""
    return at.isoformat(timespec="seconds")[:19] + "Z"


class _Ids:
    """Ids from one reserved block of the shop's counter (one INCRBY for the whole seed)."""

    def __init__(self, store: Store, shop: str, needed: int) -> None:
        top = int(store.conn.incrby(f"{PREFIX}{shop}:seq", needed))
        self.next = top - needed  # the last id handed out before this block
        self.left = needed

    def take(self) -> int:
        if self.left <= 0:
            raise RuntimeError("seed reserved too few ids")
        self.left -= 1
        self.next += 1
        return ID_BASE + self.next


def _write(
    store: Store,
    shop: str,
    buyers: list[_Buyer],
    drafts: list[_OrderDraft],
    products: list[dict[str, Any]],
    now: datetime,
    summary: SeedSummary,
) -> None:
    buyers = sorted(buyers, key=lambda b: b.created)
    drafts = sorted(drafts, key=lambda d: d.at)
    needed = sum(3 for _ in buyers) + sum(len(d.lines) + 3 for d in drafts)
    ids = _Ids(store, shop, needed)
    currency = (store.get_shop(shop) or {}).get("currency", "JPY")
    cust_ids: dict[int, int] = {}
    customers: dict[int, dict[str, Any]] = {}
    for b in buyers:
        rec = _customer_record(ids, b)
        cust_ids[id(b)] = rec["id"]
        customers[rec["id"]] = rec
    first_number = int(store.conn.incrby(f"{PREFIX}{shop}:order_number", len(drafts))) - len(drafts)
    orders: list[dict[str, Any]] = []
    fulfillments: list[dict[str, Any]] = []
    by_customer: dict[int, list[int]] = {}
    for n, d in enumerate(drafts, start=first_number + 1):
        cid = cust_ids[id(d.buyer)] if d.buyer is not None else None
        order, ful = _order_record(ids, d, n, cid, products, currency, now)
        orders.append(order)
        if ful is not None:
            fulfillments.append(ful)
        if cid is not None:
            by_customer.setdefault(cid, []).append(order["id"])
            cust = customers[cid]
            cust["updated_at"] = max(cust["updated_at"], order["updated_at"])
        else:
            summary.guest_orders += 1
        summary.cancelled += bool(order["cancelled_at"])
        summary.refunded += bool(order["refunds"]) and not order["cancelled_at"]
    _put_all(store, shop, "customers", list(customers.values()))
    _put_all(store, shop, "orders", orders)
    _put_all(store, shop, "fulfillments", fulfillments)
    with store.conn.pipeline(transaction=False) as pipe:
        for n, (cid, oids) in enumerate(by_customer.items(), start=1):
            pipe.sadd(store.customer_orders_key(shop, cid), *oids)
            if n % CHUNK == 0:
                pipe.execute()
        pipe.set(f"{PREFIX}{shop}:customer_orders_indexed", 1)
        pipe.execute()
    summary.customers = len(customers)
    summary.orders = len(orders)
    summary.fulfillments = len(fulfillments)


def _put_all(store: Store, shop: str, kind: str, records: list[dict[str, Any]]) -> None:
    """HSET in small commands (redis-py packs one command by repeated concatenation, which
    grows with the square of its size), sent CHUNK records per round trip."""
    key = f"{PREFIX}{shop}:{kind}"
    with store.conn.pipeline(transaction=False) as pipe:
        for i in range(0, len(records), HSET_FIELDS):
            chunk = records[i : i + HSET_FIELDS]
            pipe.hset(key, mapping={str(r["id"]): orjson.dumps(r) for r in chunk})
            if (i + HSET_FIELDS) % CHUNK == 0:
                pipe.execute()
        pipe.execute()


def _customer_record(ids: _Ids, b: _Buyer) -> dict[str, Any]:
    """A customer in the shape ``Store.create_customer`` writes."""
    d = b.data
    cid = ids.take()
    created = iso(b.created)
    address = {
        **d["address"],
        "name": f"{d['first_name']} {d['last_name']}",
        "country_name": "Japan",
        "id": ids.take(),
        "customer_id": cid,
        "default": True,
    }
    state = d["consent"]
    metafields = {}
    if d.get("birth_date"):
        metafields["facts.birth_date"] = {
            "id": ids.take(),
            "namespace": "facts",
            "key": "birth_date",
            "type": "date",
            "value": d["birth_date"],
            "created_at": created,
            "updated_at": created,
        }
    return {
        "id": cid,
        "first_name": d["first_name"],
        "last_name": d["last_name"],
        "email": d["email"],
        "phone": d["phone"],
        "note": d["note"],
        "state": d["state"],
        "verified_email": True,
        "locale": "ja",
        "tags": normalize_tags(d["tags"]),
        "addresses": [address],
        "email_marketing_consent": {
            "state": state,
            "opt_in_level": "single_opt_in",
            "consent_updated_at": created if state != "not_subscribed" else None,
        },
        "metafields": metafields,
        "created_at": created,
        "updated_at": created,
    }


def _order_record(
    ids: _Ids,
    d: _OrderDraft,
    number: int,
    cid: int | None,
    products: list[dict[str, Any]],
    currency: str,
    now: datetime,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """An order (and its fulfilment) in the shape ``Store.create_order`` writes."""
    oid = ids.take()
    created = iso(d.at)
    items = []
    for index, qty in d.lines:
        p, v = products[index]["product"], products[index]["variant"]
        items.append(
            {
                "id": ids.take(),
                "product_id": p["id"],
                "variant_id": v["id"],
                "title": p["title"],
                "variant_title": v["title"],
                "sku": v["sku"],
                "vendor": p["vendor"],
                "quantity": qty,
                "current_quantity": qty,
                "price": v["price"],
                "fulfillable_quantity": qty,
                "fulfillment_status": None,
                "requires_shipping": True,
                "taxable": True,
                "grams": v["grams"],
            }
        )
    subtotal = sum(float(i["price"]) * i["quantity"] for i in items)
    shipping = 0 if subtotal >= 5_000 else SHIPPING
    total = subtotal + shipping
    tax = round(subtotal * 8 / 108)  # food: 8 % consumption tax, included in prices
    address = None
    if d.buyer is not None:
        a = d.buyer.data["address"]
        address = {
            **a,
            "name": f"{d.buyer.data['first_name']} {d.buyer.data['last_name']}",
            "country_name": "Japan",
        }
    record: dict[str, Any] = {
        "id": oid,
        "name": f"#{1000 + number}",
        "number": number,
        "order_number": 1000 + number,
        "email": d.email,
        "phone": None,
        "customer_id": cid,
        "currency": currency,
        "line_items": items,
        "subtotal_price": f"{subtotal:.2f}",
        "total_line_items_price": f"{subtotal:.2f}",
        "total_discounts": "0.00",
        "total_shipping": f"{shipping:.2f}",
        "total_tax": f"{tax:.2f}",
        "taxes_included": True,
        "total_price": f"{total:.2f}",
        "discount_codes": [],
        "financial_status": "paid",
        "fulfillment_status": None,
        "tags": [],
        "note": None,
        "test": False,
        "source_name": "web",
        "buyer_accepts_marketing": bool(
            d.buyer is not None and d.buyer.data["consent"] == "subscribed"
        ),
        "shipping_address": address,
        "billing_address": dict(address) if address else None,
        "cancelled_at": None,
        "cancel_reason": None,
        "closed_at": None,
        "refunds": [],
        "fulfillments": [],
        "processed_at": created,
        "created_at": created,
        "updated_at": created,
    }
    if d.cancel:
        at = iso(d.at + timedelta(hours=5))
        record.update(cancelled_at=at, cancel_reason="customer", closed_at=at, updated_at=at)
        record["refunds"].append(
            {
                "id": ids.take(),
                "amount": record["total_price"],
                "note": "cancelled",
                "created_at": at,
            }
        )
        record["financial_status"] = "refunded"
        return record, None
    ship_at = d.at + timedelta(days=1 + (oid % 4), hours=3)
    if ship_at > now:
        return record, None  # not shipped yet
    fid = ids.take()
    shipped = iso(ship_at)
    lines = []
    for li in items:
        lines.append({**li, "quantity": li["fulfillable_quantity"]})
        li["fulfillable_quantity"] = 0
        li["fulfillment_status"] = "fulfilled"
    company, slug = CARRIERS[oid % len(CARRIERS)]
    tracking = f"{4000_0000_0000 + oid % 10**10}"
    ful = {
        "id": fid,
        "order_id": oid,
        "name": f"{record['name']}.1",
        "status": "success",
        "shipment_status": "delivered" if ship_at + timedelta(days=2) < now else None,
        "tracking_company": company,
        "tracking_number": tracking,
        "tracking_url": f"https://tracking.example.jp/{slug}/{tracking}",
        "line_items": lines,
        "created_at": shipped,
        "updated_at": shipped,
    }
    record.update(fulfillments=[fid], fulfillment_status="fulfilled", updated_at=shipped)
    if d.refund:
        refund_at = ship_at + timedelta(days=5)
        if refund_at < now:
            amount = round(float(record["total_price"]) * 0.5)
            record["refunds"].append(
                {
                    "id": ids.take(),
                    "amount": f"{amount:.2f}",
                    "note": "一部返金",
                    "created_at": iso(refund_at),
                }
            )
            record.update(financial_status="partially_refunded", updated_at=iso(refund_at))
    return record, ful
