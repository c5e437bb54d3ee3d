use super::*;

#[test]
fn reads_the_originals_file_with_inline_comments() {
    let c = Config::parse(
        "[common]\nHttpPort = 7801          ; HTTP API\nRPCPort = 7901\n# comment\n\
         Cluster = false\nCryptoKey = Adba723b7fe06819   ; 16 bytes\n[etcd]\n\
         Endpoints = 127.0.0.1:2379, 127.0.0.2:2379\n[other]\nHttpPort = 1\n",
    )
    .unwrap();
    assert_eq!(c.http_port, 7801);
    assert_eq!(c.rpc_port, 7901);
    assert!(!c.cluster);
    assert_eq!(c.crypto_key, "Adba723b7fe06819");
    assert_eq!(c.etcd_endpoints, vec!["127.0.0.1:2379", "127.0.0.2:2379"]);
    c.validate().unwrap();
}

#[test]
fn bad_values_name_their_key() {
    let e = Config::parse("[common]\nHttpPort = abc\n").unwrap_err();
    assert_eq!(e.key, "common.HttpPort");
    let e = Config::parse("[common]\nCryptoKey = short\n")
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(e.key, "common.CryptoKey");
    assert!(e.to_string().contains("16, 24 or 32"));
    let e = Config::parse("[wspush]\nHeartbeatInterval = 30\nPongTimeout = 10\n")
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(e.key, "wspush.PongTimeout");
}

#[test]
fn connection_limit_follows_the_open_files_limit_unless_set() {
    let c = Config::default();
    // 20,000 files (this machine): 1,000 kept back, the rest shared by the cores.
    assert_eq!(c.conns_per_core(20_000, 2), 9_500);
    assert_eq!(c.conns_per_core(20_000, 1), 19_000);
    assert_eq!(c.conns_per_core(1 << 20, 16), ((1 << 20) - 4096) / 16);
    // A tiny limit still leaves room for a few connections and the listeners.
    assert_eq!(c.conns_per_core(64, 2), 16);
    let c = Config::parse("[wspush]\nMaxConnsPerCore = 7\n").unwrap();
    assert_eq!(c.conns_per_core(20_000, 2), 7);
    let e = Config::parse("[wspush]\nHandshakeTimeout = 0\n")
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(e.key, "wspush.HandshakeTimeout");
    let e = Config::parse("[wspush]\nMaxGroupsPerClient = 0\n")
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(e.key, "wspush.MaxGroupsPerClient");
    assert_eq!(Config::default().max_http_conns_per_core, 1024);
    let c = Config::parse("[wspush]\nMaxHttpConnsPerCore = 5\nOpsRequireKey = false\n").unwrap();
    assert_eq!((c.max_http_conns_per_core, c.ops_require_key), (5, false));
    let e = Config::parse("[wspush]\nMaxHttpConnsPerCore = 0\n")
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(e.key, "wspush.MaxHttpConnsPerCore");
}

#[test]
fn api_key_is_off_by_default_and_checked_when_set() {
    assert_eq!(Config::default().api_key, "");
    let c = Config::parse("[wspush]\nApiKey = 0123456789abcdef0123 ; comment\n").unwrap();
    assert_eq!(c.api_key, "0123456789abcdef0123");
    c.validate().unwrap();
    let e = Config::parse("[wspush]\nApiKey = short\n")
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(e.key, "wspush.ApiKey");
}

#[test]
fn node_link_keys_parse_validate_and_pick_the_bind_address() {
    let c = Config::default();
    assert_eq!(c.cluster_secret, "");
    assert_eq!(c.rpc_bind_host(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(
        (c.max_node_links_per_core, c.max_node_links_per_peer),
        (8192, 512)
    );
    let c = Config::parse("[wspush]\nAdvertiseHost = 10.0.0.7\n").unwrap();
    assert_eq!(c.rpc_bind_host(), Ipv4Addr::new(10, 0, 0, 7));
    let c = Config::parse("[wspush]\nAdvertiseHost = 10.0.0.7\nRPCBind = 0.0.0.0\n").unwrap();
    assert_eq!(c.rpc_bind_host(), Ipv4Addr::UNSPECIFIED);
    let e = Config::parse("[wspush]\nRPCBind = eth0\n").unwrap_err();
    assert_eq!(e.key, "wspush.RPCBind");
    let c = Config::parse("[wspush]\nClusterSecret = 0123456789abcdef0123\n").unwrap();
    c.validate().unwrap();
    for bad in ["short", "has spaces in it, long enough"] {
        let e = Config::parse(&format!("[wspush]\nClusterSecret = {bad}\n"))
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "wspush.ClusterSecret");
    }
    let e = Config::parse("[wspush]\nMaxNodeLinksPerPeer = 0\n")
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(e.key, "wspush.MaxNodeLinksPerPeer");
    // Shown by length only.
    let shown = c
        .values()
        .into_iter()
        .find(|(k, _)| *k == "wspush.ClusterSecret");
    assert_eq!(shown.unwrap().1, "<secret, 20 bytes>");
}

#[test]
fn issue_12_limits_have_their_defaults_and_are_checked() {
    let c = Config::default();
    assert_eq!(
        (
            c.max_system_id_bytes,
            c.max_systems,
            c.max_name_bytes,
            c.max_extend_bytes,
            c.max_msg_bytes,
            c.max_json_depth,
            c.webhook_bytes,
            c.webhook_allow_private,
        ),
        (128, 100_000, 256, 4096, 65_536, 64, 64 << 20, false)
    );
    let c = Config::parse(
        "[wspush]\nMaxSystems = 5\nMaxJsonDepth = 8\nWebhookAllowPrivate = true\n\
         WebhookBytes = 1000\n",
    )
    .unwrap();
    assert_eq!((c.max_systems, c.max_json_depth), (5, 8));
    assert_eq!((c.webhook_bytes, c.webhook_allow_private), (1000, true));
    c.validate().unwrap();
    // clientIds are bounded by MaxNameBytes too, so it cannot go below their length.
    let e = Config::parse("[wspush]\nMaxNameBytes = 58\n")
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(e.key, "wspush.MaxNameBytes");
    for key in [
        "MaxSystems",
        "MaxJsonDepth",
        "WebhookBytes",
        "MaxSystemIdBytes",
    ] {
        let e = Config::parse(&format!("[wspush]\n{key} = 0\n"))
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, format!("wspush.{key}"));
    }
}

#[test]
fn unknown_keys_are_ignored_and_defaults_hold() {
    let c = Config::parse("[common]\nFoo = bar\n[x]\ny=z\n").unwrap();
    assert_eq!(c.http_port, 7800);
    assert_eq!(c.heartbeat_interval, Duration::from_secs(25));
    c.validate().unwrap();
}

#[test]
fn parse_all_and_validate_all_report_every_problem() {
    let (c, problems) = Config::parse_all(
        "[common]\nHttpPort = abc\nCryptoKey = short\n[wspush]\nCores = many\n\
         LogFormat = xml\nHeartbeatInterval = 30\nPongTimeout = 10\nQueueFrames = 0\n",
    );
    let keys: Vec<&str> = problems.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        ["common.HttpPort", "wspush.Cores", "wspush.LogFormat"]
    );
    // Values after a bad one still apply.
    assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
    let keys: Vec<String> = c.validate_all().into_iter().map(|e| e.key).collect();
    assert_eq!(
        keys,
        [
            "common.CryptoKey",
            "wspush.PongTimeout",
            "wspush.QueueFrames"
        ]
    );
    // The single-problem forms give the first.
    assert_eq!(
        Config::parse("[common]\nHttpPort = abc\nRPCPort = x\n")
            .unwrap_err()
            .key,
        "common.HttpPort"
    );
    assert_eq!(c.validate().unwrap_err().key, "common.CryptoKey");
}

#[test]
fn values_list_every_key_and_parse_back() {
    let text = "[common]\nHttpPort = 7801\nRPCPort = 7901\nCluster = true\n\
                [etcd]\nEndpoints = a:1, b:2\n[wspush]\nAdvertiseHost = 10.0.0.7\n\
                Cores = 3\nLogFormat = JSON\nRpcTimeoutMs = 1500\nShutdownGrace = 9\n";
    let c = Config::parse(text).unwrap();
    assert_eq!(c.log_format, LogFormat::Json);
    // Writing the listed values back as an ini file gives the same values.
    let mut ini = String::new();
    for (key, value) in c.values() {
        let (section, name) = key.split_once('.').unwrap();
        ini.push_str(&format!("[{section}]\n{name} = {value}\n"));
    }
    let again = Config::parse(&ini).unwrap();
    assert_eq!(again.values(), c.values());
    // A key read by parse but missing from values() would show up here as unchanged.
    assert_eq!(again.rpc_timeout, Duration::from_millis(1500));
    assert_eq!(again.shutdown_grace, Duration::from_secs(9));
    assert_eq!(again.advertise_host, Some(Ipv4Addr::new(10, 0, 0, 7)));
    // Secrets show their length only; the published default shows itself.
    let c = Config::parse("[common]\nCryptoKey = 0123456789abcdef\n").unwrap();
    let shown = c
        .values()
        .into_iter()
        .find(|(k, _)| *k == "common.CryptoKey");
    assert_eq!(shown.unwrap().1, "<secret, 16 bytes>");
    let shown = Config::default()
        .values()
        .into_iter()
        .find(|(k, _)| *k == "common.CryptoKey");
    assert_eq!(shown.unwrap().1, DEFAULT_CRYPTO_KEY);
    assert_eq!(
        Config::file_keys("[a]\nX = 1\n; c\nY=2\n"),
        [("a", "X"), ("a", "Y")]
    );
}

fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn environment_variables_override_keys_in_any_case() {
    let (overrides, notes) = Config::env_overrides(vars(&[
        ("WSPUSH_COMMON_HTTPPORT", "7801"),
        ("wspush_etcd_endpoints", "etcd1:2379, etcd2:2379"),
        ("WSPUSH_WSPUSH_MaxConnsPerCore", "9"),
        ("WSPUSH_WSPUSH_NOSUCHKEY", "1"),
        ("WSPUSH_SETUP_TEST", "1"),
        ("WSPUSHX_COMMON_HTTPPORT", "1"),
        ("PATH", "/bin"),
    ]));
    let keys: Vec<&str> = overrides.iter().map(|o| o.key).collect();
    assert_eq!(
        keys,
        [
            "common.HttpPort",
            "wspush.MaxConnsPerCore",
            "etcd.Endpoints"
        ]
    );
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("WSPUSH_WSPUSH_NOSUCHKEY"), "{}", notes[0]);

    let mut c = Config::parse("[common]\nHttpPort = 7000\nRPCPort = 7001\n").unwrap();
    assert!(c.apply_env(&overrides).is_empty());
    assert_eq!(c.http_port, 7801, "the environment wins over the file");
    assert_eq!(
        c.rpc_port, 7001,
        "keys it does not name keep the file's value"
    );
    assert_eq!(c.max_conns_per_core, 9);
    assert_eq!(c.etcd_endpoints, ["etcd1:2379", "etcd2:2379"]);
}

#[test]
fn a_bad_environment_value_names_its_variable_and_key() {
    let (overrides, _) = Config::env_overrides(vars(&[("WSPUSH_COMMON_HTTPPORT", "abc")]));
    let mut c = Config::default();
    let problems = c.apply_env(&overrides);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].key, "WSPUSH_COMMON_HTTPPORT (common.HttpPort)");
    assert!(problems[0].problem.contains("\"abc\""), "{}", problems[0]);
    assert_eq!(c.http_port, Config::default().http_port);
}

#[test]
fn advertise_host_and_rpc_bind_take_an_address_or_a_host_name() {
    let c = Config::parse("[wspush]\nAdvertiseHost = 10.1.2.3\nRPCBind = localhost\n").unwrap();
    assert_eq!(c.advertise_host, Some(Ipv4Addr::new(10, 1, 2, 3)));
    assert_eq!(c.rpc_bind, Some(Ipv4Addr::LOCALHOST));
    let c = Config::parse("[wspush]\nAdvertiseHost =\n").unwrap();
    assert_eq!(c.advertise_host, None);
    for bad in ["not a host", "-x", "10.0.0.1:80"] {
        let e = Config::parse(&format!("[wspush]\nAdvertiseHost = {bad}\n")).unwrap_err();
        assert_eq!(e.key, "wspush.AdvertiseHost", "{bad}: {e}");
    }
    let e = Config::parse("[wspush]\nAdvertiseHost = no-such-host.invalid\n").unwrap_err();
    assert!(e.problem.contains("cannot resolve"), "{e}");
}

#[test]
fn issue_15_history_is_off_by_default_and_checked_when_on() {
    let c = Config::default();
    assert_eq!(
        (c.history_size, c.history_ttl, c.history_max_bytes),
        (0, Duration::from_secs(300), 1 << 20)
    );
    c.validate().unwrap();
    let c = Config::parse("[wspush]\nHistorySize = 50\nHistoryTtl = 9\nHistoryMaxBytes = 4000\n")
        .unwrap();
    assert_eq!(
        (c.history_size, c.history_ttl, c.history_max_bytes),
        (50, Duration::from_secs(9), 4000)
    );
    c.validate().unwrap();
    let shown: Vec<_> = c.values().into_iter().map(|(k, _)| k).collect();
    for key in ["HistorySize", "HistoryTtl", "HistoryMaxBytes"] {
        assert!(shown.contains(&&*format!("wspush.{key}")), "{key}");
    }
    // Off, the other two may be anything; on, neither may be 0.
    Config::parse("[wspush]\nHistoryTtl = 0\nHistoryMaxBytes = 0\n")
        .unwrap()
        .validate()
        .unwrap();
    for key in ["HistoryTtl", "HistoryMaxBytes"] {
        let e = Config::parse(&format!("[wspush]\nHistorySize = 5\n{key} = 0\n"))
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, format!("wspush.{key}"));
    }
}

#[test]
fn issue_15_offline_is_off_by_default_and_checked_when_on() {
    let c = Config::default();
    assert_eq!(
        (c.offline_max, c.offline_ttl, c.offline_max_bytes),
        (0, Duration::from_secs(86400), 1 << 20)
    );
    c.validate().unwrap();
    let c = Config::parse("[wspush]\nOfflineMax = 7\nOfflineTtl = 9\nOfflineMaxBytes = 4000\n")
        .unwrap();
    assert_eq!(
        (c.offline_max, c.offline_ttl, c.offline_max_bytes),
        (7, Duration::from_secs(9), 4000)
    );
    c.validate().unwrap();
    let shown: Vec<_> = c.values().into_iter().map(|(k, _)| k).collect();
    for key in ["OfflineMax", "OfflineTtl", "OfflineMaxBytes"] {
        assert!(shown.contains(&&*format!("wspush.{key}")), "{key}");
    }
    Config::parse("[wspush]\nOfflineTtl = 0\nOfflineMaxBytes = 0\n")
        .unwrap()
        .validate()
        .unwrap();
    for key in ["OfflineTtl", "OfflineMaxBytes"] {
        let e = Config::parse(&format!("[wspush]\nOfflineMax = 5\n{key} = 0\n"))
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, format!("wspush.{key}"));
    }
}
