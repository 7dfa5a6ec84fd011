"""IAM's input shapes: names, paths, documents, tags, paging, with AWS's bounds and patterns.

They mirror botocore's IAM service model; tests/unit/test_iam_shapes.py checks they still agree.
"""

from __future__ import annotations

from controller.query import Bool, Field, Int, ListOf, Str, Struct, is_tag_text

NAME_PATTERN = r"[\w+=,.@-]+"

ROLE_NAME = Str(1, 64, NAME_PATTERN)
USER_NAME = Str(1, 64, NAME_PATTERN)
EXISTING_USER_NAME = Str(1, 128, NAME_PATTERN)
GROUP_NAME = Str(1, 128, NAME_PATTERN)
ACCESS_KEY_ID = Str(16, 128, r"[\w]+")
ACCESS_KEY_STATUS = Str(enum=("Active", "Inactive", "Expired"))
POLICY_NAME = Str(1, 128, NAME_PATTERN)
INSTANCE_PROFILE_NAME = Str(1, 128, NAME_PATTERN)
PATH = Str(1, 512, r"(\u002F)|(\u002F[\u0021-\u007E]+\u002F)")
PATH_PREFIX = Str(1, 512, r"\u002F[\u0021-\u007F]*")
POLICY_DOCUMENT = Str(1, 131072, r"[\u0009\u000A\u000D\u0020-\u00FF]+")
ROLE_DESCRIPTION = Str(0, 1000, r"[\u0009\u000A\u000D\u0020-\u007E\u00A1-\u00FF]*")
MAX_SESSION_DURATION = Int(3600, 43200)
ARN = Str(20, 2048)
MARKER = Str(1, 320, r"[\u0020-\u00FF]+")
MAX_ITEMS = Int(1, 1000)
TAG_KEY = Str(1, 128, check=is_tag_text, check_text=r"[\p{L}\p{Z}\p{N}_.:/=+\-@]+")
TAG_VALUE = Str(0, 256, check=is_tag_text, check_text=r"[\p{L}\p{Z}\p{N}_.:/=+\-@]*")
TAG = Struct((Field("Key", TAG_KEY, required=True), Field("Value", TAG_VALUE, required=True)))
TAG_LIST = ListOf(TAG, max_items=50)
TAG_KEY_LIST = ListOf(TAG_KEY, max_items=50)

PAGING = (Field("Marker", MARKER), Field("MaxItems", MAX_ITEMS))


def struct(*fields: Field) -> Struct:
    return Struct(tuple(fields))


__all__ = [
    "ACCESS_KEY_ID",
    "ACCESS_KEY_STATUS",
    "ARN",
    "EXISTING_USER_NAME",
    "GROUP_NAME",
    "INSTANCE_PROFILE_NAME",
    "MAX_ITEMS",
    "MAX_SESSION_DURATION",
    "PAGING",
    "PATH",
    "PATH_PREFIX",
    "POLICY_DOCUMENT",
    "POLICY_NAME",
    "ROLE_DESCRIPTION",
    "ROLE_NAME",
    "TAG_KEY_LIST",
    "TAG_LIST",
    "USER_NAME",
    "Bool",
    "Field",
    "struct",
]
