"""The broker's small stores, each behind one narrow interface, each with an
in-memory fake (memory.py) that passes the same contract tests as the DynamoDB
store (tests/service/test_stores.py runs one test class against both).

- quarantine.py   the quarantine list (who is refused, until when, by which revocation)
- revocations.py  what each revocation targeted and set, and whether it was lifted
- rate_limits.py  counters per scope, caller and window

The three DynamoDB stores share one table (BROKER_QUARANTINE_TABLE), told apart by
the prefix of the hash key `pk`. Stores know no proof method: callers hand in keys.
"""
