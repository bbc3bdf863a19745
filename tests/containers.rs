//! The README's main job as a test: real containers spread over a lab of five hosts, and the
//! leader's host dying (daemon and containers at once).

use shoal_cluster_tests::*;

#[test]
fn a_stack_of_real_containers_survives_the_leaders_host_dying() {
    let Some(lab) = container_lab("ct1", 3, 2) else {
        return;
    };
    let leader = new_leader(&lab, None);
    let via = lab.other_manager(&leader).unwrap();
    let stack = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/stacks/web.yml");
    deploy_file(&lab, &via, std::path::Path::new(stack), "web");
    // Spread: the three web replicas do not share a host, and the global worker runs on all five.
    let web = running_on(&lab, &via, "web_web");
    assert_eq!(web.len(), 3);
    assert_eq!(
        web.iter().collect::<std::collections::BTreeSet<_>>().len(),
        3,
        "{web:?}"
    );
    assert_eq!(running_on(&lab, &via, "web_worker").len(), 5);

    let nodes: Vec<serde_json::Value> = serde_json::from_str(
        &lab.shoal_ok(&via, &["--format", "json", "node", "ls"])
            .unwrap(),
    )
    .unwrap();
    let dead = nodes
        .iter()
        .find(|n| n["description"]["hostname"] == leader.as_str())
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .unwrap();
    lab.kill(&leader).unwrap();
    new_leader(&lab, Some(&leader));
    // Three web replicas again, none on the dead host; the cluster takes writes.
    wait("three web replicas running on live hosts", || {
        let web = running_on(&lab, &via, "web_web");
        web.len() == 3 && !web.contains(&dead)
    });
    lab.shoal_ok(&via, &["service", "scale", "web_web=4"])
        .unwrap();
    wait("four web replicas", || {
        running_on(&lab, &via, "web_web").len() == 4
    });
    // The dead host comes back: it re-registers, and nothing runs twice.
    lab.restart(&leader).unwrap();
    wait("the restarted host ready", || {
        lab.shoal_ok(&via, &["--format", "json", "node", "ls"])
            .ok()
            .and_then(|o| serde_json::from_str::<Vec<serde_json::Value>>(&o).ok())
            .is_some_and(|ns| ns.iter().all(|n| n["status"]["state"] == "ready"))
    });
    wait("the global worker on all five hosts again", || {
        running_on(&lab, &via, "web_worker").len() == 5
    });
    assert_eq!(running_on(&lab, &via, "web_web").len(), 4);
    lab.shoal_ok(&via, &["stack", "rm", "web"]).unwrap();
}
