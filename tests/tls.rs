//! Mutual TLS on the cluster port, through the lab: a client without TLS, without a
//! certificate, or with a certificate from another CA is refused; a worker's certificate
//! reaches neither Raft, nor another node's assignments, nor the management API, and cannot
//! register under another node's id; a removed node's certificate is refused at once; a join
//! token naming another CA never reaches the manager; the management API over TCP answers a
//! user certificate only. Certificates follow a root CA rotation and a node's role.

use shoal_api::node::NodeDescription;
use shoal_api::wire::RegisterRequest;
use shoal_client::{Client, ClientError, Endpoint, Tls};
use shoal_cluster_tests::*;
use shoal_controller::pki::{self, NodeCerts};
use std::time::Duration;

/// A node's certificate material, as its data root holds it.
fn certs_of(lab: &shoal_lab::Lab, host: &str) -> NodeCerts {
    let dir = lab
        .state()
        .dir
        .join(format!("hosts/{host}/data/certificates"));
    NodeCerts::load(&dir, None)
        .unwrap()
        .expect("the node has certificates")
}

/// A request to m1's cluster port from inside host `from`, over `tls` (`None`: plain TCP).
fn call(
    lab: &shoal_lab::Lab,
    from: &str,
    tls: Option<Tls>,
    post: Option<serde_json::Value>,
    path: &str,
) -> Result<serde_json::Value, ClientError> {
    let addr = format!("{}:2377", lab.host("m1").unwrap().addr);
    lab.in_host(from, move || {
        let client = Client::new(Endpoint::Tcp(addr))
            .with_timeout(Duration::from_secs(10))
            .with_tls(tls);
        rt().block_on(async {
            match post {
                Some(body) => client.post::<_, serde_json::Value>(path, &body).await,
                None => client.get::<serde_json::Value>(path).await,
            }
        })
    })
    .unwrap()
}

/// Spare host s1 joins through `manager` with `token`; back once m1 sees it ready.
fn join_spare(lab: &shoal_lab::Lab, token: &str, manager: &str) {
    lab.shoal_ok("s1", &["cluster", "join", "--token", token.trim(), manager])
        .unwrap();
    wait("s1 ready", || {
        node_states(lab, "m1").get("s1").map(String::as_str) == Some("ready")
    });
}

fn refused_with(r: Result<serde_json::Value, ClientError>, status: u16, text: &str) {
    match r {
        Err(e) if e.status() == Some(status) && e.to_string().contains(text) => {}
        other => panic!("expected {status} {text:?}, got {other:?}"),
    }
}

#[test]
fn the_cluster_port_admits_only_certified_nodes_acting_as_themselves() {
    let Some(lab) = lab("tls", 1, 1, 1, &["--listen", "0.0.0.0:2375"]) else {
        return;
    };
    wait_ready(&lab, "m1", 2);
    let ids = node_ids(&lab, "m1");
    let m1_id = ids["m1"].clone();
    let w1 = certs_of(&lab, "w1");
    let m1 = certs_of(&lab, "m1");
    // Certificates name their nodes and roles; every node trusts the same CA.
    let w1_identity = w1.identity().unwrap();
    assert_eq!(w1_identity.node_id, ids["w1"]);
    assert_eq!(w1_identity.role, pki::CertRole::Worker);
    assert_eq!(m1.identity().unwrap().role, pki::CertRole::Manager);
    assert_eq!(m1.ca_pem, w1.ca_pem);
    let managers = "/v1/dispatcher/managers";

    // No TLS at all: the handshake never happens, nothing is answered.
    let r = call(&lab, "s1", None, None, managers);
    assert!(matches!(&r, Err(e) if e.status().is_none()), "{r:?}");
    // TLS, but no certificate: nothing but joining.
    let digest = pki::ca_digest(&w1.ca_pem).unwrap();
    let anonymous = pki::join_tls(&digest, None).unwrap();
    refused_with(
        call(&lab, "s1", Some(anonymous), None, managers),
        401,
        "needs a node certificate",
    );
    // A certificate from another CA, even naming a real node: the handshake fails.
    let other = pki::new_ca("other").unwrap();
    let (key_pem, csr) = pki::new_key_and_csr().unwrap();
    let forged = NodeCerts {
        ca_pem: w1.ca_pem.clone(),
        cert_pem: pki::issue(
            &other,
            &csr,
            &m1_id,
            pki::CertRole::Manager,
            "other",
            pki::DEFAULT_CERT_EXPIRY,
        )
        .unwrap(),
        key_pem,
    };
    let r = call(
        &lab,
        "s1",
        Some(forged.client_tls().unwrap()),
        None,
        managers,
    );
    assert!(matches!(&r, Err(e) if e.status().is_none()), "{r:?}");

    // A worker's certificate: its own dispatcher calls only.
    let worker = w1.client_tls().unwrap();
    call(&lab, "w1", Some(worker.clone()), None, managers).unwrap();
    refused_with(
        call(
            &lab,
            "w1",
            Some(worker.clone()),
            None,
            &format!("/v1/dispatcher/assignments?node_id={m1_id}&session_id=x&since=0&wait_ms=0"),
        ),
        403,
        "cannot act as node",
    );
    refused_with(
        call(
            &lab,
            "w1",
            Some(worker.clone()),
            Some(serde_json::json!({})),
            shoal_controller::raft::peer::STREAM_PATH,
        ),
        403,
        "Raft is for managers only",
    );
    for path in [
        "/v1/cluster/join-token?role=manager",
        "/v1/secrets",
        "/v1/cluster",
    ] {
        refused_with(
            call(&lab, "w1", Some(worker.clone()), None, path),
            404,
            "the cluster port serves nodes only",
        );
    }
    let token = lab
        .shoal_ok("m1", &["cluster", "join-token", "-q", "worker"])
        .unwrap();
    let register = |node_id: Option<&str>, manager: bool| {
        serde_json::to_value(RegisterRequest {
            node_id: node_id.map(|id| id.parse().unwrap()),
            join_token: token.trim().to_owned(),
            description: NodeDescription {
                hostname: "impostor".into(),
                ..Default::default()
            },
            addr: String::new(),
            manager,
            raft_id: 0,
        })
        .unwrap()
    };
    refused_with(
        call(
            &lab,
            "w1",
            Some(worker.clone()),
            Some(register(Some(&m1_id), false)),
            "/v1/dispatcher/register",
        ),
        403,
        "cannot register as another node",
    );
    refused_with(
        call(
            &lab,
            "w1",
            Some(worker.clone()),
            Some(register(None, true)),
            "/v1/dispatcher/register",
        ),
        403,
        "cannot register as a manager",
    );
    assert!(!node_ids(&lab, "m1").contains_key("impostor"));

    // The management API over TCP (--listen): a user certificate from the cluster's CA only.
    let dir = lab.state().dir.join("client-alice");
    let dir_s = dir.to_str().unwrap();
    lab.shoal_ok(
        "m1",
        &["cluster", "client-cert", "--name", "alice", "--out", dir_s],
    )
    .unwrap();
    let api = format!("tcp://{}:2375", lab.host("m1").unwrap().addr);
    let file = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let (ca, cert, key) = (file("ca.pem"), file("cert.pem"), file("key.pem"));
    let tls_args = |cert: &str, key: &str| {
        vec![
            "-H".to_owned(),
            api.clone(),
            "--tlsverify".into(),
            "--tlscacert".into(),
            ca.clone(),
            "--tlscert".into(),
            cert.to_owned(),
            "--tlskey".into(),
            key.to_owned(),
            "node".into(),
            "ls".into(),
        ]
    };
    // The CLI run inside s1, another host than m1.
    let bin = lab.state().bin_dir.join("shoal");
    let run = |args: &[String]| {
        lab.in_host("s1", || {
            std::process::Command::new(&bin)
                .args(args)
                .output()
                .unwrap()
        })
        .unwrap()
    };
    let out = run(&tls_args(&cert, &key));
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("w1"));
    // Plain TCP: no answer.
    let out = run(&["-H".to_owned(), api.clone(), "node".into(), "ls".into()]);
    assert!(!out.status.success(), "{out:?}");
    // A node's certificate, even a manager's, is not a user's.
    let node_dir = lab.state().dir.join("hosts/w1/data/certificates");
    let out = run(&tls_args(
        node_dir.join("node.crt").to_str().unwrap(),
        node_dir.join("node.key").to_str().unwrap(),
    ));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("presented its node certificate"),
        "{out:?}"
    );
    // And a user's certificate reaches nothing on the cluster port.
    let user = Tls::from_pem(
        &std::fs::read_to_string(&ca).unwrap(),
        &std::fs::read_to_string(&cert).unwrap(),
        &std::fs::read_to_string(&key).unwrap(),
        pki::MANAGER_NAME,
    )
    .unwrap();
    refused_with(
        call(&lab, "s1", Some(user), None, managers),
        403,
        "a user certificate reaches the management API",
    );

    // A revoked user certificate is refused at once; others keep working.
    let bob = lab.state().dir.join("client-bob");
    lab.shoal_ok(
        "m1",
        &[
            "cluster",
            "client-cert",
            "--name",
            "bob",
            "--out",
            bob.to_str().unwrap(),
        ],
    )
    .unwrap();
    let list = lab
        .shoal_ok("m1", &["cluster", "client-cert", "--list"])
        .unwrap();
    assert!(list.contains("alice") && list.contains("bob"), "{list}");
    let out = lab
        .shoal("m1", &["cluster", "client-cert", "--revoke", "carol"])
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no unrevoked user certificate named \"carol\""),
        "{out:?}"
    );
    lab.shoal_ok("m1", &["cluster", "client-cert", "--revoke", "alice"])
        .unwrap();
    let out = run(&tls_args(&cert, &key));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("was revoked"),
        "{out:?}"
    );
    let b = |f: &str| bob.join(f).to_str().unwrap().to_owned();
    let out = run(&tls_args(&b("cert.pem"), &b("key.pem")));
    assert!(out.status.success(), "bob: {out:?}");

    // A join token naming another CA: the manager fails the check before the token is sent.
    let wrong = format!("SHLTKN-1-{}-secret", "0".repeat(64));
    let m1_addr = format!("{}:2377", lab.host("m1").unwrap().addr);
    let out = lab
        .shoal("s1", &["cluster", "join", "--token", &wrong, &m1_addr])
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not the one the join token names"), "{err}");

    // A removed node's certificate is refused at once.
    join_spare(&lab, &token, &m1_addr);
    let s1 = certs_of(&lab, "s1").client_tls().unwrap();
    call(&lab, "s1", Some(s1.clone()), None, managers).unwrap();
    lab.shoal_ok("m1", &["node", "rm", "--force", "s1"])
        .unwrap();
    refused_with(
        call(&lab, "s1", Some(s1), None, managers),
        403,
        "its certificate is revoked",
    );
}

/// The issuer subject and lifetime (seconds) of a host's certificate.
fn cert_state(lab: &shoal_lab::Lab, host: &str) -> (String, i64) {
    let certs = certs_of(lab, host);
    let (from, until) = pki::validity(&certs.cert_pem).unwrap();
    (pki::issuer_of(&certs.cert_pem).unwrap(), until - from)
}

#[test]
fn certificates_follow_the_root_ca_rotation_and_the_role_under_a_running_stack() {
    let Some(lab) = lab("carot", 3, 1, 1, &[]) else {
        return;
    };
    wait_ready(&lab, "m1", 4);
    deploy(
        &lab,
        "m1",
        "app",
        "services:\n  web:\n    image: busybox\n    command: [\"sleep\", \"3600\"]\n    deploy:\n      replicas: 4\n",
    );
    wait("four replicas running", || {
        running_on(&lab, "m1", "app_web").len() == 4
    });
    let task_ids = |lab: &shoal_lab::Lab| {
        let mut ids: Vec<String> = tasks(lab, "m2", "app_web")
            .into_iter()
            .map(|t| t["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let before = task_ids(&lab);
    let old_token = lab
        .shoal_ok("m1", &["cluster", "join-token", "-q", "worker"])
        .unwrap();
    let old_ca = certs_of(&lab, "w1").ca_pem;

    // New certificates live as long as the cluster says from their next renewal on.
    lab.shoal_ok("m1", &["cluster", "update", "--cert-expiry", "2h"])
        .unwrap();
    let out = lab
        .shoal("m1", &["cluster", "update", "--cert-expiry", "10m"])
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 1h"));

    // Rotate the root under the running stack, through another manager than the leader.
    let via = if new_leader(&lab, None) == "m2" {
        "m3"
    } else {
        "m2"
    };
    lab.shoal_ok(via, &["cluster", "ca", "--rotate", "--detach"])
        .unwrap();
    let ca_info = |lab: &shoal_lab::Lab| -> serde_json::Value {
        serde_json::from_str(
            &lab.shoal_ok("m1", &["--format", "json", "cluster", "ca"])
                .unwrap(),
        )
        .unwrap()
    };
    wait("every node on the new root", || {
        let info = ca_info(&lab);
        info["rotating"] == false && info["nodes_done"] == 4
    });
    let info = ca_info(&lab);
    let new_subject = info["subject"].as_str().unwrap().to_owned();
    let new_ca = info["ca_certificate"].as_str().unwrap().to_owned();
    assert_ne!(new_ca.trim(), old_ca.trim());
    for host in ["m1", "m2", "m3", "w1"] {
        wait(&format!("{host} trusts only the new root"), || {
            certs_of(&lab, host).ca_pem.trim() == new_ca.trim()
        });
        let (issuer, lifetime) = cert_state(&lab, host);
        assert_eq!(issuer, new_subject, "{host}");
        // 2h, and the five minutes of clock skew a certificate starts early by.
        assert_eq!(lifetime, 2 * 3600 + 300, "{host}");
    }
    // Nothing was lost: the same tasks still run, and the cluster still writes.
    assert_eq!(task_ids(&lab), before);
    assert_eq!(running_on(&lab, "m3", "app_web").len(), 4);
    let rt = rt();
    write_until_acked(&rt, &lab, "m2", "after-rotation");
    // The join tokens name the new root; the old token no longer works.
    let token = lab
        .shoal_ok("m1", &["cluster", "join-token", "-q", "worker"])
        .unwrap();
    assert_eq!(
        pki::token_digest(&token),
        Some(pki::ca_digest(&new_ca).unwrap().as_str())
    );
    let m1_addr = format!("{}:2377", lab.host("m1").unwrap().addr);
    let out = lab
        .shoal(
            "s1",
            &["cluster", "join", "--token", old_token.trim(), &m1_addr],
        )
        .unwrap();
    assert!(!out.status.success());
    join_spare(&lab, &token, &m1_addr);
    let (issuer, _) = cert_state(&lab, "s1");
    assert_eq!(issuer, new_subject);
    // The managers recorded what they issued, as `node inspect` shows it.
    wait("s1's certificate recorded", || {
        let out = lab
            .shoal_ok("m1", &["node", "inspect", "s1"])
            .unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&out)
            .is_ok_and(|n| n[0]["certificate"]["issuer"] == new_subject.as_str())
    });

    // Demoted: the node's certificate says worker soon after, and that reaches no Raft.
    let demoted = if new_leader(&lab, None) == "m3" {
        "m2"
    } else {
        "m3"
    };
    let manager_cert = certs_of(&lab, demoted);
    lab.shoal_ok("m1", &["node", "demote", demoted]).unwrap();
    wait("the demoted manager holds a worker certificate", || {
        certs_of(&lab, demoted).identity().map(|i| i.role) == Some(pki::CertRole::Worker)
    });
    let worker = certs_of(&lab, demoted).client_tls().unwrap();
    refused_with(
        call(
            &lab,
            demoted,
            Some(worker),
            Some(serde_json::json!({})),
            shoal_controller::raft::peer::STREAM_PATH,
        ),
        403,
        "Raft is for managers only",
    );
    assert_eq!(
        manager_cert.identity().map(|i| i.role),
        Some(pki::CertRole::Manager)
    );
    assert_eq!(task_ids(&lab), before);

    // A root made elsewhere (--ca-cert, --ca-key): a node's certificate is no CA and changes
    // nothing; a CA's is taken, and every node moves to it.
    let node_dir = lab.state().dir.join("hosts/w1/data/certificates");
    let path = |p: std::path::PathBuf| p.to_str().unwrap().to_owned();
    let (leaf, leaf_key) = (
        path(node_dir.join("node.crt")),
        path(node_dir.join("node.key")),
    );
    let out = lab
        .shoal(
            "m1",
            &[
                "cluster",
                "ca",
                "--rotate",
                "--ca-cert",
                &leaf,
                "--ca-key",
                &leaf_key,
            ],
        )
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a CA's"),
        "{out:?}"
    );
    assert_eq!(ca_info(&lab)["subject"], new_subject.as_str());
    let external = pki::new_ca("made-elsewhere").unwrap();
    let (cert_file, key_file) = (
        lab.state().dir.join("external-ca.pem"),
        lab.state().dir.join("external-ca.key"),
    );
    std::fs::write(&cert_file, &external.cert_pem).unwrap();
    std::fs::write(&key_file, &external.key_pem).unwrap();
    lab.shoal_ok(
        "m1",
        &[
            "cluster",
            "ca",
            "--rotate",
            "--detach",
            "--ca-cert",
            &path(cert_file),
            "--ca-key",
            &path(key_file),
        ],
    )
    .unwrap();
    let external_subject = pki::subject_of(&external.cert_pem).unwrap();
    wait("every node on the external root", || {
        let info = ca_info(&lab);
        info["rotating"] == false && info["subject"] == external_subject.as_str()
    });
    // A worker saves its certificate after the manager recorded it: wait for the files.
    for host in ["m1", "m2", "m3", "w1", "s1"] {
        wait(&format!("{host} on the external root"), || {
            cert_state(&lab, host).0 == external_subject
        });
    }
    assert_eq!(task_ids(&lab), before);
}
