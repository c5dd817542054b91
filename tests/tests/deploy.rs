//! The deployment files in deploy/: the systemd unit passes systemd's own check and the binary
//! accepts its command line; the unit and the Kubernetes DaemonSet grant exactly the
//! capabilities that the least-privilege tests (privilege.rs) prove `serve` needs, and the
//! DaemonSet asks the host for what the agent uses and nothing more.

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use teardown_integration_tests::{cli, gate, unprivileged::SERVE};
use yaml_rust2::{Yaml, YamlLoader};

fn repo_file(path: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

const UNIT: &str = "deploy/systemd/teardown.service";
const DAEMONSET: &str = "deploy/kubernetes/teardown-daemonset.yaml";

/// The values of `key=` in the unit (every line that sets it).
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

/// SERVE's names as capabilities(7) spells them, without `CAP_`: SYS_ADMIN, ...
fn proven() -> BTreeSet<String> {
    SERVE.iter().map(|c| c.to_uppercase()).collect()
}

#[test]
fn the_unit_grants_exactly_the_proven_capabilities() {
    let unit = repo_file(UNIT);
    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        let values = unit_values(&unit, key);
        assert_eq!(values.len(), 1, "{key}= set {} times", values.len());
        let set: BTreeSet<String> = values[0]
            .split_whitespace()
            .map(|c| {
                c.strip_prefix("CAP_")
                    .unwrap_or_else(|| panic!("{c}"))
                    .into()
            })
            .collect();
        assert_eq!(set, proven(), "{key}");
    }
    // No other way to privilege: not root, no setuid, no new privileges.
    assert_eq!(unit_values(&unit, "DynamicUser"), ["yes"]);
    assert_eq!(unit_values(&unit, "NoNewPrivileges"), ["yes"]);
    assert!(unit_values(&unit, "User").is_empty());
    assert!(unit_values(&unit, "PermissionsStartOnly").is_empty());
    // No setting that takes back what the capabilities give: ProtectKernelLogs drops
    // CAP_SYSLOG from the bounding set; ProtectKernelTunables hides /proc/kallsyms (the timer
    // programs' address); RestrictNamespaces=yes would forbid setns() into the namespaces.
    for (key, forbidden) in [
        ("ProtectKernelLogs", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("RestrictNamespaces", "yes"),
        ("PrivateNetwork", "yes"),
    ] {
        assert!(
            !unit_values(&unit, key).contains(&forbidden),
            "{key}={forbidden} undoes what serve needs"
        );
    }
    assert_eq!(unit_values(&unit, "RestrictNamespaces"), ["net"]);
    // Kernels before 5.11 charge the ring buffer to RLIMIT_MEMLOCK.
    assert_eq!(unit_values(&unit, "LimitMEMLOCK"), ["infinity"]);
    // SIGHUP reopens the output: what logrotate's postrotate asks with `systemctl reload`.
    assert_eq!(
        unit_values(&unit, "ExecReload"),
        ["/bin/kill -HUP $MAINPID"]
    );
}

#[test]
fn the_unit_passes_systemd_analyze_verify_and_its_command_line_parses() {
    if !gate::can_run(gate::SYSTEMD_ANALYZE) {
        return;
    }
    let unit = repo_file(UNIT);
    let exec = unit_values(&unit, "ExecStart");
    assert_eq!(exec.len(), 1);
    let mut words = exec[0].split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/teardown"));
    let args: Vec<&str> = words.collect();
    assert_eq!(args.first(), Some(&"serve"));

    // The binary takes the unit's arguments (clap checks them all before it prints help).
    let bin = cli::teardown_bin().unwrap();
    let out = Command::new(&bin)
        .args(&args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // systemd's check, on a copy whose ExecStart is the built binary (verify also checks that
    // the program exists). Any warning fails: verify's status ignores unknown keys.
    let dir = std::env::temp_dir().join(format!("teardown-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("teardown.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/teardown", bin.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert_eq!(said.trim(), "", "systemd-analyze verify warned");
}

fn strings(y: &Yaml) -> BTreeSet<String> {
    y.as_vec()
        .unwrap_or_else(|| panic!("not a list: {y:?}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_daemonset_asks_for_what_the_agent_uses_and_nothing_more() {
    let docs = YamlLoader::load_from_str(&repo_file(DAEMONSET)).unwrap();
    assert_eq!(docs.len(), 1);
    let ds = &docs[0];
    assert_eq!(ds["kind"].as_str(), Some("DaemonSet"));
    assert_eq!(ds["apiVersion"].as_str(), Some("apps/v1"));
    let pod = &ds["spec"]["template"]["spec"];
    // The node's processes (every pod's namespace found through them) and its network.
    assert_eq!(pod["hostPID"].as_bool(), Some(true));
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
    assert!(pod["hostIPC"].is_badvalue() || pod["hostIPC"].as_bool() == Some(false));
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));
    let containers = pod["containers"].as_vec().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["args"][0].as_str(), Some("serve"));
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"].as_bool(), Some(false));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(
        strings(&sc["capabilities"]["drop"]),
        BTreeSet::from(["ALL".into()])
    );
    assert_eq!(strings(&sc["capabilities"]["add"]), proven());
    // Of the host's files, read-only: the kernel's BTF, and the kubelet's pod directories
    // (which name each pod's namespace); /proc is the host's already, through hostPID.
    let volumes = pod["volumes"].as_vec().unwrap();
    let host_paths: BTreeSet<&str> = volumes
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert_eq!(
        host_paths,
        BTreeSet::from(["/sys/kernel/btf", "/var/log/pods"])
    );
    assert_eq!(volumes.len(), 2);
    let mounts = c["volumeMounts"].as_vec().unwrap();
    assert_eq!(mounts.len(), 2);
    for m in mounts {
        assert!(
            host_paths.contains(m["mountPath"].as_str().unwrap()),
            "{m:?}"
        );
        assert_eq!(m["readOnly"].as_bool(), Some(true), "{m:?}");
    }
    // The metrics on the node's address (reached by Prometheus), on the port it declares.
    let args: Vec<&str> = c["args"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let at = args.iter().position(|a| *a == "--metrics").unwrap();
    assert_eq!(args[at + 1], "$(NODE_IP):9464");
    assert_eq!(c["ports"][0]["containerPort"].as_i64(), Some(9464));
    assert_eq!(
        c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("status.hostIP")
    );
    // A memory limit, so that the node is safe from the agent whatever happens.
    assert!(c["resources"]["limits"]["memory"].as_str().is_some());
    // Not `latest` (always pulled, never pinned) for a pod with CAP_SYS_ADMIN on every node.
    let image = c["image"].as_str().unwrap();
    assert!(
        !image.ends_with(":latest") && image.contains(':'),
        "{image}"
    );
}
