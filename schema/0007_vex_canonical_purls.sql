-- Purl identity: every purl is stored in the purl specification's canonical form, and
-- a statement is found by its package (SPEC §5.2.1 rule 4: it applies to every pair of
-- the same type/namespace/name whose version, qualifiers and subpath it covers).
--
-- vex_raw.scope_base is pkg:type/namespace/name of component_purl, as vex.consensus
-- already has it. Recomputing a batch of pairs reads every statement about their
-- packages in one statement over (scope_base, vulnerability_id); the pair index it
-- replaces served the exact-purl lookup, which no longer exists.
--
-- The rows themselves are rewritten by this migration's Python step, in the same
-- transaction (canonical form needs a purl parser, packageurl-python; see
-- workers/vex_consensus/migration.py): purls made canonical in vex_raw, consensus and
-- consensus_conflicts, scope_base filled, then made NOT NULL; consensus rows stored
-- under a non-canonical spelling withdrawn (and announced) and every pair recomputed
-- under the corrected scope rule, so pairs that collapse into one are merged.
ALTER TABLE vex.vex_raw ADD COLUMN scope_base TEXT;

DROP INDEX vex.idx_vex_raw_pair;
CREATE INDEX idx_vex_raw_scope ON vex.vex_raw (scope_base, vulnerability_id);
