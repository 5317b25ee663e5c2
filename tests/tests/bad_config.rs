//! A bad config gets a clear error naming the field or resource and a non-zero exit, and
//! installs nothing.
mod common;

use common::T;
use mesh_tests::{
    labtool_bin, mesh::to_yaml, mesh::MeshSpec, mesh_node_bin, require_privileges, ChildOutput, Lab, Node,
};

fn run_with(lab: &Lab, node: &Node, yaml: &str, name: &str) -> ChildOutput {
    let path = lab.write_file(name, yaml);
    lab.run(
        node.command(mesh_node_bin())
            .arg("run")
            .arg("--config")
            .arg(&path),
        T,
    )
}

#[track_caller]
fn assert_rejected(out: &ChildOutput, needles: &[&str]) {
    assert!(!out.success(), "daemon accepted a bad config: {out}");
    for n in needles {
        assert!(out.stderr.contains(n), "error should mention {n:?}: {out}");
    }
}

#[test]
fn bad_configs_are_rejected_with_the_field_named() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("bad-config");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let a = lab.add_pod(&n1, "a");
    let b = lab.add_pod(&n2, "b");
    let mesh = MeshSpec::new(&[&n1, &n2], &[&a, &b]);
    let good = mesh.config(&lab, &n1);

    let yaml = to_yaml(&good).replacen("capture:", "captrue:", 1);
    let out = run_with(&lab, &n1, &yaml, "unknown.yaml");
    assert_rejected(&out, &["captrue"]);
    assert_eq!(out.status.code(), Some(2), "config errors exit with 2");

    let mut c = good.clone();
    c.workloads[0].cgroup = Some(n1.cgroup_path().join("no-such-pod"));
    assert_rejected(
        &run_with(&lab, &n1, &to_yaml(&c), "cgroup.yaml"),
        &["workloads[0].cgroup", "no-such-pod"],
    );

    let mut c = good.clone();
    c.workloads[1].ips[0] = c.workloads[0].ips[0];
    assert_rejected(
        &run_with(&lab, &n1, &to_yaml(&c), "dup.yaml"),
        &["workloads[1].ips[0]", "duplicate IP"],
    );

    let mut c = good.clone();
    c.workloads[0].cgroup = Some(lab.cgroup_path().to_path_buf());
    assert_rejected(
        &run_with(&lab, &n1, &to_yaml(&c), "outside.yaml"),
        &["workloads[0].cgroup", "outside bpf.cgroup"],
    );

    // Nothing was installed by any of them.
    assert!(!lab.bpf_pin_dir(&n1).exists());
}

#[test]
fn capture_port_in_use_is_reported_and_installs_nothing() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("port-in-use");
    let n1 = lab.add_node();
    let a = lab.add_pod(&n1, "a");
    let squatter =
        lab.spawn(
            n1.command(labtool_bin())
                .args(["serve", "--listen", &format!("{}:15001", n1.ipv4())]),
        );
    squatter.wait_stdout("listening", T);
    let out = run_with(
        &lab,
        &n1,
        &MeshSpec::new(&[&n1], &[&a]).yaml(&lab, &n1),
        "in-use.yaml",
    );
    assert_rejected(&out, &[&format!("{}:15001", n1.ipv4()), "in use"]);
    assert!(
        !lab.bpf_pin_dir(&n1).exists(),
        "a failed start must not install programs"
    );
}

#[test]
fn bpf_not_permitted_is_reported() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("no-caps");
    let n1 = lab.add_node();
    let a = lab.add_pod(&n1, "a");
    let path = lab.write_file("nocaps.yaml", &MeshSpec::new(&[&n1], &[&a]).yaml(&lab, &n1));
    // Root without any capability (empty bounding set): BPF is not permitted.
    let out = lab.run(
        n1.command("setpriv")
            .args(["--bounding-set=-all", "--inh-caps=-all", "--"])
            .arg(mesh_node_bin())
            .arg("run")
            .arg("--config")
            .arg(&path),
        T,
    );
    assert_rejected(&out, &["capabilities", "CAP_BPF"]);
}

#[test]
fn daemon_cgroup_cannot_be_a_workload() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("self-enroll");
    let n1 = lab.add_node();
    let a = lab.add_pod(&n1, "a");
    let mount = mesh_tests::cgroup2_mount();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap()
        .trim_start_matches('/')
        .to_string();
    let mut c = MeshSpec::new(&[&n1], &[&a]).config(&lab, &n1);
    c.bpf.cgroup = Some(mount.clone());
    c.workloads[0].cgroup = Some(mount.join(&own));
    let path = lab.write_file("self.yaml", &to_yaml(&c));
    // `check` validates against the host without touching the kernel; the daemon runs
    // in this test's cgroup.
    let out = lab.run(
        std::process::Command::new(mesh_node_bin())
            .arg("check")
            .arg("--config")
            .arg(&path),
        T,
    );
    assert_rejected(&out, &["workloads[0].cgroup", "contains the daemon itself"]);
}
