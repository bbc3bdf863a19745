//! No input makes the stack loader or the API's JSON decoding panic: property tests over
//! random text, random YAML documents built from the Compose keys (so they get past the
//! parser and into every converter), and random JSON for each request body the API reads.
//! A panic in a daemon's handler would drop the connection and leave a half-done request;
//! in the CLI it would print a backtrace instead of the file, line and key.

use proptest::prelude::*;
use serde_json::Value as J;
use shoal_api::stack::{load, LoadOptions, SourceFile};
use std::collections::HashMap;

/// Keys a stack file may hold, at any depth (the generator mixes them freely).
const KEYS: &[&str] = &[
    "version",
    "services",
    "networks",
    "volumes",
    "secrets",
    "configs",
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "deploy",
    "mode",
    "replicas",
    "resources",
    "limits",
    "reservations",
    "cpus",
    "memory",
    "pids",
    "restart_policy",
    "condition",
    "delay",
    "max_attempts",
    "window",
    "update_config",
    "rollback_config",
    "parallelism",
    "order",
    "failure_action",
    "monitor",
    "max_failure_ratio",
    "placement",
    "constraints",
    "preferences",
    "spread",
    "max_replicas_per_node",
    "endpoint_mode",
    "ports",
    "target",
    "published",
    "protocol",
    "healthcheck",
    "test",
    "interval",
    "timeout",
    "retries",
    "start_period",
    "depends_on",
    "labels",
    "logging",
    "driver",
    "options",
    "max-size",
    "max-file",
    "stop_grace_period",
    "stop_signal",
    "tmpfs",
    "user",
    "working_dir",
    "hostname",
    "read_only",
    "init",
    "cap_add",
    "cap_drop",
    "privileged",
    "security_opt",
    "external",
    "name",
    "driver_opts",
    "ipam",
    "config",
    "subnet",
    "attachable",
    "internal",
    "file",
    "source",
    "uid",
    "gid",
    "aliases",
    "x-ext",
    "web",
    "db",
    "default",
    "type",
    "size",
    "bind",
    "consistency",
];

fn value() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        any::<i64>().prop_map(J::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(J::Number)
            .unwrap_or(J::Null)),
        "[ -~]{0,12}".prop_map(J::String),
        prop::sample::select(vec![
            "1m30s",
            "-1s",
            "10",
            "0.5",
            "50M",
            "1e400",
            "${X}",
            "$${X:-y}",
            "${X:?err}",
            "ALL",
            "seccomp=unconfined",
            "seccomp=p.json",
            "8080:80",
            "80-90:80/udp",
            "a:b:ro",
            "node.role==manager",
            "service_healthy",
            "stop-first",
            "vip",
            "dnsrr",
            "global",
            "host",
            "ingress",
            "",
            "~",
            "yes",
            "no",
            "on",
        ])
        .prop_map(|s| J::String(s.to_owned())),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(J::Array),
            prop::collection::vec((prop::sample::select(KEYS.to_vec()), inner), 0..6)
                .prop_map(|kv| J::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

/// A stack file: a top-level map whose services are random maps of Compose keys.
fn stack() -> impl Strategy<Value = J> {
    (
        prop::collection::vec((prop::sample::select(KEYS.to_vec()), value()), 0..4),
        prop::collection::vec(value(), 0..4),
    )
        .prop_map(|(top, services)| {
            let mut m: serde_json::Map<String, J> =
                top.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            let services: serde_json::Map<String, J> = services
                .into_iter()
                .enumerate()
                .map(|(i, v)| (format!("s{i}"), v))
                .collect();
            m.insert("services".into(), J::Object(services));
            J::Object(m)
        })
}

fn load_text(text: &str) {
    let env = HashMap::from([("X".to_owned(), "1".to_owned())]);
    let read = |_: &str| Ok::<_, String>(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#.to_owned());
    let opts = LoadOptions {
        env: &env,
        working_dir: "/srv",
        read_file: &read,
        skip_interpolation: false,
    };
    let files = [SourceFile {
        name: "stack.yml".into(),
        content: text.to_owned(),
    }];
    if let Ok(loaded) = load(&files, &opts) {
        // What loads also converts or says why, without a panic.
        let _ = shoal_api::stack::convert::convert("st", &loaded.config);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn the_loader_never_panics_on_text(text in "\\PC{0,200}") {
        load_text(&text);
    }

    #[test]
    fn the_loader_never_panics_on_compose_shaped_yaml(doc in stack()) {
        let text = serde_yaml::to_string(&doc).unwrap();
        load_text(&text);
    }

    #[test]
    fn request_bodies_never_panic_the_decoder(body in value(), raw in "\\PC{0,100}") {
        use shoal_api::wire::*;
        let text = body.to_string();
        for t in [text.as_str(), raw.as_str()] {
            let _ = serde_json::from_str::<shoal_api::service::ServiceSpec>(t);
            let _ = serde_json::from_str::<ServiceUpdate>(t);
            let _ = serde_json::from_str::<StackDeploy>(t);
            let _ = serde_json::from_str::<InitRequest>(t);
            let _ = serde_json::from_str::<JoinRequest>(t);
            let _ = serde_json::from_str::<JoinClusterRequest>(t);
            let _ = serde_json::from_str::<ClusterUpdate>(t);
            let _ = serde_json::from_str::<NodeUpdate>(t);
            let _ = serde_json::from_str::<ScaleRequest>(t);
            let _ = serde_json::from_str::<RegisterRequest>(t);
            let _ = serde_json::from_str::<Heartbeat>(t);
            let _ = serde_json::from_str::<StatusReport>(t);
            let _ = serde_json::from_str::<ExecSpec>(t);
            let _ = serde_json::from_str::<LogPublish>(t);
            let _ = serde_json::from_str::<shoal_api::network::NetworkSpec>(t);
            let _ = serde_json::from_str::<shoal_api::security::SeccompProfile>(t);
            let _ = shoal_api::security::parse_profile(t);
        }
    }
}
