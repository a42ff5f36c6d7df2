//! The transaction that turns one table into another: new sets and chains first, changed chains
//! flushed and rewritten, elements deleted and added, removed chains emptied before any is
//! deleted. Pure.

use std::collections::BTreeMap;

use super::part::Part;
use super::render::{SETS, TABLE};

/// One transaction's commands, gathered by kind and written in an order in which everything
/// exists before it is referred to and is referred to no more when it is deleted.
#[derive(Default)]
pub(super) struct Changes {
    new_sets: Vec<String>,
    new_chains: Vec<String>,
    rules: Vec<String>,
    deleted_elements: BTreeMap<&'static str, Vec<String>>,
    added_elements: BTreeMap<&'static str, Vec<String>>,
    removed_chains: Vec<String>,
    removed_sets: Vec<String>,
}

impl Changes {
    /// Adds what turns Service part `was` into `now` (either may be empty).
    pub(super) fn add(&mut self, was: &Part, now: &Part) {
        let t = format!("inet {TABLE}");
        for (name, decl) in now.affinity_sets.iter().filter(|(n, _)| !was.affinity_sets.contains_key(*n)) {
            self.new_sets.push(format!("add set {t} {name} {{ {decl} }}"));
        }
        for (name, rules) in &now.chains {
            match was.chains.get(name) {
                Some(old) if old == rules => continue,
                Some(_) => self.rules.push(format!("flush chain {t} {name}")),
                None => self.new_chains.push(format!("add chain {t} {name}")),
            }
            self.rules.extend(rules.iter().map(|r| format!("add rule {t} {name} {r}")));
        }
        let empty = BTreeMap::new();
        for (set, _) in SETS {
            let (n, w) = (now.elements.get(set).unwrap_or(&empty), was.elements.get(set).unwrap_or(&empty));
            let gone = w.iter().filter(|(k, v)| n.get(*k) != Some(*v)).map(|(k, _)| k.clone());
            self.deleted_elements.entry(set).or_default().extend(gone);
            let added = n.iter().filter(|(k, v)| w.get(*k) != Some(*v));
            self.added_elements.entry(set).or_default().extend(added.map(|(k, v)| element(k, v)));
        }
        self.removed_chains.extend(was.chains.keys().filter(|n| !now.chains.contains_key(*n)).cloned());
        self.removed_sets.extend(was.affinity_sets.keys().filter(|n| !now.affinity_sets.contains_key(*n)).cloned());
    }

    pub(super) fn script(self) -> String {
        let t = format!("inet {TABLE}");
        let mut out: Vec<String> = self.new_sets;
        out.extend(self.new_chains);
        out.extend(self.rules);
        for (set, keys) in self.deleted_elements.iter().filter(|(_, k)| !k.is_empty()) {
            out.push(format!("delete element {t} {set} {{ {} }}", keys.join(", ")));
        }
        for (set, elements) in self.added_elements.iter().filter(|(_, e)| !e.is_empty()) {
            out.push(format!("add element {t} {set} {{ {} }}", elements.join(", ")));
        }
        // Chains are emptied before any is deleted, as one may jump to another.
        out.extend(self.removed_chains.iter().map(|n| format!("flush chain {t} {n}")));
        out.extend(self.removed_chains.iter().map(|n| format!("delete chain {t} {n}")));
        out.extend(self.removed_sets.iter().map(|n| format!("delete set {t} {n}")));
        let mut text = out.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        text
    }
}

/// `key : value`, or `key` for plain sets.
pub(super) fn element(k: &str, v: &str) -> String {
    if v.is_empty() { k.to_string() } else { format!("{k} : {v}") }
}
