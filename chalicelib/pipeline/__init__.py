"""The request pipeline: `frame.py` (the audited request) and `issuance.py` (proof ->
facts -> rules -> minting -> audit)."""
