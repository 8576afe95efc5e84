"""schemathesis hooks for example 04 (`make fuzz-api`): the rules between two parts of a
request that an OpenAPI document cannot state. Each hook only joins parts that are valid on
their own, so a request generated to break the document still breaks it."""

import re
from urllib.parse import quote, unquote

import schemathesis
from requests.structures import CaseInsensitiveDict

# The document's patterns (src/routes.rs, src/model.rs).
PLAIN_KEY = re.compile(r"[!-~]{1,255}\Z")
IETF_KEY = re.compile(r'"((?:[!#-\[\]-~]|\\["\\]){1,255})"\Z')
ID = re.compile(r"[A-Za-z0-9._~-]*[A-Za-z0-9_~-][A-Za-z0-9._~-]*\Z")


def valid_id(value):
    return isinstance(value, str) and len(value) <= 255 and ID.match(value) is not None


# Before the call, not at generation: the stateful phase fills the path from earlier answers
# after generating the rest.
@schemathesis.hook
def before_call(context, case, kwargs):
    headers = CaseInsensitiveDict(case.headers or {})
    # `Idempotency-Key: "k"` and `X-Idempotency-Key: k` both sent must name the same key.
    ietf = headers.get("Idempotency-Key")
    plain = headers.get("X-Idempotency-Key")
    if isinstance(ietf, str) and isinstance(plain, str) and PLAIN_KEY.match(plain):
        match = IETF_KEY.match(ietf)
        if match:
            headers["X-Idempotency-Key"] = re.sub(r"\\(.)", r"\1", match.group(1))
    # Set again, changed or not, so that schemathesis checks the headers against the document
    # once more: its coverage phase draws header values from letters and digits only, finds
    # none for `Idempotency-Key` (quoted), sends it empty and would count that request valid.
    case.headers = headers
    # A replacement's body names the payment of its path (kept percent-encoded, as sent).
    if case.method.upper() == "PUT" and isinstance(case.body, dict):
        body_id = case.body.get("id")
        wire_id = case.path_parameters.get("id")
        path_id = unquote(wire_id) if isinstance(wire_id, str) else None
        if valid_id(body_id) and path_id is not None and path_id != body_id:
            if valid_id(path_id):
                case.body = {**case.body, "id": path_id}
            else:
                case.path_parameters = {**case.path_parameters, "id": quote(body_id, safe="")}
