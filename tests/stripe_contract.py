"""Stripe's own definitions, read from the installed `stripe` library, held against the
sandbox: what the gateway sends it, and what it answers.

The library is generated from Stripe's OpenAPI description. Its typed request parameters
(`stripe.params…Params`, TypedDicts) say which parameters each endpoint takes and of what
type; its resource classes (`stripe.checkout.Session`, `stripe.Charge`, …, with a nested
`StripeObject` class per nested object) say which fields an answer has. Nothing here is
written from memory of Stripe's API: upgrading the library upgrades the contract.

How the library's annotations are read:

- A request is checked as it travels: form-encoded, every value text. An `int` must read
  as an integer, a `bool` as `true`/`false`, a list as `name[0]`, `name[1]`, … in order,
  a TypedDict as `name[key]` with only the keys it declares and all those it requires.
  The keys every Params type inherits from `RequestOptions` (`api_key`,
  `idempotency_key`, …) are the library's options, never parameters on the wire.
- A field of an answer whose annotation admits None (`Optional[...]`) may be null or
  absent: the library writes `Optional` both for nullable fields and for those Stripe
  sends only when asked (`line_items`). Every other field is required: present and not
  null. The resource classes declare nothing as NotRequired, so this is the only mark.
- Literals are strict. The library widens most enums to `Literal[...] | str` so that
  values Stripe adds after this release still type-check; the sandbox and the gateway
  may only use the values this release documents. (`Literal[''] | str` is different:
  the empty string is how a parameter is cleared, and the `str` stays.)
- An expandable field (`ExpandableField[X]`, a `str | X`) is an id or an X. Each `expand`
  path the gateway asks for must name expandable fields of the endpoint's answer, and
  the answer must hold objects, not ids, at that path.
- An event's `data.object` is annotated as untyped; it is checked against the resource
  class its `object` field names (`RESOURCES`).
"""

import ast
import difflib
import importlib
import inspect
import json
import re
import sys
import types
from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from typing import (
    Any,
    ClassVar,
    ForwardRef,
    Literal,
    NotRequired,
    Required,
    Union,
    get_args,
    get_origin,
)
from urllib.parse import parse_qsl, urlsplit

import typing_extensions
from stripe import (
    Charge,
    Customer,
    Dispute,
    ErrorObject,
    Event,
    Invoice,
    InvoiceItem,
    ListObject,
    PaymentIntent,
    PaymentMethod,
    Refund,
    RequestOptions,
    SetupIntent,
    StripeObject,
)
from stripe._stripe_object import UntypedStripeObject  # metadata's type; not exported
from stripe.billing_portal import Session as BillingPortalSession
from stripe.checkout import Session as CheckoutSession
from stripe.params import (
    CustomerCreateParams,
    DisputeListParams,
    DisputeRetrieveParams,
    InvoiceAttachPaymentParams,
    InvoiceCreateParams,
    InvoiceFinalizeInvoiceParams,
    InvoiceItemCreateParams,
    PaymentIntentCancelParams,
    PaymentIntentConfirmParams,
    PaymentIntentCreateParams,
    PaymentIntentRetrieveParams,
    PaymentMethodListParams,
    RefundCreateParams,
    RefundRetrieveParams,
)
from stripe.params.billing_portal import SessionCreateParams as PortalSessionCreateParams
from stripe.params.checkout import (
    SessionCreateParams,
    SessionExpireParams,
    SessionListParams,
    SessionRetrieveParams,
)


@dataclass(frozen=True)
class Endpoint:
    """One of Stripe's endpoints the gateway calls: its parameters and its answer."""

    method: str
    path: str  # `{name}` stands for one path segment, an object's id
    params: type
    answer: Any

    def matches(self, method: str, path: str) -> bool:
        pattern = re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(self.path))
        return method == self.method and re.fullmatch(pattern, path) is not None


# Every call the gateway makes, one line each. A request to anything not listed here
# fails the contract: a new call needs its line.
ENDPOINTS = (
    Endpoint("POST", "/v1/checkout/sessions", SessionCreateParams, CheckoutSession),
    Endpoint("GET", "/v1/checkout/sessions", SessionListParams, ListObject[CheckoutSession]),
    Endpoint("GET", "/v1/checkout/sessions/{id}", SessionRetrieveParams, CheckoutSession),
    Endpoint("POST", "/v1/checkout/sessions/{id}/expire", SessionExpireParams, CheckoutSession),
    Endpoint("GET", "/v1/payment_intents/{id}", PaymentIntentRetrieveParams, PaymentIntent),
    Endpoint("POST", "/v1/payment_intents", PaymentIntentCreateParams, PaymentIntent),
    Endpoint("POST", "/v1/payment_intents/{id}/confirm", PaymentIntentConfirmParams, PaymentIntent),
    Endpoint("POST", "/v1/payment_intents/{id}/cancel", PaymentIntentCancelParams, PaymentIntent),
    Endpoint("POST", "/v1/refunds", RefundCreateParams, Refund),
    Endpoint("GET", "/v1/refunds/{id}", RefundRetrieveParams, Refund),
    Endpoint("GET", "/v1/disputes", DisputeListParams, ListObject[Dispute]),
    Endpoint("GET", "/v1/disputes/{id}", DisputeRetrieveParams, Dispute),
    Endpoint("POST", "/v1/customers", CustomerCreateParams, Customer),
    Endpoint("GET", "/v1/payment_methods", PaymentMethodListParams, ListObject[PaymentMethod]),
    Endpoint(
        "POST", "/v1/billing_portal/sessions", PortalSessionCreateParams, BillingPortalSession
    ),
    Endpoint("POST", "/v1/invoices", InvoiceCreateParams, Invoice),
    Endpoint("POST", "/v1/invoiceitems", InvoiceItemCreateParams, InvoiceItem),
    Endpoint("POST", "/v1/invoices/{id}/finalize", InvoiceFinalizeInvoiceParams, Invoice),
    Endpoint("POST", "/v1/invoices/{id}/attach_payment", InvoiceAttachPaymentParams, Invoice),
)

# The objects an event can be about, by their `object` field.
RESOURCES = {
    resource.OBJECT_NAME: resource
    for resource in (
        CheckoutSession,
        PaymentIntent,
        Charge,
        Refund,
        Dispute,
        Customer,
        PaymentMethod,
        Invoice,
        InvoiceItem,
        SetupIntent,
    )
}

OPTION_KEYS = frozenset(RequestOptions.__annotations__)
INTEGER = re.compile(r"-?\d+")
DECIMAL = re.compile(r"-?\d+(\.\d+)?")


def endpoint_for(method: str, path: str) -> Endpoint | None:
    found = [endpoint for endpoint in ENDPOINTS if endpoint.matches(method, path)]
    # A literal segment beats a placeholder: /v1/customers/search before /v1/customers/{id}.
    found.sort(key=lambda endpoint: endpoint.path.count("{"))
    return found[0] if found else None


# -- reading the library's annotations --------------------------------------------------


class _TypeCheckingImports(Mapping):
    """The names a library module imports only for type checkers (`if TYPE_CHECKING:`),
    imported when an annotation first needs one."""

    def __init__(self, module):
        self.sources: dict[str, tuple[str, str]] = {}
        for node in ast.parse(inspect.getsource(module)).body:
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
                for statement in node.body:
                    if isinstance(statement, ast.ImportFrom) and statement.module:
                        for alias in statement.names:
                            name = alias.asname or alias.name
                            self.sources[name] = (statement.module, alias.name)

    def __getitem__(self, name):
        module, attribute = self.sources[name]
        return getattr(importlib.import_module(module), attribute)

    def __iter__(self):
        return iter(self.sources)

    def __len__(self):
        return len(self.sources)


class _Names(ChainMap):
    """The names an annotation can refer to (one scope), equal only to itself."""

    __eq__ = object.__eq__
    __hash__ = object.__hash__


NO_NAMES = _Names()


@cache
def _module_names(module_name: str) -> _Names:
    module = sys.modules[module_name]
    return _Names(vars(module), _TypeCheckingImports(module))


@cache
def _names_for(owner: type) -> _Names:
    """What a name in `owner`'s annotations can refer to: the classes nested in it and
    in the classes around it, then its module's names."""
    enclosing = []
    scope = sys.modules[owner.__module__]
    for part in owner.__qualname__.split("."):
        scope = getattr(scope, part)
        enclosing.insert(0, vars(scope))
    return _Names(*enclosing, _module_names(owner.__module__))


# A check reads the same few hundred annotations again and again: what an annotation
# means is worked out once per scope, and scopes are compared by identity to allow that.
@cache
def _resolve(annotation, names: "_Names"):
    """The annotation itself, with a forward reference (a name in quotes) looked up."""
    if isinstance(annotation, ForwardRef):
        annotation = annotation.__forward_arg__
    if isinstance(annotation, str):
        return eval(annotation, {}, names)  # noqa: S307 (the library's own annotation text)
    return annotation


@cache
def _fields(resource: type) -> dict[str, tuple[Any, _Names]]:
    """The fields a StripeObject subclass declares, each with the names its annotation
    is read with (fields of the bases first)."""
    declared = {}
    for klass in reversed(resource.__mro__):
        if not (isinstance(klass, type) and issubclass(klass, StripeObject)):
            continue
        for name, annotation in vars(klass).get("__annotations__", {}).items():
            if name.startswith("_") or get_origin(annotation) is ClassVar:
                continue
            declared[name] = (annotation, _names_for(klass))
    return declared


def _list_fields(item, names: _Names) -> dict[str, tuple[Any, _Names]]:
    """A ListObject's fields with its item type filled in (`item` is read with the names
    of the annotation that named the list)."""
    return {
        "object": (Literal["list"], names),
        "data": (list[item], names),
        "has_more": (bool, names),
        "url": (str, names),
    }


def _is_union(annotation) -> bool:
    # `Optional[X]` and `X | Y` written with a class on the left are two kinds of union.
    return get_origin(annotation) in (Union, types.UnionType)


def _members(union) -> list:
    """A Union's members, with a plain `str` dropped beside an enum of real values."""
    members = list(get_args(union))
    enum = any(
        get_origin(member) is Literal and any(value != "" for value in get_args(member))
        for member in members
    )
    if enum:
        members = [member for member in members if member is not str]
    return members


@cache
def _admits_none(annotation, names: _Names) -> bool:
    annotation = _resolve(annotation, names)
    if annotation is Any or annotation is type(None):
        return True
    if _is_union(annotation):
        return any(_admits_none(member, names) for member in get_args(annotation))
    return False


def _describe(annotation) -> str:
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type):
        return annotation.__qualname__
    if isinstance(annotation, ForwardRef):
        return annotation.__forward_arg__
    if get_origin(annotation) is Literal:
        values = get_args(annotation)
        shown = ", ".join(repr(value) for value in values[:6])
        return f"one of {shown}{', …' if len(values) > 6 else ''}"
    if _is_union(annotation):
        return " | ".join(_describe(member) for member in _members(annotation))
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is not None:
        name = getattr(origin, "__qualname__", None) or str(origin)
        return f"{name}[{', '.join(_describe(arg) for arg in args)}]"
    return str(annotation)


def _is_map(annotation) -> bool:
    """An untyped map of keys to values: metadata and the like."""
    origin = get_origin(annotation)
    return origin in (dict, Mapping) or origin is UntypedStripeObject


def _dict_member(members: list, names: _Names):
    """The only member of a union that an object (a dict) can be, or None."""
    objects = [
        member
        for member in (_resolve(member, names) for member in members)
        if typing_extensions.is_typeddict(member)
        or _is_map(member)
        or get_origin(member) is ListObject
        or (isinstance(member, type) and issubclass(member, StripeObject))
    ]
    return objects[0] if len(objects) == 1 else None


# -- answers: JSON against the resource classes -----------------------------------------


@dataclass
class _AnswerCheck:
    problems: list[str] = field(default_factory=list)

    def value(self, value, annotation, names: _Names, where: str) -> None:
        annotation = _resolve(annotation, names)
        origin, args = get_origin(annotation), get_args(annotation)
        if annotation is Any:
            return
        if annotation is type(None):
            if value is not None:
                self.fail(where, f"is {value!r}, expected null")
        elif _is_union(annotation):
            self.union(value, annotation, names, where)
        elif origin is Literal:
            # `True == 1`, so the type is compared too.
            if not any(type(value) is type(choice) and value == choice for choice in args):
                self.fail(where, f"is {value!r}, expected {_describe(annotation)}")
        elif origin is list:
            if not isinstance(value, list):
                self.fail(where, f"is {_shape(value)}, expected a list")
                return
            for index, item in enumerate(value):
                self.value(item, args[0], names, f"{where}[{index}]")
        elif origin is ListObject:
            self.fields(value, _list_fields(args[0], names), "ListObject", where)
        elif _is_map(annotation):
            if not isinstance(value, dict):
                self.fail(where, f"is {_shape(value)}, expected an object")
                return
            for key, item in value.items():
                self.value(item, args[-1] if args else Any, names, f"{where}.{key}")
        elif isinstance(annotation, type) and issubclass(annotation, StripeObject):
            self.resource(value, annotation, where)
        elif annotation in (str, bool, int, float, Decimal):
            if not _json_is(value, annotation):
                self.fail(where, f"is {value!r}, expected {annotation.__name__}")
        else:
            self.fail(where, f"has an annotation this checker cannot read: {annotation!r}")

    def union(self, value, annotation, names: _Names, where: str) -> None:
        members = _members(annotation)
        if value is None and type(None) in members:
            return  # most Optional fields are null: no need to try the others
        for member in members:
            trial = _AnswerCheck()
            trial.value(value, member, names, where)
            if not trial.problems:
                return
        only = _dict_member(members, names) if isinstance(value, dict) else None
        if only is not None:
            # An object where one kind of object belongs: say what is wrong inside it.
            self.value(value, only, names, where)
        else:
            self.fail(where, f"is {_shape(value)}, expected {_describe(annotation)}")

    def resource(self, value, resource: type, where: str) -> None:
        self.fields(value, _fields(resource), resource.__qualname__, where)
        if resource is Event.Data and isinstance(value, dict):
            self.object_by_kind(value.get("object"), f"{where}.object")

    def object_by_kind(self, value, where: str) -> None:
        """An object checked against the resource class its own `object` field names."""
        kind = value.get("object") if isinstance(value, dict) else None
        if kind not in RESOURCES:
            self.fail(where, f"is a {kind!r} object; the contract knows {sorted(RESOURCES)}")
            return
        self.resource(value, RESOURCES[kind], where)

    def fields(self, value, declared: dict, owner: str, where: str) -> None:
        if not isinstance(value, dict):
            self.fail(where, f"is {_shape(value)}, expected a {owner} object")
            return
        for key in value:
            if key not in declared:
                self.fail(
                    f"{where}.{key}", f"is not a field of {owner}{_did_you_mean(key, declared)}"
                )
        for name, (annotation, names) in declared.items():
            if name in value:
                self.value(value[name], annotation, names, f"{where}.{name}")
            elif not _admits_none(annotation, names):
                self.fail(
                    f"{where}.{name}",
                    f"is missing; {owner} declares it "
                    f"{_describe(_resolve(annotation, names))}, not Optional",
                )

    def fail(self, where: str, message: str) -> None:
        self.problems.append(f"{where} {message}")


def _json_is(value, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is Decimal:
        # Stripe sends decimal amounts as strings, to keep every digit.
        return isinstance(value, str) and DECIMAL.fullmatch(value) is not None
    return isinstance(value, str)


def _shape(value) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _did_you_mean(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def object_problems(value, annotation, where: str = "") -> list[str]:
    """What in `value` (parsed JSON) disagrees with the library's `annotation` (a
    resource class, `ListObject[...]`, …)."""
    check = _AnswerCheck()
    check.value(value, annotation, NO_NAMES, where or _name_of(annotation))
    return check.problems


def event_problems(event: dict) -> list[str]:
    """What in an event (and in the object it carries) disagrees with the library."""
    return object_problems(event, Event, f"event {event.get('type')}")


def _name_of(annotation) -> str:
    if get_origin(annotation) is ListObject:
        return "list"
    return getattr(annotation, "OBJECT_NAME", getattr(annotation, "__qualname__", "answer"))


# -- requests: form-encoded parameters against the Params TypedDicts ---------------------


def decode_form(text: str) -> tuple[dict, list[str]]:
    """Stripe's form encoding as a tree: `a[b][0]=x` becomes {"a": {"b": {"0": "x"}}}.

    List indexes stay keys here; whether a node is a list is the Params type's to say.
    Returns the tree and what could not be read (a name sent twice, a name that is both
    a value and an object).
    """
    tree: dict = {}
    problems = []
    for name, value in parse_qsl(text, keep_blank_values=True):
        head, _, rest = name.partition("[")
        parts = [head] + (re.findall(r"([^\[\]]*)\]", "[" + rest) if rest else [])
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(f"{name} is sent both as a value and as an object")
                break
        else:
            if parts[-1] in node:
                problems.append(f"{name} is sent twice")
            node[parts[-1]] = value
    return tree, problems


@dataclass
class _ParamsCheck:
    problems: list[str] = field(default_factory=list)

    def value(self, node, annotation, names: _Names, where: str) -> None:
        annotation = _resolve(annotation, names)
        origin, args = get_origin(annotation), get_args(annotation)
        if origin in (NotRequired, Required):
            self.value(node, args[0], names, where)
        elif annotation is Any:
            return
        elif _is_union(annotation):
            self.union(node, annotation, names, where)
        elif typing_extensions.is_typeddict(annotation):
            self.params(node, annotation, where)
        elif origin is list:
            if not isinstance(node, dict) or list(node) != [str(i) for i in range(len(node))]:
                self.fail(
                    where, f"is {_wire(node)}, expected a list sent as {where}[0], {where}[1], …"
                )
                return
            for index, item in node.items():
                self.value(item, args[0], names, f"{where}[{index}]")
        elif _is_map(annotation):
            if not isinstance(node, dict):
                self.fail(where, f"is {_wire(node)}, expected {where}[key]=value pairs")
                return
            for key, item in node.items():
                self.value(item, args[-1] if args else Any, names, f"{where}[{key}]")
        elif origin is Literal:
            if node not in [_wire_text(choice) for choice in args]:
                self.fail(where, f"is {_wire(node)}, expected {_describe(annotation)}")
        elif annotation in (str, int, float, Decimal, bool):
            if not _wire_is(node, annotation):
                self.fail(where, f"is {_wire(node)}, expected {annotation.__name__}")
        else:
            self.fail(where, f"has an annotation this checker cannot read: {annotation!r}")

    def union(self, node, annotation, names: _Names, where: str) -> None:
        # None is never sent (the library leaves such parameters out).
        members = [member for member in _members(annotation) if member is not type(None)]
        for member in members:
            trial = _ParamsCheck()
            trial.value(node, member, names, where)
            if not trial.problems:
                return
        only = _dict_member(members, names) if isinstance(node, dict) else None
        if only is not None:
            self.value(node, only, names, where)
        else:
            self.fail(where, f"is {_wire(node)}, expected {_describe(annotation)}")

    def params(self, node, params: type, where: str, top: bool = False) -> None:
        """A TypedDict: only the keys it declares, every key it requires."""
        if not isinstance(node, dict):
            self.fail(where, f"is {_wire(node)}, expected {params.__name__}")
            return
        declared = {
            name: annotation
            for name, annotation in params.__annotations__.items()
            if not (top and name in OPTION_KEYS)
        }
        names = _names_for(params)
        for key, item in node.items():
            name = f"{where}[{key}]" if where else key
            if key not in declared:
                self.fail(
                    name, f"is not a parameter of {params.__name__}{_did_you_mean(key, declared)}"
                )
            else:
                self.value(item, declared[key], names, name)
        for key in params.__required_keys__:
            if key in declared and key not in node:
                self.fail(f"{where}[{key}]" if where else key, f"is required by {params.__name__}")

    def fail(self, where: str, message: str) -> None:
        self.problems.append(f"{where} {message}")


def _wire_is(node, kind: type) -> bool:
    if not isinstance(node, str):
        return False
    if kind is int:
        return INTEGER.fullmatch(node) is not None
    if kind in (float, Decimal):
        return DECIMAL.fullmatch(node) is not None
    if kind is bool:
        return node in ("true", "false")
    return True


def _wire_text(value) -> str:
    """How the library sends a Python value: booleans as true/false, the rest as text."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _wire(node) -> str:
    return "an object" if isinstance(node, dict) else repr(node)


def params_problems(params: type, form: str) -> list[str]:
    """What in a form-encoded request disagrees with the library's Params TypedDict."""
    tree, problems = decode_form(form)
    check = _ParamsCheck(problems)
    check.params(tree, params, "", top=True)
    return check.problems


# -- expansion --------------------------------------------------------------------------


def _expandable(annotation, names: _Names):
    """If `annotation` is an id-or-object field (after Optional), the object's type."""
    annotation = _resolve(annotation, names)
    if not _is_union(annotation):
        return None
    members = [_resolve(m, names) for m in get_args(annotation) if m is not type(None)]
    if str in members and len(members) == 2:
        other = next(member for member in members if member is not str)
        return other if isinstance(other, type) and issubclass(other, StripeObject) else None
    return None


def _step(annotation, names: _Names, segment: str):
    """The type `segment` leads to from `annotation`, and whether it may be expanded;
    None when there is no such field."""
    annotation = _resolve(annotation, names)
    if _is_union(annotation):
        # Optional[X]: step into X.
        members = [m for m in get_args(annotation) if m is not type(None)]
        annotation = _resolve(members[0], names) if len(members) == 1 else annotation
    if get_origin(annotation) is ListObject:
        declared = _list_fields(get_args(annotation)[0], names)
    elif get_origin(annotation) is list:
        return _step(get_args(annotation)[0], names, segment)
    elif isinstance(annotation, type) and issubclass(annotation, StripeObject):
        declared = _fields(annotation)
    else:
        return None
    if segment not in declared:
        return None
    target, target_names = declared[segment]
    expanded = _expandable(target, target_names)
    if expanded is not None:
        return expanded, _names_for(expanded), True
    target = _resolve(target, target_names)
    members = [m for m in get_args(target) if m is not type(None)]
    inner = _resolve(members[0], target_names) if _is_union(target) else target
    # A list Stripe sends only when asked (`line_items`) is expanded like an id.
    return target, target_names, get_origin(inner) is ListObject


def expand_problems(answer, path: str) -> list[str]:
    """Whether `path` (dotted, as in `expand[]`) names expandable fields of `answer`."""
    annotation, names, expandable = answer, NO_NAMES, False
    for segment in path.split("."):
        stepped = _step(annotation, names, segment)
        if stepped is None:
            return [f"expand {path!r}: {_describe(annotation)} has no field {segment!r}"]
        annotation, names, expandable = stepped
    if not expandable:
        return [f"expand {path!r}: {path.rsplit('.', 1)[-1]!r} is not an expandable field"]
    return []


def expanded_problems(value, path: str, where: str) -> list[str]:
    """Whether the answer holds objects, not ids, where `path` was expanded."""
    head, _, rest = path.partition(".")
    if isinstance(value, list):
        return [
            problem
            for index, item in enumerate(value)
            for problem in expanded_problems(item, path, f"{where}[{index}]")
        ]
    if not isinstance(value, dict):
        return []
    found = value.get(head)
    if found is None:
        return []
    if isinstance(found, str) and head != "data":
        return [f"{where}.{head} is the id {found!r}, but it was expanded ({path})"]
    return expanded_problems(found, rest, f"{where}.{head}") if rest else []


# -- whole exchanges --------------------------------------------------------------------


@dataclass(frozen=True)
class Exchange:
    """One request the gateway sent the sandbox, and the sandbox's answer."""

    method: str
    url: str
    body: str
    status: int
    answer: Any

    @property
    def path(self) -> str:
        # The sandbox is mounted below a prefix (/sandbox); Stripe's paths start at /v1.
        path = urlsplit(self.url).path
        return path[path.find("/v1/") :] if "/v1/" in path else path

    @property
    def form(self) -> str:
        return self.body if self.method == "POST" else urlsplit(self.url).query

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def exchange_problems(exchange: Exchange) -> list[str]:
    """Everything in one request and its answer that disagrees with the library."""
    endpoint = endpoint_for(exchange.method, exchange.path)
    if endpoint is None:
        return [f"{exchange}: no line in tests/stripe_contract.py ENDPOINTS for this call"]
    problems = params_problems(endpoint.params, exchange.form)
    tree, _ = decode_form(exchange.form)
    expand = tree.get("expand")
    paths = list(expand.values()) if isinstance(expand, dict) else []
    paths = [path for path in paths if isinstance(path, str)]
    for path in paths:
        problems += expand_problems(endpoint.answer, path)
    if exchange.status >= 400:
        problems += _error_problems(exchange.answer)
    else:
        problems += object_problems(exchange.answer, endpoint.answer)
        for path in paths:
            problems += expanded_problems(exchange.answer, path, _name_of(endpoint.answer))
    return [f"{exchange}: {problem}" for problem in problems]


def _error_problems(answer) -> list[str]:
    """Stripe's errors come as {"error": <an ErrorObject>}."""
    if not isinstance(answer, dict) or set(answer) != {"error"}:
        return [f"error answer {_shape(answer)} is not {{'error': {{...}}}}"]
    return object_problems(answer["error"], ErrorObject, "error")


class Recorder:
    """What crossed between the gateway and the sandbox: each request with its answer
    (standing in for `call_app` in the gateway's in-process transport) and each event
    (standing in for the sandbox's `on_event`, its webhook sender)."""

    def __init__(self, call_app, on_event):
        self._call_app = call_app
        self._on_event = on_event
        self.exchanges: list[Exchange] = []
        self.events: list[dict] = []

    def call_app(self, app, method, url, headers, body):
        status, response_headers, content = self._call_app(app, method, url, headers, body)
        try:
            answer = json.loads(content)
        except ValueError:
            answer = content.decode(errors="replace")
        text = body.decode() if isinstance(body, bytes) else body or ""
        self.exchanges.append(Exchange(method, url, text, status, answer))
        return status, response_headers, content

    def on_event(self, event: dict) -> None:
        # A copy through JSON, as the webhook sender sends it, before anything changes it.
        self.events.append(json.loads(json.dumps(event)))
        if self._on_event is not None:
            self._on_event(event)

    def endpoints(self) -> set[Endpoint]:
        """The lines of ENDPOINTS the recorded requests went to."""
        return {endpoint_for(e.method, e.path) for e in self.exchanges} - {None}

    def problems(self) -> list[str]:
        problems = [
            problem for exchange in self.exchanges for problem in exchange_problems(exchange)
        ]
        problems += [problem for event in self.events for problem in event_problems(event)]
        return problems
