//! Discovery finds filter endpoints. Sources sit behind one trait so that several can be
//! active at once; this build has the static source (endpoints from the configuration).

use std::collections::BTreeMap;

use crate::config::StaticFilter;

/// One endpoint of a filter, and which source found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundEndpoint {
    pub filter: String,
    pub address: String,
    pub source: &'static str,
}

/// A source of filter endpoints.
pub trait Discovery: Send + Sync {
    /// The endpoints known now.
    fn snapshot(&self) -> Vec<FoundEndpoint>;
}

/// Endpoints listed in the configuration (`filters.<name>.endpoints`).
#[derive(Debug, Clone, Default)]
pub struct StaticDiscovery {
    filters: BTreeMap<String, StaticFilter>,
}

impl StaticDiscovery {
    pub fn new(filters: BTreeMap<String, StaticFilter>) -> Self {
        StaticDiscovery { filters }
    }
}

impl Discovery for StaticDiscovery {
    fn snapshot(&self) -> Vec<FoundEndpoint> {
        self.filters
            .iter()
            .flat_map(|(name, f)| {
                f.endpoints.iter().map(move |e| FoundEndpoint {
                    filter: name.clone(),
                    address: e.clone(),
                    source: "static",
                })
            })
            .collect()
    }
}
