"""Regenerate ``devstore/schema.graphql`` from Shopify's real Admin schema.

    python -m devstore.schema_subset <path to admin-2026-07.graphql> [--check]

The devstore's schema is the part of Shopify's Admin GraphQL schema (2026-07) that Kizuna
uses. :data:`TYPES` declares it: each object, interface or union type the devstore answers,
with the fields (or union members) it keeps: ``ALL``, or their names in the order printed.
Everything else comes from the real schema: every scalar, enum and input type reachable from
the kept fields and their arguments is pulled in whole (an enum with all its values, an input
type with all its fields), and arguments, defaults and deprecations are Shopify's. An
interface a type implements is kept when it is declared too and the type keeps its fields.

The file is printed by graphql-core's ``print_schema``: the reachable scalars, enums and input
types first, in name order, then the unions in name order, then the declared object and
interface types in the order below. Enums and input types keep Shopify's descriptions;
scalars, unions and the declared types are printed bare.

Adding a field Kizuna needs = adding its name here and re-running; ``--check`` exits 1 when
the file would change. A declared type or field missing from the real schema, or a reachable
object type that is not declared, is an error: the subset stays closed and true to Shopify's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from graphql import (
    DocumentNode,
    EnumTypeDefinitionNode,
    FieldDefinitionNode,
    InputObjectTypeDefinitionNode,
    InputValueDefinitionNode,
    InterfaceTypeDefinitionNode,
    ListTypeNode,
    NamedTypeNode,
    NonNullTypeNode,
    ObjectTypeDefinitionNode,
    ScalarTypeDefinitionNode,
    TypeNode,
    UnionTypeDefinitionNode,
    build_ast_schema,
    parse,
    print_schema,
)

ALL = "*"
HEADER = """\
# The devstore's Admin API schema: the subset of Shopify's Admin GraphQL schema
# (version 2026-07) that Kizuna uses, with the same names and types. A test checks
# every type, field and argument against the real schema.
"""
OUTPUT = Path(__file__).with_name("schema.graphql")
BUILT_IN = {"String", "Int", "Float", "Boolean", "ID"}

#: Declared object, interface and union types: ``ALL`` fields/members or the kept ones.
TYPES: dict[str, str] = {
    "Discount": ALL,
    "DiscountCode": ALL,
    "DiscountContext": "DiscountBuyerSelectionAll DiscountCustomerSegments DiscountCustomers",
    "DiscountCustomerGetsValue": ALL,
    "DiscountEffect": ALL,
    "DiscountItems": ALL,
    "DiscountMinimumRequirement": ALL,
    "WebhookSubscriptionEndpoint": ALL,
    "QueryRoot": (
        "shop customer customers customersCount order orders ordersCount product products "
        "productsCount productVariant codeDiscountNodeByCode codeDiscountNode discountNode "
        "bulkOperation currentBulkOperation webhookSubscriptions webhookSubscription node nodes "
        "metafieldDefinitions"
    ),
    "Mutation": (
        "tagsAdd tagsRemove metafieldsSet metafieldsDelete discountCodeBasicCreate "
        "discountCodeBxgyCreate discountCodeFreeShippingCreate discountCodeDelete "
        "standardMetafieldDefinitionEnable webhookSubscriptionCreate webhookSubscriptionUpdate "
        "webhookSubscriptionDelete stagedUploadsCreate bulkOperationRunQuery "
        "bulkOperationRunMutation bulkOperationCancel flowTriggerReceive "
        "customerEmailMarketingConsentUpdate"
    ),
    "Node": ALL,
    "Shop": (
        "id name email myshopifyDomain ianaTimezone currencyCode plan timezoneOffsetMinutes "
        "timezoneAbbreviation taxesIncluded taxShipping createdAt updatedAt url primaryDomain"
    ),
    "ShopPlan": "displayName partnerDevelopment shopifyPlus publicDisplayName",
    "Domain": "id host url",
    "Customer": (
        "id legacyResourceId firstName lastName displayName email phone createdAt updatedAt "
        "tags note state locale numberOfOrders amountSpent lastOrder orders defaultAddress "
        "addresses defaultEmailAddress defaultPhoneNumber emailMarketingConsent "
        "smsMarketingConsent metafield metafields statistics verifiedEmail validEmailAddress "
        "lifetimeDuration canDelete taxExempt"
    ),
    "CustomerEmailAddress": (
        "emailAddress marketingState marketingOptInLevel marketingUpdatedAt validFormat"
    ),
    "CustomerPhoneNumber": (
        "phoneNumber marketingState marketingOptInLevel marketingUpdatedAt marketingCollectedFrom"
    ),
    "CustomerEmailMarketingConsentState": "consentUpdatedAt marketingOptInLevel marketingState",
    "CustomerSmsMarketingConsentState": (
        "consentCollectedFrom consentUpdatedAt marketingOptInLevel marketingState"
    ),
    "CustomerStatistics": ALL,
    "MailingAddress": (
        "id address1 address2 city company country countryCodeV2 firstName lastName name phone "
        "province provinceCode zip"
    ),
    "CustomerConnection": ALL,
    "CustomerEdge": ALL,
    "Order": (
        "id legacyResourceId name number email phone createdAt updatedAt processedAt "
        "cancelledAt cancelReason closed closedAt confirmed test tags note currencyCode "
        "customer displayFinancialStatus displayFulfillmentStatus fullyPaid unpaid lineItems "
        "subtotalLineItemsQuantity totalPriceSet subtotalPriceSet currentTotalPriceSet "
        "currentSubtotalPriceSet totalDiscountsSet totalRefundedSet totalTaxSet "
        "totalShippingPriceSet discountCodes discountCode fulfillments refunds shippingAddress "
        "billingAddress customerAcceptsMarketing sourceName metafield metafields"
    ),
    "OrderConnection": ALL,
    "OrderEdge": ALL,
    "LineItem": (
        "id name title quantity currentQuantity sku variantTitle vendor product variant "
        "originalUnitPriceSet discountedUnitPriceSet originalTotalSet discountedTotalSet "
        "requiresShipping taxable refundableQuantity fulfillableQuantity"
    ),
    "LineItemConnection": ALL,
    "LineItemEdge": ALL,
    "Fulfillment": (
        "id legacyResourceId name status createdAt updatedAt deliveredAt trackingInfo displayStatus"
    ),
    "FulfillmentTrackingInfo": ALL,
    "Refund": "id legacyResourceId createdAt updatedAt note totalRefundedSet",
    "MoneyBag": "shopMoney presentmentMoney",
    "MoneyV2": ALL,
    "Count": ALL,
    "PageInfo": ALL,
    "Product": (
        "id legacyResourceId title handle status vendor productType tags createdAt updatedAt "
        "publishedAt descriptionHtml variants totalInventory metafield metafields"
    ),
    "ProductConnection": ALL,
    "ProductEdge": ALL,
    "ProductVariant": (
        "id legacyResourceId title displayName sku price compareAtPrice product createdAt "
        "updatedAt position inventoryQuantity metafield metafields"
    ),
    "ProductVariantConnection": ALL,
    "ProductVariantEdge": ALL,
    "Metafield": (
        "id legacyResourceId namespace key type value jsonValue compareDigest ownerType "
        "createdAt updatedAt description"
    ),
    "MetafieldConnection": ALL,
    "MetafieldEdge": ALL,
    "MetafieldDefinition": (
        "id namespace key name description ownerType type validations access pinnedPosition "
        "useAsCollectionCondition validationStatus"
    ),
    "MetafieldDefinitionConnection": ALL,
    "MetafieldDefinitionEdge": ALL,
    "MetafieldDefinitionType": "name category supportsDefinitionMigrations valueType",
    "MetafieldDefinitionValidation": ALL,
    "MetafieldAccess": ALL,
    "DiscountCodeNode": "id codeDiscount metafield",
    "DiscountNode": "id discount",
    "DiscountCodeBasic": (
        "title status summary shortSummary startsAt endsAt createdAt updatedAt asyncUsageCount "
        "usageLimit appliesOncePerCustomer discountClasses combinesWith codes codesCount "
        "context customerGets minimumRequirement recurringCycleLimit tags"
    ),
    "DiscountCodeBxgy": (
        "title status summary startsAt endsAt createdAt updatedAt asyncUsageCount usageLimit codes"
    ),
    "DiscountCodeFreeShipping": (
        "title status summary startsAt endsAt createdAt updatedAt asyncUsageCount usageLimit codes"
    ),
    "DiscountCodeApp": (
        "title status startsAt endsAt createdAt updatedAt asyncUsageCount usageLimit codes"
    ),
    "DiscountAutomaticBasic": "title status startsAt endsAt createdAt updatedAt",
    "DiscountAutomaticBxgy": "title status startsAt endsAt createdAt updatedAt",
    "DiscountAutomaticFreeShipping": "title status startsAt endsAt createdAt updatedAt",
    "DiscountAutomaticApp": "title status startsAt endsAt createdAt updatedAt",
    "DiscountCombinesWith": ALL,
    "DiscountRedeemCode": "id code asyncUsageCount",
    "DiscountRedeemCodeConnection": ALL,
    "DiscountRedeemCodeEdge": ALL,
    "DiscountBuyerSelectionAll": ALL,
    "DiscountCustomers": ALL,
    "DiscountCustomerSegments": ALL,
    "Segment": "id name query",
    "DiscountCustomerGets": ALL,
    "DiscountPercentage": ALL,
    "DiscountAmount": ALL,
    "DiscountOnQuantity": "quantity effect",
    "DiscountQuantity": ALL,
    "AllDiscountItems": ALL,
    "DiscountProducts": "products productVariants",
    "DiscountCollections": ALL,
    "Collection": "id title handle",
    "CollectionConnection": ALL,
    "CollectionEdge": ALL,
    "DiscountMinimumQuantity": ALL,
    "DiscountMinimumSubtotal": ALL,
    "BulkOperation": ALL,
    "WebhookSubscription": (
        "id legacyResourceId topic format includeFields metafieldNamespaces filter uri "
        "createdAt updatedAt endpoint apiVersion"
    ),
    "ApiVersion": ALL,
    "WebhookHttpEndpoint": ALL,
    "WebhookEventBridgeEndpoint": ALL,
    "WebhookPubSubEndpoint": ALL,
    "WebhookSubscriptionConnection": ALL,
    "WebhookSubscriptionEdge": ALL,
    "TagsAddPayload": ALL,
    "TagsRemovePayload": ALL,
    "UserError": ALL,
    "MetafieldsSetPayload": ALL,
    "MetafieldsSetUserError": ALL,
    "MetafieldsDeletePayload": ALL,
    "MetafieldIdentifier": ALL,
    "DiscountCodeBasicCreatePayload": ALL,
    "DiscountCodeBxgyCreatePayload": ALL,
    "DiscountCodeFreeShippingCreatePayload": ALL,
    "DiscountCodeDeletePayload": ALL,
    "DiscountUserError": ALL,
    "StandardMetafieldDefinitionEnablePayload": ALL,
    "StandardMetafieldDefinitionEnableUserError": ALL,
    "WebhookSubscriptionCreatePayload": "webhookSubscription userErrors",
    "WebhookSubscriptionUpdatePayload": "webhookSubscription userErrors",
    "WebhookSubscriptionDeletePayload": ALL,
    "StagedUploadsCreatePayload": ALL,
    "StagedMediaUploadTarget": "url resourceUrl parameters",
    "StagedUploadParameter": ALL,
    "BulkOperationRunQueryPayload": ALL,
    "BulkOperationRunMutationPayload": ALL,
    "BulkOperationCancelPayload": ALL,
    "BulkOperationUserError": ALL,
    "BulkMutationUserError": ALL,
    "FlowTriggerReceivePayload": ALL,
    "CustomerEmailMarketingConsentUpdatePayload": ALL,
    "CustomerEmailMarketingConsentUpdateUserError": ALL,
}

_LEAF = (ScalarTypeDefinitionNode, EnumTypeDefinitionNode, InputObjectTypeDefinitionNode)
_COMPOSITE = (ObjectTypeDefinitionNode, InterfaceTypeDefinitionNode, UnionTypeDefinitionNode)


class SubsetError(ValueError):
    """The declaration does not fit the real schema."""


def _with(node: Any, **changes: Any) -> Any:
    """A copy of a (frozen) graphql-core AST node with some attributes replaced."""
    return type(node)(**{**{k: getattr(node, k) for k in node.keys}, **changes})


def _named(t: TypeNode) -> str:
    while isinstance(t, NonNullTypeNode | ListTypeNode):
        t = t.type
    assert isinstance(t, NamedTypeNode)
    return t.name.value


def _keeps_interface(
    interface: str, fields: list[str], types: dict[str, str], defs: dict[str, Any]
) -> bool:
    """An interface stays when it is declared and the type keeps every field it declares."""
    spec = types.get(interface)
    node = defs.get(interface)
    if spec is None or not isinstance(node, InterfaceTypeDefinitionNode):
        return False
    needed = [f.name.value for f in node.fields or ()] if spec == ALL else spec.split()
    return set(needed) <= set(fields)


def _bare_field(f: FieldDefinitionNode) -> FieldDefinitionNode:
    """A field without its description or its arguments' (the kept object types are printed
    bare; the enums and input types they use keep Shopify's documentation)."""
    args = tuple(_with(a, description=None) for a in f.arguments or ())
    bare: FieldDefinitionNode = _with(f, description=None, arguments=args)
    return bare


def subset(real: DocumentNode, types: dict[str, str] = TYPES) -> DocumentNode:
    """The declared part of ``real`` (an SDL document) as a new SDL document."""
    defs: dict[str, Any] = {
        d.name.value: d  # type: ignore[attr-defined]
        for d in real.definitions
        if getattr(d, "name", None) is not None
    }
    problems: list[str] = []
    kept: list[Any] = []
    unions: dict[str, Any] = {}
    wanted: list[str] = []  # names the kept definitions refer to

    def refer(node: FieldDefinitionNode | InputValueDefinitionNode) -> None:
        wanted.append(_named(node.type))
        for arg in getattr(node, "arguments", None) or ():
            wanted.append(_named(arg.type))

    for name, spec in types.items():
        node = defs.get(name)
        if not isinstance(node, _COMPOSITE):
            problems.append(f"{name}: no such object, interface or union type")
            continue
        if isinstance(node, UnionTypeDefinitionNode):
            members = {m.name.value: m for m in node.types or ()}
            names = list(members) if spec == ALL else spec.split()
            problems += [f"{name} | {m}: not a member" for m in names if m not in members]
            chosen_members = [members[m] for m in names if m in members]
            wanted += [m.name.value for m in chosen_members]
            unions[name] = _with(node, types=tuple(chosen_members), description=None)
            continue
        fields = {f.name.value: f for f in node.fields or ()}
        names = list(fields) if spec == ALL else spec.split()
        missing = [f for f in names if f not in fields]
        problems += [f"{name}.{f}: no such field" for f in missing]
        chosen = [fields[f] for f in names if f in fields]
        for f in chosen:
            refer(f)
        interfaces = tuple(
            i for i in node.interfaces or () if _keeps_interface(i.name.value, names, types, defs)
        )
        kept.append(
            _with(
                node,
                description=None,
                fields=tuple(_bare_field(f) for f in chosen),
                interfaces=interfaces,
            )
        )
    leaves: dict[str, Any] = {}
    while wanted:
        name = wanted.pop()
        if name in BUILT_IN or name in leaves or name in types:
            continue
        node = defs.get(name)
        if isinstance(node, _LEAF):
            is_scalar = isinstance(node, ScalarTypeDefinitionNode)
            leaves[name] = _with(node, description=None) if is_scalar else node
            for f in getattr(node, "fields", None) or ():
                refer(f)
        else:
            problems.append(f"{name}: reached from a kept field but not declared in TYPES")
    if problems:
        raise SubsetError("; ".join(sorted(set(problems))))
    schema_def = next(d for d in real.definitions if d.kind == "schema_definition")
    ordered = [leaves[n] for n in sorted(leaves)] + [unions[n] for n in sorted(unions)] + kept
    return DocumentNode(definitions=(schema_def, *ordered))


def render(real_sdl: str) -> str:
    """The text of ``schema.graphql`` for the real schema's SDL."""
    doc = subset(parse(real_sdl, no_location=True))
    return HEADER + "\n" + print_schema(build_ast_schema(doc)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstore.schema_subset")
    parser.add_argument("real_schema", type=Path, help="Shopify's Admin schema (SDL)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file would change")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    try:
        text = render(args.real_schema.read_text(encoding="utf-8"))
    except (OSError, SubsetError) as exc:
        print(f"schema_subset: {exc}", file=sys.stderr)
        return 2
    current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
    if args.check:
        if text != current:
            print(f"schema_subset: {args.output.name} is out of date", file=sys.stderr)
            return 1
        return 0
    if text != current:
        args.output.write_text(text, encoding="utf-8")
    print(f"{args.output.name}: {len(text.splitlines())} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
