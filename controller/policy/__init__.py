"""IAM policy language: parse and validate documents, then decide requests against them.

- ``document``: JSON text → ``PolicyDocument`` (or ``MalformedPolicyDocument``), ``policy_size``.
- ``evaluate``: ``RequestContext`` + documents → ``Decision`` (identity, session, trust policies).
- ``conditions``: the condition operators; ``match``: wildcards, ARNs and principals;
  ``variables``: ``${...}`` policy variables.
"""
