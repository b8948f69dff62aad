-- Ed25519 signature (hex) of each audit row's hash by the gateway's audit signing key; empty
-- when signing is off. A row appended or altered by anyone without the key fails
-- `model-bridge audit verify --public-key …`, however well its hash chain is recomputed.
ALTER TABLE {database}.audit_events ADD COLUMN sig String DEFAULT ''
