//! Cross-checking the per-release table (`abi.rs`) against a binary's own DWARF, when it has
//! some: struct member order (which decides the argument registers of a struct passed by
//! value), member offsets mapscope reads, and parameter names.
use std::{borrow::Cow, collections::BTreeMap};

use gimli::{AttributeValue, EndianSlice, LittleEndian};
use object::{Object as _, ObjectSection as _};

/// What the table says the DWARF must show, for one Go release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DwarfFacts {
    /// Struct types whose members must be exactly these, in this order.
    pub members: &'static [(&'static str, &'static [&'static str])],
    /// (type, member, byte offset) that mapscope reads from memory.
    pub offsets: &'static [(&'static str, &'static str, u64)],
    /// Functions and their parameter names in order (results, `~r0`…, left out).
    pub params: &'static [(&'static str, &'static [&'static str])],
}

/// The parts of a binary's DWARF that the facts mention.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DwarfIndex {
    pub members: BTreeMap<String, Vec<(String, u64)>>,
    pub params: BTreeMap<String, Vec<String>>,
}

impl DwarfFacts {
    fn types(&self) -> Vec<&'static str> {
        let mut types: Vec<_> = self.members.iter().map(|&(name, _)| name).collect();
        types.extend(self.offsets.iter().map(|&(name, _, _)| name));
        types
    }

    /// Every way the binary disagrees with the table; empty when they agree.
    pub fn disagreements(&self, index: &DwarfIndex) -> Vec<String> {
        let mut found = Vec::new();
        for &(type_name, expected) in self.members {
            let actual: Option<Vec<&str>> = index
                .members
                .get(type_name)
                .map(|members| members.iter().map(|(name, _)| name.as_str()).collect());
            if actual.as_deref() != Some(expected) {
                found.push(format!(
                    "{type_name} has members {actual:?}, the table expects {expected:?}"
                ));
            }
        }
        for &(type_name, member, offset) in self.offsets {
            let actual = index
                .members
                .get(type_name)
                .and_then(|members| members.iter().find(|(name, _)| name == member))
                .map(|&(_, at)| at);
            if actual != Some(offset) {
                found.push(format!(
                    "{type_name}.{member} is at {actual:?}, the table expects {offset}"
                ));
            }
        }
        for &(function, expected) in self.params {
            let actual: Option<Vec<&str>> = index
                .params
                .get(function)
                .map(|params| params.iter().map(String::as_str).collect());
            if actual.as_deref() != Some(expected) {
                found.push(format!(
                    "{function} has parameters {actual:?}, the table expects {expected:?}"
                ));
            }
        }
        found
    }
}

/// Read what `facts` mentions from the DWARF of `file`.
pub fn index(file: &object::File<'_>, facts: &DwarfFacts) -> Result<DwarfIndex, gimli::Error> {
    let load = |id: gimli::SectionId| -> Result<Cow<'_, [u8]>, gimli::Error> {
        Ok(file
            .section_by_name(id.name())
            .and_then(|section| section.uncompressed_data().ok())
            .unwrap_or(Cow::Borrowed(&[])))
    };
    let sections = gimli::DwarfSections::load(load)?;
    let dwarf = sections.borrow(|section| EndianSlice::new(section, LittleEndian));
    let types = facts.types();
    let functions: Vec<&str> = facts.params.iter().map(|&(name, _)| name).collect();
    let mut index = DwarfIndex::default();

    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let mut tree = unit.entries_tree(None)?;
        let root = tree.root()?;
        let mut children = root.children();
        while let Some(child) = children.next()? {
            let tag = child.entry().tag();
            if tag != gimli::DW_TAG_structure_type && tag != gimli::DW_TAG_subprogram {
                continue;
            }
            let Some(name) = name_of(&dwarf, &unit, child.entry())? else {
                continue;
            };
            if tag == gimli::DW_TAG_structure_type && types.contains(&name.as_str()) {
                let mut members = Vec::new();
                let mut grandchildren = child.children();
                while let Some(member) = grandchildren.next()? {
                    let entry = member.entry();
                    if entry.tag() != gimli::DW_TAG_member {
                        continue;
                    }
                    let offset = entry
                        .attr_value(gimli::DW_AT_data_member_location)
                        .and_then(|value| value.udata_value())
                        .unwrap_or(0);
                    members.push((name_of(&dwarf, &unit, entry)?.unwrap_or_default(), offset));
                }
                index.members.insert(name, members);
            } else if tag == gimli::DW_TAG_subprogram && functions.contains(&name.as_str()) {
                let mut params = Vec::new();
                let mut grandchildren = child.children();
                while let Some(param) = grandchildren.next()? {
                    let entry = param.entry();
                    if entry.tag() != gimli::DW_TAG_formal_parameter {
                        continue;
                    }
                    let param_name = name_of(&dwarf, &unit, entry)?.unwrap_or_default();
                    // Go names results ~r0, ~r1… and marks them as variable parameters.
                    if !param_name.starts_with("~r") {
                        params.push(param_name);
                    }
                }
                index.params.insert(name, params);
            }
        }
    }
    Ok(index)
}

fn name_of<R: gimli::Reader>(
    dwarf: &gimli::Dwarf<R>,
    unit: &gimli::Unit<R>,
    entry: &gimli::DebuggingInformationEntry<R>,
) -> Result<Option<String>, gimli::Error> {
    let Some(value) = entry.attr_value(gimli::DW_AT_name) else {
        return Ok(None);
    };
    if let AttributeValue::String(_) | AttributeValue::DebugStrRef(_) = value {
        let name = dwarf.attr_string(unit, value)?;
        return Ok(Some(name.to_string_lossy()?.into_owned()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FACTS: DwarfFacts = DwarfFacts {
        members: &[("runtime.worldStop", &["reason", "start"])],
        offsets: &[("runtime.g", "m", 48)],
        params: &[("runtime.startTheWorldWithSema", &["now", "w"])],
    };

    fn index(world_stop: &[&str], m_at: u64, params: &[&str]) -> DwarfIndex {
        DwarfIndex {
            members: BTreeMap::from([
                (
                    "runtime.worldStop".to_owned(),
                    world_stop
                        .iter()
                        .enumerate()
                        .map(|(i, n)| (n.to_string(), i as u64 * 8))
                        .collect(),
                ),
                (
                    "runtime.g".to_owned(),
                    vec![("stack".to_owned(), 0), ("m".to_owned(), m_at)],
                ),
            ]),
            params: BTreeMap::from([(
                "runtime.startTheWorldWithSema".to_owned(),
                params.iter().map(|p| p.to_string()).collect(),
            )]),
        }
    }

    #[test]
    fn agreeing_dwarf_has_no_disagreements() {
        assert!(
            FACTS
                .disagreements(&index(&["reason", "start"], 48, &["now", "w"]))
                .is_empty()
        );
    }

    #[test]
    fn each_kind_of_difference_is_named() {
        let found = FACTS.disagreements(&index(&["start", "reason"], 56, &["w"]));
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].contains("runtime.worldStop"));
        assert!(found[1].contains("runtime.g.m is at Some(56)"));
        assert!(found[2].contains("parameters"));
        let missing = FACTS.disagreements(&DwarfIndex::default());
        assert_eq!(
            missing.len(),
            3,
            "absent types and functions disagree too: {missing:?}"
        );
    }
}
