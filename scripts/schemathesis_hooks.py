"""Schemathesis hooks for scripts/schemathesis.sh (loaded through SCHEMATHESIS_HOOKS).

A reserve under an Idempotency-Key already used with another body is answered 422
idempotency_key_reused: a rule across requests, which no schema states. Hypothesis generates the
same short keys again and again ("0", "00"), so a schema-valid reserve would be refused for that
reason alone. A key that matches the documented pattern is made unique here, and stays valid (a
dash and 32 hex digits appended, within 255 characters); a key that breaks the pattern is sent as
generated, so the server's refusals of invalid keys are still checked.
"""

import re
import uuid

import schemathesis

VALID_KEY = re.compile(r"[!#-~]([ -~]{0,253}[!-~])?")
SUFFIX_LENGTH = 33


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    headers = case.headers or {}
    key = headers.get("Idempotency-Key")
    if isinstance(key, str) and VALID_KEY.fullmatch(key) and len(key) + SUFFIX_LENGTH <= 255:
        headers["Idempotency-Key"] = f"{key}-{uuid.uuid4().hex}"
        case.headers = headers
