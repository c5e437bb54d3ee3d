//! Occupancy webhooks (issue 17) on one node with two cores: `group_occupied` once when the
//! group gets its first member, `group_vacated` once when its last one leaves or disconnects,
//! whichever core the members are on.

mod common;

use common::receiver::Receiver;
use common::*;
use serde_json::json;
use std::time::Duration;

const DELIVERY: Duration = Duration::from_secs(5);
const PRIVATE: &str = "WebhookAllowPrivate = true";
const OCCUPANCY: &str = "WebhookOccupancy = true";

/// The occupancy events the receiver got so far, as (event, groupName).
fn occupancy(receiver: &Receiver) -> Vec<(String, String)> {
    receiver
        .delivered()
        .iter()
        .filter(|e| e["event"].as_str().is_some_and(|k| k.starts_with("group_")))
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_string(),
                e["groupName"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn wait_occupancy(receiver: &Receiver, n: usize) -> Vec<(String, String)> {
    let deadline = std::time::Instant::now() + DELIVERY;
    loop {
        let got = occupancy(receiver);
        if got.len() >= n || std::time::Instant::now() > deadline {
            // A short window for any extra (wrong) event to arrive.
            std::thread::sleep(Duration::from_millis(QUIET_MS));
            return occupancy(receiver);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pair(kind: &str, group: &str) -> (String, String) {
    (kind.to_string(), group.to_string())
}

#[test]
fn occupied_once_on_the_first_member_vacated_once_after_the_last() {
    let receiver = Receiver::start();
    let server = Server::start_cores(&[PRIVATE, OCCUPANCY], 2);
    let system = unique("occ");
    let v = api(
        server.port,
        None,
        "/api/register",
        &json!({"systemId": system, "webhookUrl": receiver.url("/o")}),
    );
    assert_eq!(v["code"], 0, "{v}");
    // Four clients: with two cores, the accepts spread over both.
    let clients: Vec<Ws> = (0..4).map(|_| server.ws(&system)).collect();
    for (i, ws) in clients.iter().enumerate() {
        bind(server.port, &system, ws, "room", &format!("u{i}"), "");
    }
    assert_eq!(
        wait_occupancy(&receiver, 1),
        [pair("group_occupied", "room")]
    );
    let occupied = receiver
        .delivered()
        .into_iter()
        .find(|e| e["event"] == "group_occupied")
        .unwrap();
    assert_eq!(
        (
            &occupied["clientId"],
            &occupied["userId"],
            &occupied["extend"]
        ),
        (&json!(""), &json!(""), &json!("")),
        "{occupied}"
    );
    assert_eq!(occupied["systemId"], system.as_str());

    // One leaves by unbind, two disconnect: the group still has a member.
    let mut clients = clients.into_iter();
    let first = clients.next().unwrap();
    let v = api(
        server.port,
        Some(&system),
        "/api/unbind_from_group",
        &json!({"clientId": first.client_id, "groupName": "room"}),
    );
    assert_eq!(v["code"], 0, "{v}");
    clients.next().unwrap().close();
    clients.next().unwrap().close();
    std::thread::sleep(Duration::from_millis(QUIET_MS * 2));
    assert_eq!(occupancy(&receiver), [pair("group_occupied", "room")]);

    // The last one disconnects: vacated, once.
    let last = clients.next().unwrap();
    last.drop_abruptly(false);
    assert_eq!(
        wait_occupancy(&receiver, 2),
        [
            pair("group_occupied", "room"),
            pair("group_vacated", "room")
        ]
    );

    // The group comes back: occupied again; an unbind empties it: vacated again.
    let again = server.ws(&system);
    bind(server.port, &system, &again, "room", "u", "");
    assert_eq!(wait_occupancy(&receiver, 3).len(), 3);
    let v = api(
        server.port,
        Some(&system),
        "/api/unbind_from_group",
        &json!({"clientId": again.client_id, "groupName": "room"}),
    );
    assert_eq!(v["code"], 0, "{v}");
    let all: Vec<(String, String)> = wait_occupancy(&receiver, 4);
    assert_eq!(
        all,
        [
            pair("group_occupied", "room"),
            pair("group_vacated", "room"),
            pair("group_occupied", "room"),
            pair("group_vacated", "room"),
        ]
    );
}
