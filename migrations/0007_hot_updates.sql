-- Room on each page for HOT updates: a guarded UPDATE that changes no
-- indexed column then writes no index entry, so it cannot collide with
-- other transactions' SERIALIZABLE predicate locks on index pages.
ALTER TABLE mandates SET (fillfactor = 70);
ALTER TABLE escrows SET (fillfactor = 70);
ALTER TABLE allowed_payees SET (fillfactor = 70);
ALTER TABLE saka_wallets SET (fillfactor = 70);
