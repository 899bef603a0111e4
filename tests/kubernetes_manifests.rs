//! The Kubernetes manifests in `deploy/kubernetes/`:
//!
//! * every built-in resource validates, strictly (no unknown field), against the schema
//!   of a pinned Kubernetes version with the independent validator `kubernetes-validate`
//!   (a Python module; `scripts/test.sh` installs it into `target/test-python`). Without
//!   it the test fails, it never skips;
//! * the resources the validator has no schema for (the ServiceMonitor of the Prometheus
//!   Operator, the Kustomization) get a structural check here, and no other kind may go
//!   unchecked;
//! * the resources fit together: selectors, named ports, the Secret's keys, the
//!   ConfigMap, the preStop drain's target, the termination grace period;
//! * every `SMARTHOST__*` variable of the ConfigMap and the StatefulSet is a real
//!   configuration key: the environment the pod gets (secret files in a temporary
//!   directory, a real DKIM key) loads through `smarthost::config::load`, and the real
//!   binary's `smarthost dkim dns` loads it, reads the key and prints its record, all
//!   without contacting an upstream.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use smarthost::config::{ConfigSource, load};

const DIR: &str = "deploy/kubernetes";

/// The Kubernetes version the manifests are validated against.
const KUBERNETES_VERSION: &str = "1.33.0";

/// Where the StatefulSet mounts the Secret; the ConfigMap's `*_FILE` keys point here.
const SECRET_MOUNT: &str = "/run/secrets/smarthost";

const HINT: &str = "the Kubernetes manifest tests need python3 with the module kubernetes_validate (PyPI: kubernetes-validate, which brings PyYAML); run the project's test script (scripts/test.sh), which installs it into target/test-python, or `python3 -m pip install --target target/test-python kubernetes-validate`";

/// Kinds the validator knows no schema for, each checked structurally here.
const CUSTOM_KINDS: [&str; 2] = ["ServiceMonitor", "Kustomization"];

/// One YAML document of one file.
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
}

fn manifest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(DIR)
}

/// The build's target directory: the binary is `<target>/<profile>/smarthost`.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_smarthost"))
        .parent()
        .and_then(Path::parent)
        .expect("the smarthost binary lies in <target>/<profile>/")
        .to_owned()
}

/// `python3` with `<target>/test-python` (where scripts/test.sh installs the extras) in
/// front of any PYTHONPATH already set.
fn python() -> Command {
    let mut path = target_dir().join("test-python").into_os_string();
    if let Some(old) = std::env::var_os("PYTHONPATH").filter(|p| !p.is_empty()) {
        path.push(":");
        path.push(old);
    }
    let mut cmd = Command::new("python3");
    cmd.env("PYTHONPATH", path);
    cmd
}

fn run(mut cmd: Command, what: &str) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {what} ({e}): {HINT}"))
}

/// The validator must be there: a missing one is a failure, not a skip.
fn require_validator() {
    let mut cmd = python();
    cmd.args(["-c", "import kubernetes_validate, yaml"]);
    let out = run(cmd, "python3");
    assert!(
        out.status.success(),
        "python3 cannot import kubernetes_validate: {}\n{HINT}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn yaml_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifest_dir())
        .unwrap_or_else(|e| panic!("cannot list {DIR}: {e}"))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML files in {DIR}");
    files
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// Every document of every file, parsed by PyYAML (the YAML 1.1 reading kubectl also
/// has: `0440` is octal) and handed over as JSON.
fn docs() -> &'static [Doc] {
    static DOCS: OnceLock<Vec<Doc>> = OnceLock::new();
    DOCS.get_or_init(|| {
        require_validator();
        let mut out = Vec::new();
        for path in yaml_files() {
            let mut cmd = python();
            cmd.args([
                "-c",
                "import json, sys, yaml; \
                 json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None], sys.stdout)",
            ])
            .arg(&path);
            let res = run(cmd, "python3");
            assert!(
                res.status.success(),
                "{} is not valid YAML: {}",
                path.display(),
                String::from_utf8_lossy(&res.stderr)
            );
            let list: Vec<Value> = serde_json::from_slice(&res.stdout).expect("JSON from python");
            assert!(!list.is_empty(), "{} holds no document", path.display());
            for value in list {
                out.push(Doc {
                    file: file_name(&path),
                    value,
                });
            }
        }
        out
    })
}

fn find(kind: &str, name: &str) -> &'static Value {
    let found: Vec<&Doc> = docs()
        .iter()
        .filter(|d| d.kind() == kind && d.name() == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind} named {name:?} in {DIR}"
    );
    &found[0].value
}

fn only(kind: &str) -> &'static Value {
    let found: Vec<&Doc> = docs().iter().filter(|d| d.kind() == kind).collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind} in {DIR}");
    &found[0].value
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let Some(selector) = selector.as_object() else {
        return false;
    };
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The relay's container in the StatefulSet.
fn relay_container() -> &'static Value {
    let sts = find("StatefulSet", "smarthost");
    let containers = sts["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("StatefulSet containers");
    containers
        .iter()
        .find(|c| c["name"] == "smarthost")
        .expect("a container named smarthost")
}

fn container_port(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("container {} has no port named {name}", container["name"]))
}

fn secret_keys() -> BTreeSet<String> {
    let secret = find("Secret", "smarthost");
    let mut keys: BTreeSet<String> = BTreeSet::new();
    for field in ["stringData", "data"] {
        if let Some(map) = secret[field].as_object() {
            keys.extend(map.keys().cloned());
        }
    }
    keys
}

fn config_map_data() -> BTreeMap<String, String> {
    let cm = find("ConfigMap", "smarthost");
    cm["data"]
        .as_object()
        .expect("ConfigMap data")
        .iter()
        .map(|(k, v)| (k.clone(), str_of(v, k).to_owned()))
        .collect()
}

#[test]
fn every_built_in_resource_passes_the_kubernetes_schema() {
    require_validator();
    let files = yaml_files();
    let mut cmd = python();
    cmd.args([
        "-m",
        "kubernetes_validate",
        "--strict",
        "-k",
        KUBERNETES_VERSION,
    ])
    .args(&files)
    .current_dir(manifest_dir());
    let out = run(cmd, "python3 -m kubernetes_validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubernetes-validate failed (exit {:?}):\n{stdout}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let minor = KUBERNETES_VERSION.rsplit_once('.').unwrap().0;
    for doc in docs() {
        let path = manifest_dir().join(&doc.file);
        let path = path.display();
        if CUSTOM_KINDS.contains(&doc.kind()) {
            // Checked structurally by the tests below; the validator must have said so.
            assert!(
                stdout
                    .lines()
                    .any(|l| l.starts_with(&format!("WARN {path} "))
                        && l.contains(&format!("kind {}", doc.kind()))),
                "expected the validator to report no schema for {} in {}:\n{stdout}",
                doc.kind(),
                doc.file
            );
            continue;
        }
        let passed = format!(
            "INFO {path} passed for resource {}/{} against version {minor}",
            doc.kind().to_lowercase(),
            doc.name()
        );
        assert!(
            stdout.lines().any(|l| l == passed),
            "{} {} in {} was not validated (a kind without a schema needs a structural check here):\n{stdout}",
            doc.kind(),
            doc.name(),
            doc.file
        );
    }
    assert!(!stdout.contains("ERROR"), "validator errors:\n{stdout}");
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let k = only("Kustomization");
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1beta1");
    let kdoc = docs().iter().find(|d| d.kind() == "Kustomization").unwrap();
    assert_eq!(kdoc.file, "kustomization.yaml");
    let listed: Vec<String> = k["resources"]
        .as_array()
        .expect("kustomization resources")
        .iter()
        .map(|r| str_of(r, "resource").to_owned())
        .collect();
    let unique: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        listed.len(),
        "a resource listed twice: {listed:?}"
    );
    let files: BTreeSet<String> = yaml_files()
        .iter()
        .map(|p| file_name(p))
        .filter(|f| f != "kustomization.yaml")
        .collect();
    assert_eq!(unique, files, "kustomization.yaml must list every manifest");
    let allowed: BTreeSet<&str> = [
        "apiVersion",
        "kind",
        "resources",
        "labels",
        "namespace",
        "images",
        "commonAnnotations",
    ]
    .into();
    for key in k.as_object().unwrap().keys() {
        assert!(
            allowed.contains(key.as_str()),
            "unexpected Kustomization field {key}"
        );
    }
}

#[test]
fn the_service_monitor_scrapes_the_metrics_port_with_the_secret() {
    let sm = only("ServiceMonitor");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert!(!str_of(&sm["metadata"]["name"], "metadata.name").is_empty());
    let allowed_top: BTreeSet<&str> = ["apiVersion", "kind", "metadata", "spec"].into();
    for key in sm.as_object().unwrap().keys() {
        assert!(
            allowed_top.contains(key.as_str()),
            "unexpected ServiceMonitor field {key}"
        );
    }
    let spec = &sm["spec"];
    let allowed_spec: BTreeSet<&str> =
        ["selector", "endpoints", "namespaceSelector", "jobLabel"].into();
    for key in spec.as_object().expect("ServiceMonitor spec").keys() {
        assert!(
            allowed_spec.contains(key.as_str()),
            "unexpected ServiceMonitor spec field {key}"
        );
    }
    // The selector picks exactly one Service: the one whose ports the endpoints name.
    let selector = &spec["selector"]["matchLabels"];
    let services: Vec<&Doc> = docs()
        .iter()
        .filter(|d| d.kind() == "Service" && labels_match(selector, &d.value["metadata"]["labels"]))
        .collect();
    assert_eq!(
        services.len(),
        1,
        "the ServiceMonitor's selector must match exactly one Service, matches {:?}",
        services.iter().map(|d| d.name()).collect::<Vec<_>>()
    );
    let service = &services[0].value;
    let endpoints = spec["endpoints"]
        .as_array()
        .expect("ServiceMonitor endpoints");
    assert!(!endpoints.is_empty(), "ServiceMonitor without endpoints");
    let allowed_endpoint: BTreeSet<&str> = [
        "port",
        "path",
        "interval",
        "scrapeTimeout",
        "scheme",
        "basicAuth",
    ]
    .into();
    let keys = secret_keys();
    for ep in endpoints {
        for key in ep.as_object().expect("endpoint").keys() {
            assert!(
                allowed_endpoint.contains(key.as_str()),
                "unexpected endpoint field {key}"
            );
        }
        let port = str_of(&ep["port"], "endpoint port");
        let sp = service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == port)
            .unwrap_or_else(|| panic!("the Service has no port named {port}"));
        assert_eq!(
            sp["port"].as_u64(),
            Some(container_port(relay_container(), "metrics")),
            "the scraped port is the metrics port"
        );
        assert_eq!(ep["path"], "/metrics");
        for part in ["username", "password"] {
            let r = &ep["basicAuth"][part];
            assert_eq!(
                r["name"], "smarthost",
                "basicAuth.{part} from the Secret smarthost"
            );
            let key = str_of(&r["key"], "basicAuth key");
            assert!(keys.contains(key), "the Secret has no key {key}");
        }
    }
    let secret = find("Secret", "smarthost");
    assert_eq!(
        secret["stringData"]["metrics-username"], "admin",
        "the metrics endpoint's user is always admin"
    );
}

#[test]
fn the_resources_fit_together() {
    let sts = find("StatefulSet", "smarthost");
    let spec = &sts["spec"];
    let pod_labels = &spec["template"]["metadata"]["labels"];
    assert!(labels_match(&spec["selector"]["matchLabels"], pod_labels));
    let replicas = spec["replicas"].as_u64().unwrap();
    assert!(
        (2..=3).contains(&replicas),
        "2 or 3 replicas, not {replicas}"
    );

    // The governing Service is headless; the SMTP Service maps 25 to the relay's port.
    let headless = find("Service", str_of(&spec["serviceName"], "serviceName"));
    assert_eq!(headless["spec"]["clusterIP"], "None");
    let container = relay_container();
    let smtp_port = container_port(container, "smtp");
    for svc in [headless, find("Service", "smarthost")] {
        assert!(labels_match(&svc["spec"]["selector"], pod_labels));
        for p in svc["spec"]["ports"].as_array().unwrap() {
            let target = str_of(&p["targetPort"], "targetPort");
            container_port(container, target);
        }
    }
    let service = find("Service", "smarthost");
    assert_eq!(service["spec"]["type"], "ClusterIP");
    let smtp = &service["spec"]["ports"][0];
    assert_eq!(
        (smtp["port"].as_u64(), &smtp["targetPort"]),
        (Some(25), &Value::from("smtp"))
    );

    let pdb = find("PodDisruptionBudget", "smarthost");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert!(labels_match(
        &pdb["spec"]["selector"]["matchLabels"],
        pod_labels
    ));

    // The listen addresses of the ConfigMap are the container's ports.
    let cm = config_map_data();
    assert_eq!(
        cm["SMARTHOST__SERVER__LISTEN"],
        format!("0.0.0.0:{smtp_port}")
    );
    assert_eq!(
        cm["SMARTHOST__METRICS__LISTEN"],
        format!("0.0.0.0:{}", container_port(container, "metrics"))
    );
    assert!(
        cm.contains_key("SMARTHOST__METRICS__PASSWORD_FILE"),
        "only the probes may be open"
    );
    assert_eq!(
        container["envFrom"][0]["configMapRef"]["name"], "smarthost",
        "the configuration comes from the ConfigMap"
    );
    let node = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "SMARTHOST__CLUSTER__NODE")
        .expect("SMARTHOST__CLUSTER__NODE in the container's env");
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");

    // Probes on the metrics port.
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "metrics");

    // No secret in the ConfigMap: secrets are files.
    for key in cm.keys() {
        let k = key.to_uppercase();
        assert!(
            !(k.ends_with("__PASSWORD")
                || k.ends_with("__CLIENT_SECRET")
                || k.ends_with("__OAUTH_TOKEN")),
            "{key}: secrets go into the Secret, as *_FILE"
        );
        if k.ends_with("_FILE") {
            assert!(
                cm[key].starts_with(SECRET_MOUNT),
                "{key} points into the Secret's mount"
            );
        }
    }
    assert!(
        cm.get("SMARTHOST__DKIM__0__GENERATE")
            .is_none_or(|v| v != "true"),
        "every replica must sign with the same key: from the Secret, not generated per pod"
    );

    // The Secret is mounted where the *_FILE keys point, with every key it names.
    let volumes = spec["template"]["spec"]["volumes"].as_array().unwrap();
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == SECRET_MOUNT)
        .expect("the Secret's mount");
    let volume = volumes
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the Secret's volume");
    assert_eq!(volume["secret"]["secretName"], "smarthost");
    let mode = volume["secret"]["defaultMode"].as_u64().unwrap();
    assert_eq!(
        mode & 0o007,
        0,
        "secret files must not be readable by others (DKIM key)"
    );
    let keys = secret_keys();
    for item in volume["secret"]["items"].as_array().unwrap() {
        assert!(
            keys.contains(str_of(&item["key"], "item key")),
            "no Secret key {}",
            item["key"]
        );
    }
    let data_mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/var/lib/smarthost")
        .expect("the data volume at /var/lib/smarthost");
    assert_eq!(
        container["workingDir"], "/var/lib/smarthost",
        "relative paths (data/spool) resolve on the pod's volume"
    );
    let claim = &spec["volumeClaimTemplates"][0];
    assert_eq!(claim["metadata"]["name"], data_mount["name"]);

    // Every placeholder is marked.
    let secret = find("Secret", "smarthost");
    for (key, value) in secret["stringData"].as_object().unwrap() {
        if key != "metrics-username" {
            assert!(
                str_of(value, key).contains("CHANGE-ME"),
                "{key} must be a CHANGE-ME placeholder"
            );
        }
    }

    // Security: non-root, read-only root, no privilege escalation.
    let psc = &spec["template"]["spec"]["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert!(psc["runAsUser"].as_u64().is_some_and(|u| u > 0));
    let csc = &container["securityContext"];
    assert_eq!(csc["readOnlyRootFilesystem"], true);
    assert_eq!(csc["allowPrivilegeEscalation"], false);
    assert_eq!(csc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    for limit in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(
                container["resources"][limit][r].is_string(),
                "resources.{limit}.{r}"
            );
        }
    }

    // preStop drains to the SMTP Service; the grace period covers the drain, the
    // shutdown grace and the 20 s after it (docs/operations.md, "Signals").
    let command: Vec<&str> = container["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .expect("a preStop exec hook")
        .iter()
        .map(|c| str_of(c, "preStop command"))
        .collect();
    let script = command.last().unwrap();
    assert!(
        script.contains("smarthost queue drain --to smarthost:25"),
        "preStop runs the drain: {command:?}"
    );
    let drain_limit: u64 = script
        .strip_prefix("timeout ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the drain is bounded: `timeout N smarthost queue drain ...`");
    let grace = humantime::parse_duration(&cm["SMARTHOST__SERVER__SHUTDOWN_GRACE"])
        .expect("shutdown_grace")
        .as_secs();
    let termination = spec["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        termination > drain_limit + grace + 20,
        "terminationGracePeriodSeconds {termination} must exceed drain {drain_limit} + shutdown_grace {grace} + 20"
    );

    // The store URL names the Valkey Service, whose pods read the same password.
    let store = url::Url::parse(&cm["SMARTHOST__CLUSTER__STORE"]).expect("store URL");
    let valkey = find("Service", store.host_str().unwrap());
    assert_eq!(
        valkey["spec"]["ports"][0]["port"].as_u64(),
        Some(u64::from(store.port().unwrap()))
    );
    let deploy = find("Deployment", "valkey");
    assert!(labels_match(
        &valkey["spec"]["selector"],
        &deploy["spec"]["template"]["metadata"]["labels"]
    ));
    let vol = &deploy["spec"]["template"]["spec"]["volumes"];
    assert!(
        vol.as_array()
            .unwrap()
            .iter()
            .any(|v| v["secret"]["secretName"] == "smarthost"
                && v["secret"]["items"][0]["key"] == "store-password"),
        "Valkey's requirepass comes from the Secret's store-password"
    );
    assert!(
        vol.as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "data" && v["emptyDir"].is_object()),
        "Valkey keeps nothing: an emptyDir"
    );
}

/// The environment the relay's container gets: the ConfigMap, then the container's own
/// `env` (the pod name for a fieldRef), with the Secret's mount moved to `secrets`.
fn pod_environment(secrets: &Path) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = config_map_data();
    for e in relay_container()["env"].as_array().into_iter().flatten() {
        let name = str_of(&e["name"], "env name").to_owned();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_owned()
        } else if e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" {
            "smarthost-0".to_owned()
        } else {
            panic!("env {name}: only values and the pod name are expected, secrets are files");
        };
        env.insert(name, value);
    }
    let prefix = format!("{SECRET_MOUNT}/");
    env.into_iter()
        .map(|(k, v)| match v.strip_prefix(&prefix) {
            Some(rest) => (k, secrets.join(rest).to_string_lossy().into_owned()),
            None => (k, v),
        })
        .collect()
}

#[test]
fn every_smarthost_variable_is_a_configuration_key() {
    use std::os::unix::fs::PermissionsExt;

    let tmp = tempfile::tempdir().unwrap();
    let secrets = tmp.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    let env = pod_environment(&secrets);
    let get = |k: &str| {
        env.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{k} is not set"))
    };
    assert!(env.iter().any(|(k, _)| k.starts_with("SMARTHOST__")));

    // The Secret's files, as the pod sees them (mode 0440); the DKIM key a real one.
    let secret = find("Secret", "smarthost");
    for (key, value) in secret["stringData"].as_object().unwrap() {
        std::fs::write(secrets.join(key), str_of(value, key)).unwrap();
    }
    let domain = get("SMARTHOST__DKIM__0__DOMAIN");
    let selector = get("SMARTHOST__DKIM__0__SELECTOR");
    let keygen = Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .args([
            "dkim",
            "keygen",
            "--domain",
            &domain,
            "--selector",
            &selector,
            "--out",
        ])
        .arg(tmp.path().join("keys"))
        .output()
        .unwrap();
    assert!(
        keygen.status.success(),
        "{}",
        String::from_utf8_lossy(&keygen.stderr)
    );
    let key_file = PathBuf::from(get("SMARTHOST__DKIM__0__KEY_FILE"));
    assert!(
        key_file.starts_with(&secrets),
        "the DKIM key comes from the Secret"
    );
    let generated = std::fs::read_dir(tmp.path().join("keys"))
        .unwrap()
        .next()
        .expect("a generated key")
        .unwrap()
        .path();
    std::fs::copy(generated, &key_file).unwrap();
    for entry in std::fs::read_dir(&secrets).unwrap() {
        let path = entry.unwrap().path();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
    }

    // In process: every variable is a key, every value valid, the secret files read.
    let config = load(&ConfigSource::Embedded, &env)
        .unwrap_or_else(|e| panic!("the pod's environment does not load: {e}"));
    assert_eq!(config.server.listen, vec!["0.0.0.0:2525".parse().unwrap()]);
    assert_eq!(config.metrics.listen, Some("0.0.0.0:9025".parse().unwrap()));
    assert!(config.metrics.password_file.is_some());
    assert_eq!(config.cluster.node.as_deref(), Some("smarthost-0"));
    assert!(config.cluster.store.is_some());
    assert_eq!(config.server.shutdown_grace, Duration::from_secs(30));
    assert_eq!(config.dkim.len(), 1);
    assert!(!config.dkim[0].generate);
    assert!(!config.upstream.is_empty());

    // A typo in a name is caught the same way, so the check above means something.
    let mut typo = env.clone();
    typo.push(("SMARTHOST__SERVER__LISTN".into(), "0.0.0.0:2525".into()));
    let err = load(&ConfigSource::Embedded, &typo).expect_err("an unknown key must not load");
    assert!(err.to_string().contains("LISTN"), "{err}");

    // The real binary, with nothing but this environment: `dkim dns` loads the
    // configuration and reads the key, and contacts no upstream.
    let out = Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .args(["dkim", "dns"])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "smarthost dkim dns with the pod's environment failed (exit {:?}): {}{stdout}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("{selector}._domainkey.{domain}")),
        "{stdout}"
    );
}
