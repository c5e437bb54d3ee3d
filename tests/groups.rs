//! Group presence: 1001 when a client is first bound to a group, 1002 to the remaining members
//! when it goes away, whichever way it goes (close frame, close_client, FIN, RST).

mod common;

use common::*;
use serde_json::json;

/// Connects three clients of `system` and binds them to `group` as users u0..u2 with extends
/// e0..e2, draining the 1001s of the binds.
fn three_in_a_group(server: &Server, system: &str, group: &str) -> Vec<Ws> {
    let mut clients: Vec<Ws> = (0..3).map(|_| server.ws(system)).collect();
    for i in 0..3 {
        bind(
            server.port,
            system,
            &clients[i],
            group,
            &format!("u{i}"),
            &format!("e{i}"),
        );
        let new_id = clients[i].client_id.clone();
        // Every member so far, the new one included, hears of the new one.
        for member in clients.iter_mut().take(i + 1) {
            let data = presence(&member.recv_json(), 1001);
            assert_eq!(
                data,
                json!({"clientId": new_id, "userId": format!("u{i}"), "extend": format!("e{i}")})
            );
        }
    }
    clients
}

/// Removes `gone` from `clients` some way, then checks that the two remaining members each get
/// exactly one 1002 describing it and that the group lists only them.
fn assert_leaving_notifies(server: &Server, how: &str) {
    server.register("sys");
    let mut clients = three_in_a_group(server, "sys", "room");
    let gone = clients.remove(1);
    let gone_id = gone.client_id.clone();
    match how {
        "close frame" => gone.close(),
        "close_client" => {
            let v = api(
                server.port,
                Some("sys"),
                "/api/close_client",
                &json!({ "clientId": gone_id }),
            );
            assert_eq!(v["code"], 0, "{v}");
            let mut gone = gone;
            gone.expect_end(IO_TIMEOUT, true);
        }
        "FIN without close frame" => gone.drop_abruptly(false),
        "RST" => gone.drop_abruptly(true),
        _ => unreachable!(),
    }
    for member in &mut clients {
        let push = member.recv_json();
        let data = presence(&push, 1002);
        assert_eq!(
            data,
            json!({"clientId": gone_id, "userId": "u1", "extend": "e1"}),
            "after {how}: {push}"
        );
        assert!(!push["msg"].as_str().unwrap().is_empty());
    }
    for member in &mut clients {
        member.expect_nothing(QUIET_MS);
    }
    assert_eq!(
        online_list(server.port, "sys", "room"),
        sorted(&[&clients[0].client_id, &clients[1].client_id])
    );
}

#[test]
fn first_bind_pushes_1001_to_every_member_and_a_repeated_bind_pushes_nothing() {
    let server = Server::start();
    server.register("sys");
    let mut clients = three_in_a_group(&server, "sys", "room");

    // Binding the same client to the same group again: no 1001, no duplicate member.
    bind(server.port, "sys", &clients[2], "room", "u2", "e2");
    bind(server.port, "sys", &clients[0], "room", "u0", "e0");
    for c in &mut clients {
        c.expect_nothing(QUIET_MS);
    }
    let ids: Vec<&str> = clients.iter().map(|c| c.client_id.as_str()).collect();
    assert_eq!(online_list(server.port, "sys", "room"), sorted(&ids));

    // A first bind to another group notifies that group only.
    bind(server.port, "sys", &clients[1], "other", "u1", "x");
    let data = presence(&clients[1].recv_json(), 1001);
    assert_eq!(
        data,
        json!({"clientId": clients[1].client_id, "userId": "u1", "extend": "x"})
    );
    clients[0].expect_nothing(QUIET_MS);
    clients[2].expect_nothing(20);
    assert_eq!(
        online_list(server.port, "sys", "other"),
        vec![clients[1].client_id.clone()]
    );
}

#[test]
fn presence_push_has_the_push_shape_and_a_new_message_id() {
    let server = Server::start();
    server.register("sys");
    let mut a = server.ws("sys");
    let b = server.ws("sys");
    bind(server.port, "sys", &a, "g", "ua", "{\"role\":\"admin\"}");
    let first = a.recv_json();
    assert_push_shape(&first);
    let data = presence(&first, 1001);
    // extend is carried as the string it was given, even when it looks like JSON.
    assert_eq!(data["extend"], "{\"role\":\"admin\"}");
    bind(server.port, "sys", &b, "g", "ub", "");
    let second = a.recv_json();
    presence(&second, 1001);
    assert_ne!(first["messageId"], second["messageId"]);
}

#[test]
fn leaving_by_close_frame_pushes_1002() {
    assert_leaving_notifies(&Server::start(), "close frame");
}

#[test]
fn leaving_by_close_client_pushes_1002() {
    assert_leaving_notifies(&Server::start(), "close_client");
}

#[test]
fn leaving_by_abrupt_drop_pushes_1002() {
    assert_leaving_notifies(&Server::start(), "FIN without close frame");
}

#[test]
fn leaving_by_tcp_reset_pushes_1002() {
    assert_leaving_notifies(&Server::start(), "RST");
}

#[test]
fn a_client_in_several_groups_notifies_each_group_once() {
    let server = Server::start();
    server.register("sys");
    let mut a = server.ws("sys");
    let mut b = server.ws("sys");
    let c = server.ws("sys");
    bind(server.port, "sys", &a, "g1", "ua", "");
    bind(server.port, "sys", &b, "g2", "ub", "");
    bind(server.port, "sys", &c, "g1", "uc", "ec");
    bind(server.port, "sys", &c, "g2", "uc", "ec");
    bind(server.port, "sys", &c, "g3", "uc", "ec");
    // a: its own bind and c's to g1; b: its own and c's to g2.
    for ws in [&mut a, &mut b] {
        let own = ws.client_id.clone();
        let mut seen: Vec<String> = (0..2)
            .map(|_| {
                presence(&ws.recv_json(), 1001)["clientId"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        seen.sort();
        assert_eq!(seen, sorted(&[&own, &c.client_id]));
    }
    let c_id = c.client_id.clone();
    c.drop_abruptly(false);
    for ws in [&mut a, &mut b] {
        let data = presence(&ws.recv_json(), 1002);
        assert_eq!(data["clientId"], c_id);
        assert_eq!(data["userId"], "uc");
        assert_eq!(data["extend"], "ec");
    }
    a.expect_nothing(QUIET_MS);
    b.expect_nothing(20);
    assert_eq!(
        online_list(server.port, "sys", "g1"),
        vec![a.client_id.clone()]
    );
    assert_eq!(
        online_list(server.port, "sys", "g2"),
        vec![b.client_id.clone()]
    );
    // g3 lost its only member: empty, not missing.
    let v = api(
        server.port,
        Some("sys"),
        "/api/get_online_list",
        &json!({"groupName": "g3"}),
    );
    assert_eq!(v["data"], json!({"count": 0, "list": []}), "{v}");
}

#[test]
fn the_last_member_leaving_empties_the_group() {
    let server = Server::start();
    server.register("sys");
    let mut a = server.ws("sys");
    bind(server.port, "sys", &a, "solo", "ua", "");
    presence(&a.recv_json(), 1001);
    a.close();
    let v = api(
        server.port,
        Some("sys"),
        "/api/get_online_list",
        &json!({"groupName": "solo"}),
    );
    assert_eq!(v["data"], json!({"count": 0, "list": []}), "{v}");
}
