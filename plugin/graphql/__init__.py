"""Every GraphQL document the app sends to the Admin API, one named operation per file.

Each ``<OperationName>.graphql`` file beside this module is loaded once, at import, into a
:class:`Document`; the constants below name them. ``tests/unit/test_graphql_documents.py``
validates every file against Shopify's Admin schema (2026-07) and checks its estimated cost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Literal

_OPERATION = re.compile(r"^\s*(query|mutation)\s+([A-Za-z_][A-Za-z0-9_]*)", re.MULTILINE)


@dataclass(frozen=True)
class Document:
    """One named operation: ``name`` is both the file stem and the GraphQL operation name."""

    name: str
    kind: Literal["query", "mutation"]
    text: str

    def __str__(self) -> str:
        return self.text


def _load(name: str) -> Document:
    text = resources.files(__name__).joinpath(f"{name}.graphql").read_text(encoding="utf-8")
    found = _OPERATION.findall(text)
    if len(found) != 1 or found[0][1] != name:
        raise ValueError(f"{name}.graphql must hold exactly one operation named {name}")
    kind: Literal["query", "mutation"] = "mutation" if found[0][0] == "mutation" else "query"
    return Document(name=name, kind=kind, text=text)


def document_names() -> list[str]:
    """The stems of all ``.graphql`` files in this package (sorted)."""
    return sorted(
        entry.name.removesuffix(".graphql")
        for entry in resources.files(__name__).iterdir()
        if entry.name.endswith(".graphql")
    )


SHOP_FACTS = _load("ShopFacts")
CUSTOMER_BY_ID = _load("CustomerById")
CUSTOMERS_UPDATED_SINCE = _load("CustomersUpdatedSince")
ORDERS_UPDATED_SINCE = _load("OrdersUpdatedSince")
CUSTOMER_TAGS_ADD = _load("CustomerTagsAdd")
CUSTOMER_TAGS_REMOVE = _load("CustomerTagsRemove")
METAFIELDS_SET = _load("MetafieldsSet")
STANDARD_METAFIELD_DEFINITION_ENABLE = _load("StandardMetafieldDefinitionEnable")
DISCOUNT_CODE_BASIC_CREATE = _load("DiscountCodeBasicCreate")
CODE_DISCOUNT_NODE_BY_CODE = _load("CodeDiscountNodeByCode")
DISCOUNT_CODE_DELETE = _load("DiscountCodeDelete")
FLOW_TRIGGER_RECEIVE = _load("FlowTriggerReceive")
STAGED_UPLOADS_CREATE = _load("StagedUploadsCreate")
BULK_OPERATION_RUN_QUERY = _load("BulkOperationRunQuery")
BULK_OPERATION_RUN_MUTATION = _load("BulkOperationRunMutation")
BULK_OPERATION_BY_ID = _load("BulkOperationById")
# Backfill (worker/backfill.py): a bulk export whose child rows follow their parent.
BULK_OPERATION_RUN_GROUPED_QUERY = _load("BulkOperationRunGroupedQuery")
WEBHOOK_SUBSCRIPTION_CREATE = _load("WebhookSubscriptionCreate")
WEBHOOK_SUBSCRIPTION_DELETE = _load("WebhookSubscriptionDelete")
WEBHOOK_SUBSCRIPTION_LIST = _load("WebhookSubscriptionList")
KIZUNA_COUPON_BY_CODE = _load("KizunaCouponByCode")  # worker/writeback.py

#: Every document by operation name (what ``AdminClient.execute`` accepts as a string).
DOCUMENTS: dict[str, Document] = {
    doc.name: doc for doc in globals().copy().values() if isinstance(doc, Document)
}
