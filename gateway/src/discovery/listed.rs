//! Endpoints listed in the configuration (`filters.<name>.endpoints`).

use std::collections::BTreeMap;

use futures::StreamExt;
use futures::stream::{self, BoxStream};

use super::{Discovery, FoundEndpoint, SourceEvent};
use crate::config::StaticFilter;

#[derive(Debug, Clone, Default)]
pub struct ListedDiscovery {
    filters: BTreeMap<String, StaticFilter>,
}

impl ListedDiscovery {
    pub fn new(filters: BTreeMap<String, StaticFilter>) -> Self {
        ListedDiscovery { filters }
    }

    pub fn endpoints(&self) -> Vec<FoundEndpoint> {
        self.filters
            .iter()
            .flat_map(|(name, f)| {
                f.endpoints.iter().map(move |e| FoundEndpoint {
                    filter: name.clone(),
                    address: e.clone(),
                })
            })
            .collect()
    }
}

impl Discovery for ListedDiscovery {
    fn kind(&self) -> &'static str {
        "static"
    }

    fn watch(self: Box<Self>) -> BoxStream<'static, SourceEvent> {
        stream::once(std::future::ready(SourceEvent::Endpoints(self.endpoints())))
            .chain(stream::pending())
            .boxed()
    }
}
