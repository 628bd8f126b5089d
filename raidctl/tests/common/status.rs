//! Reading `raidctl status --json` (and other JSON reports): fields that must be there.

use serde_json::Value;

pub fn members_of(status: &Value) -> &Vec<Value> {
    status["members"]
        .as_array()
        .unwrap_or_else(|| panic!("status has no \"members\" array:\n{status:#}"))
}

/// The member entry of `path` in a status report, if listed.
pub fn find_member<'v>(status: &'v Value, path: &str) -> Option<&'v Value> {
    members_of(status)
        .iter()
        .find(|m| m["path"].as_str() == Some(path))
}

/// The member entry of `path`, which must be listed.
pub fn member<'v>(status: &'v Value, path: &str) -> &'v Value {
    find_member(status, path)
        .unwrap_or_else(|| panic!("status does not list member {path}:\n{status:#}"))
}

/// The entry of slot `slot`, which must be listed.
pub fn slot_entry(status: &Value, slot: u64) -> &Value {
    members_of(status)
        .iter()
        .find(|m| m["slot"].as_u64() == Some(slot))
        .unwrap_or_else(|| panic!("status has no slot {slot}:\n{status:#}"))
}

/// The paths of the members in `state` ("in_sync", "spare", ...), in the order listed.
pub fn member_paths(status: &Value, state: &str) -> Vec<String> {
    members_of(status)
        .iter()
        .filter(|m| m["state"] == state)
        .map(|m| m["path"].as_str().expect("a member path").to_string())
        .collect()
}

pub fn str_of<'v>(v: &'v Value, key: &str) -> &'v str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key:?} in:\n{v:#}"))
}

pub fn u64_of(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key:?} in:\n{v:#}"))
}
