"""What the API's bodies look like, for the OpenAPI document.

Instance and defaults documents are validated by `model` (one set of rules for fleet files
and the API, errors naming the field); the JSON Schemas here describe them for clients.
The small request bodies use Alibaba's own parameter names (ModifyInstanceMetadataOptions,
AttachInstanceRamRole, …) and are pydantic models.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ecs_imds.protocol.model import HOST_ID

_STR = {"type": "string"}
_STRS = {"type": "array", "items": _STR}
_MAP = {"type": "object", "additionalProperties": _STR}

METADATA_OPTIONS: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "http-endpoint": {"enum": ["enabled", "disabled"]},
        "http-tokens": {"enum": ["optional", "required"]},
        "http-put-response-hop-limit": {"type": "integer", "minimum": 1, "maximum": 64},
        "instance-metadata-tags": {"enum": ["enabled", "disabled"]},
    },
}

INHERITABLE: dict[str, Any] = {
    "region-id": _STR, "zone-id": _STR, "owner-account-id": _STR, "image-id": _STR,
    "instance-type": _STR, "virtualization-solution": _STR,
    "virtualization-solution-version": _STR,
    "max-netbw-egress": {"type": "integer", "minimum": 0},
    "max-netbw-ingress": {"type": "integer", "minimum": 0},
    "dns-nameservers": _STRS, "ntp-servers": _STRS, "source-address": _STR,
    "kms-server": _STR, "wsus-server": _STR, "wsus-status-server": _STR,
    "hibernation-configured": {"type": "boolean"}, "ram-role": _STR,
}

NETWORK_INTERFACE: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["mac", "network-interface-id", "vpc-id", "vswitch-id", "private-ipv4s",
                 "vswitch-cidr-block", "vpc-cidr-block"],
    "properties": {
        "mac": _STR, "network-interface-id": _STR, "vpc-id": _STR, "vswitch-id": _STR,
        "private-ipv4s": {"type": "array", "items": _STR, "minItems": 1},
        "vswitch-cidr-block": _STR, "vpc-cidr-block": _STR, "netmask": _STR, "gateway": _STR,
        "ipv4-prefixes": _STRS, "ipv6s": _STRS, "ipv6-prefixes": _STRS, "ipv6-gateway": _STR,
        "vswitch-ipv6-cidr-block": _STR, "vpc-ipv6-cidr-blocks": _STRS,
    },
}

EVENT: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["EventId", "EventType", "EventCycleStatus", "NotBefore"],
    "properties": {"EventId": _STR, "EventType": _STR, "EventCycleStatus": _STR,
                   "NotBefore": _STR, "Reason": _STR},
}

INSTANCE: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["instance-id", "network-interfaces"],
    "properties": {
        "instance-id": {"type": "string", "pattern": "^i-[a-z0-9]{1,40}$"},
        "instance-name": _STR, "hostname": _STR, "serial-number": _STR,
        **INHERITABLE,
        "dedicated-host-id": {"type": "string", "pattern": f"^{HOST_ID.pattern}$",
                              "description": "the host it runs on (placement)"},
        "last-host-landing-time": _STR, "image-product-code": _STR, "image-charge-type": _STR,
        "public-ipv4": _STR, "eipv4": _STR, "launch-index": {"type": "integer", "minimum": 0},
        "network-interfaces": {"type": "array", "items": NETWORK_INTERFACE, "minItems": 1},
        "disks": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["serial", "id"],
            "properties": {"serial": _STR, "id": _STR, "name": _STR}}},
        "public-keys": _MAP, "tags": _MAP,
        "user-data": _STR, "user-data-base64": _STR,
        "vendor-data": _STR, "vendor-data-base64": _STR,
        "metadata-options": METADATA_OPTIONS,
        "extra": _MAP,
        "spot-termination-time": _STR,
        "events": {"type": "array", "items": EVENT},
    },
}

DEFAULTS: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "properties": {**INHERITABLE, "metadata-options": METADATA_OPTIONS, "extra": _MAP},
}

INSTANCE_LIST: dict[str, Any] = {
    "type": "object", "required": ["instances", "next-page-token"],
    "properties": {"instances": {"type": "array", "items": INSTANCE},
                   "next-page-token": {
                       "type": ["string", "null"],
                       "description": "where the next page starts; null at the end of the "
                                      "fleet. A page examines at most 1,000 instances, so a "
                                      "filtered page may be short or empty before the end."}},
}

FLEET: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "properties": {"defaults": DEFAULTS, "instances": {"type": "array", "items": INSTANCE}},
}


def json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """`openapi_extra` for a route that reads a JSON document validated by `model`."""
    return {"requestBody": {"required": True, "description": description,
                            "content": {"application/json": {"schema": schema}}}}


def json_response(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


class _Alibaba(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Error(BaseModel):
    """Every error: Alibaba's shape, a code a program can test and a message for people."""

    Code: str
    Message: str


class MetadataOptions(_Alibaba):
    """ModifyInstanceMetadataOptions' parameters; an omitted one is left as it is."""

    HttpEndpoint: str | None = None
    HttpTokens: str | None = None
    HttpPutResponseHopLimit: int | None = None
    InstanceMetadataTags: str | None = None


class MetadataOptionsOut(BaseModel):
    InstanceId: str
    HttpEndpoint: str
    HttpTokens: str
    HttpPutResponseHopLimit: int
    InstanceMetadataTags: str


class RamRole(_Alibaba):
    RamRoleName: str = Field(min_length=1, max_length=64)


class RamRoleOut(BaseModel):
    InstanceId: str
    RamRoleName: str | None


class Deployment(_Alibaba):
    DedicatedHostId: str = Field(pattern=f"^{HOST_ID.pattern}$",
                                 description="the host the instance runs on: servers scoped "
                                             "to that host serve it")


class DeploymentOut(BaseModel):
    InstanceId: str
    DedicatedHostId: str | None


class UserData(_Alibaba):
    UserData: str = Field(description="base64 of at most 16 KiB")


class UserDataOut(BaseModel):
    InstanceId: str
    UserData: str | None


class Tags(_Alibaba):
    Tags: dict[str, str]


class TagsOut(BaseModel):
    InstanceId: str
    Tags: dict[str, str]


class SpotReclaim(_Alibaba):
    TerminationTime: str = Field(description="UTC, e.g. 2026-11-28T17:03:00Z")


class SpotOut(BaseModel):
    InstanceId: str
    TerminationTime: str | None


class SystemEventIn(_Alibaba):
    EventType: str = Field(min_length=1, max_length=64)
    NotBefore: str | None = Field(None, description="UTC; default now")
    Reason: str = ""
    EventCycleStatus: str = "Scheduled"
    EventId: str | None = None


class SystemEventOut(BaseModel):
    EventId: str
    EventType: str
    EventCycleStatus: str
    NotBefore: str
    Reason: str


class SystemEvents(BaseModel):
    InstanceId: str
    Events: list[SystemEventOut]


class ApiTokenIn(_Alibaba):
    Name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    Scope: str = Field("read", pattern=r"^(admin|read)$")
    Lifetime: int | None = Field(None, ge=1, description="seconds; default and maximum: "
                                 "api.token-lifetime and api.token-max-lifetime")


class ApiTokenOut(BaseModel):
    Id: str
    Name: str
    Scope: str
    Expiration: str
    Token: str


class ApiTokenInfo(BaseModel):
    """A token as recorded: never the token itself."""

    Id: str
    Name: str
    Scope: str
    Issued: str
    Expiration: str
    Revoked: str | None
    State: str = Field(description="valid, expired, revoked, or rotated (its secret was)")


class ApiTokens(BaseModel):
    Tokens: list[ApiTokenInfo]


class SecretRotated(BaseModel):
    Version: int
    Token: str = Field(description="a new admin token for the caller: every older token "
                                   "is refused from now on")
    AdminTokenFile: str | None = Field(description="rewritten on the server's host")


class TokenKeyOut(BaseModel):
    KeyId: int
    KeyIds: list[int]


class Rotated(BaseModel):
    Version: int


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str = Field(description="starting, ready or stale")
    ready: bool
    stale: bool
    version: int | None
    age_seconds: float | None
    instances: int


class ImportResult(BaseModel):
    Version: int
    Instances: int


class ImportPlan(BaseModel):
    """What an import would change (dry-run): instance ids, and defaults as
    key: [before, after]."""

    Added: list[str]
    Changed: list[str]
    Unchanged: int
    Removed: list[str]
    Defaults: dict[str, list[Any]]


class CredentialIn(_Alibaba):
    AccessKeyId: str = Field(max_length=256)
    SecurityToken: str = Field(max_length=4096)


class CredentialVerdict(BaseModel):
    InstanceId: str
    RoleName: str
    LastUpdated: str
    Expiration: str
    Valid: bool
