//! Network configs written by someone hostile: nothing they name is executed,
//! no host file is created, written or followed, and each gets its error code.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::common::{conf, Lab, Output};
use serde_json::{json, Value};

/// A CNI_PATH laid out so that every hostile name would reach an executable that
/// leaves a marker: `../x` (beside the directory), `x/y` (below it), `/bin/sh` (fed
/// a `$(touch …)` payload). `fake-ipam` is a real, bare-named IPAM plugin that logs
/// which section it was given.
struct Trap {
    root: PathBuf,
    marker: PathBuf,
}

impl Trap {
    fn new(lab: &Lab) -> Trap {
        let root = lab.run_dir.join("trap");
        let bin = root.join("bin");
        std::fs::create_dir_all(bin.join("x")).unwrap();
        let marker = root.join("MARKER");
        let touch = format!("#!/bin/sh\ntouch {}\n", marker.display());
        write_exec(&root.join("x"), &touch);
        write_exec(&bin.join("x").join("y"), &touch);
        write_exec(
            &bin.join("fake-ipam"),
            &format!(
                "#!/bin/sh\nread -r conf\nprintf '%s %s\\n' \"$CNI_COMMAND\" \"$conf\" >> {}\n\
                 [ \"$CNI_COMMAND\" = ADD ] && echo '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"10.9.0.5/24\"}}]}}'\nexit 0\n",
                root.join("calls").display()
            ),
        );
        Trap { root, marker }
    }

    fn cni_path(&self) -> String {
        self.root.join("bin").to_string_lossy().into_owned()
    }

    fn payload(&self) -> String {
        format!("$(touch {})", self.marker.display())
    }

    /// Every call the fake IPAM plugin received: (command, the `ipam` it read).
    fn calls(&self) -> Vec<(String, Value)> {
        std::fs::read_to_string(self.root.join("calls"))
            .unwrap_or_default()
            .lines()
            .map(|line| {
                let (command, conf) = line.split_once(' ').unwrap();
                let conf: Value = serde_json::from_str(conf).unwrap();
                (command.to_string(), conf["ipam"].clone())
            })
            .collect()
    }

    /// The trap springs when something does execute it: proof the test can fail.
    fn assert_armed(&self, config: &Value) {
        for program in [self.root.join("x"), self.root.join("bin/x/y")] {
            assert!(Command::new(&program).status().unwrap().success());
            assert!(self.marker.exists(), "{}", program.display());
            std::fs::remove_file(&self.marker).unwrap();
        }
        let mut sh = Command::new("/bin/sh")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        sh.stdin
            .take()
            .unwrap()
            .write_all(&serde_json::to_vec(config).unwrap())
            .unwrap();
        sh.wait().unwrap();
        assert!(self.marker.exists(), "the payload runs under /bin/sh");
        std::fs::remove_file(&self.marker).unwrap();
    }

    fn assert_nothing_ran(&self, what: &str) {
        assert!(!self.marker.exists(), "{what}: a hostile name was executed");
    }
}

fn write_exec(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

const HOSTILE_TYPES: &[&str] = &["/bin/sh", "../x", "x/y", ".", "..", "x/../x/y", "sh\n"];

#[test]
fn hostile_ipam_types_are_never_executed_on_any_command() {
    let (lab, _pod, path) = Lab::with_pod();
    let trap = Trap::new(&lab);
    let cni_path = trap.cni_path();
    let mut env = Lab::attach_env("c1", &path, "net1");
    env.push(("CNI_PATH", &cni_path));
    for hostile in HOSTILE_TYPES {
        let c = conf(
            "1.1.0",
            json!({"ipam": {"type": hostile}, "payload": trap.payload(),
                   "prevResult": {"cniVersion": "1.1.0"}}),
        );
        trap.assert_armed(&c);
        for (command, want) in [("ADD", 7), ("CHECK", 7), ("GC", 7), ("STATUS", 7)] {
            let out = lab.cni(command, &c, &env);
            assert_eq!(
                out.cni_code(),
                want,
                "{command} {hostile:?}: {}",
                out.stdout
            );
            assert!(
                out.stdout.contains("ipam.type"),
                "{command}: {}",
                out.stdout
            );
            trap.assert_nothing_ran(&format!("{command} {hostile:?}"));
            lab.assert_clean(&["br0"]);
        }
        // DEL with no record: nothing was ever allocated through a section ADD refuses,
        // so there is nothing to release; DEL succeeds and runs nothing.
        let out = lab.cni("DEL", &c, &env);
        assert_eq!(out.code, 0, "DEL {hostile:?}: {}", out.stdout);
        trap.assert_nothing_ran(&format!("DEL {hostile:?}"));
        lab.assert_clean(&["br0"]);
    }
    assert!(trap.calls().is_empty());
}

#[test]
fn del_and_gc_release_through_the_recorded_section() {
    let (lab, _pod, path) = Lab::with_pod();
    let trap = Trap::new(&lab);
    let cni_path = trap.cni_path();
    let mut env = Lab::attach_env("c1", &path, "net1");
    env.push(("CNI_PATH", &cni_path));
    let recorded = json!({"type": "fake-ipam", "pool": "a"});
    let good = conf("1.1.0", json!({"ipam": recorded}));
    for hostile in HOSTILE_TYPES {
        let add = lab.cni("ADD", &good, &env);
        assert_eq!(add.code, 0, "{}{}", add.stdout, add.stderr);
        let bad = conf(
            "1.1.0",
            json!({"ipam": {"type": hostile}, "payload": trap.payload()}),
        );
        let del = lab.cni("DEL", &bad, &env);
        assert_eq!(del.code, 0, "DEL {hostile:?}: {}", del.stdout);
        trap.assert_nothing_ran(&format!("DEL {hostile:?}"));
        lab.assert_clean(&["br0"]);
        let calls = trap.calls();
        let last = calls.last().unwrap();
        assert_eq!(last.0, "DEL");
        assert_eq!(
            last.1, recorded,
            "DEL released through the recorded section"
        );
    }

    // GC of a stale attachment: the record's section, though the config now names
    // another (valid) plugin.
    let add = lab.cni("ADD", &good, &env);
    assert_eq!(add.code, 0, "{}", add.stdout);
    let other = conf(
        "1.1.0",
        json!({"ipam": {"type": "no-such-ipam"}, "cni.dev/valid-attachments": []}),
    );
    let gc = lab.cni("GC", &other, &[("CNI_PATH", &cni_path)]);
    // The final GC forwarded to the config's plugin fails (it does not exist), after
    // the stale attachment was released through the recorded one.
    assert_eq!(gc.cni_code(), 103, "{}", gc.stdout);
    lab.assert_clean(&["br0"]);
    let calls = trap.calls();
    let last = calls.last().unwrap();
    assert_eq!(last, &("DEL".to_string(), recorded));
    trap.assert_nothing_ran("GC");
}

#[test]
fn a_tampered_record_is_not_trusted_either() {
    let (lab, _pod, path) = Lab::with_pod();
    let trap = Trap::new(&lab);
    let cni_path = trap.cni_path();
    let mut env = Lab::attach_env("c1", &path, "net1");
    env.push(("CNI_PATH", &cni_path));
    let good = conf("1.1.0", json!({"ipam": {"type": "fake-ipam"}}));
    assert_eq!(lab.cni("ADD", &good, &env).code, 0);
    let records = lab.run_dir.join("attachments");
    let file = std::fs::read_dir(&records)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let mut record: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    record["ipam"] = json!({"type": "../x"});
    std::fs::write(&file, serde_json::to_vec(&record).unwrap()).unwrap();
    let del = lab.cni("DEL", &good, &env);
    assert_eq!(del.code, 0, "{}", del.stdout);
    trap.assert_nothing_ran("DEL with a tampered record");
    lab.assert_clean(&["br0"]);
}

/// Runs a command with a deadline: a plugin that hangs fails the test instead of
/// hanging the suite. `unblock` is run on timeout so the stuck child can finish.
fn cni_within(
    lab: &Lab,
    command: &str,
    c: &Value,
    env: &[(&str, &str)],
    unblock: impl FnOnce(),
) -> Output {
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let _ = tx.send(lab.cni(command, c, env));
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(out) => out,
            Err(_) => {
                unblock();
                panic!("{command} hung on its log file");
            }
        }
    })
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

#[test]
fn log_file_never_leaves_the_node_log_directory() {
    let (lab, _pod, path) = Lab::with_pod();
    let env = Lab::attach_env("c1", &path, "net1");
    let log_dir = lab.log_dir();
    std::fs::create_dir_all(&log_dir).unwrap();
    let outside = lab.run_dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();

    // A path anywhere becomes a file name in the node's directory, on every command.
    let elsewhere = outside.join("new.log");
    let c = conf(
        "1.1.0",
        json!({"logFile": elsewhere.to_string_lossy(), "logLevel": "debug"}),
    );
    assert_eq!(lab.cni("VERSION", &c, &[]).code, 0);
    assert!(
        !log_dir.join("new.log").exists(),
        "VERSION opens no log file"
    );
    for command in ["ADD", "CHECK", "DEL", "STATUS"] {
        let mut c = c.clone();
        if command == "CHECK" {
            c["prevResult"] = json!({"cniVersion": "1.1.0"});
        }
        let _ = lab.cni(command, &c, &env);
        assert!(
            !elsewhere.exists(),
            "{command} created {}",
            elsewhere.display()
        );
    }
    assert!(log_dir.join("new.log").is_file());
    lab.assert_clean(&["br0"]);

    // A symlink in the log directory is not followed: the target keeps its content.
    let victim = outside.join("passwd");
    std::fs::write(&victim, "root:x:0:0::/root:/bin/sh\n").unwrap();
    std::os::unix::fs::symlink(&victim, log_dir.join("link.log")).unwrap();
    // A directory and a device are refused.
    std::fs::create_dir(log_dir.join("dir.log")).unwrap();
    nix::sys::stat::mknod(
        &log_dir.join("null.log"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    // A FIFO with no reader, and one with a reader: neither may hang ADD.
    mkfifo(&log_dir.join("fifo.log"));
    mkfifo(&log_dir.join("read-fifo.log"));
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(log_dir.join("read-fifo.log"))
        .unwrap();
    for name in [
        "link.log",
        "dir.log",
        "null.log",
        "fifo.log",
        "read-fifo.log",
        "/dev/null",
    ] {
        let c = conf("1.0.0", json!({"logFile": name, "logLevel": "debug"}));
        let fifo = log_dir.join(name);
        let add = cni_within(&lab, "ADD", &c, &env, || {
            let _ = std::fs::File::open(&fifo);
        });
        assert_eq!(add.code, 0, "{name}: {}", add.stdout);
        assert_eq!(lab.cni("DEL", &c, &env).code, 0, "{name}");
        lab.assert_clean(&["br0"]);
    }
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "root:x:0:0::/root:/bin/sh\n",
        "written through a symlink"
    );
    assert!(std::fs::symlink_metadata(log_dir.join("link.log"))
        .unwrap()
        .file_type()
        .is_symlink());
    let mut unread = Vec::new();
    let _ = std::io::Read::read_to_end(&mut &reader, &mut unread);
    assert!(unread.is_empty(), "logged into a FIFO");
    // "/dev/null" is reduced to "null", a regular file in the log directory.
    assert!(log_dir.join("null").is_file());
    assert!(!outside.join("null").exists());

    // Names that reduce to nothing usable are refused with code 2.
    for name in ["/", "..", "/tmp/", "a\nb", ".hidden", ""] {
        let c = conf("1.0.0", json!({"logFile": name}));
        let add = lab.cni("ADD", &c, &env);
        assert_eq!(add.cni_code(), 2, "{name:?}: {}", add.stdout);
        assert!(add.stdout.contains("logFile"));
        lab.assert_clean(&["br0"]);
    }
}

#[test]
fn logged_values_cannot_inject_lines() {
    let (lab, _pod, path) = Lab::with_pod();
    let env = Lab::attach_env("c1", &path, "net1");
    let c = conf(
        "1.0.0",
        json!({"logFile": "inject.log", "logLevel": "debug",
               "ipam": {"type": "x\nssh-ed25519 AAAAC3Nz injected\n"}}),
    );
    assert_eq!(lab.cni("DEL", &c, &env).code, 0);
    let add = lab.cni("ADD", &c, &env);
    assert_eq!(add.cni_code(), 7);
    let text = std::fs::read_to_string(lab.log_dir().join("inject.log")).unwrap();
    assert!(text.contains("ssh-ed25519"), "the value is logged: {text}");
    for line in text.lines().chain(add.stderr.lines()) {
        assert!(!line.starts_with("ssh-ed25519"), "injected line: {text}");
    }
}
