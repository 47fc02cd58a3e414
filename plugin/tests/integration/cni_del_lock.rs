//! DEL holds its attachment record's lock from before it deletes the veth until
//! the record is gone: portgroupd's collector, which only try-locks, then leaves
//! an attachment whose DEL is running alone instead of reporting a leak.
//! Root only; everything lives in namespaces the test makes.

use std::time::Duration;

use crate::common::{conf, Lab};
use portgroup::naming::host_veth_name;
use serde_json::json;

#[test]
fn del_waits_for_the_record_lock_and_touches_nothing_before_it() {
    let (lab, _pod, path) = Lab::with_pod();
    let env = Lab::attach_env("lockme", &path, "net1");
    let add = lab.cni("ADD", &conf("1.0.0", json!({})), &env);
    assert_eq!(add.code, 0, "{}", add.stdout);
    let veth = host_veth_name("lockme", "net1");
    assert!(lab.node_links().contains(&veth));

    let attachments = lab.run_dir.join("attachments");
    let held = portgroup::attachment::lock(&attachments, "lockme", "net1")
        .expect("lock")
        .expect("the record exists");
    std::thread::scope(|s| {
        let del = s.spawn(|| lab.cni("DEL", &conf("1.0.0", json!({})), &env));
        std::thread::sleep(Duration::from_millis(500));
        assert!(!del.is_finished(), "DEL went on without the record's lock");
        assert!(
            lab.node_links().contains(&veth),
            "veth deleted before the lock was taken"
        );
        drop(held);
        let out = del.join().expect("DEL thread");
        assert_eq!(out.code, 0, "{}", out.stderr);
    });
    assert!(!lab.node_links().contains(&veth));
    assert!(lab.records().is_empty(), "record removed");
}
