//! The core's parts, each a type over the one shared state
//! ([`Keywarden`]): the key lifecycle ([`Keys`]), the data path
//! ([`DataPath`]), the custodians' ceremonies ([`Ceremonies`]), the
//! registry's records ([`Records`]) and cluster membership ([`Cluster`]).
//! A part reaches another through the core (`self.records()`), and the
//! state every part reads (the seal, the HSM, the table, the audit log)
//! through `Deref`.

use std::ops::Deref;

use super::Keywarden;

macro_rules! part {
    ($(#[$doc:meta])* $name:ident, $accessor:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy)]
        pub struct $name<'a>(&'a Keywarden);

        impl Deref for $name<'_> {
            type Target = Keywarden;

            fn deref(&self) -> &Keywarden {
                self.0
            }
        }

        impl Keywarden {
            $(#[$doc])*
            pub fn $accessor(&self) -> $name<'_> {
                $name(self)
            }
        }
    };
}

part!(
    /// The key lifecycle: create, rotate, disable, hold and destroy keys
    /// (`lifecycle.rs`).
    Keys,
    keys
);
part!(
    /// The data path: data keys, Encrypt, Decrypt, ReEncrypt and MACs, with
    /// the per-version encryption counters (`envelope.rs`, `fields.rs`).
    DataPath,
    data
);
part!(
    /// The custodians' ceremonies, passed through to the seal: init,
    /// unseal, seal, rekey, and what follows a login (`ceremonies.rs`).
    Ceremonies,
    ceremonies
);
part!(
    /// The registry's records: the verified table in memory and the one
    /// write path, its ledger line first (`records.rs`).
    Records,
    records
);
part!(
    /// The core as a node of a cluster: taking in other nodes' changes
    /// (`membership.rs`).
    Cluster,
    cluster
);
