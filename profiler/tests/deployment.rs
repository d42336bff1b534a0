//! The deployment files under deploy/ keep the least privilege they were written with: exactly
//! CAP_SYS_ADMIN and CAP_SYS_PTRACE, nothing privileged, a read-only root
//! filesystem, no privilege escalation; and they agree with each other (ports, config paths,
//! scrape targets, the image's entrypoint). That capability set really works: mapscope attaches
//! to a real Go program under exactly it (setpriv), and without any one of them says which is
//! missing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure here is a test failure"
)]

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use serde::Deserialize as _;
use serde_json::Value;

/// The port every example serves metrics on.
const METRICS_PORT: u64 = 9871;
/// The capabilities of a mapscope container, in Kubernetes' spelling (no CAP_ prefix).
const CAPABILITIES: [&str; 2] = ["SYS_ADMIN", "SYS_PTRACE"];
/// The same in systemd's spelling.
const SYSTEMD_CAPABILITIES: [&str; 2] = ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"];
const DAEMONSET: &str = "deploy/kubernetes/daemonset.yaml";
const SIDECAR: &str = "deploy/kubernetes/sidecar.yaml";
const CONTAINERFILE: &str = "deploy/Containerfile";
const UNIT: &str = "deploy/systemd/mapscope.service";
const HOST_CONFIG: &str = "deploy/systemd/mapscope.toml";
const SCRAPE: &str = "deploy/prometheus/scrape.yml";
const WEB_CONFIG: &str = "deploy/web-config.example.yml";
/// The password whose hash the example web config holds (documented there).
const WEB_CONFIG_EXAMPLE_PASSWORD: &str = "change-me";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("profiler/ has a parent")
        .to_path_buf()
}

/// A file of the repository, by its path from the root (as the messages name it).
fn read(file: &str) -> String {
    std::fs::read_to_string(repo_root().join(file))
        .unwrap_or_else(|error| panic!("{file}: cannot read it: {error}"))
}

/// Every non-empty document of a (multi-document) YAML file, as JSON values.
fn yaml_documents(file: &str) -> Vec<Value> {
    let text = read(file);
    serde_yaml_ng::Deserializer::from_str(&text)
        .enumerate()
        .map(|(index, document)| {
            Value::deserialize(document).unwrap_or_else(|error| {
                panic!("{file}: document {} is not valid YAML: {error}", index + 1)
            })
        })
        .filter(|document| !document.is_null())
        .collect()
}

fn yaml_document(file: &str) -> Value {
    let mut documents = yaml_documents(file);
    assert_eq!(
        documents.len(),
        1,
        "{file}: expected exactly one YAML document"
    );
    documents.remove(0)
}

fn toml_table(file: &str, text: &str) -> toml::Table {
    toml::from_str(text).unwrap_or_else(|error| panic!("{file}: not valid TOML: {error}"))
}

/// The one document of `kind` in a manifest.
fn document_of_kind<'a>(file: &str, documents: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = documents
        .iter()
        .filter(|document| document["kind"] == kind)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{file}: expected exactly one {kind}, found {}",
        found.len()
    );
    found[0]
}

fn name(value: &Value) -> &str {
    value["name"].as_str().unwrap_or("<unnamed>")
}

/// A boolean field that may be absent: absent reads as false.
fn flag(value: &Value, key: &str) -> bool {
    value.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The pod spec of a workload: a Pod's spec, or the pod template's of anything else.
fn pod_spec<'a>(file: &str, workload: &'a Value) -> &'a Value {
    let spec = if workload["kind"] == "Pod" {
        workload.get("spec")
    } else {
        workload.pointer("/spec/template/spec")
    };
    spec.unwrap_or_else(|| panic!("{file}: {} has no pod spec", workload["kind"]))
}

/// Every container of a pod, init containers included.
fn all_containers(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|key| pod.get(*key).and_then(Value::as_array))
        .flatten()
        .collect()
}

fn is_mapscope(container: &Value) -> bool {
    container["name"] == "mapscope"
        || container["image"]
            .as_str()
            .is_some_and(|image| image.contains("mapscope"))
}

fn mapscope_containers<'a>(file: &str, pod: &'a Value) -> Vec<&'a Value> {
    let found: Vec<&Value> = all_containers(pod)
        .into_iter()
        .filter(|container| is_mapscope(container))
        .collect();
    assert!(
        !found.is_empty(),
        "{file}: no mapscope container (named mapscope or with a mapscope image)"
    );
    found
}

/// The least-privilege security context of a mapscope container.
/// The pod's one mapscope container, checked for what every deployment of it keeps (least
/// privileges, probes, resources), and its metrics port.
fn checked_mapscope_container<'a>(file: &str, pod: &'a Value) -> (&'a Value, u64) {
    let containers = mapscope_containers(file, pod);
    assert_eq!(
        containers.len(),
        1,
        "{file}: expected one mapscope container"
    );
    let container = containers[0];
    check_mapscope_security(file, pod, container);
    check_probes(file, container);
    check_resources(file, container);
    (container, metrics_port(file, container))
}

fn check_mapscope_security(file: &str, pod: &Value, container: &Value) {
    let who = format!("{file}: container {}", name(container));
    let context = container
        .get("securityContext")
        .filter(|context| context.is_object())
        .unwrap_or_else(|| panic!("{who}: has no securityContext"));

    let added: BTreeSet<&str> = strings(&context["capabilities"]["add"])
        .into_iter()
        .collect();
    let expected: BTreeSet<&str> = CAPABILITIES.into_iter().collect();
    assert_eq!(
        added, expected,
        "{who}: securityContext.capabilities.add must be exactly {expected:?} (load eBPF, \
         perf_event_open for uprobes, read other processes), found {added:?}"
    );
    let dropped = strings(&context["capabilities"]["drop"]);
    assert!(
        dropped.contains(&"ALL"),
        "{who}: securityContext.capabilities.drop must contain ALL, found {dropped:?}"
    );
    assert!(
        !flag(context, "privileged"),
        "{who}: must not be privileged (the three capabilities are enough)"
    );
    assert_eq!(
        context.get("allowPrivilegeEscalation"),
        Some(&Value::Bool(false)),
        "{who}: securityContext.allowPrivilegeEscalation must be set to false"
    );
    assert_eq!(
        context.get("readOnlyRootFilesystem"),
        Some(&Value::Bool(true)),
        "{who}: securityContext.readOnlyRootFilesystem must be true (mapscope writes no files)"
    );
    assert_eq!(
        context.get("runAsUser").and_then(Value::as_u64),
        Some(0),
        "{who}: securityContext.runAsUser must be 0: added capabilities are only effective for \
         root (no ambient capabilities in Kubernetes)"
    );
    assert!(
        !flag(context, "runAsNonRoot"),
        "{who}: runAsNonRoot: true contradicts runAsUser: 0"
    );
    // The container's own profile wins over the pod's.
    let seccomp = context
        .pointer("/seccompProfile/type")
        .or_else(|| pod.pointer("/securityContext/seccompProfile/type"))
        .and_then(Value::as_str);
    assert_eq!(
        seccomp,
        Some("RuntimeDefault"),
        "{who}: seccompProfile.type must be RuntimeDefault (it allows bpf and perf_event_open \
         to a container holding CAP_SYS_ADMIN); Unconfined only if a runtime needs it"
    );
}

/// What every pod with mapscope in it must not have, whatever the way it sees processes.
fn check_pod_isolation(file: &str, pod: &Value) {
    assert!(
        !flag(pod, "hostNetwork"),
        "{file}: hostNetwork must not be set (the pod IP is enough to be scraped)"
    );
    assert!(!flag(pod, "hostIPC"), "{file}: hostIPC must not be set");
    for volume in pod["volumes"].as_array().into_iter().flatten() {
        assert!(
            volume.get("hostPath").is_none(),
            "{file}: volume {} mounts a host path; mapscope needs none",
            name(volume)
        );
    }
    for container in all_containers(pod) {
        assert!(
            !flag(&container["securityContext"], "privileged"),
            "{file}: container {} is privileged",
            name(container)
        );
    }
}

/// The container's arguments: a `daemon` command line (the image's entrypoint is mapscope).
fn daemon_args<'a>(file: &str, container: &'a Value) -> Vec<&'a str> {
    let who = format!("{file}: container {}", name(container));
    assert!(
        container.get("command").is_none(),
        "{who}: `command` would replace the image's entrypoint; pass `args` only"
    );
    let args = strings(&container["args"]);
    assert_eq!(
        args.first(),
        Some(&"daemon"),
        "{who}: args must start with \"daemon\", found {args:?}"
    );
    args
}

/// The value after `--name` (or in `--name=value`) on a command line.
fn option_value<'a>(args: &[&'a str], option: &str) -> Option<&'a str> {
    let prefix = format!("{option}=");
    args.iter().enumerate().find_map(|(index, arg)| {
        if *arg == option {
            args.get(index + 1).copied()
        } else {
            arg.strip_prefix(prefix.as_str())
        }
    })
}

/// A selector the daemon accepts: `go`, `exe=NAME`, `cmdline=REGEX` or `cgroup=PATH`.
fn check_select(file: &str, spec: &str) {
    if let Err(error) = spec.parse::<mapscope::daemon::select::Selector>() {
        panic!("{file}: select {spec:?}: {error}");
    }
}

fn listen_port(file: &str, listen: &str) -> u64 {
    listen
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("{file}: listen address {listen:?} is not ADDR:PORT"))
}

/// The container port named `metrics`, which probes, scrape configs and policies refer to.
fn metrics_port(file: &str, container: &Value) -> u64 {
    let ports = container["ports"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let port = ports
        .iter()
        .find(|port| port["name"] == "metrics")
        .unwrap_or_else(|| {
            panic!(
                "{file}: container {} has no port named metrics",
                name(container)
            )
        });
    let number = port["containerPort"].as_u64();
    assert_eq!(
        number,
        Some(METRICS_PORT),
        "{file}: container {}: port metrics must be {METRICS_PORT}",
        name(container)
    );
    METRICS_PORT
}

fn check_probes(file: &str, container: &Value) {
    for probe in ["livenessProbe", "readinessProbe"] {
        let handler = &container[probe];
        assert!(
            handler.is_object(),
            "{file}: container {} has no {probe}",
            name(container)
        );
        if let Some(get) = handler.get("httpGet") {
            assert_eq!(
                get["port"],
                "metrics",
                "{file}: container {}: {probe}.httpGet.port must be the metrics port",
                name(container)
            );
        }
    }
}

fn check_resources(file: &str, container: &Value) {
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][bound][resource].is_string(),
                "{file}: container {}: resources.{bound}.{resource} must be set",
                name(container)
            );
        }
    }
}

/// The daemon's config as the examples write it.
fn check_daemon_config(file: &str, config: &toml::Table) {
    let select = config
        .get("select")
        .and_then(toml::Value::as_array)
        .unwrap_or_else(|| panic!("{file}: no `select` list"));
    assert!(!select.is_empty(), "{file}: `select` is empty");
    for spec in select {
        let spec = spec
            .as_str()
            .unwrap_or_else(|| panic!("{file}: select entry {spec} is not a string"));
        check_select(file, spec);
    }
    let listen = config
        .get("listen")
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("{file}: no `listen` address (the default is loopback only)"));
    assert_eq!(
        listen_port(file, listen),
        METRICS_PORT,
        "{file}: listen must use port {METRICS_PORT}"
    );
    if let Some(labels) = config.get("labels") {
        let labels = labels
            .as_table()
            .unwrap_or_else(|| panic!("{file}: `labels` must be a table of KEY = \"VALUE\""));
        for (key, value) in labels {
            assert!(
                value.is_str(),
                "{file}: label {key} must be a string, found {value}"
            );
        }
    }
}

#[test]
fn daemonset_keeps_least_privilege_and_agrees_with_its_config() {
    let file = DAEMONSET;
    let documents = yaml_documents(file);
    for document in &documents {
        assert_eq!(
            document
                .pointer("/metadata/namespace")
                .and_then(Value::as_str),
            Some("monitoring"),
            "{file}: {} {} is not in namespace monitoring",
            document["kind"],
            name(&document["metadata"])
        );
    }
    let account = document_of_kind(file, &documents, "ServiceAccount");
    let config_map = document_of_kind(file, &documents, "ConfigMap");
    let daemonset = document_of_kind(file, &documents, "DaemonSet");
    let pod = pod_spec(file, daemonset);

    assert_eq!(
        pod.get("hostPID"),
        Some(&Value::Bool(true)),
        "{file}: the DaemonSet needs hostPID: true to see the node's processes"
    );
    check_pod_isolation(file, pod);
    assert_eq!(
        pod["serviceAccountName"], account["metadata"]["name"],
        "{file}: the DaemonSet must run as the ServiceAccount defined in the file"
    );
    let tolerates_all = pod["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|toleration| toleration["operator"] == "Exists" && toleration.get("key").is_none());
    assert!(
        tolerates_all,
        "{file}: the DaemonSet must tolerate every taint (operator: Exists, no key) to run on \
         all nodes"
    );
    let selector = daemonset["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap_or_else(|| panic!("{file}: the DaemonSet has no selector.matchLabels"));
    for (key, value) in selector {
        assert_eq!(
            &daemonset["spec"]["template"]["metadata"]["labels"][key], value,
            "{file}: the pod template lacks the selector's label {key}"
        );
    }

    let (container, port) = checked_mapscope_container(file, pod);
    let annotations = &daemonset["spec"]["template"]["metadata"]["annotations"];
    if let Some(annotated) = annotations.get("prometheus.io/port") {
        assert_eq!(
            annotated.as_str(),
            Some(port.to_string().as_str()),
            "{file}: annotation prometheus.io/port must be the metrics port {port} (a string)"
        );
    }

    // --config names a file of the ConfigMap, mounted read-only.
    let args = daemon_args(file, container);
    let config_path = option_value(&args, "--config")
        .map(Path::new)
        .unwrap_or_else(|| panic!("{file}: the daemon's args must pass --config, found {args:?}"));
    let directory = config_path.parent().unwrap().to_str().unwrap();
    let key = config_path.file_name().unwrap().to_str().unwrap();
    let mount = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|mount| mount["mountPath"] == directory)
        .unwrap_or_else(|| panic!("{file}: nothing is mounted at {directory} for --config"));
    assert_eq!(
        mount.get("readOnly"),
        Some(&Value::Bool(true)),
        "{file}: the config mount at {directory} must be readOnly"
    );
    let volume = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|volume| volume["name"] == mount["name"])
        .unwrap_or_else(|| panic!("{file}: no volume {} for {directory}", mount["name"]));
    assert_eq!(
        volume["configMap"]["name"], config_map["metadata"]["name"],
        "{file}: the volume at {directory} must be the ConfigMap defined in the file"
    );
    let text = config_map["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("{file}: the ConfigMap has no {key}, which --config reads"));
    let place = format!("{file} (ConfigMap {key})");
    let config = toml_table(&place, text);
    check_daemon_config(&place, &config);
    let listen = config["listen"].as_str().unwrap();
    assert_eq!(
        listen_port(&place, listen),
        port,
        "{place}: listen port and containerPort differ"
    );
    check_daemon_options(&place, config.keys().map(String::as_str));
    check_daemon_options(file, option_names(&args));

    if let Some(policy) = documents
        .iter()
        .find(|document| document["kind"] == "NetworkPolicy")
    {
        assert_eq!(
            policy["spec"]["podSelector"]["matchLabels"],
            daemonset["spec"]["selector"]["matchLabels"],
            "{file}: the NetworkPolicy must select the DaemonSet's pods"
        );
    }
}

#[test]
fn sidecar_shares_the_pod_pid_namespace_and_keeps_least_privilege() {
    let file = SIDECAR;
    let documents = yaml_documents(file);
    let workloads: Vec<&Value> = documents
        .iter()
        .filter(|document| {
            document["kind"] == "Pod"
                || document.pointer("/spec/template/spec/containers").is_some()
        })
        .collect();
    assert_eq!(workloads.len(), 1, "{file}: expected one Pod or workload");
    let pod = pod_spec(file, workloads[0]);

    assert_eq!(
        pod.get("shareProcessNamespace"),
        Some(&Value::Bool(true)),
        "{file}: the pod needs shareProcessNamespace: true for mapscope to see the app"
    );
    assert!(
        !flag(pod, "hostPID"),
        "{file}: a sidecar must not use hostPID (the shared pod namespace is enough)"
    );
    check_pod_isolation(file, pod);

    let (container, port) = checked_mapscope_container(file, pod);

    let args = daemon_args(file, container);
    let select = option_value(&args, "--select")
        .unwrap_or_else(|| panic!("{file}: the sidecar's args must pass --select, found {args:?}"));
    check_select(file, select);
    let listen = option_value(&args, "--listen").unwrap_or_else(|| {
        panic!("{file}: the sidecar's args must pass --listen (the default is loopback only)")
    });
    assert_eq!(
        listen_port(file, listen),
        port,
        "{file}: --listen port and containerPort differ"
    );
    check_daemon_options(file, option_names(&args));

    // The privileges stay with mapscope: the app gets none of them.
    let apps: Vec<&Value> = all_containers(pod)
        .into_iter()
        .filter(|container| !is_mapscope(container))
        .collect();
    assert!(
        !apps.is_empty(),
        "{file}: no app container next to mapscope"
    );
    for app in apps {
        let added = strings(&app["securityContext"]["capabilities"]["add"]);
        assert!(
            added.is_empty(),
            "{file}: app container {} adds capabilities {added:?}; only mapscope needs any",
            name(app)
        );
    }
}

/// `[Section]` → every `Key=Value` assignment in order (systemd allows repeated keys).
fn parse_unit(file: &str, text: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut sections: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut logical = String::new();
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if logical.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        if let Some(continued) = line.strip_suffix('\\') {
            logical.push_str(continued);
            logical.push(' ');
            continue;
        }
        logical.push_str(line);
        let whole = std::mem::take(&mut logical);
        if let Some(section) = whole
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
        {
            current = Some(section.to_owned());
            sections.entry(section.to_owned()).or_default();
            continue;
        }
        let (key, value) = whole
            .split_once('=')
            .unwrap_or_else(|| panic!("{file}: line {}: not Key=Value: {whole:?}", number + 1));
        let section = current
            .clone()
            .unwrap_or_else(|| panic!("{file}: line {}: assignment outside a section", number + 1));
        sections
            .entry(section)
            .or_default()
            .push((key.trim().to_owned(), value.trim().to_owned()));
    }
    sections
}

/// The capabilities a list-valued key ends up with: assignments add up, an empty one resets.
fn capability_set(assignments: &[(String, String)], key: &str) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    for (_, value) in assignments.iter().filter(|(name, _)| name == key) {
        if value.is_empty() {
            set.clear();
        }
        set.extend(value.split_whitespace().map(str::to_owned));
    }
    set
}

/// The last assignment of a key, as systemd reads single-valued keys.
fn last<'a>(assignments: &'a [(String, String)], key: &str) -> Option<&'a str> {
    assignments
        .iter()
        .rev()
        .find(|(name, _)| name == key)
        .map(|(_, value)| value.as_str())
}

#[test]
fn systemd_unit_keeps_its_capabilities_and_its_sandbox() {
    let file = UNIT;
    let sections = parse_unit(file, &read(file));
    let service = sections
        .get("Service")
        .unwrap_or_else(|| panic!("{file}: no [Service] section"));
    let expected: BTreeSet<String> = SYSTEMD_CAPABILITIES
        .iter()
        .map(|cap| cap.to_string())
        .collect();
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        let found = capability_set(service, key);
        assert_eq!(
            found, expected,
            "{file}: {key} must be exactly {expected:?}, found {found:?}"
        );
    }
    let expect = |key: &str, value: &str, why: &str| {
        assert_eq!(
            last(service, key),
            Some(value),
            "{file}: [Service] {key} must be {value}: {why}"
        );
    };
    expect("NoNewPrivileges", "yes", "mapscope never gains privileges");
    expect("ProtectSystem", "strict", "mapscope writes no files");
    expect(
        "Restart",
        "on-failure",
        "the daemon comes back after a crash",
    );

    let exec = last(service, "ExecStart").unwrap_or_else(|| panic!("{file}: no ExecStart"));
    assert!(
        exec.contains("mapscope daemon"),
        "{file}: ExecStart must run `mapscope daemon`, found {exec:?}"
    );
    let args: Vec<&str> = exec.split_whitespace().collect();
    let config = option_value(&args, "--config")
        .unwrap_or_else(|| panic!("{file}: ExecStart must pass --config, found {exec:?}"));
    assert_eq!(
        config, "/etc/mapscope/mapscope.toml",
        "{file}: --config must be where the unit's install notes put {HOST_CONFIG}"
    );
    check_daemon_options(file, option_names(&args));

    // Settings that would hide the other processes or the network from the daemon.
    assert_ne!(
        last(service, "ProtectProc"),
        Some("invisible"),
        "{file}: ProtectProc=invisible hides the processes mapscope profiles"
    );
    assert_ne!(
        last(service, "ProcSubset"),
        Some("pid"),
        "{file}: ProcSubset=pid hides the /proc files mapscope reads"
    );
    assert_ne!(
        last(service, "PrivateNetwork"),
        Some("yes"),
        "{file}: PrivateNetwork=yes makes the metrics endpoint unreachable"
    );
    if let Some(user) = last(service, "User") {
        assert!(
            user == "root" || user == "0",
            "{file}: User={user}: the unit is written for root with a reduced bounding set"
        );
    }
}

#[test]
fn host_config_is_protected_and_valid() {
    let file = HOST_CONFIG;
    let config = toml_table(file, &read(file));
    check_daemon_config(file, &config);
    assert!(
        config
            .get("web-config-file")
            .and_then(toml::Value::as_str)
            .is_some_and(|path| !path.is_empty()),
        "{file}: listens beyond loopback, so it must set web-config-file (TLS + basic auth)"
    );
    check_daemon_options(file, config.keys().map(String::as_str));
}

/// Instructions of a Containerfile, continuation lines joined: (KEYWORD, arguments).
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut logical = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.starts_with('#') || (logical.is_empty() && line.is_empty()) {
            continue;
        }
        if let Some(continued) = line.strip_suffix('\\') {
            logical.push_str(continued);
            logical.push(' ');
            continue;
        }
        logical.push_str(line);
        let whole = std::mem::take(&mut logical);
        let (keyword, rest) = whole
            .split_once(char::is_whitespace)
            .unwrap_or((&whole, ""));
        out.push((keyword.to_ascii_uppercase(), rest.trim().to_owned()));
    }
    out
}

fn json_form(file: &str, keyword: &str, arguments: &str) -> Vec<String> {
    serde_json::from_str(arguments).unwrap_or_else(|error| {
        panic!("{file}: {keyword} must use the JSON (exec) form, found {arguments:?}: {error}")
    })
}

#[test]
fn containerfile_builds_in_one_stage_and_runs_mapscope_in_another() {
    let file = CONTAINERFILE;
    let all = instructions(&read(file));
    let stages: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, (keyword, _))| keyword == "FROM")
        .map(|(index, _)| index)
        .collect();
    assert!(
        stages.len() >= 2,
        "{file}: expected a multi-stage build (at least two FROM lines), found {}",
        stages.len()
    );
    let last_from = *stages.last().unwrap();
    let (build, run) = all.split_at(last_from);
    let run = &run[1..];

    // The build stage prepares what profiler's build.rs needs and builds the binary.
    let build_text: String = build
        .iter()
        .map(|(keyword, rest)| format!("{keyword} {rest}\n"))
        .collect();
    for needed in [
        "rust-src",
        "bpf-linker",
        "LLVM_PREFIX",
        "cargo build --release",
    ] {
        assert!(
            build_text.contains(needed),
            "{file}: the build stage lacks {needed:?} (see xtask/src/setup.rs)"
        );
    }
    assert!(
        build_text.contains("-p profiler") || build_text.contains("--package profiler"),
        "{file}: the build stage must build the profiler package"
    );
    // Cargo needs every workspace member's manifest; each COPY source must exist.
    let copied: BTreeSet<String> = build
        .iter()
        .filter(|(keyword, _)| keyword == "COPY")
        .flat_map(|(_, rest)| {
            let words: Vec<&str> = rest
                .split_whitespace()
                .filter(|word| !word.starts_with("--"))
                .collect();
            let sources = &words[..words.len().saturating_sub(1)];
            sources
                .iter()
                .map(|source| source.trim_end_matches('/').to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    for source in &copied {
        assert!(
            repo_root().join(source).exists(),
            "{file}: COPY {source}: no such path in the repository"
        );
    }
    let workspace = toml_table("Cargo.toml", &read("Cargo.toml"));
    let members = workspace["workspace"]["members"]
        .as_array()
        .expect("Cargo.toml: workspace.members");
    for member in members.iter().filter_map(toml::Value::as_str) {
        assert!(
            copied.contains(member),
            "{file}: the build stage does not COPY workspace member {member} (cargo needs it)"
        );
    }

    // The final stage: the binary, root, the port, mapscope as entrypoint running the daemon.
    let copies_binary = run.iter().any(|(keyword, rest)| {
        keyword == "COPY"
            && rest.contains("--from=")
            && rest.split_whitespace().last() == Some("/usr/local/bin/mapscope")
            && rest.contains("mapscope ")
    });
    assert!(
        copies_binary,
        "{file}: the final stage must COPY --from=<build> the mapscope binary to \
         /usr/local/bin/mapscope"
    );
    let find = |keyword: &str| {
        run.iter()
            .rev()
            .find(|(found, _)| found == keyword)
            .map(|(_, rest)| rest.as_str())
    };
    let entrypoint =
        find("ENTRYPOINT").unwrap_or_else(|| panic!("{file}: the final stage sets no ENTRYPOINT"));
    assert_eq!(
        json_form(file, "ENTRYPOINT", entrypoint),
        ["/usr/local/bin/mapscope"],
        "{file}: ENTRYPOINT must be the mapscope binary alone (manifests pass `args`)"
    );
    let command = find("CMD").unwrap_or_else(|| panic!("{file}: the final stage sets no CMD"));
    let command = json_form(file, "CMD", command);
    assert_eq!(
        command.first().map(String::as_str),
        Some("daemon"),
        "{file}: CMD must run the daemon, found {command:?}"
    );
    if let Some(user) = find("USER") {
        assert!(
            user == "root" || user == "0",
            "{file}: USER {user}: capabilities are only effective for root"
        );
    }
    let exposed = find("EXPOSE").unwrap_or_default();
    assert!(
        exposed
            .split_whitespace()
            .any(|port| port.trim_end_matches("/tcp") == METRICS_PORT.to_string()),
        "{file}: the final stage must EXPOSE {METRICS_PORT}"
    );
}

/// A relabel rule's regex matches a value as Prometheus does: anchored at both ends.
fn relabel_matches(regex: &str, value: &str) -> bool {
    regex::Regex::new(&format!("^(?:{regex})$"))
        .unwrap_or_else(|error| panic!("{SCRAPE}: bad relabel regex {regex:?}: {error}"))
        .is_match(value)
}

#[test]
fn scrape_config_targets_the_metrics_port() {
    let file = SCRAPE;
    let config = yaml_document(file);
    let jobs = config["scrape_configs"]
        .as_array()
        .filter(|jobs| !jobs.is_empty())
        .unwrap_or_else(|| panic!("{file}: no scrape_configs"));
    let (mut static_jobs, mut pod_jobs) = (0, 0);
    for job in jobs {
        let job_name = job["job_name"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: a job without job_name"));
        let who = format!("{file}: job {job_name}");
        if let Some(path) = job.get("metrics_path") {
            assert_eq!(path, "/metrics", "{who}: metrics_path must be /metrics");
        }
        for group in job["static_configs"].as_array().into_iter().flatten() {
            static_jobs += 1;
            let targets = strings(&group["targets"]);
            assert!(
                !targets.is_empty(),
                "{who}: a static_configs group without targets"
            );
            for target in targets {
                assert_eq!(
                    listen_port(file, target),
                    METRICS_PORT,
                    "{who}: target {target} must use port {METRICS_PORT}"
                );
            }
        }
        if let Some(discovery) = job["kubernetes_sd_configs"].as_array() {
            pod_jobs += 1;
            assert!(
                discovery.iter().all(|sd| sd["role"] == "pod"),
                "{who}: kubernetes_sd_configs must use role: pod (targets per container port)"
            );
            let rules = job["relabel_configs"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            let keeps = |label: &str| {
                rules
                    .iter()
                    .filter(|rule| {
                        rule["action"] == "keep" && strings(&rule["source_labels"]) == [label]
                    })
                    .filter_map(|rule| rule["regex"].as_str())
                    .collect::<Vec<_>>()
            };
            let port_keeps = keeps("__meta_kubernetes_pod_container_port_name");
            assert!(
                !port_keeps.is_empty()
                    && port_keeps
                        .iter()
                        .all(|regex| relabel_matches(regex, "metrics")),
                "{who}: must keep only the container port named metrics \
                 (action: keep on __meta_kubernetes_pod_container_port_name)"
            );
            // The containers of both manifests pass the job's container filter.
            let name_keeps = keeps("__meta_kubernetes_pod_container_name");
            for manifest in [DAEMONSET, SIDECAR] {
                for document in yaml_documents(manifest) {
                    let pod = if document["kind"] == "Pod" {
                        &document["spec"]
                    } else {
                        &document["spec"]["template"]["spec"]
                    };
                    for container in all_containers(pod).into_iter().filter(|c| is_mapscope(c)) {
                        for regex in &name_keeps {
                            assert!(
                                relabel_matches(regex, name(container)),
                                "{who}: drops container {} of {manifest}",
                                name(container)
                            );
                        }
                    }
                }
            }
        }
    }
    assert!(
        static_jobs > 0,
        "{file}: no static target example (systemd hosts)"
    );
    assert!(
        pod_jobs > 0,
        "{file}: no kubernetes_sd_configs job (DaemonSet)"
    );
}

#[test]
fn web_config_example_is_in_the_exporter_toolkit_format() {
    let file = WEB_CONFIG;
    let config = yaml_document(file);
    let keys = config
        .as_object()
        .unwrap_or_else(|| panic!("{file}: not a mapping"));
    for key in keys.keys() {
        assert!(
            key == "tls_server_config" || key == "basic_auth_users",
            "{file}: key {key} is not one mapscope implements"
        );
    }
    let tls = config["tls_server_config"]
        .as_object()
        .unwrap_or_else(|| panic!("{file}: no tls_server_config"));
    let tls_keys: BTreeSet<&str> = tls.keys().map(String::as_str).collect();
    assert_eq!(
        tls_keys,
        BTreeSet::from(["cert_file", "key_file"]),
        "{file}: tls_server_config must have cert_file and key_file only"
    );
    let users = config["basic_auth_users"]
        .as_object()
        .filter(|users| !users.is_empty())
        .unwrap_or_else(|| panic!("{file}: no basic_auth_users"));
    for (user, hash) in users {
        let hash = hash
            .as_str()
            .unwrap_or_else(|| panic!("{file}: user {user}: the hash is not a string"));
        assert!(
            bcrypt::verify(WEB_CONFIG_EXAMPLE_PASSWORD, hash).unwrap_or(false),
            "{file}: user {user}: {hash:?} is not a bcrypt hash of the documented example \
             password {WEB_CONFIG_EXAMPLE_PASSWORD:?}"
        );
    }
}

/// The long options named on a command line (`--name` or `--name=value`).
fn option_names<'a>(args: &'a [&'a str]) -> impl Iterator<Item = &'a str> {
    args.iter().filter_map(|arg| {
        arg.strip_prefix("--")
            .map(|option| option.split_once('=').map_or(option, |(name, _)| name))
    })
}

/// Options and config keys the examples use must be options of `mapscope daemon`. Checked
/// against the binary's own help once it has the subcommand; `labels` is the config's table
/// for the repeated `--label`.
fn check_daemon_options<'a>(file: &str, names: impl Iterator<Item = &'a str>) {
    let Some(help) = daemon_help() else {
        return;
    };
    for option in names {
        let flag = if option == "labels" { "label" } else { option };
        let known = help
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .any(|word| word.strip_prefix("--") == Some(flag));
        assert!(
            known,
            "{file}: `{option}` is not an option of `mapscope daemon` (see its --help)"
        );
    }
}

/// `mapscope daemon --help`, or None while the binary has no daemon subcommand.
fn daemon_help() -> Option<String> {
    static HELP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    Some(
        HELP.get_or_init(|| {
            let output = Command::new(env!("CARGO_BIN_EXE_mapscope"))
                .args(["daemon", "--help"])
                .output()
                .expect("running mapscope daemon --help");
            assert!(
                output.status.success(),
                "mapscope daemon --help failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
            String::from_utf8_lossy(&output.stdout).into_owned()
        })
        .clone(),
    )
}

/// The capabilities the systemd unit grants, in setpriv's spelling (`sys_admin`).
fn shipped_capabilities() -> Vec<String> {
    let sections = parse_unit(UNIT, &read(UNIT));
    let service = sections.get("Service").expect("the unit has a [Service]");
    capability_set(service, "AmbientCapabilities")
        .iter()
        .map(|cap| cap.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

/// `mapscope attach` to `pid` as root with exactly `capabilities` (bounding, inheritable and
/// ambient sets, as the unit and a container with `drop: [ALL]` give it): its exit code once
/// stopped (SIGTERM as soon as it says it attached), and its stderr.
fn attach_with(capabilities: &[String], pid: u32) -> (Option<i32>, String) {
    let set = std::iter::once("-all".to_owned())
        .chain(capabilities.iter().map(|cap| format!("+{cap}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut child = Command::new("setpriv")
        .arg(format!("--inh-caps={set}"))
        .arg(format!("--ambient-caps={set}"))
        .arg(format!("--bounding-set={set}"))
        .arg(common::MAPSCOPE)
        .args([
            "attach",
            "--pid",
            &pid.to_string(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("NO_COLOR", "1")
        .env("MAPSCOPE_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux) runs mapscope");
    let stderr = common::Lines::new(child.stderr.take().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), stderr.all());
        }
        if stderr.all().contains("metrics on http://") {
            // SAFETY: signals our own child, not reaped yet.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let status = child.wait().unwrap();
            return (status.code(), stderr.all());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "mapscope neither attached nor failed: {}",
            stderr.all()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The shipped capability set really works: mapscope attaches to a real Go program as root
/// holding only those capabilities (which the kernel's uprobe check, not capability names,
/// decides); without either one it refuses at once, exit code 7, naming the one to grant.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn the_shipped_capabilities_attach_for_real() {
    let shipped = shipped_capabilities();
    assert_eq!(shipped, ["sys_admin", "sys_ptrace"]);
    let target = common::GoTarget::start(&common::build_go("gcload", common::NEWEST_GO, &[]), &[]);
    let (code, stderr) = attach_with(&shipped, target.pid());
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("attached"), "{stderr}");
    for missing in &shipped {
        let rest: Vec<String> = shipped
            .iter()
            .filter(|cap| *cap != missing)
            .cloned()
            .collect();
        let (code, stderr) = attach_with(&rest, target.pid());
        let name = format!("CAP_{}", missing.to_uppercase());
        assert_eq!(code, Some(7), "without {name}: {stderr}");
        assert!(stderr.contains(&name), "without {name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// The daemon under the shipped capability set watches for programs that start (its exec
/// tracepoint needs no more than the uprobes do) and attaches to one started after it.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn the_shipped_capabilities_run_the_daemon_for_real() {
    let set = std::iter::once("-all".to_owned())
        .chain(shipped_capabilities().iter().map(|cap| format!("+{cap}")))
        .collect::<Vec<_>>()
        .join(",");
    let binary = common::renamed("gcload", common::NEWEST_GO, "caps-dmn");
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--inh-caps={set}"))
        .arg(format!("--ambient-caps={set}"))
        .arg(format!("--bounding-set={set}"))
        .arg(common::MAPSCOPE)
        .args(["daemon", "--listen", "127.0.0.1:0", "--select"])
        .arg(format!(
            "exe={}",
            binary.file_name().unwrap().to_str().unwrap()
        ));
    let daemon = common::Mapscope::spawn(command);
    let target = common::GoTarget::start(&binary, &["-duration", "500ms"]);
    let line = daemon.stderr.wait_for(
        "the target attached",
        std::time::Duration::from_secs(10),
        |line| line.contains("attached to PID"),
    );
    assert!(line.contains(&format!("PID {}", target.pid())), "{line}");
    assert!(
        !daemon.stderr.all().contains("cannot watch for programs"),
        "{}",
        daemon.stderr.all()
    );
}

/// What a short run of mapscope writes to stderr, through `script` when `terminal` (a
/// pseudo-terminal, as a person's shell gives it), else into a pipe: `run -- /bin/true` logs
/// that it lets the non-Go command run to its next exec, then ends by itself (exit 4), so no
/// timing decides what was logged.
fn short_log(extra: &[&str], env: &[(&str, &str)], terminal: bool) -> String {
    let mut args = vec![common::MAPSCOPE];
    args.extend(extra);
    // A command mapscope cannot profile (no Go runtime, no C allocator) that ends at once: an
    // info line while it runs, then the one-line error, and no summary on standard output.
    let command = common::build_fixture(
        "noalloc.c",
        "noalloc-exits",
        &["-O1", "-nostdlib", "-static", "-DEXIT_AT_ONCE"],
    );
    let command = command.to_str().unwrap();
    args.extend(["run", "--listen", "127.0.0.1:0", "--", command]);
    let line = args.join(" ");
    let mut command = if terminal {
        let mut command = Command::new("script");
        command.args(["-qc", &line, "/dev/null"]);
        command
    } else {
        let mut command = Command::new("sh");
        command.args(["-c", &line]);
        command
    };
    command
        .env_remove("NO_COLOR")
        .env_remove("MAPSCOPE_LOG_FORMAT")
        .env_remove("MAPSCOPE_LOG");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    // `script` puts the terminal's output on its stdout.
    let text = if terminal {
        output.stdout
    } else {
        output.stderr
    };
    String::from_utf8_lossy(&text).into_owned()
}

/// The info line `short_log`'s run writes.
const LOGGED: &str = "letting it run until it execs another program";

/// Logs carry colour codes only on a terminal and never with NO_COLOR set (files and journald
/// got raw ANSI escapes before); `--log-format json` writes one JSON object per log line (the
/// final one-line error stays plain text).
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn logs_are_coloured_only_for_people_and_json_for_shippers() {
    const ESCAPE: char = '\u{1b}';
    let on_terminal = short_log(&[], &[], true);
    assert!(
        on_terminal.contains(LOGGED) && on_terminal.contains(ESCAPE),
        "a terminal gets colour: {on_terminal:?}"
    );
    let piped = short_log(&[], &[], false);
    assert!(
        piped.contains(LOGGED) && !piped.contains(ESCAPE),
        "{piped:?}"
    );
    let no_color = short_log(&[], &[("NO_COLOR", "1")], true);
    assert!(
        no_color.contains(LOGGED) && !no_color.contains(ESCAPE),
        "{no_color:?}"
    );
    for json in [
        short_log(&["--log-format", "json"], &[], false),
        short_log(&[], &[("MAPSCOPE_LOG_FORMAT", "json")], true),
    ] {
        let lines: Vec<Value> = json
            .lines()
            .filter(|line| !line.starts_with("mapscope: "))
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|error| panic!("{line:?}: {error}"))
            })
            .collect();
        assert!(
            lines.iter().any(|line| {
                line["level"] == "INFO"
                    && line["message"]
                        .as_str()
                        .is_some_and(|message| message.contains(LOGGED))
                    && line["timestamp"].is_string()
            }),
            "{json}"
        );
    }
}
