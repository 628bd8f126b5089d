//! `monitor`: the --program hook and --json.

#[allow(unused_imports)]
use crate::*;

#[test]
fn monitor_program_and_json_see_the_rebuild() {
    let name = "rb-mon";
    let mut h = assembled(name, "5", 4, 1);
    write_random_data(&h, 8 * MIB, 61);

    let hook_log = h.path("hook.log");
    let hook = h.path("hook.sh");
    fs::write(
        &hook,
        format!("#!/bin/sh\necho \"$@\" >> '{}'\n", s(&hook_log)),
    )
    .expect("write hook");
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).expect("chmod hook");

    let program = h.children.spawn(
        "monitor-program",
        h.raidctl_command(&["monitor", name, "--program", &s(&hook)]),
    );
    let json = h.children.spawn(
        "monitor-json",
        h.raidctl_command(&["monitor", name, "--json"]),
    );
    // Both monitors are subscribed once they report an event: a check makes one.
    let ran = check(&h, false, 0);
    assert_eq!(mismatches(&ran), 0, "{}", ran.describe());
    wait_for(
        "both monitors to report CheckFinished",
        STATE_TIMEOUT,
        || {
            let hooked = fs::read_to_string(&hook_log).unwrap_or_default();
            let json_seen = monitor_events(&h, "monitor-json")
                .iter()
                .any(|e| e["event"] == "CheckFinished");
            (hooked.contains("CheckFinished") && json_seen).then_some(())
        },
        || {
            format!(
                "hook log: {:?}\nprogram monitor: {:?}\njson monitor: {:?}",
                fs::read_to_string(&hook_log),
                h.children.output("monitor-program"),
                h.children.output("monitor-json")
            )
        },
    );

    let victim = h.members[1].clone();
    let spare = h.spares[0].clone();
    h.ok(&["fail", name, &victim]);
    h.ok(&["rebuild", name, "--wait"]);
    let wanted = [
        "MemberFailed",
        "SpareActivated",
        "RebuildStarted",
        "RebuildFinished",
    ];
    let lines: Vec<String> = wait_for(
        "RebuildFinished from the hook",
        STATE_TIMEOUT,
        || {
            let text = fs::read_to_string(&hook_log).unwrap_or_default();
            text.lines()
                .any(|l| l.starts_with("RebuildFinished "))
                .then(|| text.lines().map(str::to_string).collect())
        },
        || format!("hook log: {:?}", fs::read_to_string(&hook_log)),
    );
    let mut at = 0;
    for event in wanted {
        let i = lines[at..]
            .iter()
            .position(|l| l.split_whitespace().next() == Some(event))
            .map(|i| i + at)
            .unwrap_or_else(|| {
                panic!("the hook saw no {event} after line {at}, in order {wanted:?}:\n{lines:#?}")
            });
        let words: Vec<&str> = lines[i].split_whitespace().collect();
        assert_eq!(words.get(1), Some(&name), "line {:?}", lines[i]);
        let member = if event == "MemberFailed" {
            &victim
        } else {
            &spare
        };
        assert_eq!(
            words.get(2).copied(),
            Some(member.as_str()),
            "{event} should name its member: {:?}",
            lines[i]
        );
        at = i + 1;
    }
    for l in &lines {
        let words: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(
            words.get(1),
            Some(&name),
            "every hook call names the array: {l:?}"
        );
    }

    let events = wait_for(
        "RebuildFinished from monitor --json",
        STATE_TIMEOUT,
        || {
            let ev = monitor_events(&h, "monitor-json");
            ev.iter()
                .any(|e| e["event"] == "RebuildFinished")
                .then_some(ev)
        },
        || format!("{:?}", h.children.output("monitor-json")),
    );
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| {
            assert_eq!(e["array"].as_str(), Some(name), "{e}");
            e["event"]
                .as_str()
                .unwrap_or_else(|| panic!("an event without an \"event\" field: {e}"))
        })
        .collect();
    let mut at = 0;
    for event in wanted {
        at += kinds[at..]
            .iter()
            .position(|k| *k == event)
            .unwrap_or_else(|| panic!("monitor --json: no {event} in order in {kinds:?}"))
            + 1;
    }
    let started = events
        .iter()
        .find(|e| e["event"] == "RebuildStarted")
        .expect("RebuildStarted");
    assert_eq!(
        started["member"].as_str(),
        Some(spare.as_str()),
        "{started}"
    );
    assert_eq!(started["slot"].as_u64(), Some(1), "{started}");
    assert_eq!(started["from_bytes"].as_u64(), Some(0), "{started}");

    // Both monitors end by themselves when the daemon stops.
    h.stop();
    for (index, label) in [(program, "monitor-program"), (json, "monitor-json")] {
        let (status, out) = h.children.wait(index, Duration::from_secs(60));
        assert!(
            status.is_some_and(|s| s.success()),
            "{label} should exit 0 once its daemon stopped (status {status:?}):\n{out}"
        );
    }
}
