"""Ready sequences a merchant can start from, with English and Japanese titles.

Each template is a plain definition dict, the same shape the API accepts, so it goes through
the one validator (:func:`crm.sequence.from_dict`). :func:`instantiate` fills in the products,
the id and any other field the merchant chose.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ValidationError
from .sequence import Sequence, from_dict

#: Placeholder product for templates that need one; instantiate() replaces it.
EXAMPLE_PRODUCT = 1


@dataclass(frozen=True, slots=True)
class Template:
    handle: str
    title_en: str
    title_ja: str
    description_en: str
    description_ja: str
    definition: Mapping[str, Any]

    def title(self, lang: str = "en") -> str:
        return self.title_ja if lang == "ja" else self.title_en

    def description(self, lang: str = "en") -> str:
        return self.description_ja if lang == "ja" else self.description_en


def _step(key: str, offset: int, title: str, **extra: Any) -> dict[str, Any]:
    return {"key": key, "offset_days": offset, "send_hour": 10, "title": title, **extra}


def _pct(value: int, **extra: Any) -> dict[str, Any]:
    return {"kind": "percentage", "value": value, **extra}


TEMPLATES: dict[str, Template] = {
    t.handle: t
    for t in (
        Template(
            handle="replenishment",
            title_en="Repeat purchase for consumables",
            title_ja="消耗品のリピート購入",
            description_en=(
                "Reminds the customer a few days before the product runs out, counted from the "
                "quantity bought and their own reorder rhythm; restarts at every new order."
            ),
            description_ja=(
                "購入数量とお客様ご自身の購入間隔から、商品がなくなる数日前にお知らせします。"
                "再購入のたびに最初からやり直します。"
            ),
            definition={
                "id": "replenishment",
                "title": "Repeat purchase",
                "trigger": {
                    "kind": "replenishment",
                    "anchor": "fulfilled",
                    "product_ids": [EXAMPLE_PRODUCT],
                    "consumption_days": 30,
                    "days_before": 5,
                },
                "steps": [
                    _step("reminder", 0, "Running low soon"),
                    _step("runs-out", 5, "Time to restock", flow_trigger=True),
                    _step(
                        "last-call",
                        12,
                        "A little thank-you to restock",
                        discount=_pct(10, valid_days=7),
                        flow_trigger=True,
                    ),
                ],
                "catch_up": "latest",
            },
        ),
        Template(
            handle="birthday_coupon",
            title_en="Birthday-month coupon",
            title_ja="誕生月クーポン",
            description_en=(
                "On the first day of the birthday month, a personal coupon valid until the "
                "month ends. 29 February birthdays are celebrated in February every year."
            ),
            description_ja=(
                "誕生月の初日に、その月末まで使えるお客様専用クーポンを発行します。"
                "2月29日生まれの方も毎年2月にお祝いします。"
            ),
            definition={
                "id": "birthday",
                "title": "Birthday month",
                "trigger": {
                    "kind": "yearly_date",
                    "date_source": "birthday",
                    "yearly_mode": "month_start",
                },
                "steps": [
                    _step(
                        "coupon",
                        0,
                        "Happy birthday month",
                        discount=_pct(15, valid_days=None, until_month_end=True),
                        flow_trigger=True,
                    ),
                ],
            },
        ),
        Template(
            handle="milestone_gift",
            title_en="3rd-order thank-you gift",
            title_ja="3回目のご注文のお礼ギフト",
            description_en="Thanks the customer on their third order with a gift coupon, once.",
            description_ja="3回目のご注文に感謝して、ギフトクーポンを一度だけお贈りします。",
            definition={
                "id": "milestone-3",
                "title": "3rd order gift",
                "trigger": {"kind": "nth_order", "nth": 3},
                "steps": [
                    _step(
                        "gift",
                        1,
                        "Thank you for your third order",
                        discount={"kind": "amount", "value": 500, "valid_days": 30},
                        flow_trigger=True,
                    ),
                ],
            },
        ),
        Template(
            handle="winback",
            title_en="Dormant win-back",
            title_ja="休眠顧客の掘り起こし",
            description_en=(
                "When a customer enters the dormant segment: news first, an offer later; "
                "any new order ends the series."
            ),
            description_ja=(
                "休眠セグメントに入ったお客様に、まずお知らせ、その後に特典をお送りします。"
                "ご注文があった時点で終了します。"
            ),
            definition={
                "id": "winback",
                "title": "Win-back",
                "trigger": {"kind": "segment_entered", "segment": "dormant"},
                "steps": [
                    _step("news", 0, "What is new"),
                    _step("offer", 14, "We miss you", discount=_pct(15, valid_days=14)),
                ],
                "exit": {"on_order": True, "on_segment_left": True},
            },
        ),
        Template(
            handle="four_walls",
            title_en="Four walls: trust, safety, opportunity, efficacy, then the offer",
            title_ja="4つの壁：信頼・安心・機会・効果、そしてご提案",
            description_en=(
                "After the first order, a short series that earns trust, reassures, shows the "
                "right moment and the results before it makes an offer."
            ),
            description_ja=(
                "初回購入後、信頼・安心・機会・効果の順に情報をお届けし、最後にご提案する"
                "ステップメールです。"
            ),
            definition={
                "id": "four-walls",
                "title": "Four walls",
                "trigger": {"kind": "first_order", "anchor": "fulfilled"},
                "steps": [
                    _step("trust", 1, "Who we are and why we make it"),
                    _step("safety", 4, "How it is made and checked"),
                    _step("opportunity", 9, "When and how to use it"),
                    _step("efficacy", 16, "What customers noticed"),
                    _step("offer", 23, "Your next order", discount=_pct(10, valid_days=10)),
                ],
                "exit": {"on_redeem": True},
            },
        ),
    )
}


def template(handle: str) -> Template:
    try:
        return TEMPLATES[handle]
    except KeyError:
        raise ValidationError(f"unknown template {handle!r}", field="template") from None


def instantiate(handle: str, **overrides: Any) -> Sequence:
    """A validated sequence from a template; ``overrides`` replace top-level fields.

    ``trigger`` may be given as a partial dict merged over the template's trigger, e.g.
    ``instantiate("replenishment", id="vitamin-c", trigger={"product_ids": [42]})``.
    """
    definition: dict[str, Any] = copy.deepcopy(dict(template(handle).definition))
    trigger = overrides.pop("trigger", None)
    if trigger is not None:
        if not isinstance(trigger, Mapping):
            raise ValidationError("trigger must be an object", field="trigger")
        definition["trigger"] = {**definition["trigger"], **trigger}
    definition.update(overrides)
    return from_dict(definition)
