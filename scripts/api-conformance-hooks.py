"""Schemathesis hooks for scripts/api-conformance (loaded through SCHEMATHESIS_HOOKS).

`cross_tenant_not_found`: in the targeted run, every request goes out with tenant A's key
and path id = tenant B's call (CALLWORKER_CONFORMANCE_FOREIGN_CALL). Another tenant's call
must look exactly like a call that does not exist: the answer is 404 `call_not_found`, or a
refusal of the request itself that a missing call would get too (400 invalid input, 405,
413, 415, 429), never a success, a conflict that reveals the call's state (409), nor anything
that carries the call's id. A request that schemathesis sends without any key (its
coverage phase tries that too) must get 401, as it would for any call.
"""

import os

import schemathesis

# Refusals decided before the call is looked up: the same for a call that does not exist.
_REQUEST_REFUSALS = {400, 405, 413, 415, 429}


@schemathesis.check
def cross_tenant_not_found(ctx, response, case):
    foreign = os.environ.get("CALLWORKER_CONFORMANCE_FOREIGN_CALL")
    if not foreign:
        return None
    status = response.status_code
    if not response.request.headers.get("Authorization"):
        # schemathesis's coverage phase also sends the request without the key that the
        # document requires: that is refused before any call is looked up.
        if status != 401:
            raise AssertionError(f"a request without an API key on {foreign} got {status}, not 401")
    elif status == 404:
        body = response.json()
        code = body.get("error", {}).get("code")
        if code != "call_not_found":
            raise AssertionError(f"another tenant's call answered 404 {code!r}, not 'call_not_found'")
    elif status not in _REQUEST_REFUSALS:
        raise AssertionError(
            f"tenant A's key on tenant B's call {foreign} got {status}: "
            "expected 404 call_not_found, as for a call that does not exist"
        )
    if foreign in response.text:
        raise AssertionError(f"the answer ({status}) reveals tenant B's call {foreign}")
    return None
