//! Who owns each live connection, learned from the kernel events by (netns, token), so that
//! address events — which carry only a token — get the owner, the family and the identity of
//! their connection (and with it the filter's verdict).

use std::collections::HashMap;

use crate::event::{Data, Event, Family, Ids, Kind};

#[derive(Clone, Debug)]
struct Owner {
    pid: Option<u32>,
    comm: Option<String>,
    ids: Ids,
    family: Family,
}

#[derive(Default)]
pub struct Owners {
    by_token: HashMap<(u32, u32), Owner>,
}

impl Owners {
    pub fn observe(&mut self, e: &Event) {
        let (Some(c), Some(t)) = (e.conn(), e.tuple()) else {
            return;
        };
        let (Some(ns), Some(token)) = (c.netns, c.token) else {
            return;
        };
        if e.kind() == Kind::ConnClosed {
            self.by_token.remove(&(ns, token.0));
        } else {
            self.by_token.entry((ns, token.0)).or_insert_with(|| Owner {
                pid: c.pid,
                comm: c.comm.clone(),
                ids: Ids {
                    subflow: 0,
                    ..c.ids
                },
                family: t.family,
            });
        }
    }

    /// Whether the tracer knows a live connection with this token in this namespace.
    pub fn knows(&self, netns: u32, token: u32) -> bool {
        self.by_token.contains_key(&(netns, token))
    }

    pub fn enrich(&self, e: &mut Event) {
        let (Some(ns), Some(token)) = (e.netns(), e.token()) else {
            return;
        };
        let Some(o) = self.by_token.get(&(ns, token.0)) else {
            return;
        };
        if let Data::AddrAnnounced(a) | Data::AddrRemoved(a) = &mut e.data {
            a.conn.pid = o.pid;
            a.conn.comm.clone_from(&o.comm);
            a.conn.ids = o.ids;
            a.family = Some(o.family);
        }
    }
}
