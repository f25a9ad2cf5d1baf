"""The explanation log: one entry per enrolment decision, in words a merchant can read.

Each entry keeps a stable machine ``reason`` code (the UI and tests match on it) and renders
English or Japanese text from :data:`REASONS`; ``detail`` carries the facts behind it (which
order, which version, until when a step was deferred, what was written).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

KINDS = ("entered", "step_done", "deferred", "skipped", "exited", "waiting", "retimed")

#: reason code → (English, Japanese). ``{name}`` placeholders are filled from ``detail``.
REASONS: dict[str, tuple[str, str]] = {
    # entered
    "first_order": ("First order {order} placed", "初回注文 {order}"),
    "product_ordered": ("Ordered the product (order {order})", "対象商品を購入（注文 {order}）"),
    "nth_order": ("Reached order number {nth}", "{nth} 回目の注文に到達"),
    "yearly_date": ("Yearly date on {date}", "毎年の記念日 {date}"),
    "segment_entered": ("Entered segment {segment}", "セグメント {segment} に入りました"),
    "reordered": ("Ordered again (order {order}); the series restarts", "再購入（注文 {order}）"),
    # waiting / not entering
    "not_triggered": ("The trigger has not happened", "開始条件を満たしていません"),
    "already_done": ("Already went through this cycle", "このサイクルは完了済みです"),
    "not_due": ("Next step is due at {due_at}", "次のステップは {due_at} 予定"),
    "sequence_inactive": ("The sequence is not active", "シーケンスは停止中です"),
    "outside_window": ("Outside the sequence's active dates", "シーケンスの有効期間外です"),
    "all_steps_missed": ("Every step is already past", "すべてのステップが過ぎています"),
    # skipped
    "consent": (
        "Not subscribed to email marketing ({state})",
        "メール配信に同意していません（{state}）",
    ),
    "holdout": (
        "Held out as the control group ({percent}%)",
        "効果測定の対照群（{percent}%）",
    ),
    # skipped (or exited): orders at Shopify from before Kizuna's order history
    "returning_customer": (
        "Not a first order: Shopify has {earlier} earlier order(s) from before Kizuna's history",
        "初回注文ではありません：Kizuna の履歴より前に Shopify 上で {earlier} 件の注文があります",
    ),
    "milestone_before_history": (
        "Order number {nth} was placed before Kizuna's history "
        "({earlier} earlier order(s) at Shopify)",
        "{nth} 回目の注文は Kizuna の履歴より前です（Shopify 上で以前の注文 {earlier} 件）",
    ),
    # written by the step job itself (not by evaluate)
    "shopify_refused": (
        "Shopify refused the step: {error}",
        "Shopify がステップを拒否しました：{error}",
    ),
    "step_not_committed": (
        "Coupon {code} withdrawn: its step did not complete (the customer's state changed)",
        "クーポン {code} を取り消しました：ステップが完了しなかったため（顧客の状態が変化）",
    ),
    # deferred
    "frequency_cap": ("Frequency cap: deferred to {until}", "配信頻度の上限のため {until} に延期"),
    "quiet_hours": ("Quiet hours: deferred to {until}", "配信停止時間のため {until} に延期"),
    # step done
    "step_written": ("Step {step} written", "ステップ {step} を反映しました"),
    # retimed
    "anchor_moved": ("Anchor moved to {anchor}: later steps re-timed", "起点が {anchor} に変更"),
    # exited
    "unsubscribed": ("Unsubscribed from email marketing", "メール配信の同意が取り消されました"),
    "customer_deleted": ("Customer deleted or redacted", "顧客が削除されました"),
    "coupon_redeemed": ("Coupon {code} redeemed", "クーポン {code} が使用されました"),
    "new_order": ("Placed a new order {order}", "新しい注文 {order}"),
    "segment_left": ("Left segment {segment}", "セグメント {segment} から外れました"),
    "uninstalled": ("The app was uninstalled", "アプリがアンインストールされました"),
    "sequence_deleted": ("The sequence was deleted", "シーケンスが削除されました"),
    "completed": ("All steps done", "すべてのステップが完了しました"),
}


class _Blank(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


@dataclass(frozen=True, slots=True)
class Decision:
    """One explained decision about one customer in one sequence."""

    at: datetime
    customer_id: int
    sequence: str
    decision: str
    reason: str
    version: int | None = None
    step: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.decision not in KINDS:
            raise ValueError(f"unknown decision kind {self.decision!r}")
        if self.reason not in REASONS:
            raise ValueError(f"unknown reason code {self.reason!r}")

    def text(self, lang: str = "en") -> str:
        en, ja = REASONS[self.reason]
        return (ja if lang == "ja" else en).format_map(_Blank({**self.detail}))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "at": self.at.isoformat(),
            "customer_id": self.customer_id,
            "sequence": self.sequence,
            "decision": self.decision,
            "reason": self.reason,
        }
        if self.version is not None:
            out["version"] = self.version
        if self.step is not None:
            out["step"] = self.step
        if self.detail:
            out["detail"] = dict(self.detail)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Decision:
        return cls(
            at=datetime.fromisoformat(d["at"]),
            customer_id=int(d["customer_id"]),
            sequence=str(d["sequence"]),
            decision=str(d["decision"]),
            reason=str(d["reason"]),
            version=d.get("version"),
            step=d.get("step"),
            detail=dict(d.get("detail") or {}),
        )
